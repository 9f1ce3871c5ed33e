//! Revoking keys: the current one on deletion and replaced ones after their grace period, where
//! they live and with the credentials they were made with; and letting the resource go.

use kube::{ResourceExt, runtime::events::EventType};
use tenant_key_api::crd::{AccountRef, Endpoint};

use super::{FINALIZER, Run};
use crate::controller::{
    account::{self, same_credentials},
    decision::Retired,
    error::{Error, Result},
    finalizer,
};

/// What became of a revocation.
pub(super) enum Revoked {
    /// Revoked now, or already gone.
    Done,
    /// The tenant no longer exists, and its keys with it.
    TenantGone,
    /// Imburse refused for good where the key lives (the message says why).
    Refused(String),
}

impl Run<'_> {
    /// Removes the finalizer (see [`finalizer::remove`]), then lets the account go if no other
    /// key uses it.
    pub(super) async fn remove_finalizer(&mut self) -> Result<()> {
        finalizer::remove(&self.keys, &self.name, FINALIZER, &self.ctx.metrics).await?;
        self.has_finalizer = false;
        let namespace = self.tsk.namespace().unwrap_or_default();
        let accounts: std::collections::BTreeSet<_> = self.tsk.account_refs().collect();
        for account_ref in accounts {
            account::release_if_unused(self.ctx, &namespace, account_ref, Some(&self.uid)).await?;
        }
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
    pub(super) async fn revoke_recorded(
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
            return Err(self.not_proven_revoked(
                public_key,
                format!(
                    "the credentials of {:?} {} are not the ones it was made with, and they do not know it",
                    account_ref.kind, account_ref.name
                ),
            ));
        }
        let e = match result {
            Ok(()) | Err(imburse::Error::NotFound(_)) => {
                self.ctx.metrics.keys_revoked.inc();
                return Ok(Revoked::Done);
            }
            Err(imburse::Error::TenantNotFound(_)) => {
                self.tenant_gone(tenant_id, &format!("key {public_key} counts as revoked"))
                    .await;
                return Ok(Revoked::TenantGone);
            }
            Err(e) => Error::from(e),
        };
        if !(moved && e.is_permanent()) {
            return Err(e);
        }
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

    /// The error that holds a key only other credentials than its own say is gone. It is
    /// looked at again slowly: the credentials may be put back without any change to the
    /// account that would wake this resource.
    pub(super) fn not_proven_revoked(&mut self, public_key: &str, why: String) -> Error {
        self.retry_in = Some(self.ctx.retries.stalled_retry(self.tsk));
        Error::KeyNotRevoked {
            public_key: public_key.into(),
            why,
        }
    }

    pub(super) async fn tenant_gone(&self, tenant_id: &str, consequence: &str) {
        tracing::warn!(tenant_id, "tenant not found at Imburse");
        self.event(
            EventType::Warning,
            "TenantGone",
            "RevokeKey",
            format!("tenant {tenant_id} no longer exists at Imburse: {consequence}"),
        )
        .await;
    }
}

/// Revokes a key; one that is already gone counts as revoked.
pub(super) async fn revoke(
    client: &imburse::AccountClient,
    tenant_id: &str,
    public_key: &str,
) -> Result<()> {
    match client.delete_key(tenant_id, public_key).await {
        Ok(()) | Err(imburse::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
