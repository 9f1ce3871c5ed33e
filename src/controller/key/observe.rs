//! Observing: the cached resource, the Secrets it manages, its account, and how fresh it is.

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Resource, ResourceExt};
use tenant_key_api::{crd::TenantSecurityKey, key_secret};

use super::{FINALIZER, Run, desired, validate};
use crate::controller::{
    Context,
    account::{self, Purpose},
    decision::{CurrentKey, Observed, Pending, Retired, Rotation, SecretState},
    error::{Error, Result},
    intent::{self, Recorded},
    schedule,
    secret::{self, KeyContext},
};

impl<'a> Run<'a> {
    pub(super) fn new(tsk: &'a TenantSecurityKey, ctx: &'a Context) -> Self {
        let namespace = tsk.namespace().unwrap_or_default();
        let status = tsk.status.clone().unwrap_or_default();
        // The status is the operator's own record. An intent in the annotation is what an
        // older version left mid-create, or a forgery: `prepare` checks it before any use.
        let legacy_intent = status
            .pending_create
            .is_none()
            .then(|| tsk.annotations().get(intent::ANNOTATION))
            .flatten()
            .and_then(|v| Recorded::parse(v))
            .filter(|r| status.attempt.as_deref() != Some(r.attempt()));
        let intent_from_annotation = legacy_intent.is_some();
        let intent = status
            .pending_create
            .clone()
            .map(|intent| Recorded::Current(*intent))
            .or(legacy_intent);
        let has_finalizer = tsk.finalizers().iter().any(|f| f == FINALIZER);
        // A resource whose status records keys, without the finalizer that every key comes
        // with: a replace wiped the operator's metadata, and with it possibly an open intent.
        let sweep_needed = !has_finalizer
            && (status.attempt.is_some()
                || status.public_key.is_some()
                || !status.previous_keys.is_empty());
        Self {
            ctx,
            tsk,
            name: tsk.name_any(),
            uid: tsk.uid().unwrap_or_default(),
            keys: Api::namespaced(ctx.client.clone(), &namespace),
            secrets: Api::namespaced(ctx.client.clone(), &namespace),
            desired: desired(tsk),
            deleting: tsk.meta().deletion_timestamp.is_some(),
            status,
            has_finalizer,
            intent,
            intent_from_annotation,
            intent_annotation: tsk.annotations().contains_key(intent::ANNOTATION),
            secret_refuted: false,
            clean: false,
            sweep_needed,
            secret: None,
            stale_secret: None,
            account: None,
            imburse: None,
            resource_version: tsk.resource_version(),
            guarded: false,
            retry_in: None,
            restart_retry: None,
            confirmed_fresh: false,
            create_reason: None,
            secret_raced: false,
        }
    }

    /// Reads what every decision needs: the account (unless deleting) and the Secrets.
    pub(super) async fn prepare(&mut self) -> Result<()> {
        if !self.deleting {
            validate(self.tsk, &self.ctx.settings.key_limits).map_err(Error::InvalidSpec)?;
            let namespace = self.tsk.namespace().unwrap_or_default();
            let account =
                account::resolve(self.ctx, &namespace, &self.desired.account, Purpose::Create)
                    .await?;
            // Before any Imburse call or recorded intent; also stalls a Ready key whose account
            // stopped allowing it, rather than letting it be replaced under the new rules.
            account.authorize(&self.desired.tenant_id, &self.desired.roles)?;
            account.hold(self.ctx).await?;
            self.desired.endpoint = Some(account.endpoint());
            self.account = Some(account);
        }
        if self.intent_from_annotation {
            self.admit_annotation_intent().await?;
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
                .filter(|s| key_secret::is_owned_by(s, self.tsk));
        }
        Ok(())
    }

    /// Takes an intent from the annotation only when everything it names could be asked for
    /// by a new spec of this namespace: its key name carries this resource's marker, its
    /// account serves the namespace and allows its tenant and roles, and its host is allowed.
    /// Otherwise it is a claim nobody can back, and it is ignored (with an Event).
    async fn admit_annotation_intent(&mut self) -> Result<()> {
        let Some(Recorded::Current(claimed)) = &self.intent else {
            // The oldest form names no account, tenant or endpoint: what it implies comes from
            // the spec, which was checked like any spec.
            return Ok(());
        };
        let why = match self.check_claimed_intent(claimed).await {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_permanent() => return Err(e),
            Err(e) => e.to_string(),
        };
        tracing::warn!(attempt = %claimed.attempt, %why, "ignored a creation intent in the annotation");
        self.event(
            kube::runtime::events::EventType::Warning,
            "IntentIgnored",
            "CheckIntent",
            format!(
                "ignored the {} annotation (attempt {}): {why}",
                intent::ANNOTATION,
                claimed.attempt
            ),
        )
        .await;
        self.intent = None;
        Ok(())
    }

    async fn check_claimed_intent(&self, claimed: &intent::Intent) -> Result<()> {
        if !intent::names_attempt(&claimed.name, &self.uid, &claimed.attempt) {
            return Err(Error::InvalidSpec(
                "its key name does not carry this resource's marker".into(),
            ));
        }
        if claimed.tenant_id != self.tsk.spec.tenant_id {
            return Err(Error::InvalidSpec(
                "it names another tenant than the spec".into(),
            ));
        }
        let namespace = self.tsk.namespace().unwrap_or_default();
        let account =
            account::resolve(self.ctx, &namespace, &claimed.account_ref, Purpose::Create).await?;
        account.authorize(&claimed.tenant_id, &claimed.roles)?;
        self.ctx
            .settings
            .allowed_imburse_hosts
            .check(&claimed.endpoint.base_url)?;
        Ok(())
    }

