//! What should happen to a TenantSecurityKey next: a pure function of what was observed.
//!
//! The reconciler observes the resource, its Secret and its recorded creation intent, asks
//! [`next_step`] what to do, performs that one step, updates its picture of the world and asks
//! again, until the answer is [`Step::Settled`]. Every crash point of the create protocol is a
//! state this function has to answer correctly, which the tests below enumerate.
//!
//! The create protocol, where the private key is only shown once:
//! 1. [`Step::BeginCreate`] records the intent (an attempt id, the name marked with the
//!    resource's uid and the attempt, and what is requested) on the resource, conditional on
//!    the resource version the decision was made on.
//! 2. [`Step::Create`] creates the key and writes it, with the attempt id, into the Secret.
//! 3. The key is recorded in the status together with the attempt id, which closes the intent;
//!    the status write is conditional on the resource version after step 1.
//!
//! A crash after 2 leaves a Secret from the open attempt: [`Step::AdoptFromSecret`] records
//! what the intent requested. A crash or a lost response before 2 leaves a key nobody can use:
//! [`Step::CleanupOrphans`] first supersedes the open attempt with a conditional write (so a
//! second operator process still working on it can no longer record its key), then revokes
//! every key marked for this resource that the status does not hold (a key in the Secret from
//! another attempt is a late write the next create overwrites; only a resource deleted with
//! `Retain` keeps it with its Secret). The same sweep runs when the operator's metadata was
//! wiped (`kubectl replace`) from a resource it had already worked on.
//!
//! Rotation (on schedule, on request, or because the key was revoked at Imburse behind the
//! operator's back) is a replacement like any other: the same three steps create the new key,
//! and recording it moves the old one to `previousKeys` with the time its grace period ends.
//! The status write that records the new key is the commit point; a crash before it is
//! recovered like any interrupted create, a crash after it leaves a replaced key that is
//! revoked when its time comes (restarts included, as the time is recorded). The rotation
//! request handled by an attempt is part of its intent, so a recovered attempt closes the
//! request it was made for and a request is never served twice. Workloads listed as restart
//! targets are restarted (an idempotent patch of their pod template) once per key change,
//! before the change is recorded as rolled out.

use tenant_key_api::crd::{AccountRef, DeletionPolicy, Endpoint};

/// Most replaced keys that may wait for revocation at once.
pub const MAX_PREVIOUS_KEYS: usize = 10;

/// What the spec asks for, after validation and defaulting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub tenant_id: String,
    pub account: AccountRef,
    /// Sorted and free of duplicates, so that comparing with the recorded roles is exact.
    pub roles: Vec<String>,
    pub secret_name: String,
    /// Where the account points now; unknown while deleting (no account is resolved).
    pub endpoint: Option<Endpoint>,
}

/// The key recorded in the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentKey {
    pub public_key: String,
    pub tenant_id: String,
    pub account: AccountRef,
    pub roles: Vec<String>,
    pub fingerprint: String,
    /// Absent for keys recorded before endpoints were: such a key lives where the account
    /// points, and an upgrade must not read the missing record as a change.
    pub endpoint: Option<Endpoint>,
}

/// A creation intent that the status has not closed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub attempt: String,
    /// True when no key of this attempt can exist at Imburse besides the ones the status knows:
    /// the intent was recorded by this very reconcile, or its orphans were just revoked.
    pub clean: bool,
}

/// The target Secret as found in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    Missing,
    /// Exists but is not controlled by this resource: never overwritten.
    NotOwned,
    Owned {
        /// Fingerprint of the key material it holds; `None` when an entry is missing or empty.
        fingerprint: Option<String>,
        /// Creation attempt that wrote it.
        attempt: Option<String>,
        /// Whether type, labels, annotations, ownership form and entry layout match the spec.
        layout_matches: bool,
    },
}

/// A replaced key waiting for revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    pub public_key: String,
    pub tenant_id: String,
    pub account: AccountRef,
    pub endpoint: Option<Endpoint>,
    /// False while a grace period still protects it.
    pub due: bool,
    /// Imburse refused its revocation for good: the status says so and a person has to act,
    /// so the operator stops trying.
    pub refused: bool,
}

