//! The TenantSecurityKey reconciler, read as a pipeline:
//! - [`observe`]: what the resource, its Secret and its intent say, and whether the cached
//!   resource is the API server's latest version;
//! - [`decision::next_step`] picks one step, which one executor carries out: [`create`] (the
//!   create protocol), [`deliver`] (the Secret), [`revoke`] (revocation and letting go),
//!   [`adopt`] and [`workloads`];
//! - [`report`]: status, Events and when to look again.

mod adopt;
mod create;
mod deliver;
mod observe;
mod report;
mod revoke;
mod workloads;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, runtime::controller::Action};
use tenant_key_api::{
    crd::{TenantSecurityKey, TenantSecurityKeyStatus},
    key_secret,
};

use super::{
    Context, KeyLimits,
    account::ResolvedAccount,
    decision::{self, Desired, Step},
    echo::Echo,
    error::{Error, Result},
    intent::Recorded,
    secret,
};

/// Finalizer that keeps a resource until its key is revoked (or released with `Retain`).
pub const FINALIZER: &str = "imbursepayments.com/revoke-key";

const KIND: &str = "TenantSecurityKey";
/// Upper bound of steps in one reconcile; a healthy create or replacement needs about five.
const MAX_STEPS: usize = 16;

/// The defaulted spec. Validation is separate so that deletion works even for invalid specs.
pub fn desired(tsk: &TenantSecurityKey) -> Desired {
    let mut roles = tsk.spec.roles.clone();
    roles.sort();
    roles.dedup();
    Desired {
        tenant_id: tsk.spec.tenant_id.clone(),
        account: tsk.spec.account_ref.clone(),
        roles,
        secret_name: key_secret::secret_name(tsk),
        endpoint: None,
    }
}

/// The human part of the key's name at Imburse (default `<namespace>/<name>`).
fn human_name(tsk: &TenantSecurityKey) -> String {
    tsk.spec
        .name
        .clone()
        .unwrap_or_else(|| format!("{}/{}", tsk.namespace().unwrap_or_default(), tsk.name_any()))
}

/// Checks what the CRD schema cannot (or what an older CRD may not have enforced), and the
/// operator's floors and caps on what a key may ask for.
pub fn validate(tsk: &TenantSecurityKey, limits: &KeyLimits) -> std::result::Result<(), String> {
    let spec = &tsk.spec;
    if spec.roles.is_empty() || spec.roles.iter().any(|r| r.trim().is_empty()) {
        return Err("roles must name at least one role and no empty role".into());
    }
    if !is_uuid(&spec.tenant_id) {
        return Err("tenantId must be a UUID".into());
    }
    if spec.account_ref.name.is_empty() {
        return Err("accountRef.name must not be empty".into());
    }
    if spec.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err("name must not be empty when set".into());
    }
    let secret_name = key_secret::secret_name(tsk);
    let dns_label = secret_name.len() <= 253
        && !secret_name.is_empty()
        && secret_name.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        });
    if !dns_label {
        return Err(format!(
            "secret.name {secret_name:?} is not a valid Secret name"
        ));
    }
    let rotation = spec.rotation.clone().unwrap_or_default();
    for (field, value) in [
        ("interval", &rotation.interval),
        ("gracePeriod", &rotation.grace_period),
    ] {
        if let Some(value) = value
            && tenant_key_api::crd::parse_duration(value).is_none()
        {
            return Err(format!(
                "rotation.{field} {value:?} is not a duration such as 720h or 5m"
            ));
        }
    }
    if let Some(interval) = spec.rotation_interval()
        && interval < limits.min_rotation_interval
    {
        return Err(format!(
            "rotation.interval must be at least {} (the operator's --min-rotation-interval)",
            describe_duration(limits.min_rotation_interval)
        ));
    }
    if spec.grace_period() > limits.max_grace_period {
        return Err(format!(
            "rotation.gracePeriod must be at most {} (the operator's --max-grace-period)",
            describe_duration(limits.max_grace_period)
        ));
    }
    if let Some(interval) = spec.rotation_interval()
        && interval <= spec.grace_period()
    {
        return Err(
            "rotation.interval must be longer than rotation.gracePeriod, or replaced keys would pile up"
                .into(),
        );
    }
    secret::validate(tsk)
}

/// A duration as the flags take it, in whole seconds: `3600s`.
fn describe_duration(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// How a run of steps ended without a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Nothing left to do: the key is ready.
    Settled,
    /// The finalizer is gone: the resource may disappear.
    Released,
    /// Nothing was done: the resource is in its backoff after a transient failure for this
    /// long, and the status still tells why.
    Waiting(Duration),
    /// The cached resource was older than the API server's: decide again on the new one.
    Stale,
    /// The step limit was reached with work left; what was done is recorded, and the rest
    /// follows shortly.
    OutOfSteps,
}