    /// The Secret this resource manages: the recorded one while deleting, else the target.
    pub(super) fn secret_name(&self) -> &str {
        match (&self.status.secret_name, self.deleting) {
            (Some(recorded), true) => recorded,
            _ => &self.desired.secret_name,
        }
    }

    /// Whether the cached resource is the API server's latest version. Read only before a step
    /// that needs it (see [`crate::controller::decision::Step::needs_latest_resource`]), so a
    /// resource at rest costs no read.
    pub(super) async fn is_fresh(&mut self) -> Result<bool> {
        let live = self.keys.get_opt(&self.name).await?;
        let fresh = live
            .as_ref()
            .is_some_and(|live| live.resource_version() == self.tsk.resource_version());
        if fresh {
            self.resource_version = live.and_then(|l| l.resource_version());
        }
        Ok(fresh)
    }

    pub(super) fn key_context(&self) -> Option<KeyContext<'_>> {
        let account = self.account.as_ref()?;
        Some(KeyContext {
            tenant_id: &self.desired.tenant_id,
            account_id: account.spec.account_id.as_deref(),
            base_url: account.spec.effective_base_url(),
        })
    }

    /// The rotation request annotation, when set.
    pub(super) fn rotate_request(&self) -> Option<String> {
        self.tsk
            .annotations()
            .get(tenant_key_api::crd::ROTATE_REQUESTED_AT_ANNOTATION)
            .filter(|v| !v.is_empty())
            .cloned()
    }

    /// When the current key is due for scheduled rotation.
    pub(super) fn next_rotation(&self) -> Option<Timestamp> {
        let interval = self.tsk.spec.rotation_interval()?;
        let created_at = self.status.created_at.as_ref()?.0;
        let seed = format!(
            "{}:{}",
            self.uid,
            self.status.attempt.as_deref().unwrap_or_default()
        );
        Some(schedule::next_rotation(created_at, interval, &seed))
    }

    fn rotation(&self, now: Timestamp) -> Option<Rotation> {
        let current = self.status.public_key.as_deref()?;
        if self.ctx.revoked_remotely(&self.uid).as_deref() == Some(current) {
            return Some(Rotation::RevokedExternally);
        }
        let request = self.rotate_request();
        if request.is_some() && request != self.status.last_handled_rotate_request {
            return Some(Rotation::Requested);
        }
        self.next_rotation()
            .is_some_and(|at| at <= now)
            .then_some(Rotation::Scheduled)
    }

    /// The Secret as the decision sees it. A Secret whose claim to hold the open attempt's
    /// key Imburse did not confirm is taken to hold no attempt's key.
    fn secret_state(&self) -> SecretState {
        let state = secret::observe(self.tsk, self.secret.as_ref(), self.key_context().as_ref());
        match state {
            SecretState::Owned {
                fingerprint,
                layout_matches,
                ..
            } if self.secret_refuted => SecretState::Owned {
                fingerprint,
                attempt: None,
                layout_matches,
            },
            state => state,
        }
    }

    pub(super) fn observed(&self) -> Observed {
        let s = &self.status;
        let current = match (&s.public_key, &s.tenant_id, &s.account_ref, &s.fingerprint) {
            (Some(public_key), Some(tenant_id), Some(account), Some(fingerprint)) => {
                Some(CurrentKey {
                    public_key: public_key.clone(),
                    tenant_id: tenant_id.clone(),
                    account: account.clone(),
                    roles: s.roles.clone(),
                    fingerprint: fingerprint.clone(),
                    endpoint: s.endpoint.clone(),
                })
            }
            _ => None,
        };
        let now = Timestamp::now();
        Observed {
            deleting: self.deleting,
            deletion_policy: self.tsk.spec.deletion_policy.unwrap_or_default(),
            has_finalizer: self.has_finalizer,
            desired: self.desired.clone(),
            current,
            pending: self.intent.as_ref().map(|i| Pending {
                attempt: i.attempt().to_owned(),
                clean: self.clean,
            }),
            secret: self.secret_state(),
            stale_secret: self.stale_secret.is_some(),
            sweep_needed: self.sweep_needed,
            rotation: self.rotation(now),
            restart_pending: self.restart_retry.is_none()
                && !self.tsk.spec.rollout_restart_targets.is_empty()
                && s.fingerprint.is_some()
                && s.rollout_restart_fingerprint.is_some()
                && s.rollout_restart_fingerprint != s.fingerprint,
            adopt: self.tsk.spec.adopt.unwrap_or(false),
            retired: s
                .previous_keys
                .iter()
                .map(|p| Retired {
                    public_key: p.public_key.clone(),
                    tenant_id: p.tenant_id.clone(),
                    account: p.account_ref.clone(),
                    endpoint: p.endpoint.clone(),
                    due: p.revoke_after.as_ref().is_none_or(|t| t.0 <= now),
                    refused: p.revocation_error.is_some(),
                })
                .collect(),
        }
    }
}
