//! The TenantSecurityKey reconciler: observes, asks [`decision::next_step`], performs the step,
//! and reports the result in status, Events, logs and metrics.

use std::{sync::Arc, time::Duration, time::Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::controller::Action,
};
use serde_json::json;

use super::{
    Context, FIELD_MANAGER,
    account::{self, ResolvedAccount},
    decision::{self, CreateReason, CurrentKey, Desired, Observed, Pending, Retired, Step},
    error::{Error, Result},
    secret::{self, KeyContext, KeyMaterial},
    status::{self, Outcome},
};
use crate::crd::{PreviousKey, TenantSecurityKey, TenantSecurityKeyStatus};

/// Finalizer that keeps a resource until its key is revoked (or released with `Retain`).
pub const FINALIZER: &str = "imbursepayments.com/revoke-key";
/// Annotation recording a creation intent as `<attempt>:<key name>`, written before every
/// create so that a restarted operator knows a key may exist that no Secret holds.
pub const PENDING_ANNOTATION: &str = "imbursepayments.com/create-pending";

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
        key_name: tsk.spec.name.clone().unwrap_or_else(|| {
            format!("{}/{}", tsk.namespace().unwrap_or_default(), tsk.name_any())
        }),
        secret_name: secret::secret_name(tsk),
    }
}