/// Everything the decision depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub deleting: bool,
    pub deletion_policy: DeletionPolicy,
    pub has_finalizer: bool,
    pub desired: Desired,
    pub current: Option<CurrentKey>,
    pub pending: Option<Pending>,
    pub secret: SecretState,
    pub retired: Vec<Retired>,
    /// An owned Secret remains under a name the spec no longer uses; it holds an old key.
    pub stale_secret: bool,
    /// The operator's metadata is gone from a resource it already worked on (a replace wiped
    /// finalizer and intent): keys of an attempt it no longer knows may exist.
    pub sweep_needed: bool,
    /// Why the current key should be replaced although spec and Secret still match it.
    pub rotation: Option<Rotation>,
    /// Restart targets exist and were not restarted for the current key yet.
    pub restart_pending: bool,
    /// `spec.adopt`: a Secret that is not the operator's may be taken over.
    pub adopt: bool,
}

/// Why a key that still matches the spec is replaced. When several apply, the first listed
/// wins: a key that no longer works matters more than a request, a request more than a date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rotation {
    /// Imburse no longer knows the key.
    RevokedExternally,
    /// The rotation request annotation has a value not handled yet.
    Requested,
    /// `rotation.interval` has passed since the key was created.
    Scheduled,
}

/// Why the key has to be (re)created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateReason {
    NoKey,
    SpecChanged,
    EndpointChanged,
    SecretMissing,
    SecretDamaged,
    Rotation(Rotation),
}

impl CreateReason {
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoKey => "no key exists yet",
            Self::SpecChanged => "tenant, account or roles changed",
            Self::EndpointChanged => {
                "the account now points at another Imburse endpoint or account"
            }
            Self::SecretMissing => "the Secret was deleted",
            Self::SecretDamaged => "the Secret no longer holds the recorded key",
            Self::Rotation(Rotation::RevokedExternally) => {
                "the key was revoked at Imburse by someone else"
            }
            Self::Rotation(Rotation::Requested) => "a rotation was requested",
            Self::Rotation(Rotation::Scheduled) => "the key reached its rotation interval",
        }
    }
}

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Record the creation intent (and the finalizer) on the resource.
    BeginCreate(CreateReason),
    /// Supersede an interrupted attempt, then revoke the keys marked for this resource that
    /// nothing records.
    CleanupOrphans,
    /// Create the key at Imburse and write it into the Secret.
    Create,
    /// The Secret holds the key of the open attempt: record it in the status.
    AdoptFromSecret,
    /// Make the Secret's metadata and layout match the spec again (same key).
    RewriteSecret,
    /// Delete the owned Secret left under the previous `secret.name` (or, if it holds entries
    /// of others, remove only the operator's).
    DeleteStaleSecret,
    /// Add the finalizer that protects an existing key.
    AddFinalizer,
    /// Revoke a replaced key.
    RevokeRetired(Retired),
    /// Deletion with `Delete`: revoke the current key.
    RevokeCurrent,
    /// Deletion with `Delete`: remove the Secret (or, if it holds entries of others, only the
    /// operator's entries and marks).
    DeleteSecret,
    /// Deletion with `Retain`: drop the operator's ownership so the Secret survives.
    ReleaseSecret,
    /// Deletion is complete: let the resource go.
    RemoveFinalizer,
    /// `spec.adopt`: prove the key in the existing Secret and take both over.
    AdoptExisting,
    /// Restart the rollout restart targets for the current key.
    RestartWorkloads,
    /// A Secret of that name exists and belongs to someone else.
    SecretConflict,
    /// The key should be replaced, but [`MAX_PREVIOUS_KEYS`] replaced keys still wait for
    /// revocation: nothing is created until older ones are revoked.
    RotationLimited,
    /// Nothing left to do; the key is ready (or the resource is gone).
    Settled,
}

impl Step {
    /// Whether the step must be decided on the latest version of the resource rather than on
    /// a cache that may lag behind the operator's own writes. Steps that create or revoke keys
    /// at Imburse need it because a stale status could forget a key that exists; adopting a
    /// Secret needs it because a lagging cache looks exactly like a crash after the Secret
    /// write, and adopting again would rewrite the status for nothing. Restarting workloads
    /// needs it because a cache lagging behind a later key would set an older fingerprint on
    /// the pod templates and roll the pods once more.
    pub fn needs_latest_resource(&self) -> bool {
        matches!(
            self,
            Self::BeginCreate(_)
                | Self::CleanupOrphans
                | Self::Create
                | Self::AdoptFromSecret
                | Self::AdoptExisting
                | Self::RestartWorkloads
                | Self::RevokeRetired(_)
                | Self::RevokeCurrent
        )
    }
}