/// Entry point for the controller.
pub async fn reconcile(tsk: Arc<TenantSecurityKey>, ctx: Arc<Context>) -> Result<Action> {
    let _in_flight = ctx.liveness.start(KIND);
    let started = Instant::now();
    let namespace = tsk.namespace().unwrap_or_default();
    if let (Some(uid), Some(version)) = (tsk.uid(), tsk.resource_version()) {
        let action =
            match ctx
                .key_writes
                .echo((&namespace, &tsk.name_any()), (&uid, &version), started)
            {
                Echo::No => None,
                Echo::Behind => {
                    tracing::debug!("the cache is behind this process's own write; waiting for it");
                    Some(Action::await_change())
                }
                Echo::Settled(action) => {
                    tracing::debug!("the echo of this process's settling write; nothing changed");
                    Some(action)
                }
            };
        if let Some(action) = action {
            ctx.metrics.observe_reconcile(KIND, "ok", started.elapsed());
            return Ok(action);
        }
    }
    let mut run = Run::new(&tsk, &ctx);
    let result = run.drive().await;
    let label = result.as_ref().map_or_else(|e| e.metric_label(), |_| "ok");
    let action = run.finish(result).await;
    ctx.metrics
        .observe_reconcile(KIND, label, started.elapsed());
    action
}

/// One reconcile of one resource: its working picture of the world.
struct Run<'a> {
    ctx: &'a Context,
    tsk: &'a TenantSecurityKey,
    name: String,
    uid: String,
    keys: Api<TenantSecurityKey>,
    secrets: Api<Secret>,
    desired: Desired,
    deleting: bool,
    status: TenantSecurityKeyStatus,
    has_finalizer: bool,
    /// The open creation intent, if the status has not closed it.
    intent: Option<Recorded>,
    /// The intent came from the annotation of an older version, not from the status.
    intent_from_annotation: bool,
    /// The resource carries the intent annotation of an older version (or a forged one).
    intent_annotation: bool,
    /// The Secret claims to hold the open attempt's key, and Imburse's listing refuted it.
    secret_refuted: bool,
    /// No key of the open attempt can exist that the status does not know.
    clean: bool,
    /// Keys of an attempt nobody remembers may exist (see `Observed::sweep_needed`).
    sweep_needed: bool,
    secret: Option<Secret>,
    /// An owned Secret under the previously recorded name, when the spec renamed it.
    stale_secret: Option<Secret>,
    account: Option<ResolvedAccount>,
    /// The account's client, connected once per reconcile.
    imburse: Option<imburse::AccountClient>,
    /// Latest known resource version of the resource, the precondition of key-changing writes.
    resource_version: Option<String>,
    /// A key-changing step ran: the status write must be conditional on `resource_version`.
    guarded: bool,
    /// When to look again after a permanent failure that may pass (a refused create).
    retry_in: Option<Duration>,
    /// The rollout restart failed for a reason that may pass: it is tried again after this
    /// long, and not again in this reconcile, whose other steps go on.
    restart_retry: Option<Duration>,
    /// The resource was confirmed current against the API server during this reconcile.
    confirmed_fresh: bool,
    /// Why this reconcile began a create, for the KeyCreated Event.
    create_reason: Option<&'static str>,
    /// Someone else changed the Secret while this reconcile wrote it.
    secret_raced: bool,
}

impl Run<'_> {
    /// Takes the version a write of the resource produced as the latest known, and remembers
    /// it as this process's own, so that its echo costs nothing.
    fn wrote(&mut self, written: &TenantSecurityKey) {
        self.resource_version = written.resource_version();
        if let Some(version) = &self.resource_version {
            self.ctx.key_writes.wrote(
                (&self.tsk.namespace().unwrap_or_default(), &self.name),
                (&self.uid, version),
                Instant::now(),
            );
        }
    }
}

