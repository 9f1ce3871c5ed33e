//! Delivering keys: writing, checking, rewriting, releasing and deleting the Secret. A Secret
//! is only ever written on the version that was read and found the resource's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::EventType,
};
use serde_json::json;
use tenant_key_api::key_secret;

use super::Run;
use crate::controller::{
    FIELD_MANAGER,
    error::{Error, Result},
    secret::{self, KeyMaterial},
};

/// Reads and writes of the Secret made to deliver a created key before giving the key up.
const SECRET_WRITE_TRIES: u32 = 9;

impl Run<'_> {
    /// Checks that the API server would take the Secret: with a server-side dry run when the
    /// spec gives it labels or annotations (the only parts the operator cannot check itself).
    /// Anything else that refuses it (an admission policy, a quota) is found when the key is
    /// delivered, and the key is then revoked at once.
    pub(super) async fn dry_run_secret(&mut self) -> Result<()> {
        let Some(ctx) = self.key_context() else {
            return Ok(());
        };
        let owned = self
            .secret
            .as_ref()
            .filter(|s| key_secret::is_owned_by(s, self.tsk));
        let placeholder = secret::build(self.tsk, &secret::placeholder(), &ctx, "dry-run", owned);
        if let Some(found) = owned {
            self.keeps_foreign_entries(found, &placeholder)?;
        }
        // A type change replaces the Secret, which a dry run of an apply cannot express.
        if !secret::has_unchecked_metadata(self.tsk)
            || self
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
    pub(super) fn keeps_foreign_entries(&self, existing: &Secret, desired: &Secret) -> Result<()> {
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
    pub(super) async fn write_secret(
        &mut self,
        material: &KeyMaterial,
        attempt: &str,
    ) -> Result<()> {
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
    pub(super) async fn try_write_secret(
        &mut self,
        material: &KeyMaterial,
        attempt: &str,
    ) -> Result<()> {
        let ctx = self
            .key_context()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        let mut desired = secret::build(self.tsk, material, &ctx, attempt, self.secret.as_ref());
        let mut existing = self.secret.clone();
        if let Some(found) = &existing {
            if !key_secret::is_owned_by(found, self.tsk) {
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
        let namespace = self.tsk.namespace().unwrap_or_default();
        let name = self.desired.secret_name.clone();
        let writing = self.ctx.secret_writes.begin(&namespace, &name);
        let written = match existing {
            None => {
                self.ctx.metrics.kube_write("secrets", "create");
                self.secrets.create(&PostParams::default(), &desired).await
            }
            Some(found) => {
                desired.metadata.resource_version = found.resource_version();
                self.ctx.metrics.kube_write("secrets", "apply");
                let params = PatchParams::apply(FIELD_MANAGER).force();
                self.secrets
                    .patch(&name, &params, &Patch::Apply(&desired))
                    .await
            }
        };
        let version = written.as_ref().ok().and_then(|w| w.resource_version());
        // Someone else changed the Secret while it was written: this reconcile's picture of it
        // is not to be trusted later, and the key is looked at again in full.
        self.secret_raced |= writing.finish(version.as_deref());
        self.secret = Some(written.map_err(|e| self.secret_error(e))?);
        Ok(())
    }

    /// Before a key of this reconcile replaces or deletes what a Secret holds: the resource must
    /// still be at the version this reconcile wrote its intent on. Otherwise another process
    /// took the resource over (superseding the attempt), and its key must not be overwritten.
    pub(super) async fn ensure_latest_intent(&self) -> Result<()> {
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

    /// Deletes a Secret, only if it is still the object that was read (same uid and version).
    pub(super) async fn delete_secret(&self, existing: &Secret) -> Result<()> {
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
                "annotations": { key_secret::OWNER_UID_ANNOTATION: null },
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
}