/// Decides the next step. Pure: no I/O, no clock.
pub fn next_step(o: &Observed) -> Step {
    if o.deleting {
        return next_deletion_step(o);
    }
    if o.secret == SecretState::NotOwned {
        // Only a resource without a key of its own adopts: one that has a key lost its Secret
        // to someone else, and taking theirs over would hide that. An interrupted attempt's
        // key is swept first.
        if !o.adopt || o.current.is_some() {
            return Step::SecretConflict;
        }
        return if o.sweep_needed || o.pending.as_ref().is_some_and(|p| !p.clean) {
            Step::CleanupOrphans
        } else {
            Step::AdoptExisting
        };
    }
    if let Some(pending) = &o.pending {
        return if secret_from_attempt(&o.secret, &pending.attempt) {
            Step::AdoptFromSecret
        } else if pending.clean {
            Step::Create
        } else {
            Step::CleanupOrphans
        };
    }
    if o.sweep_needed {
        return Step::CleanupOrphans;
    }
    let Some(current) = &o.current else {
        return Step::BeginCreate(CreateReason::NoKey);
    };
    if let Some(reason) = replacement(o, current) {
        // Every replacement leaves a key valid for its grace period; whoever can edit the
        // resource or its Secret must not pile them up. A key Imburse no longer knows leaves
        // nothing behind.
        let piles_up = reason != CreateReason::Rotation(Rotation::RevokedExternally);
        if piles_up && o.retired.len() >= MAX_PREVIOUS_KEYS {
            return Step::RotationLimited;
        }
        return Step::BeginCreate(reason);
    }
    if matches!(
        o.secret,
        SecretState::Owned {
            layout_matches: false,
            ..
        }
    ) {
        return Step::RewriteSecret;
    }
    if !o.has_finalizer {
        return Step::AddFinalizer;
    }
    if o.restart_pending {
        return Step::RestartWorkloads;
    }
    if o.stale_secret {
        return Step::DeleteStaleSecret;
    }
    if let Some(retired) = o.retired.iter().find(|r| r.due && !r.refused) {
        return Step::RevokeRetired(retired.clone());
    }
    Step::Settled
}

/// Why the recorded key must give way to a new one, if it must.
fn replacement(o: &Observed, current: &CurrentKey) -> Option<CreateReason> {
    if current.tenant_id != o.desired.tenant_id
        || current.account != o.desired.account
        || current.roles != o.desired.roles
    {
        return Some(CreateReason::SpecChanged);
    }
    if let (Some(recorded), Some(now)) = (&current.endpoint, &o.desired.endpoint)
        && recorded != now
    {
        return Some(CreateReason::EndpointChanged);
    }
    match &o.secret {
        SecretState::Missing | SecretState::NotOwned => Some(CreateReason::SecretMissing),
        SecretState::Owned { fingerprint, .. }
            if fingerprint.as_deref() != Some(current.fingerprint.as_str()) =>
        {
            Some(CreateReason::SecretDamaged)
        }
        SecretState::Owned { .. } => o.rotation.map(CreateReason::Rotation),
    }
}

fn next_deletion_step(o: &Observed) -> Step {
    if !o.has_finalizer {
        return Step::Settled;
    }
    // The private key of an unfinished attempt is lost whatever the policy: revoke it.
    if o.pending.as_ref().is_some_and(|p| !p.clean) {
        return Step::CleanupOrphans;
    }
    // Replaced keys are in no Secret any more; the grace period ends with the resource. Keys
    // Imburse refused to revoke for good are reported, and do not hold the resource forever.
    if let Some(retired) = o.retired.iter().find(|r| !r.refused) {
        return Step::RevokeRetired(retired.clone());
    }
    let owned = matches!(o.secret, SecretState::Owned { .. });
    match o.deletion_policy {
        DeletionPolicy::Delete if o.current.is_some() => Step::RevokeCurrent,
        DeletionPolicy::Delete if owned => Step::DeleteSecret,
        DeletionPolicy::Retain if owned => Step::ReleaseSecret,
        DeletionPolicy::Delete | DeletionPolicy::Retain => Step::RemoveFinalizer,
    }
}

