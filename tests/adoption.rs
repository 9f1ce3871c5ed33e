//! Adoption: a key made by hand is taken over only when the resource asks for it and the
//! Secret consents, and a key an interrupted attempt left is adopted as what that attempt
//! asked for.
//!
//! The test that counts the keys made at Imburse does it on a sandbox of its own; the one that
//! stops the operator to leave an interrupted attempt behind runs after it, alone. One process
//! without leader election: a restarted one works at once, not after its predecessor's Lease
//! expired.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::Config;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Env, FINALIZER, TestFn, create_secret, created, expect_single_key, expect_single_key_at,
};
use tenant_key_api::crd::ImburseAccount;

fn main() -> std::process::ExitCode {
    let start = || {
        Env::start_with(
            Config::generate(1, 2),
            imburse_sandbox::Options::default(),
            &["--leader-election=false"],
        )
    };
    let at_once: Vec<(&str, TestFn)> =
        testenv::named_tests![a_hand_made_key_is_adopted_only_when_asked];
    let one_at_a_time: Vec<(&str, TestFn)> =
        testenv::named_tests![adoption_records_what_the_attempt_requested];
    support::run_suites(start, at_once, one_at_a_time)
}

/// Consent of the Secret's owner to its adoption by the TenantSecurityKey `by`.
async fn consent_to_adoption(env: &Env, ns: &str, secret: &str, by: &str) -> Result<()> {
    env.secrets(ns)
        .patch(
            secret,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "imbursepayments.com/adopt-by": by,
            } } })),
        )
        .await?;
    Ok(())
}

/// A key made by hand (the tutorial's flow) and put in a Secret that consents: refused
/// without `adopt`, taken over with it (no key created), and a pair that does not authenticate
/// is refused.
fn a_hand_made_key_is_adopted_only_when_asked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "adoption";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 0);
        let made = env.key_by_hand_at(&sandbox, &tenant, "Hand Made").await?;
        let private_key = secrecy::ExposeSecret::expose_secret(&made.private_key).to_owned();
        create_secret(
            &env.client,
            ns,
            "handmade",
            BTreeMap::from([
                ("publicKey".to_owned(), made.public_key.clone()),
                ("privateKey".to_owned(), private_key.clone()),
            ]),
        )
        .await?;
        consent_to_adoption(env, ns, "handmade", "adopting").await?;
        let before = created(&sandbox).await?;
        env.create_key(
            ns,
            "adopting",
            &tenant,
            json!({ "secret": { "name": "handmade" } }),
        )
        .await?;
        env.wait_reason(ns, "adopting", "SecretConflict").await?;
        env.keys(ns)
            .patch(
                "adopting",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "adopt": true } })),
            )
            .await?;
        ensure!(
            expect_single_key_at(env, &sandbox, ns, "adopting", &tenant).await? == made.public_key
        );
        ensure!(created(&sandbox).await? == before, "adoption created a key");
        let secret = env.secrets(ns).get("handmade").await?;
        ensure!(
            secret
                .owner_references()
                .iter()
                .any(|o| o.name == "adopting"),
            "the Secret is not owned after adoption"
        );
        env.wait_event(ns, "adopting", "KeyAdopted").await?;
        // A pair whose private key is not the key's own.
        let other = env.key_by_hand_at(&sandbox, &tenant, "Other").await?;
        create_secret(
            &env.client,
            ns,
            "forged",
            BTreeMap::from([
                ("publicKey".to_owned(), other.public_key.clone()),
                ("privateKey".to_owned(), private_key),
            ]),
        )
        .await?;
        consent_to_adoption(env, ns, "forged", "forging").await?;
        env.create_key(
            ns,
            "forging",
            &tenant,
            json!({ "secret": { "name": "forged" }, "adopt": true }),
        )
        .await?;
        let refused = env.wait_reason(ns, "forging", "AdoptionRefused").await?;
        ensure!(
            refused
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.message.contains("does not authenticate")),
            "the forged pair was refused for another reason"
        );
        ensure!(
            created(&sandbox).await? == before + 1,
            "a refused adoption created a key"
        );
        Ok(())
    })
}

/// The operator died after writing the Secret of an attempt that asked for other roles than
/// the spec now does: adoption records the roles the key really has, so the key is then
/// replaced by one with the spec's roles.
fn adoption_records_what_the_attempt_requested(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "adopted";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop(Duration::from_secs(5));
        let key = env
            .create_key(
                ns,
                "adopted",
                &tenant,
                json!({ "roles": ["tenant-app-read"] }),
            )
            .await?;
        let uid = key.uid().context("uid")?;
        let attempt = "00aa00aa00aa00aa";
        let name = format!("{ns}/adopted #tko:{uid}:{attempt}");
        let created = env.key_by_hand(&tenant, &name).await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        let endpoint = accounts.get("imburse").await?.spec.account.base_url;
        let intent = json!({
            "attempt": attempt,
            "name": name,
            "tenantId": tenant,
            "roles": ["tenant-admin"],
            "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
            "endpoint": { "baseUrl": endpoint, "apiGeneration": "seed" },
        });
        env.keys(ns)
            .patch(
                "adopted",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": {
                    "finalizers": [FINALIZER],
                    "annotations": { "imbursepayments.com/create-pending": intent.to_string() },
                } })),
            )
            .await?;
        let private_key = secrecy::ExposeSecret::expose_secret(&created.private_key).to_owned();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": "adopted",
                "namespace": ns,
                "labels": {
                    "app.kubernetes.io/managed-by": "tenant-key-operator",
                    "imbursepayments.com/tenant-security-key": "adopted",
                },
                "annotations": { "imbursepayments.com/create-attempt": attempt },
                "ownerReferences": [{
                    "apiVersion": "imbursepayments.com/v1beta1",
                    "kind": "TenantSecurityKey",
                    "name": "adopted",
                    "uid": uid,
                    "controller": true,
                }],
            },
            "stringData": {
                "publicKey": created.public_key,
                "privateKey": private_key,
                "tenantId": tenant,
                "baseUrl": endpoint,
            },
        }))?;
        env.secrets(ns)
            .create(&PostParams::default(), &secret)
            .await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart()?;
        let public_key = expect_single_key(env, ns, "adopted", &tenant).await?;
        ensure!(
            public_key != created.public_key,
            "the adopted key with the old roles was kept"
        );
        let live = env.sandbox.admin().keys(Some(&tenant)).await?;
        let status = env
            .keys(ns)
            .get("adopted")
            .await?
            .status
            .context("status")?;
        ensure!(live.len() == 1 && live[0].roles == status.roles);
        ensure!(status.roles == ["tenant-app-read"]);
        Ok(())
    })
}
