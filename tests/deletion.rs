//! Deletion: deleting a resource revokes its key (or keeps it, with `Retain`), and deletion
//! always finishes: with its namespace, with an account it may no longer use, with a tenant
//! Imburse does not know, with a create in flight, with many replaced keys.
//!
//! Every test works in a namespace and with a tenant of its own, and those that make Imburse
//! misbehave do it on a sandbox of their own, so they all run at once.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults, Misbehaviour};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
};
use serde_json::json;
use support::{
    Env, FINALIZER, TestFn, create_namespace, expect_single_key, expect_single_key_at,
    no_secret_in_logs_events_or_status, poll, tenant_keys, wait_for,
};
use tenant_key_api::crd::{ClusterImburseAccount, ImburseAccount, TenantSecurityKey};
use testenv::keys::secret_key_pair;

fn main() -> std::process::ExitCode {
    let start = || Env::start(Config::generate(1, 11));
    let at_once: Vec<(&str, TestFn)> = testenv::named_tests![
        delete_policy_revokes_the_key,
        retain_policy_keeps_key_and_secret,
        namespace_deletion_revokes_its_keys,
        a_namespace_no_longer_allowed_still_revokes,
        unknown_tenant_closes_the_intent_and_deletes,
        a_finalizer_co_owned_by_another_manager_is_removed,
        retain_survives_foreground_deletion,
        a_404_without_imburse_error_body_is_no_revocation,
        a_key_whose_tenant_is_gone_counts_as_revoked,
        deletion_while_a_create_is_in_flight_revokes_its_key,
        deletion_with_more_replaced_keys_than_steps_finishes,
    ];
    // Last: scans what every test above made the operator write.
    let last: Vec<(&str, TestFn)> = testenv::named_tests![no_secret_in_logs_events_or_status];
    support::run_suites(start, at_once, last)
}

fn delete_policy_revokes_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "delete-policy";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        env.create_key(ns, "doomed", &tenant, json!({})).await?;
        env.wait_ready(ns, "doomed").await?;
        ensure!(env.sandbox_keys(&tenant).await?.len() == 1);
        env.delete_key(ns, "doomed").await?;
        env.wait_gone(ns, "doomed").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "key not revoked"
        );
        ensure!(
            env.secrets(ns).get_opt("doomed").await?.is_none(),
            "Secret left behind"
        );
        Ok(())
    })
}

fn retain_policy_keeps_key_and_secret(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "retain-policy";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        env.create_key(ns, "kept", &tenant, json!({"deletionPolicy": "Retain"}))
            .await?;
        let key = env.wait_ready(ns, "kept").await?;
        let public_key = key.status.and_then(|s| s.public_key).context("publicKey")?;
        env.delete_key(ns, "kept").await?;
        env.wait_gone(ns, "kept").await?;
        let secret = env.secrets(ns).get("kept").await?;
        ensure!(secret.owner_references().is_empty(), "Secret still owned");
        ensure!(secret_key_pair(&secret)?.public_key == public_key);
        ensure!(
            env.sandbox_keys(&tenant).await?.contains(&public_key),
            "key revoked"
        );
        Ok(())
    })
}

/// Deleting a namespace deletes its account, credentials and keys at once; the keys are still
/// revoked and the namespace goes away.
fn namespace_deletion_revokes_its_keys(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "doomed";
        env.namespace_with_account(ns, 0).await?;
        let tenants = [env.tenant(0, 2), env.tenant(0, 3)];
        for (i, tenant) in tenants.iter().enumerate() {
            let name = format!("key-{i}");
            env.create_key(ns, &name, tenant, json!({})).await?;
            expect_single_key(env, ns, &name, tenant).await?;
        }
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        wait_for(&accounts, "imburse", |a| {
            a.finalizers()
                .iter()
                .any(|f| f == "imbursepayments.com/in-use")
        })
        .await?;
        let namespaces: Api<Namespace> = Api::all(env.client.clone());
        namespaces.delete(ns, &DeleteParams::default()).await?;
        poll(
            || async { Ok(namespaces.get_opt(ns).await?.is_none()) },
            "the namespace to be deleted",
        )
        .await?;
        for tenant in &tenants {
            ensure!(
                env.sandbox_keys(tenant).await?.is_empty(),
                "a key of the deleted namespace is still live"
            );
        }
        Ok(())
    })
}

