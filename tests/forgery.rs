//! What someone who can edit a namespace can write is a claim, never a fact, and nothing a key
//! asks for is without bound. Each test forges, floods or swaps what the operator reads back
//! (annotations, owner references, Secrets, credentials, names) on the real control plane and
//! the sandbox, and checks that no key of anyone else is touched and every deletion finishes.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults, Misbehaviour, ScriptedFault};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{Env, TestFn, create_namespace, expect_single_key, poll, wait_for};
use tenant_key_operator::crd::{ImburseAccount, TenantSecurityKey};

const FINALIZER: &str = "imbursepayments.com/revoke-key";
const INTENT_ANNOTATION: &str = "imbursepayments.com/create-pending";
const ROTATE_ANNOTATION: &str = "imbursepayments.com/rotate-requested-at";

fn main() -> std::process::ExitCode {
    // Two Imburse accounts, so credentials can be swapped for another account's; live keys
    // are verified every two seconds, and what Imburse refused is asked again after two.
    let start = || {
        Env::start_with(
            Config::generate(2, 8),
            imburse_sandbox::Options::default(),
            &[
                "--verify-interval",
                "2s",
                "--credentials-retry-interval",
                "2s",
            ],
        )
    };
    let tests: Vec<(&str, TestFn)> = crate::named_tests![
        a_forged_intent_and_secret_revoke_no_key_of_another_namespace,
        rotations_stop_at_the_cap_and_deletion_revokes_them_all,
        deletion_with_more_replaced_keys_than_steps_finishes,
        an_account_a_replaced_key_lives_at_is_kept_until_it_is_revoked,
        a_rotation_interval_below_the_floor_mints_nothing,
        swapped_credentials_never_count_a_live_key_as_revoked,
        the_longest_name_gets_its_key_secret_and_events,
        a_listing_that_lacks_a_key_replaces_nothing,
    ];
    support::run_suite(start, tests)
}

/// The public key the resource's status records.
async fn recorded_key(env: &Env, ns: &str, name: &str) -> Result<String> {
    env.keys(ns)
        .get(name)
        .await?
        .status
        .and_then(|s| s.public_key)
        .context("no public key recorded")
}

fn stop_operator(env: &Env) {
    env.operator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stop(std::time::Duration::from_secs(5));
}

fn restart_operator(env: &Env) -> Result<()> {
    env.operator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restart()
}