/// Checks what the CRD schema cannot (or what an older CRD may not have enforced).
pub fn validate(tsk: &TenantSecurityKey) -> std::result::Result<(), String> {
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
    let secret_name = secret::secret_name(tsk);
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
    secret::validate(tsk)
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Entry point for the controller.
pub async fn reconcile(tsk: Arc<TenantSecurityKey>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let mut run = Run::new(&tsk, &ctx);
    let result = run.drive().await;
    let label = result.as_ref().map_or_else(|e| e.metric_label(), |()| "ok");
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
    keys: Api<TenantSecurityKey>,
    secrets: Api<Secret>,
    desired: Desired,
    deleting: bool,
    status: TenantSecurityKeyStatus,
    has_finalizer: bool,
    pending: Option<Pending>,
    secret: Option<Secret>,
    /// An owned Secret under the previously recorded name, when the spec renamed it.
    stale_secret: Option<Secret>,
    account: Option<ResolvedAccount>,
    released: bool,
    /// The resource was confirmed current against the API server during this reconcile.
    confirmed_fresh: bool,
    /// The cached resource was older than the API server's: decide again on the new one.
    stale: bool,
}

impl<'a> Run<'a> {
    fn new(tsk: &'a TenantSecurityKey, ctx: &'a Context) -> Self {
        let namespace = tsk.namespace().unwrap_or_default();
        let status = tsk.status.clone().unwrap_or_default();
        let pending = tsk
            .annotations()
            .get(PENDING_ANNOTATION)
            .and_then(|v| v.split_once(':'))
            .filter(|(attempt, _)| status.attempt.as_deref() != Some(*attempt))
            .map(|(attempt, key_name)| Pending {
                attempt: attempt.into(),
                key_name: key_name.into(),
                clean: false,
            });
        Self {
            ctx,
            tsk,
            name: tsk.name_any(),
            keys: Api::namespaced(ctx.client.clone(), &namespace),
            secrets: Api::namespaced(ctx.client.clone(), &namespace),
            desired: desired(tsk),
            deleting: tsk.meta().deletion_timestamp.is_some(),
            status,
            has_finalizer: tsk.finalizers().iter().any(|f| f == FINALIZER),
            pending,
            secret: None,
            stale_secret: None,
            account: None,
            released: false,
            confirmed_fresh: false,
            stale: false,
        }
    }

    /// The Secret this resource manages: the recorded one while deleting, else the target.
    fn secret_name(&self) -> &str {
        match (&self.status.secret_name, self.deleting) {
            (Some(recorded), true) => recorded,
            _ => &self.desired.secret_name,
        }
    }

    async fn drive(&mut self) -> Result<()> {
        if !self.deleting {
            validate(self.tsk).map_err(Error::InvalidSpec)?;
            let namespace = self.tsk.namespace().unwrap_or_default();
            let account = account::resolve(self.ctx, &namespace, &self.desired.account).await?;
            // Before any Imburse call or recorded intent; also stalls a Ready key whose account
            // stopped allowing it, rather than letting it be replaced under the new rules.
            account.authorize(&self.desired.tenant_id, &self.desired.roles)?;
            self.account = Some(account);
        }
        self.secret = self.secrets.get_opt(self.secret_name()).await?;
        if let Some(recorded) = self.status.secret_name.as_deref()
            && !self.deleting
            && recorded != self.desired.secret_name
        {
            self.stale_secret = self
                .secrets
                .get_opt(recorded)
                .await?
                .filter(|s| secret::is_owned_by(s, self.tsk));
        }
        for _ in 0..MAX_STEPS {
            let step = decision::next_step(&self.observed());
            tracing::debug!(?step, "next step");
            if step.needs_latest_resource() && !self.confirmed_fresh {
                if !self.is_fresh().await? {
                    self.stale = true;
                    return Ok(());
                }
                self.confirmed_fresh = true;
            }
            match step {
                Step::Settled => return Ok(()),
                Step::BeginCreate(reason) => self.begin_create(reason).await?,
                Step::CleanupOrphans => self.cleanup_orphans().await?,
                Step::Create => self.create().await?,
                Step::AdoptFromSecret => self.adopt_from_secret(),
                Step::RewriteSecret => self.rewrite_secret().await?,
                Step::AddFinalizer => self.write_metadata(true).await?,
                Step::RevokeRetired(retired) => self.revoke_retired(&retired).await?,
                Step::RevokeCurrent => self.revoke_current().await?,
                Step::DeleteSecret => {
                    if let Some(existing) = self.secret.take() {
                        self.delete_secret(&existing).await?;
                    }
                }
                Step::DeleteStaleSecret => {
                    if let Some(existing) = self.stale_secret.take() {
                        self.delete_secret(&existing).await?;
                    }
                }
                Step::ReleaseSecret => self.release_secret().await?,
                Step::RemoveFinalizer => {
                    self.write_metadata(false).await?;
                    self.released = true;
                    return Ok(());
                }
                Step::SecretConflict => {
                    return Err(Error::SecretConflict(self.desired.secret_name.clone()));
                }
            }
        }
        tracing::warn!("reconcile did not settle within {MAX_STEPS} steps");
        Ok(())
    }

    /// Whether the cached resource is the API server's latest version. Read only before a step
    /// that needs it (see [`Step::needs_latest_resource`]), so a resource at rest costs no read.
    async fn is_fresh(&self) -> Result<bool> {
        let live = self.keys.get_opt(&self.name).await?;
        Ok(live.is_some_and(|live| live.resource_version() == self.tsk.resource_version()))
    }

    fn key_context(&self) -> Option<KeyContext<'_>> {
        let account = self.account.as_ref()?;
        Some(KeyContext {
            tenant_id: &self.desired.tenant_id,
            account_id: account.spec.account_id.as_deref(),
            base_url: account.spec.effective_base_url(),
        })
    }

    fn observed(&self) -> Observed {
        let s = &self.status;
        let current = match (&s.public_key, &s.tenant_id, &s.account_ref, &s.fingerprint) {
            (Some(public_key), Some(tenant_id), Some(account), Some(fingerprint)) => {
                Some(CurrentKey {
                    public_key: public_key.clone(),
                    tenant_id: tenant_id.clone(),
                    account: account.clone(),
                    roles: s.roles.clone(),
                    fingerprint: fingerprint.clone(),
                })
            }
            _ => None,
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        Observed {
            deleting: self.deleting,
            deletion_policy: self.tsk.spec.deletion_policy.unwrap_or_default(),
            has_finalizer: self.has_finalizer,
            desired: self.desired.clone(),
            current,
            pending: self.pending.clone(),
            secret: secret::observe(self.tsk, self.secret.as_ref(), self.key_context().as_ref()),
            stale_secret: self.stale_secret.is_some(),
            retired: s
                .previous_keys
                .iter()
                .map(|p| Retired {
                    public_key: p.public_key.clone(),
                    tenant_id: p.tenant_id.clone(),
                    account: p.account_ref.clone(),
                    due: p.revoke_after.as_ref().is_none_or(|t| t.0 <= now),
                })
                .collect(),
        }
    }

    async fn imburse(&self) -> Result<imburse::AccountClient> {
        match &self.account {
            Some(account) => account.connect(self.ctx).await,
            None => Err(Error::InvalidSpec("no account resolved".into())),
        }
    }

    /// Client for the account a recorded key was created with (it may differ from the spec).
    async fn imburse_for(
        &self,
        account_ref: &crate::crd::AccountRef,
    ) -> Result<imburse::AccountClient> {
        let namespace = self.tsk.namespace().unwrap_or_default();
        account::resolve(self.ctx, &namespace, account_ref)
            .await?
            .connect(self.ctx)
            .await
    }

    /// Server-side applies the operator's metadata: the finalizer (when `keep`) and the open
    /// intent. Fields omitted are released, so `keep == false` removes both.
    async fn write_metadata(&mut self, keep: bool) -> Result<()> {
        let mut metadata = json!({ "name": self.name });
        if keep {
            metadata["finalizers"] = json!([FINALIZER]);
            if let Some(p) = &self.pending {
                metadata["annotations"] =
                    json!({ PENDING_ANNOTATION: format!("{}:{}", p.attempt, p.key_name) });
            }
        }
        let patch = json!({
            "apiVersion": TenantSecurityKey::api_version(&()),
            "kind": KIND,
            "metadata": metadata,
        });
        self.ctx.metrics.kube_write("tenantsecuritykeys", "apply");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .keys
            .patch(&self.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {}
            // Removing the finalizer of an object that is already gone is success.
            Err(kube::Error::Api(e)) if e.code == 404 && !keep => {}
            Err(e) => return Err(e.into()),
        }
        self.has_finalizer = keep;
        Ok(())
    }

    async fn begin_create(&mut self, reason: CreateReason) -> Result<()> {
        // Fail on an unusable account before recording an intent that would cost a list later.
        self.imburse().await?;
        let attempt = uuid::Uuid::new_v4().simple().to_string();
        self.pending = Some(Pending {
            attempt,
            key_name: self.desired.key_name.clone(),
            clean: true,
        });
        self.write_metadata(true).await?;
        tracing::info!(reason = reason.describe(), "creating key");
        self.event(
            false,
            "CreatingKey",
            "CreateKey",
            format!("creating a key: {}", reason.describe()),
        )
        .await;
        Ok(())
    }

    async fn cleanup_orphans(&mut self) -> Result<()> {
        let Some(pending) = self.pending.clone() else {
            return Ok(());
        };
        // While deleting no account is resolved: use the one the keys were made with.
        let client = match &self.account {
            Some(_) => self.imburse().await?,
            None => {
                let recorded = self.status.account_ref.as_ref();
                self.imburse_for(recorded.unwrap_or(&self.desired.account))
                    .await?
            }
        };
        if !client.supports_listing() {
            return Err(Error::ListingUnsupported(pending.key_name));
        }
        let known: Vec<&str> = self
            .status
            .public_key
            .iter()
            .chain(self.status.previous_keys.iter().map(|p| &p.public_key))
            .map(String::as_str)
            .collect();
        let orphans: Vec<_> = client
            .list_keys(&self.desired.tenant_id)
            .await?
            .into_iter()
            .filter(|k| k.name.as_deref() == Some(pending.key_name.as_str()))
            .filter(|k| !known.contains(&k.public_key.as_str()))
            .collect();
        for orphan in orphans {
            revoke(&client, &self.desired.tenant_id, &orphan.public_key).await?;
            self.ctx.metrics.keys_revoked.inc();
            tracing::info!(public_key = %orphan.public_key, "deleted orphaned key");
            self.event(
                false,
                "OrphanKeyDeleted",
                "CleanupOrphans",
                format!(
                    "deleted key {} left by an interrupted creation",
                    orphan.public_key
                ),
            )
            .await;
        }
        self.set_attempt_clean(true);
        Ok(())
    }

    /// Records whether keys of the open attempt could exist at Imburse unknown to the status.
    fn set_attempt_clean(&mut self, clean: bool) {
        if let Some(p) = self.pending.as_mut() {
            p.clean = clean;
        }
    }

    async fn create(&mut self) -> Result<()> {
        let Some(pending) = self.pending.clone() else {
            return Ok(());
        };
        let client = self.imburse().await?;
        let request = imburse::NewKey {
            name: Some(pending.key_name.clone()),
            roles: self.desired.roles.clone(),
        };
        let created = match client.create_key(&self.desired.tenant_id, &request).await {
            Ok(created) => created,
            Err(e) => {
                // The key may exist even though the call failed; only a listing can tell.
                self.set_attempt_clean(false);
                return Err(e.into());
            }
        };
        self.ctx.metrics.keys_created.inc();
        let material = KeyMaterial {
            public_key: created.public_key,
            private_key: created.private_key,
        };
        tracing::info!(public_key = %material.public_key, "created key");
        if let Err(e) = self.write_secret(&material, &pending.attempt).await {
            // The private key is lost with this process; the next attempt revokes the key.
            self.set_attempt_clean(false);
            return Err(e);
        }
        self.event(
            false,
            "KeyCreated",
            "CreateKey",
            format!(
                "created key {} and wrote Secret {}",
                material.public_key, self.desired.secret_name
            ),
        )
        .await;
        self.record(&material, &pending);
        Ok(())
    }

    /// Writes the Secret, retrying briefly: the key in hand exists nowhere else.
    async fn write_secret(&mut self, material: &KeyMaterial, attempt: &str) -> Result<()> {
        let mut delay = Duration::from_millis(250);
        let mut tries = 0;
        loop {
            match self.try_write_secret(material, attempt).await {
                Ok(()) => return Ok(()),
                Err(e) if tries < 4 => {
                    tracing::warn!(error = %e, "writing the Secret failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    tries += 1;
                    self.secret = self
                        .secrets
                        .get_opt(&self.desired.secret_name)
                        .await
                        .ok()
                        .flatten();
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_write_secret(&mut self, material: &KeyMaterial, attempt: &str) -> Result<()> {
        let ctx = self
            .key_context()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        let desired = secret::build(self.tsk, material, &ctx, attempt);
        if let Some(existing) = &self.secret {
            if !secret::is_owned_by(existing, self.tsk) {
                return Err(Error::SecretConflict(self.desired.secret_name.clone()));
            }
            // The type of a Secret is immutable: replace the object when it changes.
            if existing.type_ != desired.type_ {
                self.delete_secret(existing).await?;
            }
        }
        self.ctx.metrics.kube_write("secrets", "apply");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = self
            .secrets
            .patch(&self.desired.secret_name, &params, &Patch::Apply(&desired))
            .await?;
        self.secret = Some(written);
        Ok(())
    }

    fn adopt_from_secret(&mut self) {
        let (Some(pending), Some(material)) = (
            self.pending.clone(),
            self.secret
                .as_ref()
                .and_then(|s| secret::material(self.tsk, s)),
        ) else {
            return;
        };
        tracing::info!(public_key = %material.public_key, "recovered key from its Secret");
        self.record(&material, &pending);
    }

    /// Records a key as current; the key it replaces is queued for revocation.
    fn record(&mut self, material: &KeyMaterial, pending: &Pending) {
        let s = &mut self.status;
        if let (Some(old), Some(tenant_id), Some(account_ref)) = (
            s.public_key.take(),
            s.tenant_id.take(),
            s.account_ref.take(),
        ) && old != material.public_key
        {
            s.previous_keys.push(PreviousKey {
                public_key: old,
                tenant_id,
                account_ref,
                revoke_after: None,
            });
        }
        s.public_key = Some(material.public_key.clone());
        s.key_name = Some(pending.key_name.clone());
        s.secret_name = Some(self.desired.secret_name.clone());
        s.created_at = Some(status::now());
        s.fingerprint = Some(material.fingerprint());
        s.tenant_id = Some(self.desired.tenant_id.clone());
        s.account_ref = Some(self.desired.account.clone());
        s.roles = self.desired.roles.clone();
        s.attempt = Some(pending.attempt.clone());
        self.pending = None;
    }

    async fn rewrite_secret(&mut self) -> Result<()> {
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
            false,
            "SecretWritten",
            "WriteSecret",
            format!("updated Secret {}", self.desired.secret_name),
        )
        .await;
        Ok(())
    }

    async fn revoke_retired(&mut self, retired: &Retired) -> Result<()> {
        let client = self.imburse_for(&retired.account).await?;
        revoke(&client, &retired.tenant_id, &retired.public_key).await?;
        self.ctx.metrics.keys_revoked.inc();
        self.status
            .previous_keys
            .retain(|p| p.public_key != retired.public_key);
        tracing::info!(public_key = %retired.public_key, "revoked replaced key");
        self.event(
            false,
            "KeyRevoked",
            "RevokeKey",
            format!("revoked replaced key {}", retired.public_key),
        )
        .await;
        Ok(())
    }

    async fn revoke_current(&mut self) -> Result<()> {
        let (Some(public_key), Some(tenant_id), Some(account_ref)) = (
            self.status.public_key.clone(),
            self.status.tenant_id.clone(),
            self.status.account_ref.clone(),
        ) else {
            return Ok(());
        };
        let client = self.imburse_for(&account_ref).await?;
        revoke(&client, &tenant_id, &public_key).await?;
        self.ctx.metrics.keys_revoked.inc();
        self.status.public_key = None;
        tracing::info!(%public_key, "revoked key");
        self.event(
            false,
            "KeyRevoked",
            "RevokeKey",
            format!("revoked key {public_key}"),
        )
        .await;
        Ok(())
    }

    /// Deletes a Secret, only if it is still the object that was read (same uid).
    async fn delete_secret(&self, existing: &Secret) -> Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.uid(),
                resource_version: None,
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
            false,
            "SecretDeleted",
            "DeleteSecret",
            format!("deleted Secret {}", existing.name_any()),
        )
        .await;
        Ok(())
    }

    async fn release_secret(&mut self) -> Result<()> {
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
        // A merge patch with the resourceVersion: fails instead of dropping a concurrent change.
        let patch = json!({
            "metadata": {
                "resourceVersion": existing.resource_version(),
                "ownerReferences": owners,
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
            false,
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

    async fn event(&self, warning: bool, reason: &str, action: &str, note: String) {
        status::publish(self.ctx, self.tsk, warning, reason, action, note).await;
    }

    /// Reports the result and decides when to look again.
    async fn finish(mut self, result: Result<()>) -> Result<Action> {
        // A resource whose finalizer is gone (or going) has no status left to report.
        if self.released || (self.deleting && result.is_ok()) {
            return Ok(Action::await_change());
        }
        if self.stale && result.is_ok() {
            tracing::debug!("cache behind the API server; deciding again shortly");
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        let generation = self.tsk.meta().generation;
        let message;
        let outcome = match &result {
            Ok(()) => {
                message = format!(
                    "key {} is in Secret {}",
                    self.status.public_key.as_deref().unwrap_or_default(),
                    self.desired.secret_name
                );
                Outcome::Ready {
                    reason: "KeyReady",
                    message: &message,
                }
            }
            Err(e) => Outcome::Failed(e),
        };
        let handled = result.as_ref().map_or_else(Error::is_permanent, |()| true);
        if handled {
            self.status.observed_generation = generation;
        }
        let previous = self.tsk.status.clone().unwrap_or_default();
        status::set_outcome(
            &mut self.status.conditions,
            &outcome,
            generation,
            &status::now(),
        );
        if self.status != previous {
            status::apply_status(self.ctx, &self.keys, &self.name, &self.status).await?;
        }
        match result {
            Ok(()) => Ok(self
                .next_revocation()
                .map_or_else(Action::await_change, Action::requeue)),
            Err(e) => {
                let reason = e.reason().as_str();
                tracing::warn!(
                    reason,
                    error = %e,
                    correlation_id = e.correlation_id(),
                    permanent = e.is_permanent(),
                    "reconcile failed"
                );
                let changed = ready_reason(&previous) != Some(reason);
                if changed || !e.is_permanent() {
                    self.event(true, reason, "Reconcile", e.event_note()).await;
                }
                if e.is_permanent() {
                    Ok(Action::await_change())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Time until the next replaced key leaves its grace period.
    fn next_revocation(&self) -> Option<Duration> {
        let now = k8s_openapi::jiff::Timestamp::now();
        self.status
            .previous_keys
            .iter()
            .filter_map(|p| p.revoke_after.as_ref())
            .filter_map(|t| Duration::try_from(t.0.duration_since(now)).ok())
            .min()
    }
}

fn ready_reason(status: &TenantSecurityKeyStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == status::READY)
        .map(|c| c.reason.as_str())
}

/// Revokes a key; one that is already gone counts as revoked.
async fn revoke(client: &imburse::AccountClient, tenant_id: &str, public_key: &str) -> Result<()> {
    match client.delete_key(tenant_id, public_key).await {
        Ok(()) | Err(imburse::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AccountKind, AccountRef, TenantSecurityKeySpec};

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
        };
        spec(&mut s);
        let mut t = TenantSecurityKey::new("pay", s);
        t.metadata.namespace = Some("team-a".into());
        t
    }

    #[test]
    fn defaults_are_applied_in_code() {
        let d = desired(&tsk(|_| {}));
        assert_eq!(d.key_name, "team-a/pay");
        assert_eq!(d.secret_name, "pay");
        assert_eq!(d.roles, ["tenant-admin", "tenant-app-read"]);
    }

    #[test]
    fn invalid_specs_are_explained() {
        let cases: [fn(&mut TenantSecurityKeySpec); 5] = [
            |s| s.roles.clear(),
            |s| s.roles = vec![" ".into()],
            |s| s.tenant_id = "not-a-uuid".into(),
            |s| s.name = Some(String::new()),
            |s| {
                s.secret = Some(crate::crd::SecretTemplate {
                    name: Some("Bad_Name".into()),
                    ..Default::default()
                })
            },
        ];
        for case in cases {
            assert!(validate(&tsk(case)).is_err());
        }
        assert!(validate(&tsk(|_| {})).is_ok());
    }
}
