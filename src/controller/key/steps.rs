//! One executor per [`Step`](crate::controller::decision::Step). Each changes the world by one
//! step and updates the run's picture of it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::EventType,
};
use serde_json::json;

use super::{FINALIZER, KIND, Run, human_name};
use crate::controller::{
    FIELD_MANAGER,
    account::{self, Purpose},
    decision::{CreateReason, Retired, Rotation},
    error::{Error, Result},
    finalizer,
    intent::{self, Intent, Recorded},
    secret::{self, KeyMaterial},
    status,
};
use crate::crd::{AccountRef, DeletionPolicy, Endpoint, PreviousKey, TenantSecurityKey};

/// Reads and writes of the Secret made to deliver a created key before giving the key up.
const SECRET_WRITE_TRIES: u32 = 9;

/// What became of a revocation.
enum Revoked {
    /// Revoked now, or already gone.
    Done,
    /// The tenant no longer exists, and its keys with it.
    TenantGone,
    /// Imburse refused for good where the key lives (the message says why).
    Refused(String),
}

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
    async fn client_for(
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
        self.resource_version = written.resource_version();
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
            Some(Recorded::Current(intent)) => Some(intent.clone()),
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
        self.resource_version = written.resource_version();
        self.guarded = true;
        self.intent_from_annotation = false;
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
        self.resource_version = written.resource_version();
        self.intent_annotation = false;
        Ok(())
    }

    /// Removes the finalizer (see [`finalizer::remove`]), then lets the account go if no other
    /// key uses it.
    pub(super) async fn remove_finalizer(&mut self) -> Result<()> {
        finalizer::remove(&self.keys, &self.name, FINALIZER, &self.ctx.metrics).await?;
        self.has_finalizer = false;
        let namespace = self.tsk.namespace().unwrap_or_default();
        let accounts = self
            .status
            .account_ref
            .iter()
            .chain(self.status.previous_keys.iter().map(|p| &p.account_ref))
            .chain(std::iter::once(&self.desired.account));
        for account_ref in accounts {
            account::release_if_unused(self.ctx, &namespace, account_ref, Some(&self.uid)).await?;
        }
        Ok(())
    }

    /// A new intent for what the spec asks now, with the credentials it will be made with.
    async fn new_intent(&mut self) -> Result<Intent> {
        let credentials = self.client().await?.credentials_fingerprint().to_owned();
        let endpoint = self
            .desired
            .endpoint
            .clone()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        let attempt = intent::new_attempt();
        Ok(Intent {
            name: intent::key_name(&human_name(self.tsk), &self.uid, &attempt),
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
        let (type_, event) = match reason {
            CreateReason::Rotation(Rotation::RevokedExternally) => {
                (EventType::Warning, "KeyRevokedExternally")
            }
            CreateReason::Rotation(_) => (EventType::Normal, "RotationStarted"),
            _ => (EventType::Normal, "CreatingKey"),
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
    /// for this resource that neither the status nor the Secret holds.
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
                if !same_credentials(credentials.as_deref(), &client) {
                    return Err(Error::KeyNotRevoked {
                        public_key: "of the interrupted creation".into(),
                        why: "its account's credentials changed, and the new ones do not know its tenant".into(),
                    });
                }
                self.tenant_gone(&tenant_id, "no key of an interrupted creation can remain")
                    .await;
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        // A deletion that interrupted the recording of a key leaves it in the Secret only; the
        // Secret goes with the resource, and the key with it unless it is revoked here. A
        // retained Secret keeps its key.
        let secret_goes = self.deleting
            && self.tsk.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete;
        let in_secret = self
            .secret
            .as_ref()
            .filter(|_| !secret_goes)
            .filter(|s| secret::is_owned_by(s, self.tsk))
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
                "created key {} and wrote Secret {}",
                material.public_key, self.desired.secret_name
            ),
        )
        .await;
        let replaced = self.record(&material, &intent);
        self.rotated(replaced).await;
        Ok(())
    }

    /// Checks with a server-side dry run that the API server would take the Secret.
    async fn dry_run_secret(&mut self) -> Result<()> {
        let Some(ctx) = self.key_context() else {
            return Ok(());
        };
        let owned = self
            .secret
            .as_ref()
            .filter(|s| secret::is_owned_by(s, self.tsk));
        let placeholder = secret::build(self.tsk, &secret::placeholder(), &ctx, "dry-run", owned);
        if let Some(found) = owned {
            self.keeps_foreign_entries(found, &placeholder)?;
        }
        // A type change replaces the Secret, which a dry run of an apply cannot express.
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.type_ != placeholder.type_)
        {
            return Ok(());
        }
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        self.ctx.metrics.kube_write("secrets", "dry-run");
        match self
            .secrets
            .patch(
                &self.desired.secret_name,
                &params,
                &Patch::Apply(&placeholder),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.secret_error(e)),
        }
    }

    /// A write of `desired` over the owned Secret `existing` must leave what others keep there
    /// as it is: no entry of theirs that the spec now names is overwritten, and a Secret holding
    /// any is never replaced to change its type (which would delete them).
    fn keeps_foreign_entries(&self, existing: &Secret, desired: &Secret) -> Result<()> {
        let name = &self.desired.secret_name;
        if let Some(entry) = secret::overwritten_entry(self.tsk, existing, desired) {
            return Err(Error::InvalidSpec(format!(
                "secret.keys names entry {entry:?}, which Secret {name:?} holds for someone else"
            )));
        }
        if existing.type_ != desired.type_
            && !secret::foreign_entries(self.tsk, existing).is_empty()
        {
            return Err(Error::InvalidSpec(format!(
                "secret.type cannot change: Secret {name:?} holds entries the operator did not write, which replacing it would delete"
            )));
        }
        Ok(())
    }

    /// A refused Secret write as the error users see: permanent when the API server refused
    /// the object itself (validation, admission, quota), transient otherwise.
    pub(super) fn secret_error(&self, error: kube::Error) -> Error {
        match error {
            kube::Error::Api(e) if matches!(e.code, 400 | 403 | 422) => Error::SecretRejected {
                name: self.desired.secret_name.clone(),
                message: e.message,
            },
            other => other.into(),
        }
    }

    /// Writes the Secret, retrying briefly: the key in hand exists nowhere else. Between tries
    /// the Secret is read again; without a successful read nothing is written.
    async fn write_secret(&mut self, material: &KeyMaterial, attempt: &str) -> Result<()> {
        let mut delay = Duration::from_millis(250);
        let mut known = true;
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = if known {
                self.try_write_secret(material, attempt).await
            } else {
                self.secrets
                    .get_opt(&self.desired.secret_name)
                    .await
                    .map(|found| self.secret = found)
                    .map_err(Error::from)
            };
            match outcome {
                Ok(()) if known => return Ok(()),
                // Read again: write on that read at once.
                Ok(()) => known = true,
                Err(e) if e.is_permanent() || tries >= SECRET_WRITE_TRIES => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "writing the Secret failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    known = false;
                }
            }
        }
    }

    /// One write of the Secret, never over a Secret whose ownership was not confirmed by the
    /// read it is based on: a missing Secret is created (which fails if one appeared), an
    /// owned one is applied on the version that was read.
    async fn try_write_secret(&mut self, material: &KeyMaterial, attempt: &str) -> Result<()> {
        let ctx = self
            .key_context()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        let mut desired = secret::build(self.tsk, material, &ctx, attempt, self.secret.as_ref());
        let mut existing = self.secret.clone();
        if let Some(found) = &existing {
            if !secret::is_owned_by(found, self.tsk) {
                return Err(Error::SecretConflict(self.desired.secret_name.clone()));
            }
            self.keeps_foreign_entries(found, &desired)?;
            self.ensure_latest_intent().await?;
            // The type of a Secret is immutable: replace the object when it changes.
            if found.type_ != desired.type_ {
                self.delete_secret(found).await?;
                existing = None;
            }
        }
        let written = match existing {
            None => {
                self.ctx.metrics.kube_write("secrets", "create");
                self.secrets
                    .create(&PostParams::default(), &desired)
                    .await
                    .map_err(|e| self.secret_error(e))?
            }
            Some(found) => {
                desired.metadata.resource_version = found.resource_version();
                self.ctx.metrics.kube_write("secrets", "apply");
                let params = PatchParams::apply(FIELD_MANAGER).force();
                self.secrets
                    .patch(&self.desired.secret_name, &params, &Patch::Apply(&desired))
                    .await
                    .map_err(|e| self.secret_error(e))?
            }
        };
        self.secret = Some(written);
        Ok(())
    }

    /// Before a key of this reconcile replaces or deletes what a Secret holds: the resource must
    /// still be at the version this reconcile wrote its intent on. Otherwise another process
    /// took the resource over (superseding the attempt), and its key must not be overwritten.
    async fn ensure_latest_intent(&self) -> Result<()> {
        if !self.guarded {
            return Ok(());
        }
        let live = self.keys.get_opt(&self.name).await?;
        if live.and_then(|l| l.resource_version()) == self.resource_version {
            Ok(())
        } else {
            Err(Error::conflict(
                "the creation attempt was superseded before its Secret was written",
            ))
        }
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
            let pair = imburse::KeyPair {
                public_key: material.public_key.clone(),
                private_key: material.private_key.clone(),
            };
            proven = imburse::authenticate(
                &self.ctx.imburse,
                &intent.endpoint.base_url,
                intent.endpoint.api_generation.into(),
                &pair,
            )
            .await
            .is_ok();
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
    /// for revocation where it lives, after the grace period; a key Imburse no longer knows is
    /// just dropped. Returns the replaced key.
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
    async fn rotated(&self, replaced: Option<String>) {
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

    pub(super) async fn rewrite_secret(&mut self) -> Result<()> {
        let (Some(material), Some(attempt)) = (
            self.secret
                .as_ref()
                .and_then(|s| secret::material(self.tsk, s)),
            self.status.attempt.clone(),
        ) else {
            return Ok(());
        };
        self.try_write_secret(&material, &attempt).await?;
        self.event(
            EventType::Normal,
            "SecretWritten",
            "WriteSecret",
            format!("updated Secret {}", self.desired.secret_name),
        )
        .await;
        Ok(())
    }

    pub(super) async fn revoke_retired(&mut self, retired: &Retired) -> Result<()> {
        let credentials = self
            .status
            .previous_keys
            .iter()
            .find(|p| p.public_key == retired.public_key)
            .and_then(|p| p.credentials_fingerprint.clone());
        let outcome = self
            .revoke_recorded(
                &retired.account,
                retired.endpoint.as_ref(),
                credentials.as_deref(),
                &retired.tenant_id,
                &retired.public_key,
            )
            .await?;
        let entry = self
            .status
            .previous_keys
            .iter_mut()
            .find(|p| p.public_key == retired.public_key);
        match outcome {
            Revoked::Refused(message) => {
                if let Some(entry) = entry {
                    entry.revocation_error = Some(message);
                }
                if self.deleting {
                    self.status
                        .previous_keys
                        .retain(|p| p.public_key != retired.public_key);
                }
            }
            Revoked::Done | Revoked::TenantGone => {
                self.status
                    .previous_keys
                    .retain(|p| p.public_key != retired.public_key);
                tracing::info!(public_key = %retired.public_key, "revoked replaced key");
                self.event(
                    EventType::Normal,
                    "PreviousKeyRevoked",
                    "RevokeKey",
                    format!("revoked replaced key {}", retired.public_key),
                )
                .await;
            }
        }
        Ok(())
    }

    pub(super) async fn revoke_current(&mut self) -> Result<()> {
        let (Some(public_key), Some(tenant_id), Some(account_ref)) = (
            self.status.public_key.clone(),
            self.status.tenant_id.clone(),
            self.status.account_ref.clone(),
        ) else {
            return Ok(());
        };
        let endpoint = self.status.endpoint.clone();
        let credentials = self.status.credentials_fingerprint.clone();
        let outcome = self
            .revoke_recorded(
                &account_ref,
                endpoint.as_ref(),
                credentials.as_deref(),
                &tenant_id,
                &public_key,
            )
            .await?;
        self.status.public_key = None;
        if matches!(outcome, Revoked::Done | Revoked::TenantGone) {
            tracing::info!(%public_key, "revoked key");
            self.event(
                EventType::Normal,
                "KeyRevoked",
                "RevokeKey",
                format!("revoked key {public_key}"),
            )
            .await;
        }
        Ok(())
    }

    /// Revokes a recorded key where it lives. A key whose tenant is gone is gone too. Where the
    /// key lives elsewhere than the account points now, a definitive refusal there is reported
    /// (Event, and the status entry) rather than retried forever.
    ///
    /// "Not found" proves a revocation only when asked with the credentials the key was made
    /// with (`credentials`, unknown for keys recorded by older versions): another Imburse
    /// account does not know the key or its tenant, and the key would stay live where it is.
    async fn revoke_recorded(
        &mut self,
        account_ref: &AccountRef,
        endpoint: Option<&Endpoint>,
        credentials: Option<&str>,
        tenant_id: &str,
        public_key: &str,
    ) -> Result<Revoked> {
        let (client, moved) = self.client_for(account_ref, endpoint).await?;
        let result = client.delete_key(tenant_id, public_key).await;
        if let Err(imburse::Error::NotFound(_) | imburse::Error::TenantNotFound(_)) = &result
            && !same_credentials(credentials, &client)
        {
            // Looked at again slowly: the credentials may be put back without any change to
            // the account that would wake this resource.
            self.retry_in = Some(self.ctx.retries.stalled_retry(self.tsk));
            return Err(Error::KeyNotRevoked {
                public_key: public_key.into(),
                why: format!(
                    "the credentials of {:?} {} are not the ones it was made with, and they do not know it",
                    account_ref.kind, account_ref.name
                ),
            });
        }
        match result.or_else(|e| match e {
            imburse::Error::NotFound(_) => Ok(()),
            e => Err(Error::from(e)),
        }) {
            Ok(()) => {
                self.ctx.metrics.keys_revoked.inc();
                Ok(Revoked::Done)
            }
            Err(Error::Imburse(imburse::Error::TenantNotFound(_))) => {
                self.tenant_gone(tenant_id, &format!("key {public_key} counts as revoked"))
                    .await;
                Ok(Revoked::TenantGone)
            }
            Err(e) if moved && e.is_permanent() => {
                let at = endpoint.map_or("", |e| e.base_url.as_str());
                let message = format!("could not revoke key {public_key} at {at}: {e}");
                tracing::warn!(%public_key, error = %e, "key could not be revoked where it lives");
                self.event(
                    EventType::Warning,
                    "KeyNotRevoked",
                    "RevokeKey",
                    format!("{message}; revoke it by hand"),
                )
                .await;
                Ok(Revoked::Refused(message))
            }
            Err(e) => Err(e),
        }
    }

    async fn tenant_gone(&self, tenant_id: &str, consequence: &str) {
        tracing::warn!(tenant_id, "tenant not found at Imburse");
        self.event(
            EventType::Warning,
            "TenantGone",
            "RevokeKey",
            format!("tenant {tenant_id} no longer exists at Imburse: {consequence}"),
        )
        .await;
    }

    /// Deletes a Secret, only if it is still the object that was read (same uid and version).
    async fn delete_secret(&self, existing: &Secret) -> Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.uid(),
                resource_version: existing.resource_version(),
            }),
            ..Default::default()
        };
        self.ctx.metrics.kube_write("secrets", "delete");
        match self.secrets.delete(&existing.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        self.event(
            EventType::Normal,
            "SecretDeleted",
            "DeleteSecret",
            format!("deleted Secret {}", existing.name_any()),
        )
        .await;
        Ok(())
    }

    /// Removes the key's Secret: deletes it, or, when it holds entries of others, removes only
    /// what the operator put there (see [`secret::strip_patch`]), on the version that was read.
    pub(super) async fn discard_secret(&self, existing: &Secret) -> Result<()> {
        let Some(patch) = secret::strip_patch(self.tsk, existing) else {
            return self.delete_secret(existing).await;
        };
        self.ctx.metrics.kube_write("secrets", "patch");
        match self
            .secrets
            .patch(
                &existing.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.event(
            EventType::Normal,
            "SecretStripped",
            "DeleteSecret",
            format!(
                "removed the key's entries from Secret {} and kept the entries it holds for others",
                existing.name_any()
            ),
        )
        .await;
        Ok(())
    }

    /// Drops every mark of the operator's ownership from the Secret, on the version that was
    /// read, so that it survives the resource.
    pub(super) async fn release_secret(&mut self) -> Result<()> {
        let Some(existing) = self.secret.take() else {
            return Ok(());
        };
        let uid = self.tsk.uid();
        let owners: Vec<_> = existing
            .owner_references()
            .iter()
            .filter(|r| Some(&r.uid) != uid.as_ref())
            .cloned()
            .collect();
        let patch = json!({
            "metadata": {
                "resourceVersion": existing.resource_version(),
                "ownerReferences": owners,
                "annotations": { secret::OWNER_UID_ANNOTATION: null },
            }
        });
        self.ctx.metrics.kube_write("secrets", "patch");
        self.secrets
            .patch(
                &existing.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.event(
            EventType::Normal,
            "SecretRetained",
            "ReleaseSecret",
            format!(
                "kept Secret {} and its key (deletionPolicy Retain)",
                existing.name_any()
            ),
        )
        .await;
        Ok(())
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        status::publish(self.ctx, self.tsk, type_, reason, action, note).await;
    }
}

/// Whether `client` signs with the credentials a key was recorded with; a record without them
/// (older versions) cannot tell, and is taken to.
fn same_credentials(recorded: Option<&str>, client: &imburse::AccountClient) -> bool {
    recorded.is_none_or(|r| r == client.credentials_fingerprint())
}

/// Revokes a key; one that is already gone counts as revoked.
async fn revoke(client: &imburse::AccountClient, tenant_id: &str, public_key: &str) -> Result<()> {
    match client.delete_key(tenant_id, public_key).await {
        Ok(()) | Err(imburse::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