/// An editor of namespace `a` forges, for two resources of theirs, what an interrupted create
/// leaves behind: an intent annotation naming an attempt, and a Secret owned by the resource
/// that claims that attempt with the public key of a key of namespace `b` (which `b`'s status
/// shows). One intent names the cluster account that only `b` may use; the other names `a`'s
/// own account and `b`'s tenant, which `a` may use. Neither makes the operator record, replace
/// or revoke `b`'s key: both resources end with keys of their own.
fn a_forged_intent_and_secret_revoke_no_key_of_another_namespace(env: &Env) -> Result<()> {
    env.block_on(async {
        let (a, b) = ("forger", "victim");
        let tenant = env.tenant(0, 0);
        create_namespace(&env.client, b, BTreeMap::new()).await?;
        env.apply_cluster_account(
            "only-victim",
            0,
            json!({ "allowedNamespaces": { "names": [b] } }),
        )
        .await?;
        env.create_key(
            b,
            "payments",
            &tenant,
            json!({ "accountRef": { "kind": "ClusterImburseAccount", "name": "only-victim" } }),
        )
        .await?;
        let victim = expect_single_key(env, b, "payments", &tenant).await?;
        let cluster_endpoint =
            json!({ "baseUrl": env.sandbox.base_url(), "apiGeneration": "seed" });

        env.namespace_with_account(a, 0).await?;
        stop_operator(env);
        let forged = [
            (
                "via-cluster-account",
                json!({ "kind": "ClusterImburseAccount", "name": "only-victim" }),
            ),
            (
                "via-own-account",
                json!({ "kind": "ImburseAccount", "name": "imburse" }),
            ),
        ];
        for (name, account) in &forged {
            let key = env.create_key(a, name, &tenant, json!({})).await?;
            let uid = key.uid().context("uid")?;
            let attempt = "x1x1x1x1x1x1x1x1";
            let intent = json!({
                "attempt": attempt,
                "name": format!("{a}/{name} #tko:{uid}:{attempt}"),
                "tenantId": tenant,
                "roles": ["tenant-admin"],
                "accountRef": account,
                "endpoint": cluster_endpoint,
            });
            env.keys(a)
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": {
                        "finalizers": [FINALIZER],
                        "annotations": { INTENT_ANNOTATION: intent.to_string() },
                    } })),
                )
                .await?;
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "namespace": a,
                    "labels": {
                        "app.kubernetes.io/managed-by": "tenant-key-operator",
                        "imbursepayments.com/tenant-security-key": name,
                    },
                    "annotations": { "imbursepayments.com/create-attempt": attempt },
                    "ownerReferences": [{
                        "apiVersion": "imbursepayments.com/v1beta1",
                        "kind": "TenantSecurityKey",
                        "name": name,
                        "uid": uid,
                        "controller": true,
                    }],
                },
                "stringData": {
                    "publicKey": victim,
                    "privateKey": "Zm9yZ2VkIHByaXZhdGUga2V5IG9mIHNvbWVib2R5IGVsc2U=",
                    "tenantId": tenant,
                    "baseUrl": env.sandbox.base_url(),
                },
            }))?;
            env.secrets(a)
                .create(&PostParams::default(), &secret)
                .await?;
        }
        restart_operator(env)?;
        for (name, _) in &forged {
            let own = env.wait_ready(a, name).await?;
            let own_key = own.status.and_then(|s| s.public_key).context("own key")?;
            ensure!(
                own_key != victim,
                "{name} recorded the other namespace's key"
            );
        }
        env.wait_event(a, "via-cluster-account", "IntentIgnored")
            .await?;
        env.wait_event(a, "via-own-account", "SecretClaimRefused")
            .await?;
        let live = env.sandbox_keys(&tenant).await?;
        ensure!(
            live.contains(&victim),
            "the other namespace's key was revoked"
        );
        ensure!(
            recorded_key(env, b, "payments").await? == victim,
            "the other namespace's resource lost its key"
        );
        for (name, _) in &forged {
            env.delete_key(a, name).await?;
            env.wait_gone(a, name).await?;
        }
        ensure!(
            env.sandbox_keys(&tenant).await? == [victim.clone()],
            "deleting the forgers' resources revoked the wrong keys"
        );
        Ok(())
    })
}

/// Rotation requests beyond the cap of replaced keys waiting for their grace period (1h) make
/// no key: the resource says why. Deleting it revokes every key, also the waiting ones.
fn rotations_stop_at_the_cap_and_deletion_revokes_them_all(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "rotation-cap";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        env.create_key(
            ns,
            "busy",
            &tenant,
            json!({ "rotation": { "gracePeriod": "1h" } }),
        )
        .await?;
        expect_single_key(env, ns, "busy", &tenant).await?;
        let cap = tenant_key_operator::controller::decision::MAX_PREVIOUS_KEYS;
        for request in 0..cap + 2 {
            let value = format!("request-{request}");
            env.keys(ns)
                .patch(
                    "busy",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({ "metadata": { "annotations": { ROTATE_ANNOTATION: value } } }),
                    ),
                )
                .await?;
            if request < cap {
                wait_for(&env.keys(ns), "busy", |k| {
                    k.status
                        .as_ref()
                        .and_then(|s| s.last_handled_rotate_request.as_deref())
                        == Some(value.as_str())
                })
                .await?;
            }
        }
        let limited = env.wait_reason(ns, "busy", "RotationLimited").await?;
        let pending = limited
            .status
            .map(|s| s.previous_keys.len())
            .unwrap_or_default();
        ensure!(
            pending == cap,
            "{pending} replaced keys wait, the cap is {cap}"
        );
        let live = env.sandbox_keys(&tenant).await?.len();
        ensure!(
            live == cap + 1,
            "{live} live keys for {cap} replaced and one current"
        );
        env.delete_key(ns, "busy").await?;
        env.wait_gone(ns, "busy").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a key outlived its resource"
        );
        Ok(())
    })
}

