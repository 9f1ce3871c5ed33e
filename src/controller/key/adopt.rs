//! Adoption (`spec.adopt`): taking over a Secret that holds a key made by other means.

use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use tenant_key_api::crd::Endpoint;

use super::Run;
use crate::controller::{
    FIELD_MANAGER, account,
    error::{Error, Result},
    intent::{self, Intent, Recorded},
    secret::{self, KeyMaterial},
};

impl Run<'_> {
    /// Whether the pair found in a Secret gets a token at `endpoint`: proof that whoever wrote
    /// the Secret holds the private key. A permanent error is Imburse's refusal.
    pub(super) async fn authenticate(
        &self,
        material: &KeyMaterial,
        endpoint: &Endpoint,
    ) -> Result<()> {
        let pair = imburse::KeyPair {
            public_key: material.public_key.clone(),
            private_key: material.private_key.clone(),
        };
        imburse::authenticate(
            &self.ctx.imburse,
            &endpoint.base_url,
            account::generation(endpoint),
            &pair,
        )
        .await?;
        Ok(())
    }

    /// Proves the key in the Secret and takes both over, creating no key:
    /// 0. the Secret's owner must consent, and the Secret carry no other owner's marks (see
    ///    [`secret::adoption_refusal`]);
    /// 1. the pair must authenticate at Imburse (a tenant token is issued for it) and the
    ///    account's listing of the tenant's keys must show the public key;
    /// 2. an intent naming the key is recorded, conditional on the resource version;
    /// 3. the Secret gets the operator's metadata, conditional on the version that was read,
    ///    so a Secret changed in between is not taken;
    /// 4. the key is recorded like a created one.
    ///
    /// A crash after 2 leaves an open intent and a Secret that is still someone else's, which
    /// the next reconcile adopts again (after a sweep that finds nothing marked for this
    /// resource); a crash after 3 leaves the Secret of the open attempt, recorded from there.
    /// The hand-made key never carries this resource's marker, so no sweep ever revokes it.
    pub(super) async fn adopt_existing(&mut self) -> Result<()> {
        let Some(found) = self.secret.clone() else {
            return Ok(());
        };
        let name = self.desired.secret_name.clone();
        let refuse = |why: String| Error::AdoptionRefused {
            name: name.clone(),
            why,
        };
        let ctx = self
            .key_context()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        // Before anything else, Imburse included: the Secret is someone else's until its owner
        // says otherwise. The refusal is permanent; a change of the Secret wakes the resource.
        if let Some(why) = secret::adoption_refusal(self.tsk, &found, &ctx) {
            return Err(refuse(why));
        }
        let material = secret::material(self.tsk, &found).ok_or_else(|| {
            refuse("it has no public and private key in the entries the spec names".into())
        })?;
        // The type of a Secret is immutable, and replacing the object is not taking it over.
        let wanted = secret::build(self.tsk, &secret::placeholder(), &ctx, "", None).type_;
        if wanted != found.type_ {
            return Err(refuse(format!(
                "its type {:?} differs from the spec's {:?}",
                found.type_.as_deref().unwrap_or("Opaque"),
                wanted.as_deref().unwrap_or("Opaque")
            )));
        }
        let endpoint = self
            .desired
            .endpoint
            .clone()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        if let Err(e) = self.authenticate(&material, &endpoint).await {
            if e.is_permanent() {
                return Err(refuse(format!(
                    "its key pair does not authenticate at Imburse ({e})"
                )));
            }
            return Err(e);
        }
        let client = self.client().await?;
        if !client.supports_listing() {
            return Err(Error::ListingUnsupported(self.desired.secret_name.clone()));
        }
        let tenant_id = self.desired.tenant_id.clone();
        let listed = client.list_keys(&tenant_id).await?;
        let Some(key) = listed
            .into_iter()
            .find(|k| k.public_key == material.public_key)
        else {
            return Err(refuse(format!(
                "key {} is not a key of tenant {tenant_id}",
                material.public_key
            )));
        };
        let mut roles = key.roles.clone();
        roles.sort();
        roles.dedup();
        let adopted = Intent {
            attempt: intent::new_attempt(),
            name: key.name.clone().unwrap_or_default(),
            tenant_id,
            roles,
            account_ref: self.desired.account.clone(),
            endpoint,
            rotate_request: self.rotate_request(),
            credentials_fingerprint: Some(client.credentials_fingerprint().to_owned()),
        };
        self.intent = Some(Recorded::Current(adopted.clone()));
        self.write_intent().await?;
        let ctx = self
            .key_context()
            .ok_or_else(|| Error::InvalidSpec("no account resolved".into()))?;
        // Entries of others stay as they are, and make the Secret owned by annotation only.
        let mut desired = secret::build(self.tsk, &material, &ctx, &adopted.attempt, Some(&found));
        desired.metadata.resource_version = found.resource_version();
        self.ctx.metrics.kube_write("secrets", "apply");
        let written = self
            .secrets
            .patch(
                &self.desired.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(|e| self.secret_error(e))?;
        self.secret = Some(written);
        tracing::info!(public_key = %material.public_key, "adopted key");
        self.record(&material, &adopted);
        self.event(
            EventType::Normal,
            "KeyAdopted",
            "AdoptKey",
            format!(
                "adopted key {} from Secret {}",
                material.public_key,
                found.name_any()
            ),
        )
        .await;
        Ok(())
    }
}