/// A namespace that lost its permission to use a cluster account can still delete its key,
/// and the key is revoked.
fn a_namespace_no_longer_allowed_still_revokes(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "disallowed";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        env.apply_cluster_account(
            "shared-trust",
            0,
            json!({ "allowedNamespaces": { "names": [ns] } }),
        )
        .await?;
        let tenant = env.tenant(0, 4);
        env.create_key(
            ns,
            "shared",
            &tenant,
            json!({ "accountRef": { "kind": "ClusterImburseAccount", "name": "shared-trust" } }),
        )
        .await?;
        expect_single_key(env, ns, "shared", &tenant).await?;
        let accounts: Api<ClusterImburseAccount> = Api::all(env.client.clone());
        accounts
            .patch(
                "shared-trust",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "spec": { "allowedNamespaces": { "names": ["elsewhere"] } } }),
                ),
            )
            .await?;
        env.wait_reason(ns, "shared", "NamespaceNotAllowed").await?;
        env.delete_key(ns, "shared").await?;
        env.wait_gone(ns, "shared").await?;
        ensure!(env.sandbox_keys(&tenant).await?.is_empty());
        Ok(())
    })
}

/// A tenant Imburse does not know: the create's 404 closes the intent, and deletion does not
/// hang on a listing that can only answer 404.
fn unknown_tenant_closes_the_intent_and_deletes(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "unknown-tenant";
        env.namespace_with_account(ns, 0).await?;
        let tenant = uuid::Uuid::new_v4().to_string();
        env.create_key(ns, "nowhere", &tenant, json!({})).await?;
        env.wait_reason(ns, "nowhere", "TenantNotFound").await?;
        let key = env.keys(ns).get("nowhere").await?;
        ensure!(
            key.status.and_then(|s| s.pending_create).is_none(),
            "the intent of a refused create stays open"
        );
        env.delete_key(ns, "nowhere").await?;
        env.wait_gone(ns, "nowhere").await?;
        Ok(())
    })
}

/// The finalizer was in the manifest the resource was created from, so another field manager
/// lists it too: deletion still removes it.
fn a_finalizer_co_owned_by_another_manager_is_removed(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "co-owned";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 5);
        let key: TenantSecurityKey = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": { "name": "restored", "namespace": ns, "finalizers": [FINALIZER] },
            "spec": {
                "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
                "tenantId": tenant,
                "roles": ["tenant-admin"],
            },
        }))?;
        env.keys(ns).create(&PostParams::default(), &key).await?;
        expect_single_key(env, ns, "restored", &tenant).await?;
        env.delete_key(ns, "restored").await?;
        env.wait_gone(ns, "restored").await?;
        ensure!(env.sandbox_keys(&tenant).await?.is_empty());
        Ok(())
    })
}

/// `Retain` under a foreground deletion (how Argo CD prunes): the garbage collector has no
/// owner reference to follow, so the Secret and its key survive by construction.
fn retain_survives_foreground_deletion(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "retained";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 6);
        env.create_key(ns, "kept", &tenant, json!({ "deletionPolicy": "Retain" }))
            .await?;
        let public_key = expect_single_key(env, ns, "kept", &tenant).await?;
        let secret = env.secrets(ns).get("kept").await?;
        ensure!(
            secret.owner_references().is_empty(),
            "a retained Secret has an owner reference"
        );
        env.keys(ns)
            .delete(
                "kept",
                &DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Foreground),
                    ..Default::default()
                },
            )
            .await?;
        env.wait_gone(ns, "kept").await?;
        let secret = env.secrets(ns).get("kept").await?;
        ensure!(secret_key_pair(&secret)?.public_key == public_key);
        ensure!(
            !secret
                .annotations()
                .contains_key("imbursepayments.com/owner-uid"),
            "the released Secret still names its owner"
        );
        ensure!(env.sandbox_keys(&tenant).await? == [public_key]);
        Ok(())
    })
}