impl Run<'_> {
    async fn drive(&mut self) -> Result<Stop> {
        self.prepare().await?;
        for _ in 0..MAX_STEPS {
            let step = decision::next_step(&self.observed());
            tracing::debug!(?step, "next step");
            if step.needs_latest_resource()
                && let Some(left) = self.ctx.retries.backing_off(self.tsk)
            {
                return Ok(Stop::Waiting(left));
            }
            // A create begins with a write conditional on the cached version: a stale cache
            // fails it before anything happens at Imburse, so it needs no read of its own.
            let checked_by_its_write = matches!(step, Step::BeginCreate(_));
            if step.needs_latest_resource() && !self.confirmed_fresh && !checked_by_its_write {
                if !self.is_fresh().await? {
                    return Ok(Stop::Stale);
                }
                self.confirmed_fresh = true;
            }
            match step {
                Step::Settled => return Ok(Stop::Settled),
                Step::BeginCreate(reason) => {
                    if let Some((refused, left)) = self.ctx.retries.refusal(self.tsk) {
                        self.retry_in = Some(left);
                        return Err(refused);
                    }
                    self.begin_create(reason).await?;
                }
                Step::CleanupOrphans => self.cleanup_orphans().await?,
                Step::Create => self.create().await?,
                Step::AdoptFromSecret => self.adopt_from_secret().await?,
                Step::AdoptExisting => self.adopt_existing().await?,
                Step::RestartWorkloads => self.restart_workloads().await?,
                Step::RewriteSecret => self.rewrite_secret().await?,
                Step::AddFinalizer => self.write_metadata(true).await?,
                Step::RevokeRetired(retired) => self.revoke_retired(&retired).await?,
                Step::RevokeCurrent => self.revoke_current().await?,
                Step::DeleteSecret => {
                    if let Some(existing) = self.secret.take() {
                        self.discard_secret(&existing).await?;
                    }
                }
                Step::DeleteStaleSecret => {
                    if let Some(existing) = self.stale_secret.take() {
                        self.discard_secret(&existing).await?;
                    }
                }
                Step::ReleaseSecret => self.release_secret().await?,
                Step::RemoveFinalizer => {
                    self.remove_finalizer().await?;
                    return Ok(Stop::Released);
                }
                Step::RotationLimited => {
                    // Looked at again when the next replaced key is due for revocation.
                    self.retry_in = self.next_revocation();
                    return Err(Error::RotationLimited {
                        pending: self.status.previous_keys.len(),
                        cap: decision::MAX_PREVIOUS_KEYS,
                    });
                }
                Step::SecretConflict => {
                    return Err(Error::SecretConflict(self.desired.secret_name.clone()));
                }
            }
        }
        tracing::info!("reconcile did not settle within {MAX_STEPS} steps; going on shortly");
        Ok(Stop::OutOfSteps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenant_key_api::crd::{AccountKind, AccountRef, SecretTemplate, TenantSecurityKeySpec};

    fn tsk(spec: impl FnOnce(&mut TenantSecurityKeySpec)) -> TenantSecurityKey {
        let mut s = TenantSecurityKeySpec {
            account_ref: AccountRef {
                kind: AccountKind::ImburseAccount,
                name: "acc".into(),
            },
            tenant_id: "88fdb12a-14dc-419c-b74c-422e2c25cfe7".into(),
            roles: vec![
                "tenant-admin".into(),
                "tenant-app-read".into(),
                "tenant-admin".into(),
            ],
            name: None,
            secret: None,
            deletion_policy: None,
            rotation: None,
            rollout_restart_targets: Vec::new(),
            adopt: None,
        };
        spec(&mut s);
        let mut t = TenantSecurityKey::new("pay", s);
        t.metadata.namespace = Some("team-a".into());
        t
    }

    #[test]
    fn rotation_has_a_floor_and_grace_periods_a_cap() {
        let limits = KeyLimits::default();
        let rotation = |interval: &str, grace: &str| {
            tsk(|s| {
                s.rotation = Some(tenant_key_api::crd::RotationPolicy {
                    interval: Some(interval.into()),
                    grace_period: Some(grace.into()),
                })
            })
        };
        for (interval, grace) in [("1ms", "0s"), ("59m", "0s"), ("720h", "169h")] {
            let refused = validate(&rotation(interval, grace), &limits);
            assert!(refused.is_err(), "{interval} {grace}");
        }
        assert!(validate(&rotation("1h", "5m"), &limits).is_ok());
        let lowered = KeyLimits {
            min_rotation_interval: Duration::from_secs(1),
            ..limits
        };
        assert!(validate(&rotation("16s", "6s"), &lowered).is_ok());
    }

    #[test]
    fn defaults_are_applied_in_code() {
        let t = tsk(|_| {});
        let d = desired(&t);
        assert_eq!(human_name(&t), "team-a/pay");
        assert_eq!(d.secret_name, "pay");
        assert_eq!(d.roles, ["tenant-admin", "tenant-app-read"]);
    }

    #[test]
    fn invalid_specs_are_explained() {
        let cases: [fn(&mut TenantSecurityKeySpec); 8] = [
            |s| s.roles.clear(),
            |s| s.roles = vec![" ".into()],
            |s| s.tenant_id = "not-a-uuid".into(),
            |s| s.name = Some(String::new()),
            |s| {
                s.secret = Some(Box::new(SecretTemplate {
                    name: Some("Bad_Name".into()),
                    ..Default::default()
                }))
            },
            |s| {
                s.secret = Some(Box::new(SecretTemplate {
                    type_: Some("kubernetes.io/service-account-token".into()),
                    ..Default::default()
                }))
            },
            |s| {
                s.secret = Some(Box::new(SecretTemplate {
                    type_: Some("bootstrap.kubernetes.io/token".into()),
                    ..Default::default()
                }))
            },
            |s| {
                s.secret = Some(Box::new(SecretTemplate {
                    type_: Some("no-domain".into()),
                    ..Default::default()
                }))
            },
        ];
        for case in cases {
            assert!(validate(&tsk(case), &KeyLimits::default()).is_err());
        }
        assert!(validate(&tsk(|_| {}), &KeyLimits::default()).is_ok());
        // An empty type (an unset Helm value stored by an older schema) means the default.
        let empty_type = tsk(|s| {
            s.secret = Some(Box::new(SecretTemplate {
                type_: Some(String::new()),
                ..Default::default()
            }))
        });
        assert!(validate(&empty_type, &KeyLimits::default()).is_ok());
        let custom = tsk(|s| {
            s.secret = Some(Box::new(SecretTemplate {
                type_: Some("example.com/imburse-key".into()),
                ..Default::default()
            }))
        });
        assert!(validate(&custom, &KeyLimits::default()).is_ok());
    }
}