fn secret_from_attempt(secret: &SecretState, attempt: &str) -> bool {
    matches!(
        secret,
        SecretState::Owned { fingerprint: Some(_), attempt: Some(a), .. } if a == attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenant_key_api::crd::{AccountKind, ApiGeneration};

    fn endpoint(base_url: &str) -> Endpoint {
        Endpoint {
            base_url: base_url.into(),
            api_generation: ApiGeneration::Seed,
            account_id: None,
        }
    }

    fn account(name: &str) -> AccountRef {
        AccountRef {
            kind: AccountKind::ImburseAccount,
            name: name.into(),
        }
    }

    fn desired() -> Desired {
        Desired {
            tenant_id: "t1".into(),
            account: account("acc"),
            roles: vec!["tenant-admin".into()],
            secret_name: "key".into(),
            endpoint: Some(endpoint("https://api.imbursepayments.com")),
        }
    }

    fn current() -> CurrentKey {
        CurrentKey {
            public_key: "pk1".into(),
            tenant_id: "t1".into(),
            account: account("acc"),
            roles: vec!["tenant-admin".into()],
            fingerprint: "fp1".into(),
            endpoint: Some(endpoint("https://api.imbursepayments.com")),
        }
    }

    fn owned(fingerprint: &str, attempt: &str) -> SecretState {
        SecretState::Owned {
            fingerprint: Some(fingerprint.into()),
            attempt: Some(attempt.into()),
            layout_matches: true,
        }
    }

    fn pending(attempt: &str, clean: bool) -> Pending {
        Pending {
            attempt: attempt.into(),
            clean,
        }
    }

    fn retired(public_key: &str, due: bool) -> Retired {
        Retired {
            public_key: public_key.into(),
            tenant_id: "t1".into(),
            account: account("acc"),
            endpoint: None,
            due,
            refused: false,
        }
    }

    /// A settled, ready key.
    fn ready() -> Observed {
        Observed {
            deleting: false,
            deletion_policy: DeletionPolicy::Delete,
            has_finalizer: true,
            desired: desired(),
            current: Some(current()),
            pending: None,
            secret: owned("fp1", "a1"),
            retired: vec![],
            stale_secret: false,
            sweep_needed: false,
            rotation: None,
            restart_pending: false,
            adopt: false,
        }
    }

    /// A resource seen for the first time.
    fn fresh() -> Observed {
        Observed {
            has_finalizer: false,
            current: None,
            secret: SecretState::Missing,
            ..ready()
        }
    }

    #[test]
    fn key_changing_and_adopting_steps_need_the_latest_resource() {
        let changing = [
            Step::BeginCreate(CreateReason::NoKey),
            Step::CleanupOrphans,
            Step::Create,
            Step::AdoptFromSecret,
            Step::AdoptExisting,
            Step::RestartWorkloads,
            Step::RevokeRetired(retired("k", true)),
            Step::RevokeCurrent,
        ];
        assert!(changing.iter().all(Step::needs_latest_resource));
        let local = [
            Step::RewriteSecret,
            Step::DeleteStaleSecret,
            Step::AddFinalizer,
            Step::DeleteSecret,
            Step::ReleaseSecret,
            Step::RemoveFinalizer,
            Step::SecretConflict,
            Step::RotationLimited,
            Step::Settled,
        ];
        assert!(!local.iter().any(Step::needs_latest_resource));
    }

    #[test]
    fn ready_key_needs_nothing() {
        assert_eq!(next_step(&ready()), Step::Settled);
    }

    #[test]
    fn new_resource_records_intent_first() {
        assert_eq!(next_step(&fresh()), Step::BeginCreate(CreateReason::NoKey));
    }

    #[test]
    fn fresh_intent_creates_without_listing() {
        let o = Observed {
            has_finalizer: true,
            pending: Some(pending("a1", true)),
            ..fresh()
        };
        assert_eq!(next_step(&o), Step::Create);
    }

    /// Crash (or lost response) after the intent was recorded, before a Secret was written.
    #[test]
    fn stale_intent_without_secret_cleans_orphans_then_creates() {
        let mut o = Observed {
            has_finalizer: true,
            pending: Some(pending("a1", false)),
            ..fresh()
        };
        assert_eq!(next_step(&o), Step::CleanupOrphans);
        o.pending = Some(pending("a1", true));
        assert_eq!(next_step(&o), Step::Create);
    }

    /// Crash after the Secret was written, before the status recorded the key.
    #[test]
    fn secret_of_open_attempt_is_adopted() {
        let o = Observed {
            has_finalizer: true,
            pending: Some(pending("a1", false)),
            secret: owned("fp-new", "a1"),
            ..fresh()
        };
        assert_eq!(next_step(&o), Step::AdoptFromSecret);
    }

    /// Crash during a replacement after the new Secret was written.
    #[test]
    fn replacement_secret_of_open_attempt_is_adopted() {
        let o = Observed {
            pending: Some(pending("a2", false)),
            secret: owned("fp2", "a2"),
            ..ready()
        };
        assert_eq!(next_step(&o), Step::AdoptFromSecret);
    }

    /// Crash during a replacement before the new Secret was written: the old Secret stays.
    #[test]
    fn replacement_with_old_secret_cleans_orphans() {
        let o = Observed {
            pending: Some(pending("a2", false)),
            ..ready()
        };
        assert_eq!(next_step(&o), Step::CleanupOrphans);
    }

    #[test]
    fn damaged_secret_of_open_attempt_is_not_adopted() {
        let o = Observed {
            pending: Some(pending("a2", false)),
            secret: SecretState::Owned {
                fingerprint: None,
                attempt: Some("a2".into()),
                layout_matches: true,
            },
            ..ready()
        };
        assert_eq!(next_step(&o), Step::CleanupOrphans);
    }

    #[test]
    fn spec_changes_replace_the_key() {
        for change in [
            |d: &mut Desired| d.roles = vec!["tenant-admin".into(), "tenant-app-read".into()],
            |d: &mut Desired| d.tenant_id = "t2".into(),
            |d: &mut Desired| d.account = account("other"),
        ] {
            let mut o = ready();
            change(&mut o.desired);
            assert_eq!(next_step(&o), Step::BeginCreate(CreateReason::SpecChanged));
        }
    }

    #[test]
    fn endpoint_change_replaces_the_key() {
        for change in [
            |e: &mut Endpoint| e.base_url = "https://sandbox-api.imbursepayments.com".into(),
            |e: &mut Endpoint| e.api_generation = ApiGeneration::Current,
            |e: &mut Endpoint| e.account_id = Some("acc-2".into()),
        ] {
            let mut o = ready();
            change(o.desired.endpoint.as_mut().unwrap());
            assert_eq!(
                next_step(&o),
                Step::BeginCreate(CreateReason::EndpointChanged)
            );
        }
    }

    /// Keys recorded before endpoints were have none: an upgrade must not replace them, and
    /// while deleting no endpoint is resolved.
    #[test]
    fn unknown_endpoints_are_no_change() {
        let mut legacy = ready();
        legacy.current.as_mut().unwrap().endpoint = None;
        assert_eq!(next_step(&legacy), Step::Settled);
        let mut unresolved = ready();
        unresolved.desired.endpoint = None;
        assert_eq!(next_step(&unresolved), Step::Settled);
    }

    /// A replace wiped finalizer and intent: sweep before anything else, then restore.
    #[test]
    fn wiped_metadata_sweeps_then_restores_the_finalizer() {
        let mut o = Observed {
            has_finalizer: false,
            sweep_needed: true,
            ..ready()
        };
        assert_eq!(next_step(&o), Step::CleanupOrphans);
        o.sweep_needed = false;
        assert_eq!(next_step(&o), Step::AddFinalizer);
        let first_create = Observed {
            sweep_needed: true,
            ..fresh()
        };
        assert_eq!(next_step(&first_create), Step::CleanupOrphans);
    }

    #[test]
    fn refused_revocations_are_not_retried() {
        let refused = Retired {
            refused: true,
            ..retired("old", true)
        };
        let o = Observed {
            retired: vec![refused.clone()],
            ..ready()
        };
        assert_eq!(next_step(&o), Step::Settled);
        let deleting = Observed {
            retired: vec![refused, retired("other", false)],
            ..deleting(DeletionPolicy::Delete)
        };
        assert_eq!(
            next_step(&deleting),
            Step::RevokeRetired(retired("other", false))
        );
    }

    #[test]
    fn deleted_secret_replaces_the_key() {
        let o = Observed {
            secret: SecretState::Missing,
            ..ready()
        };
        assert_eq!(
            next_step(&o),
            Step::BeginCreate(CreateReason::SecretMissing)
        );
    }

    #[test]
    fn edited_secret_replaces_the_key() {
        let edited = Observed {
            secret: owned("fp-other", "a1"),
            ..ready()
        };
        assert_eq!(
            next_step(&edited),
            Step::BeginCreate(CreateReason::SecretDamaged)
        );
        let emptied = Observed {
            secret: SecretState::Owned {
                fingerprint: None,
                attempt: Some("a1".into()),
                layout_matches: true,
            },
            ..ready()
        };
        assert_eq!(
            next_step(&emptied),
            Step::BeginCreate(CreateReason::SecretDamaged)
        );
    }

    /// A renamed Secret gets a new key first; the old Secret goes once the new one is good.
    #[test]
    fn secret_rename_replaces_the_key_then_removes_the_old_secret() {
        let renamed = Observed {
            secret: SecretState::Missing,
            stale_secret: true,
            ..ready()
        };
        assert_eq!(
            next_step(&renamed),
            Step::BeginCreate(CreateReason::SecretMissing)
        );
        let switched = Observed {
            stale_secret: true,
            ..ready()
        };
        assert_eq!(next_step(&switched), Step::DeleteStaleSecret);
    }

    #[test]
    fn metadata_drift_rewrites_the_secret() {
        let o = Observed {
            secret: SecretState::Owned {
                fingerprint: Some("fp1".into()),
                attempt: Some("a1".into()),
                layout_matches: false,
            },
            ..ready()
        };
        assert_eq!(next_step(&o), Step::RewriteSecret);
    }

    #[test]
    fn foreign_secret_is_a_conflict() {
        for base in [fresh(), ready()] {
            let o = Observed {
                secret: SecretState::NotOwned,
                ..base
            };
            assert_eq!(next_step(&o), Step::SecretConflict);
        }
    }

    #[test]
    fn missing_finalizer_is_restored() {
        let o = Observed {
            has_finalizer: false,
            ..ready()
        };
        assert_eq!(next_step(&o), Step::AddFinalizer);
    }

    #[test]
    fn due_retired_keys_are_revoked_after_the_secret_is_good() {
        let o = Observed {
            retired: vec![retired("old-a", false), retired("old-b", true)],
            ..ready()
        };
        assert_eq!(next_step(&o), Step::RevokeRetired(retired("old-b", true)));
        let protected = Observed {
            retired: vec![retired("old-a", false)],
            ..ready()
        };
        assert_eq!(next_step(&protected), Step::Settled);
        let broken = Observed {
            retired: vec![retired("old-b", true)],
            secret: SecretState::Missing,
            ..ready()
        };
        assert_eq!(
            next_step(&broken),
            Step::BeginCreate(CreateReason::SecretMissing)
        );
    }

    fn deleting(policy: DeletionPolicy) -> Observed {
        Observed {
            deleting: true,
            deletion_policy: policy,
            ..ready()
        }
    }

    #[test]
    fn delete_policy_revokes_then_deletes_secret_then_releases() {
        let mut o = deleting(DeletionPolicy::Delete);
        assert_eq!(next_step(&o), Step::RevokeCurrent);
        o.current = None;
        assert_eq!(next_step(&o), Step::DeleteSecret);
        o.secret = SecretState::Missing;
        assert_eq!(next_step(&o), Step::RemoveFinalizer);
        o.has_finalizer = false;
        assert_eq!(next_step(&o), Step::Settled);
    }

    #[test]
    fn retain_policy_releases_the_secret_and_keeps_the_key() {
        let mut o = deleting(DeletionPolicy::Retain);
        assert_eq!(next_step(&o), Step::ReleaseSecret);
        o.secret = SecretState::Missing;
        assert_eq!(next_step(&o), Step::RemoveFinalizer);
    }

    #[test]
    fn deletion_never_touches_a_foreign_secret() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            let o = Observed {
                current: None,
                secret: SecretState::NotOwned,
                ..deleting(policy)
            };
            assert_eq!(next_step(&o), Step::RemoveFinalizer);
        }
    }

    #[test]
    fn deletion_cleans_an_unfinished_attempt_under_both_policies() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            let mut o = Observed {
                pending: Some(pending("a2", false)),
                ..deleting(policy)
            };
            assert_eq!(next_step(&o), Step::CleanupOrphans);
            o.pending = Some(pending("a2", true));
            assert_ne!(next_step(&o), Step::CleanupOrphans);
        }
    }

    #[test]
    fn deletion_revokes_retired_keys_regardless_of_grace() {
        let o = Observed {
            retired: vec![retired("old", false)],
            ..deleting(DeletionPolicy::Retain)
        };
        assert_eq!(next_step(&o), Step::RevokeRetired(retired("old", false)));
    }

    #[test]
    fn deletion_without_finalizer_is_settled() {
        let o = Observed {
            has_finalizer: false,
            ..deleting(DeletionPolicy::Delete)
        };
        assert_eq!(next_step(&o), Step::Settled);
    }

    #[test]
    fn deletion_before_any_key_just_releases() {
        let o = Observed {
            current: None,
            secret: SecretState::Missing,
            ..deleting(DeletionPolicy::Delete)
        };
        assert_eq!(next_step(&o), Step::RemoveFinalizer);
    }

    /// Simulates a step's effect on the observed state. After `Create` the reconciler records
    /// the key at once, which is the effect of `AdoptFromSecret`; a crash in between leaves
    /// exactly the state modelled here. A replaced key keeps its grace period when `grace`.
    fn simulate(o: &mut Observed, step: &Step, grace: bool, restart_targets: bool) {
        match step {
            Step::BeginCreate(_) => {
                o.has_finalizer = true;
                o.pending = Some(pending("a9", true));
            }
            // The open attempt is superseded by a new one, recorded clean.
            Step::CleanupOrphans => {
                let p = o.pending.as_mut().unwrap();
                p.attempt.push('+');
                p.clean = true;
            }
            Step::Create => {
                let attempt = o.pending.as_ref().unwrap().attempt.clone();
                o.secret = owned("fp9", &attempt);
            }
            Step::AdoptFromSecret => {
                if let Some(old) = o.current.take() {
                    o.retired.push(Retired {
                        public_key: old.public_key,
                        tenant_id: old.tenant_id,
                        account: old.account,
                        endpoint: old.endpoint,
                        due: !grace,
                        refused: false,
                    });
                    o.restart_pending = restart_targets;
                }
                o.current = Some(CurrentKey {
                    fingerprint: "fp9".into(),
                    public_key: "pk9".into(),
                    ..current()
                });
                o.pending = None;
                o.rotation = None;
            }
            Step::RestartWorkloads => o.restart_pending = false,
            Step::RevokeRetired(r) => o.retired.retain(|x| x != r),
            other => panic!("unexpected step {other:?}"),
        }
    }

    /// Runs the decision from `start` until it settles, losing `clean` (a new process cannot
    /// know whether the attempt reached Imburse) after `crash_after` steps. When it settles
    /// with keys still in their grace period, their time comes and it runs on.
    fn converge(start: &Observed, crash_after: usize, grace: bool, restart: bool) -> Vec<Step> {
        let mut o = start.clone();
        let mut steps = Vec::new();
        loop {
            let step = next_step(&o);
            if step == Step::Settled {
                if o.retired.iter().any(|r| !r.due) {
                    o.retired.iter_mut().for_each(|r| r.due = true);
                    continue;
                }
                break;
            }
            simulate(&mut o, &step, grace, restart);
            steps.push(step);
            if steps.len() == crash_after
                && let Some(p) = o.pending.as_mut()
            {
                p.clean = false;
            }
            assert!(steps.len() < 20, "no convergence from {start:?}");
        }
        assert_eq!(o.current.as_ref().unwrap().fingerprint, "fp9");
        assert!(o.pending.is_none());
        assert!(o.retired.is_empty());
        assert!(o.has_finalizer);
        assert!(o.rotation.is_none());
        assert!(!o.restart_pending);
        steps
    }

    /// Walks the whole create protocol and checks that every prefix (a crash after any step)
    /// still converges to one recorded key.
    #[test]
    fn every_crash_point_of_the_create_protocol_converges() {
        for start in [
            fresh(),
            Observed {
                secret: SecretState::Missing,
                ..ready()
            },
        ] {
            for crash_after in 0..6 {
                converge(&start, crash_after, false, false);
            }
        }
    }

    /// A rotation with a grace period and restart targets: after a crash at any point, one key
    /// is current, the old one is revoked only once its grace period ended (never before the
    /// new key is recorded), and the workloads were restarted for the new key.
    #[test]
    fn every_crash_point_of_a_rotation_converges() {
        for rotation in [
            Rotation::Scheduled,
            Rotation::Requested,
            Rotation::RevokedExternally,
        ] {
            let start = Observed {
                rotation: Some(rotation),
                ..ready()
            };
            for crash_after in 0..7 {
                let steps = converge(&start, crash_after, true, true);
                assert_eq!(
                    steps[0],
                    Step::BeginCreate(CreateReason::Rotation(rotation))
                );
                let recorded = steps
                    .iter()
                    .position(|s| *s == Step::AdoptFromSecret)
                    .unwrap();
                let restarted = steps
                    .iter()
                    .position(|s| *s == Step::RestartWorkloads)
                    .unwrap();
                let revoked = steps
                    .iter()
                    .position(|s| matches!(s, Step::RevokeRetired(_)))
                    .unwrap();
                assert!(recorded < restarted && restarted < revoked, "{steps:?}");
                assert_eq!(
                    steps
                        .iter()
                        .filter(|s| matches!(s, Step::RevokeRetired(_)))
                        .count(),
                    1
                );
            }
        }
    }

    #[test]
    fn rotation_replaces_a_key_that_still_matches() {
        for rotation in [
            Rotation::Scheduled,
            Rotation::Requested,
            Rotation::RevokedExternally,
        ] {
            let o = Observed {
                rotation: Some(rotation),
                ..ready()
            };
            assert_eq!(
                next_step(&o),
                Step::BeginCreate(CreateReason::Rotation(rotation))
            );
        }
    }

    /// An open attempt, a changed spec or a broken Secret come first; the replacement they
    /// start serves the rotation too.
    #[test]
    fn rotation_yields_to_what_replaces_the_key_anyway() {
        let rotating = Observed {
            rotation: Some(Rotation::Scheduled),
            ..ready()
        };
        let open = Observed {
            pending: Some(pending("a2", true)),
            ..rotating.clone()
        };
        assert_eq!(next_step(&open), Step::Create);
        let mut changed = rotating.clone();
        changed.desired.roles = vec!["tenant-app-read".into()];
        assert_eq!(
            next_step(&changed),
            Step::BeginCreate(CreateReason::SpecChanged)
        );
        let missing = Observed {
            secret: SecretState::Missing,
            ..rotating.clone()
        };
        assert_eq!(
            next_step(&missing),
            Step::BeginCreate(CreateReason::SecretMissing)
        );
        let deleting = Observed {
            deleting: true,
            ..rotating
        };
        assert_eq!(next_step(&deleting), Step::RevokeCurrent);
    }

    /// Replacements that leave a key behind stop at the cap of waiting replaced keys; one
    /// that replaces a key Imburse no longer knows does not, and neither does a deletion.
    #[test]
    fn replaced_keys_do_not_pile_up() {
        let full: Vec<Retired> = (0..MAX_PREVIOUS_KEYS)
            .map(|i| retired(&format!("old{i}"), false))
            .collect();
        let mut changed = ready();
        changed.desired.roles = vec!["tenant-app-read".into()];
        for o in [
            Observed {
                rotation: Some(Rotation::Requested),
                ..ready()
            },
            Observed {
                rotation: Some(Rotation::Scheduled),
                ..ready()
            },
            Observed {
                secret: SecretState::Missing,
                ..ready()
            },
            Observed {
                secret: owned("fp-other", "a1"),
                ..ready()
            },
            changed,
        ] {
            let capped = Observed {
                retired: full.clone(),
                ..o.clone()
            };
            assert_eq!(next_step(&capped), Step::RotationLimited, "{o:?}");
            let room = Observed {
                retired: full[1..].to_vec(),
                ..o
            };
            assert!(matches!(next_step(&room), Step::BeginCreate(_)));
        }
        let revoked = Observed {
            rotation: Some(Rotation::RevokedExternally),
            retired: full.clone(),
            ..ready()
        };
        assert_eq!(
            next_step(&revoked),
            Step::BeginCreate(CreateReason::Rotation(Rotation::RevokedExternally))
        );
        let deleting = Observed {
            deleting: true,
            rotation: Some(Rotation::Requested),
            retired: full,
            ..ready()
        };
        assert_eq!(
            next_step(&deleting),
            Step::RevokeRetired(retired("old0", false))
        );
    }

    #[test]
    fn workloads_restart_once_the_key_is_settled() {
        let o = Observed {
            restart_pending: true,
            retired: vec![retired("old", true)],
            ..ready()
        };
        assert_eq!(next_step(&o), Step::RestartWorkloads);
        let broken = Observed {
            secret: SecretState::Missing,
            ..o.clone()
        };
        assert_eq!(
            next_step(&broken),
            Step::BeginCreate(CreateReason::SecretMissing)
        );
        let deleting = Observed {
            deleting: true,
            ..o
        };
        assert_ne!(next_step(&deleting), Step::RestartWorkloads);
    }

    #[test]
    fn adoption_takes_over_a_foreign_secret_only_without_a_key_of_its_own() {
        let adopting = Observed {
            adopt: true,
            secret: SecretState::NotOwned,
            ..fresh()
        };
        assert_eq!(next_step(&adopting), Step::AdoptExisting);
        for o in [
            Observed {
                adopt: false,
                ..adopting.clone()
            },
            Observed {
                adopt: true,
                secret: SecretState::NotOwned,
                ..ready()
            },
        ] {
            assert_eq!(next_step(&o), Step::SecretConflict);
        }
        // An interrupted adoption (or create) is swept, then adopted afresh.
        let interrupted = Observed {
            pending: Some(pending("a1", false)),
            ..adopting.clone()
        };
        assert_eq!(next_step(&interrupted), Step::CleanupOrphans);
        let swept = Observed {
            pending: Some(pending("a1", true)),
            ..adopting.clone()
        };
        assert_eq!(next_step(&swept), Step::AdoptExisting);
        let missing = Observed {
            secret: SecretState::Missing,
            ..adopting
        };
        assert_eq!(next_step(&missing), Step::BeginCreate(CreateReason::NoKey));
    }
}