/// Something in front of Imburse answers a revocation with a bare 404 (a route that does not
/// exist): the key is not taken for revoked, it stays queued until Imburse itself confirms.
fn a_404_without_imburse_error_body_is_no_revocation(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "bare-404";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 8);
        env.create_key(ns, "bare", &tenant, json!({})).await?;
        let old = expect_single_key_at(env, &sandbox, ns, "bare", &tenant).await?;
        sandbox
            .admin()
            .set_faults(&Faults::scripted(
                imburse::Operation::DeleteKey,
                1_000,
                Misbehaviour::status(404, "Not Found"),
            ))
            .await?;
        env.secrets(ns)
            .delete("bare", &DeleteParams::default())
            .await?;
        let replaced = wait_for(&env.keys(ns), "bare", |k| {
            k.status.as_ref().is_some_and(|s| {
                s.public_key.as_deref() != Some(old.as_str())
                    && s.previous_keys.iter().any(|p| p.public_key == old)
            })
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(
            tenant_keys(&sandbox, &tenant).await?.contains(&old),
            "the replaced key is gone"
        );
        let still_queued = env.keys(ns).get("bare").await?;
        ensure!(
            still_queued
                .status
                .as_ref()
                .is_some_and(|s| s.previous_keys.iter().any(|p| p.public_key == old)),
            "a bare 404 was taken for a revocation"
        );
        sandbox.admin().set_faults(&Faults::default()).await?;
        let new = replaced
            .status
            .and_then(|s| s.public_key)
            .context("new key")?;
        wait_for(&env.keys(ns), "bare", |k| {
            k.status
                .as_ref()
                .is_some_and(|s| s.previous_keys.is_empty())
        })
        .await?;
        ensure!(expect_single_key_at(env, &sandbox, ns, "bare", &tenant).await? == new);
        Ok(())
    })
}

/// Imburse answers a revocation with its documented "tenant not found": the tenant, and its
/// keys with it, are gone, so the key counts as revoked and deletion finishes, with an Event
/// that says so.
fn a_key_whose_tenant_is_gone_counts_as_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "tenant-gone";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 9);
        env.create_key(ns, "orphaned", &tenant, json!({})).await?;
        expect_single_key_at(env, &sandbox, ns, "orphaned", &tenant).await?;
        sandbox
            .admin()
            .set_faults(&Faults::scripted(
                imburse::Operation::DeleteKey,
                1_000,
                Misbehaviour::status(404, r#"{"errors":[{"errorCode":"TENANT_NOT_FOUND"}]}"#),
            ))
            .await?;
        env.delete_key(ns, "orphaned").await?;
        env.wait_gone(ns, "orphaned").await?;
        env.wait_event(ns, "orphaned", "TenantGone").await?;
        Ok(())
    })
}

/// The resource is deleted while Imburse holds the response to its create: the key reaches
/// the Secret, but recording it fails on the deleted resource's new version. The deletion
/// revokes that key before the Secret goes with it.
fn deletion_while_a_create_is_in_flight_revokes_its_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "deleted-in-flight";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 10);
        let faults = Faults {
            create_response_delay_ms: 3_000,
            ..Default::default()
        };
        sandbox.admin().set_faults(&faults).await?;
        env.create_key(ns, "deleted-in-flight", &tenant, json!({}))
            .await?;
        poll(
            || async { Ok(!tenant_keys(&sandbox, &tenant).await?.is_empty()) },
            "the key to be created at the sandbox",
        )
        .await?;
        env.delete_key(ns, "deleted-in-flight").await?;
        env.wait_gone(ns, "deleted-in-flight").await?;
        sandbox.admin().set_faults(&Faults::default()).await?;
        let live = tenant_keys(&sandbox, &tenant).await?;
        ensure!(
            live.is_empty(),
            "the deleted resource's key lives on: {live:?}"
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
        let tenant = env.tenant(0, 7);
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