/// A resource whose status lists more replaced keys than one reconcile takes steps (as an
/// older version, without a cap, could leave it): the deletion's progress is kept between
/// reconciles, and the resource goes with every key revoked.
fn deletion_with_more_replaced_keys_than_steps_finishes(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "many-replaced";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 2);
        env.create_key(
            ns,
            "heavy",
            &tenant,
            json!({ "rotation": { "gracePeriod": "1h" } }),
        )
        .await?;
        expect_single_key(env, ns, "heavy", &tenant).await?;
        let mut previous = Vec::new();
        for i in 0..20 {
            let key = env.key_by_hand(&tenant, &format!("older key {i}")).await?;
            previous.push(json!({
                "publicKey": key.public_key,
                "tenantId": tenant,
                "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
                "revokeAfter": "2099-01-01T00:00:00Z",
            }));
        }
        env.keys(ns)
            .patch_status(
                "heavy",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "previousKeys": previous } })),
            )
            .await?;
        env.delete_key(ns, "heavy").await?;
        env.wait_gone(ns, "heavy").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a replaced key is still live"
        );
        Ok(())
    })
}

/// The key moves from account `sa` to account `sb` with a grace period; `sa` is deleted while
/// the replaced key still lives there. `sa` and its credentials stay until that key is revoked,
/// so deleting the resource revokes both keys and nothing hangs.
fn an_account_a_replaced_key_lives_at_is_kept_until_it_is_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "moved-account";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        for name in ["sa", "sb"] {
            let secret = format!("{name}-credentials");
            env.credentials_secret(ns, &secret, 0).await?;
            env.apply_account(ns, name, json!({}), &secret).await?;
            wait_for(&accounts, name, |a| {
                support::ready(a.status.as_ref().map(|s| &s.conditions))
                    == Some(("True", "CredentialsVerified"))
            })
            .await?;
        }
        let tenant = env.tenant(0, 3);
        env.create_key(
            ns,
            "moving",
            &tenant,
            json!({ "accountRef": { "name": "sa" }, "rotation": { "gracePeriod": "10m" } }),
        )
        .await?;
        let first = expect_single_key(env, ns, "moving", &tenant).await?;
        env.keys(ns)
            .patch(
                "moving",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "accountRef": { "name": "sb" } } })),
            )
            .await?;
        wait_for(&env.keys(ns), "moving", |k| {
            k.status.as_ref().is_some_and(|s| {
                s.account_ref.as_ref().is_some_and(|a| a.name == "sb")
                    && s.previous_keys.iter().any(|p| p.public_key == first)
            })
        })
        .await?;
        accounts.delete("sa", &DeleteParams::default()).await?;
        // The operator looks at a deleting account again every two seconds until no key uses
        // it; an account it let go would be gone within this wait.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        let sa = accounts.get("sa").await?;
        ensure!(
            sa.finalizers()
                .iter()
                .any(|f| f == "imbursepayments.com/in-use"),
            "the account of a replaced key can be deleted"
        );
        env.delete_key(ns, "moving").await?;
        env.wait_gone(ns, "moving").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a key outlived its resource"
        );
        poll(
            || async { Ok(accounts.get_opt("sa").await?.is_none()) },
            "the account no key uses any more to go",
        )
        .await?;
        Ok(())
    })
}

/// `rotation.interval: 1ms` is refused before any key exists: no key is minted in a loop.
fn a_rotation_interval_below_the_floor_mints_nothing(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "fast-rotation";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 4);
        env.create_key(
            ns,
            "spinning",
            &tenant,
            json!({ "rotation": { "interval": "1ms" } }),
        )
        .await?;
        let key = env.wait_reason(ns, "spinning", "InvalidSpec").await?;
        let message = key
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            message.contains("rotation.interval"),
            "unclear refusal: {message}"
        );
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a key was minted"
        );
        env.delete_key(ns, "spinning").await?;
        env.wait_gone(ns, "spinning").await?;
        Ok(())
    })
}

