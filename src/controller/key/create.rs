//! Creating keys: the steps of the crash-safe create protocol (record the intent, sweep what an
//! interrupted attempt left, create, record the key), the recovery of a key from its Secret,
//! and the clients they use.

use kube::{
    Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;
use tenant_key_api::{
    crd::{AccountRef, DeletionPolicy, Endpoint, PreviousKey, TenantSecurityKey},
    key_secret,
};

use super::{FINALIZER, KIND, Run, human_name, revoke::revoke};
use crate::controller::{
    FIELD_MANAGER,
    account::{self, Purpose},
    decision::{CreateReason, Rotation},
    error::{Error, Result},
    intent::{self, Intent, Recorded},
    secret::{self, KeyMaterial},
    status,
};

impl Run<'_> {
    /// The account's client, connected once per reconcile.
    pub(super) async fn client(&mut self) -> Result<imburse::AccountClient> {
        if let Some(client) = &self.imburse {
            return Ok(client.clone());
        }
        let account = self
            .account
            .as_ref()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        let client = account.connect(self.ctx).await?;
        self.imburse = Some(client.clone());
        Ok(client)
    }

    /// A client for where a recorded key lives: its account (which the namespace may no longer
    /// be allowed to create keys with) at its recorded endpoint, or where the account points
    /// for keys recorded without one. Also tells whether that is elsewhere than the account
    /// points now.
    pub(super) async fn client_for(
        &mut self,
        account_ref: &AccountRef,
        endpoint: Option<&Endpoint>,
    ) -> Result<(imburse::AccountClient, bool)> {
        let resolved;
        let account = match &self.account {
            Some(account) if *account_ref == self.desired.account => account,
            _ => {
                let namespace = self.tsk.namespace().unwrap_or_default();
                resolved =
                    account::resolve(self.ctx, &namespace, account_ref, Purpose::Revoke).await?;
                &resolved
            }
        };
        let now = account.endpoint();
        match endpoint.filter(|at| **at != now) {
            Some(at) => Ok((account.connect_at(self.ctx, at).await?, true)),
            None if self.account.is_some() && *account_ref == self.desired.account => {
                Ok((self.client().await?, false))
            }
            None => Ok((account.connect(self.ctx).await?, false)),
        }
    }

    /// Server-side applies the operator's finalizer (when `keep`), conditional on the latest
    /// known resource version. Fields omitted are released, among them the intent annotation of
    /// older versions where the operator wrote it.
    pub(super) async fn write_metadata(&mut self, keep: bool) -> Result<()> {
        let mut metadata = json!({ "name": self.name });
        if let Some(version) = &self.resource_version {
            metadata["resourceVersion"] = version.clone().into();
        }
        if keep {
            metadata["finalizers"] = json!([FINALIZER]);
        }
        let patch = json!({
            "apiVersion": TenantSecurityKey::api_version(&()),
            "kind": KIND,
            "metadata": metadata,
        });
        self.ctx.metrics.kube_write("tenantsecuritykeys", "apply");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = self
            .keys
            .patch(&self.name, &params, &Patch::Apply(&patch))
            .await?;
        // Written on the latest known version: the API server had nothing newer, so this
        // reconcile's picture is current without a read of its own.
        self.confirmed_fresh |= self.resource_version.is_some();
        self.wrote(&written);
        self.has_finalizer = keep;
        self.guarded = true;
        Ok(())
    }

    /// Records the open intent (or that none is open) in the status, conditional on the latest
    /// known resource version, so that of two processes deciding on the same version only one
    /// goes on. The finalizer comes first: no key may exist that it does not protect. An intent
    /// annotation of an older version is dropped once the status has taken over.
    pub(super) async fn write_intent(&mut self) -> Result<()> {
        if !self.has_finalizer && !self.deleting {
            self.write_metadata(true).await?;
        }
        self.status.pending_create = match &self.intent {
            Some(Recorded::Current(intent)) => Some(Box::new(intent.clone())),
            _ => None,
        };
        let written = status::apply_status(
            self.ctx,
            &self.keys,
            &self.name,
            &self.status,
            self.resource_version.as_deref(),
        )
        .await?;
        self.confirmed_fresh |= self.resource_version.is_some();
        self.wrote(&written);
        self.guarded = true;
        self.drop_intent_annotation().await
    }

    /// Removes the intent annotation of an older version, whoever wrote it, on the latest known
    /// version: the status holds the operator's intent now.
    pub(super) async fn drop_intent_annotation(&mut self) -> Result<()> {
        if !self.intent_annotation {
            return Ok(());
        }
        let patch = json!({ "metadata": {
            "resourceVersion": self.resource_version,
            "annotations": { intent::ANNOTATION: null },
        } });
        self.ctx.metrics.kube_write("tenantsecuritykeys", "patch");
        let written = self
            .keys
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wrote(&written);
        self.intent_annotation = false;
        Ok(())
    }

    /// A new intent for what the spec asks now, with the credentials it will be made with.
    pub(super) async fn new_intent(&mut self) -> Result<Intent> {
        let credentials = self.client().await?.credentials_fingerprint().to_owned();
        let endpoint = self
            .desired
            .endpoint
            .clone()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        let attempt = intent::new_attempt();
        Ok(Intent {
            name: intent::key_name(
                &human_name(self.tsk),
                &self.uid,
                &attempt,
                &self.ctx.settings.cluster_id,
            ),
            attempt,
            tenant_id: self.desired.tenant_id.clone(),
            roles: self.desired.roles.clone(),
            account_ref: self.desired.account.clone(),
            endpoint,
            rotate_request: self.rotate_request(),
            credentials_fingerprint: Some(credentials),
        })
    }

    pub(super) async fn begin_create(&mut self, reason: CreateReason) -> Result<()> {
        // Fail on an unusable account or a Secret the API server would refuse before
        // recording an intent, so that no key is made that could not be delivered.
        self.client().await?;
        self.dry_run_secret().await?;
        self.intent = Some(Recorded::Current(self.new_intent().await?));
        self.write_intent().await?;
        self.clean = true;
        tracing::info!(reason = reason.describe(), "creating key");
        self.create_reason = Some(reason.describe());
        // A rotation is announced as it starts, since the old key then has a deadline; any
        // other reason is told by the KeyCreated Event (one Event per key, not two).
        let (type_, event) = match reason {
            CreateReason::Rotation(Rotation::RevokedExternally) => {
                (EventType::Warning, "KeyRevokedExternally")
            }
            CreateReason::Rotation(_) => (EventType::Normal, "RotationStarted"),
            _ => return Ok(()),
        };
        self.event(
            type_,
            event,
            "CreateKey",
            format!("creating a key: {}", reason.describe()),
        )
        .await;
        Ok(())
    }

    /// Supersedes an interrupted attempt (a conditional write, so that another operator
    /// process still working on it can no longer record its key), then revokes the keys made
    /// for this resource that the status does not hold.
    pub(super) async fn cleanup_orphans(&mut self) -> Result<()> {
        let legacy_name = match &self.intent {
            Some(Recorded::Legacy { name, .. }) => Some(name.clone()),
            _ => None,
        };
        // Orphans are where the attempt went: its account and endpoint, which the spec may no
        // longer name. Without that record: where the spec points (an attempt was made for it),
        // or while deleting, where the status's keys live.
        let (account_ref, endpoint) = match (&self.intent, &self.status.account_ref) {
            (Some(Recorded::Current(i)), _) => (i.account_ref.clone(), Some(i.endpoint.clone())),
            (_, Some(recorded)) if self.deleting => {
                (recorded.clone(), self.status.endpoint.clone())
            }
            _ => (self.desired.account.clone(), None),
        };
        let credentials = match &self.intent {
            Some(Recorded::Current(i)) => i.credentials_fingerprint.clone(),
            _ if self.deleting => self.status.credentials_fingerprint.clone(),
            _ => None,
        };
        let (client, _) = self.client_for(&account_ref, endpoint.as_ref()).await?;
        if !self.deleting {
            if self.intent.is_some() {
                self.dry_run_secret().await?;
                self.intent = Some(Recorded::Current(self.new_intent().await?));
                self.write_intent().await?;
            } else {
                self.write_metadata(true).await?;
            }
        }
        if !client.supports_listing() {
            return Err(Error::ListingUnsupported(human_name(self.tsk)));
        }
        let tenant_id = self.desired.tenant_id.clone();
        let listed = match client.list_keys(&tenant_id).await {
            Ok(keys) => keys,
            Err(imburse::Error::TenantNotFound(_)) => {
                // Only the credentials the attempt used can say its tenant is gone: another
                // account does not know the tenant either.
                if !account::same_credentials(credentials.as_deref(), &client) {
                    return Err(self.not_proven_revoked(
                        "of the interrupted creation",
                        "its account's credentials changed, and the new ones do not know its tenant"
                            .into(),
                    ));
                }
                self.tenant_gone(&tenant_id, "no key of an interrupted creation can remain")
                    .await;
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        // A key in the Secret that the status does not hold is one whose recording was
        // interrupted, or the late write of another process whose attempt was superseded
        // meanwhile. Unless the resource goes and retains its Secret, that Secret is about to
        // be overwritten or deleted, and the key with it: it is revoked here, or nobody would.
        let secret_kept = self.deleting
            && self.tsk.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Retain;
        let in_secret = self
            .secret
            .as_ref()
            .filter(|_| secret_kept)
            .filter(|s| key_secret::is_owned_by(s, self.tsk))
            .and_then(|s| secret::material(self.tsk, s))
            .map(|m| m.public_key);
        let known: Vec<&str> = self
            .status
            .public_key
            .iter()
            .chain(self.status.previous_keys.iter().map(|p| &p.public_key))
            .chain(in_secret.iter())
            .map(String::as_str)
            .collect();
        for key in listed {
            if known.contains(&key.public_key.as_str()) {
                continue;
            }
            let name = key.name.as_deref().unwrap_or_default();
            if intent::made_for(name, &self.uid) {
                revoke(&client, &tenant_id, &key.public_key).await?;
                self.ctx.metrics.keys_revoked.inc();
                tracing::info!(public_key = %key.public_key, "deleted orphaned key");
                self.event(
                    EventType::Normal,
                    "OrphanKeyDeleted",
                    "CleanupOrphans",
                    format!(
                        "deleted key {} left by an interrupted creation",
                        key.public_key
                    ),
                )
                .await;
            } else if legacy_name.as_deref() == Some(name) {
                // An earlier version named keys without marking them, so this may as well be
                // another resource's or a hand-made key: report it, never revoke it.
                self.event(
                    EventType::Warning,
                    "PossibleOrphanKey",
                    "CleanupOrphans",
                    format!(
                        "key {} named {name:?} may be left by an interrupted creation of an earlier operator version; it was not revoked because its name does not prove it belongs to this resource",
                        key.public_key
                    ),
                )
                .await;
            }
        }
        self.clean = true;
        self.sweep_needed = false;
        Ok(())
    }

    pub(super) async fn create(&mut self) -> Result<()> {
        let Some(Recorded::Current(intent)) = self.intent.clone() else {
            return Ok(());
        };
        let client = self.client().await?;
        let request = imburse::NewKey {
            name: Some(intent.name.clone()),
            roles: intent.roles.clone(),
        };
        let created = match client.create_key(&intent.tenant_id, &request).await {
            Ok(created) => created,
            Err(e) => {
                let e = Error::from(e);
                if !e.is_permanent() {
                    // The key may exist even though the call failed; only a listing can tell.
                    self.clean = false;
                    return Err(e);
                }
                // Imburse refused the request itself: no key exists, so the intent is closed
                // and nothing has to be listed later (also not when the resource is deleted).
                // Until the spec changes or the backoff ends, no new attempt is made: each
                // would write an intent, which would start the next.
                self.retry_in = Some(self.ctx.retries.refused(self.tsk, &e));
                self.intent = None;
                self.write_intent().await?;
                return Err(e);
            }
        };
        self.ctx.metrics.keys_created.inc();
        let material = KeyMaterial {
            public_key: created.public_key,
            private_key: created.private_key,
        };
        tracing::info!(public_key = %material.public_key, "created key");
        if let Err(e) = self.write_secret(&material, &intent.attempt).await {
            // The private key dies with this reconcile: revoke the key at once rather than
            // leave it to a later listing.
            self.clean = revoke(&client, &intent.tenant_id, &material.public_key)
                .await
                .is_ok();
            if self.clean && e.is_permanent() {
                self.intent = None;
                self.write_intent().await?;
            }
            return Err(e);
        }
        self.event(
            EventType::Normal,
            "KeyCreated",
            "CreateKey",
            format!(
                "created key {}{} and wrote Secret {}",
                material.public_key,
                self.create_reason
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default(),
                self.desired.secret_name
            ),
        )
        .await;
        let replaced = self.record(&material, &intent);
        self.rotated(replaced).await;
        Ok(())
    }

    /// Records the key in the Secret of the open attempt, once Imburse confirms it. The Secret
    /// is only a claim (anyone who can edit the namespace can write one that names the attempt
    /// and another key's public key): the key counts as this attempt's only when the listing
    /// where the attempt went shows that public key under the attempt's own marked name. The
    /// oldest intents named keys without a marker; their Secret must also hold a pair that
    /// authenticates.
    pub(super) async fn adopt_from_secret(&mut self) -> Result<()> {
        let Some(material) = self
            .secret
            .as_ref()
            .and_then(|s| secret::material(self.tsk, s))
        else {
            return Ok(());
        };
        let (intent, legacy) = match self.intent.clone() {
            Some(Recorded::Current(intent)) => (intent, false),
            // An earlier version recorded no request: what the spec asks is the best guess.
            Some(Recorded::Legacy { attempt, name }) => {
                let Some(endpoint) = self.desired.endpoint.clone() else {
                    return Ok(());
                };
                let intent = Intent {
                    attempt,
                    name,
                    tenant_id: self.desired.tenant_id.clone(),
                    roles: self.desired.roles.clone(),
                    account_ref: self.desired.account.clone(),
                    endpoint,
                    rotate_request: None,
                    credentials_fingerprint: None,
                };
                (intent, true)
            }
            None => return Ok(()),
        };
        let (client, _) = self
            .client_for(&intent.account_ref, Some(&intent.endpoint))
            .await?;
        if !client.supports_listing() {
            return Err(Error::ListingUnsupported(human_name(self.tsk)));
        }
        let listed = client.list_keys(&intent.tenant_id).await?;
        let named = |name: &str| {
            if legacy {
                name == intent.name
            } else {
                intent::names_attempt(name, &self.uid, &intent.attempt)
            }
        };
        let mut proven = listed
            .iter()
            .any(|k| k.public_key == material.public_key && k.name.as_deref().is_some_and(named));
        if proven && legacy {
            // A refusal refutes the claim; a failure of the moment proves nothing either way.
            proven = match self.authenticate(&material, &intent.endpoint).await {
                Ok(()) => true,
                Err(e) if e.is_permanent() => false,
                Err(e) => return Err(e),
            };
        }
        if !proven {
            tracing::warn!(
                public_key = %material.public_key,
                attempt = %intent.attempt,
                "the Secret claims a key Imburse does not list for this attempt; not recorded"
            );
            self.event(
                EventType::Warning,
                "SecretClaimRefused",
                "RecoverKey",
                format!(
                    "Secret {} claims key {} of attempt {}, which Imburse does not list for this resource; it is not recorded",
                    self.desired.secret_name, material.public_key, intent.attempt
                ),
            )
            .await;
            self.secret_refuted = true;
            return Ok(());
        }
        tracing::info!(public_key = %material.public_key, "recovered key from its Secret");
        self.guarded = true;
        let replaced = self.record(&material, &intent);
        self.rotated(replaced).await;
        Ok(())
    }

    /// Records a key as current, as the intent requested it. The key it replaces is queued
    /// for revocation where it lives, after the grace period (at once for a key Imburse was
    /// found no longer to know). Returns the replaced key.
    pub(super) fn record(&mut self, material: &KeyMaterial, intent: &Intent) -> Option<String> {
        let gone = self.ctx.revoked_remotely(&self.uid);
        let grace = self.tsk.spec.grace_period();
        let s = &mut self.status;
        let mut replaced = None;
        if let (Some(old), Some(tenant_id), Some(account_ref)) = (
            s.public_key.take(),
            s.tenant_id.take(),
            s.account_ref.take(),
        ) && old != material.public_key
        {
            // A key Imburse said was gone is revoked again at once all the same: what a
            // verification saw may not have been the whole truth.
            let gone = gone.as_deref() == Some(old.as_str());
            s.previous_keys.push(PreviousKey {
                public_key: old.clone(),
                tenant_id,
                account_ref,
                endpoint: s.endpoint.take(),
                revoke_after: (!grace.is_zero() && !gone).then(|| status::after(grace)),
                credentials_fingerprint: s.credentials_fingerprint.take(),
                revocation_error: None,
            });
            replaced = Some(old);
        }
        if intent.rotate_request.is_some() {
            s.last_handled_rotate_request = intent.rotate_request.clone();
        }
        s.public_key = Some(material.public_key.clone());
        s.key_name = Some(intent.name.clone());
        s.secret_name = Some(self.desired.secret_name.clone());
        s.created_at = Some(status::now());
        s.fingerprint = Some(material.fingerprint());
        s.tenant_id = Some(intent.tenant_id.clone());
        s.account_ref = Some(intent.account_ref.clone());
        s.endpoint = Some(intent.endpoint.clone());
        s.roles = intent.roles.clone();
        s.attempt = Some(intent.attempt.clone());
        s.credentials_fingerprint = intent.credentials_fingerprint.clone();
        s.pending_create = None;
        self.intent = None;
        self.ctx.forget_revoked_remotely(&self.uid);
        replaced
    }

    /// Reports that the key `replaced` (if any) gave way to the current one.
    pub(super) async fn rotated(&self, replaced: Option<String>) {
        let Some(old) = replaced else {
            return;
        };
        let when = self
            .status
            .previous_keys
            .iter()
            .find(|p| p.public_key == old)
            .and_then(|p| p.revoke_after.as_ref())
            .map_or_else(|| "now".to_owned(), |t| format!("after {}", t.0));
        let note = format!(
            "key {} replaced key {old}, which is revoked {when}",
            self.status.public_key.as_deref().unwrap_or_default()
        );
        self.event(EventType::Normal, "KeyRotated", "RotateKey", note)
            .await;
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        status::publish(self.ctx, self.tsk, type_, reason, action, note).await;
    }
}
