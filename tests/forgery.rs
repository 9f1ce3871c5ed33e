//! Trust and forgery: what someone who can edit a namespace can write is a claim, never a fact.
//! An editor forges what the operator reads back (an intent annotation, a Secret that claims
//! an attempt with another namespace's key) on the real control plane and the sandbox, and no
//! key of anyone else is recorded, replaced or revoked.
//!
//! The test stops the operator to lay the forgery out before it looks, so it runs alone.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::Config;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{Env, FINALIZER, TestFn, create_namespace, expect_single_key, recorded_key};

const INTENT_ANNOTATION: &str = "imbursepayments.com/create-pending";

fn main() -> std::process::ExitCode {
    let start = || Env::start(Config::generate(1, 1));
    let tests: Vec<(&str, TestFn)> =
        testenv::named_tests![a_forged_intent_and_secret_revoke_no_key_of_another_namespace];
    support::run_suite(start, tests)
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