/// The account's credentials Secret is repointed at another Imburse account's key pair, which
/// does not know the key's tenant: deleting the key does not count it as revoked. The resource
/// holds with `KeyNotRevoked`, the key stays recorded, and once the right credentials are back
/// it is revoked and the resource goes.
fn swapped_credentials_never_count_a_live_key_as_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "swapped";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 5);
        env.create_key(ns, "kept", &tenant, json!({})).await?;
        let live = expect_single_key(env, ns, "kept", &tenant).await?;
        let pair = |account: usize| {
            let account = env.account(account);
            json!({ "stringData": {
                "publicKey": account.public_key,
                "privateKey": secrecy::ExposeSecret::expose_secret(&account.private_key),
            } })
        };
        let secrets = env.secrets(ns);
        secrets
            .patch(
                "imburse-credentials",
                &PatchParams::default(),
                &Patch::Merge(pair(1)),
            )
            .await?;
        env.delete_key(ns, "kept").await?;
        env.wait_reason(ns, "kept", "KeyNotRevoked").await?;
        ensure!(
            env.sandbox_keys(&tenant).await? == [live.clone()],
            "the key is gone"
        );
        let held = env.keys(ns).get("kept").await?;
        ensure!(
            held.finalizers().iter().any(|f| f == FINALIZER),
            "the resource let go of a live key"
        );
        secrets
            .patch(
                "imburse-credentials",
                &PatchParams::default(),
                &Patch::Merge(pair(0)),
            )
            .await?;
        env.wait_gone(ns, "kept").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "the key outlived its resource"
        );
        Ok(())
    })
}

/// A name of 250 characters, which the API server accepts: the Secret's labels fit, the
/// Events are published, and the key becomes Ready and is revoked on deletion.
fn the_longest_name_gets_its_key_secret_and_events(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "long-names";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 6);
        let name = format!("k{}", "-long".repeat(49).trim_end_matches('-'));
        let name = format!("{name}x");
        ensure!(name.len() >= 240, "name of {} characters", name.len());
        env.create_key(ns, &name, &tenant, json!({})).await?;
        expect_single_key(env, ns, &name, &tenant).await?;
        env.wait_event(ns, &name, "KeyCreated").await?;
        let labelled = env
            .secrets(ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tenant-key-operator"))
            .await?;
        ensure!(
            labelled.items.iter().any(|s| s.name_any() == name),
            "no labelled Secret"
        );
        // A change to the Secret still reaches its resource: deleting it gets a new key.
        let before = recorded_key(env, ns, &name).await?;
        env.secrets(ns)
            .delete(&name, &DeleteParams::default())
            .await?;
        wait_for(&env.keys(ns), &name, |k: &TenantSecurityKey| {
            k.status
                .as_ref()
                .and_then(|s| s.public_key.as_deref())
                .is_some_and(|k| k != before)
        })
        .await?;
        env.delete_key(ns, &name).await?;
        env.wait_gone(ns, &name).await?;
        ensure!(env.sandbox_keys(&tenant).await?.is_empty());
        Ok(())
    })
}

/// Imburse's listing answers without the key a few times (a partial or lagging answer): the
/// verifier asks for the key itself before it replaces anything, so the key is kept.
fn a_listing_that_lacks_a_key_replaces_nothing(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "empty-listing";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 7);
        env.create_key(ns, "steady", &tenant, json!({})).await?;
        let key = expect_single_key(env, ns, "steady", &tenant).await?;
        let empty = ScriptedFault {
            operation: imburse::Operation::ListKeys,
            count: 3,
            misbehaviour: Misbehaviour::status(200, r#"{"tenantKeys":[]}"#),
        };
        env.sandbox
            .admin()
            .set_faults(&Faults {
                scripted: vec![empty],
                ..Default::default()
            })
            .await?;
        poll(
            || async {
                let faults = env.sandbox.admin().faults().await?;
                Ok(faults.scripted.iter().all(|f| f.count == 0))
            },
            "three listings without the key",
        )
        .await?;
        ensure!(
            recorded_key(env, ns, "steady").await? == key,
            "the key was replaced"
        );
        ensure!(
            env.sandbox_keys(&tenant).await? == [key],
            "the key was revoked"
        );
        let reasons = env.event_reasons(ns, "steady").await?;
        ensure!(
            !reasons.iter().any(|r| r == "KeyRevokedExternally"),
            "a listing alone counted the key as revoked"
        );
        Ok(())
    })
}
