//! Corner cases where a key could be revoked, lost, looped or exposed by accident, each on the
//! real control plane and the sandbox. Sandbox faults are global, so the tests run one at a
//! time against one environment.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults, Misbehaviour, Sandbox};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
};
use serde_json::json;
use support::{
    Env, TestFn, create_namespace, expect_single_key, expect_single_key_at, poll, secret_key_pair,
    wait_for,
};
use tenant_key_operator::{
    controller::{FIELD_MANAGER, intent},
    crd::{ClusterImburseAccount, ImburseAccount, TenantSecurityKey},
};

const FINALIZER: &str = "imbursepayments.com/revoke-key";

fn main() -> std::process::ExitCode {
    // Accounts whose credentials Imburse refused are verified again after two seconds.
    let start = || {
        Env::start_with(
            Config::generate(1, 24),
            imburse_sandbox::Options::default(),
            &["--credentials-retry-interval", "2s"],
        )
    };
    let tests: Vec<(&str, TestFn)> = crate::named_tests![
        orphan_cleanup_spares_keys_it_did_not_make,
        orphans_are_found_after_the_intent_was_wiped,
        namespace_deletion_revokes_its_keys,
        a_namespace_no_longer_allowed_still_revokes,
        unknown_tenant_closes_the_intent_and_deletes,
        a_secret_the_api_server_refuses_creates_no_key,
        schema_refuses_empty_and_built_in_secret_types,
        endpoint_change_replaces_the_key_where_it_lives,
        adoption_records_what_the_attempt_requested,
        two_operator_processes_keep_one_key_per_resource,
        a_late_key_of_a_superseded_attempt_is_revoked,
        a_finalizer_co_owned_by_another_manager_is_removed,
        retain_survives_foreground_deletion,
        a_refusal_of_the_moment_does_not_stall_an_account,
        a_404_without_imburse_error_body_is_no_revocation,
        a_secret_that_appears_meanwhile_is_never_overwritten,
        a_key_whose_tenant_is_gone_counts_as_revoked,
    ];
    support::run_suite(start, tests)
}

/// Two resources with the same key name and a key made by hand with that name too: the
/// second resource's lost create response is cleaned up without touching the others.
fn orphan_cleanup_spares_keys_it_did_not_make(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "same-name";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        let hand_made = env.key_by_hand(&tenant, "Admin Key").await?.public_key;
        let named = json!({ "name": "Admin Key" });
        env.create_key(ns, "first", &tenant, named.clone()).await?;
        let first = env
            .wait_ready(ns, "first")
            .await?
            .status
            .and_then(|s| s.public_key)
            .context("first key")?;
        env.sandbox
            .admin()
            .set_faults(&Faults {
                lose_create_responses: 1,
                ..Default::default()
            })
            .await?;
        env.create_key(ns, "second", &tenant, named).await?;
        env.wait_event(ns, "second", "OrphanKeyDeleted").await?;
        let second = env
            .wait_ready(ns, "second")
            .await?
            .status
            .and_then(|s| s.public_key)
            .context("second key")?;
        let mut expected = vec![hand_made, first, second];
        expected.sort();
        let mut live = env.sandbox_keys(&tenant).await?;
        live.sort();
        ensure!(
            live == expected,
            "live keys {live:?}, expected {expected:?}"
        );
        Ok(())
    })
}

/// A replacement is interrupted after Imburse created the key, and the operator's metadata is
/// then wiped by a replace of the whole object: the key nobody knows is still revoked.
fn orphans_are_found_after_the_intent_was_wiped(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "wiped";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        env.create_key(ns, "wiped", &tenant, json!({})).await?;
        expect_single_key(env, ns, "wiped", &tenant).await?;
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 5_000,
                ..Default::default()
            })
            .await?;
        env.keys(ns)
            .patch(
                "wiped",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "roles": ["tenant-app-read"] } })),
            )
            .await?;
        poll(
            || async { Ok(env.sandbox_keys(&tenant).await?.len() == 2) },
            "the replacement key to be created",
        )
        .await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        // What `kubectl replace` with the manifest from Git does: the operator's finalizer and
        // intent are gone.
        let mut replaced = env.keys(ns).get("wiped").await?;
        replaced.metadata.finalizers = None;
        replaced.metadata.annotations = None;
        env.keys(ns)
            .replace("wiped", &PostParams::default(), &replaced)
            .await?;
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart()?;
        env.wait_event(ns, "wiped", "OrphanKeyDeleted").await?;
        let key = env.wait_ready(ns, "wiped").await?;
        ensure!(key.finalizers().iter().any(|f| f == FINALIZER));
        expect_single_key(env, ns, "wiped", &tenant).await?;
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

/// A Secret the API server refuses (an invalid label value): no key is created, the resource
/// stalls with its own reason, and it stays that way instead of looping.
fn a_secret_the_api_server_refuses_creates_no_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "refused-secret";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 5);
        env.create_key(
            ns,
            "refused",
            &tenant,
            json!({ "secret": { "labels": { "team": "not a valid label value!" } } }),
        )
        .await?;
        let key = env.wait_reason(ns, "refused", "SecretRejected").await?;
        let stalled = key
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
            .map(|c| c.status.clone());
        ensure!(stalled.as_deref() == Some("True"), "not stalled");
        env.wait_event(ns, "refused", "SecretRejected").await?;
        let version = key.metadata.resource_version.clone();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stats = env.sandbox.admin().stats().await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a key was created"
        );
        ensure!(
            env.keys(ns).get("refused").await?.metadata.resource_version == version,
            "the resource keeps being rewritten: {stats:?}"
        );
        // Fixing the spec lets the key through.
        env.keys(ns)
            .patch(
                "refused",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "spec": { "secret": { "labels": { "team": "payments" } } } }),
                ),
            )
            .await?;
        expect_single_key(env, ns, "refused", &tenant).await?;
        Ok(())
    })
}

fn schema_refuses_empty_and_built_in_secret_types(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-types";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let tenant = env.tenant(0, 6);
        for refused in [
            "",
            "kubernetes.io/service-account-token",
            "bootstrap.kubernetes.io/token",
            "no-domain",
        ] {
            let created = env
                .create_key(
                    ns,
                    "typed",
                    &tenant,
                    json!({ "secret": { "type": refused } }),
                )
                .await;
            ensure!(created.is_err(), "type {refused:?} was accepted");
        }
        env.create_key(
            ns,
            "typed",
            &tenant,
            json!({ "secret": { "type": "example.com/imburse-key" } }),
        )
        .await?;
        Ok(())
    })
}

/// The account moves to another Imburse endpoint: a new key is made there, and the old key is
/// revoked where it lives, not at the new endpoint.
fn endpoint_change_replaces_the_key_where_it_lives(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "moved";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 7);
        env.create_key(ns, "moved", &tenant, json!({})).await?;
        expect_single_key(env, ns, "moved", &tenant).await?;
        let other = Sandbox::start(env.config.clone()).await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        accounts
            .patch(
                "imburse",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "baseUrl": other.base_url() } })),
            )
            .await?;
        wait_for(&env.keys(ns), "moved", |k| {
            k.status
                .as_ref()
                .and_then(|s| s.endpoint.as_ref())
                .is_some_and(|e| e.base_url == other.base_url())
        })
        .await?;
        expect_single_key_at(env, &other, ns, "moved", &tenant).await?;
        poll(
            || async { Ok(env.sandbox_keys(&tenant).await?.is_empty()) },
            "the old key to be revoked at the old endpoint",
        )
        .await?;
        let secret = env.secrets(ns).get("moved").await?;
        let base_url = secret
            .data
            .as_ref()
            .and_then(|d| d.get("baseUrl"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        ensure!(base_url.as_deref() == Some(other.base_url().as_str()));
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
        let tenant = env.tenant(0, 8);
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

/// Two operator processes reconcile the same keys at once (a second replica without leader
/// election, or a leader that has not noticed yet that it lost the lease): every resource ends
/// with exactly one live key, its Secret authenticates, and nothing is orphaned.
fn two_operator_processes_keep_one_key_per_resource(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-second-").tempdir()?;
    let second =
        env.start_operator("second-operator", logs.path(), &["--leader-election=false"])?;
    let result = env.block_on(async {
        let ns = "split-brain";
        env.namespace_with_account(ns, 0).await?;
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 300,
                latency_ms: 20,
                jitter_ms: 40,
                ..Default::default()
            })
            .await?;
        let tenants: Vec<String> = (9..15).map(|i| env.tenant(0, i)).collect();
        for (i, tenant) in tenants.iter().enumerate() {
            env.create_key(ns, &format!("key-{i}"), tenant, json!({}))
                .await?;
        }
        // A replacement of each while both processes run.
        for (i, tenant) in tenants.iter().enumerate() {
            expect_single_key(env, ns, &format!("key-{i}"), tenant).await?;
            env.keys(ns)
                .patch(
                    &format!("key-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "roles": ["tenant-app-read"] } })),
                )
                .await?;
        }
        for (i, tenant) in tenants.iter().enumerate() {
            let name = format!("key-{i}");
            wait_for(&env.keys(ns), &name, |k| {
                k.status
                    .as_ref()
                    .is_some_and(|s| s.roles == ["tenant-app-read"] && s.previous_keys.is_empty())
            })
            .await?;
            expect_single_key(env, ns, &name, tenant).await?;
        }
        anyhow::Ok(())
    });
    drop(second);
    result
}

/// The state a slow process leaves when another superseded its attempt: the other process's
/// own attempt is open, and the Secret holds the key the slow one made meanwhile (its status
/// write lost the race). That key is in no status; the Secret is about to be overwritten by the
/// open attempt, so the key is revoked rather than lost.
fn a_late_key_of_a_superseded_attempt_is_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "late-key";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 20);
        env.create_key(ns, "late", &tenant, json!({ "rotation": { "gracePeriod": "0s" } }))
            .await?;
        let first = expect_single_key(env, ns, "late", &tenant).await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop(Duration::from_secs(5));
        let key = env.keys(ns).get("late").await?;
        let uid = key.uid().context("uid")?;
        let status = key.status.context("status")?;
        let kube_system = Api::<Namespace>::all(env.client.clone())
            .get("kube-system")
            .await?;
        let cluster = intent::cluster_id(kube_system.metadata.uid.as_deref().unwrap_or_default());
        let name = |attempt: &str| intent::key_name(&format!("{ns}/late"), &uid, attempt, &cluster);
        let (superseded, open) = ("0a0a0a0a0a0a0a0a", "0b0b0b0b0b0b0b0b");
        let late = env.key_by_hand(&tenant, &name(superseded)).await?;
        // As the other process wrote it: the same field manager, the whole status.
        let mut forged = serde_json::to_value(&status)?;
        forged["pendingCreate"] = json!({
            "attempt": open,
            "name": name(open),
            "tenantId": tenant,
            "roles": status.roles,
            "accountRef": status.account_ref,
            "endpoint": status.endpoint,
        });
        env.keys(ns)
            .patch_status(
                "late",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "imbursepayments.com/v1beta1",
                    "kind": "TenantSecurityKey",
                    "status": forged,
                })),
            )
            .await?;
        let private_key = secrecy::ExposeSecret::expose_secret(&late.private_key).to_owned();
        env.secrets(ns)
            .patch(
                "late",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": { "annotations": { "imbursepayments.com/create-attempt": superseded } },
                    "stringData": { "publicKey": late.public_key, "privateKey": private_key },
                })),
            )
            .await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart()?;
        let replacement = wait_for(&env.keys(ns), "late", |k| {
            k.status.as_ref().is_some_and(|s| {
                s.pending_create.is_none()
                    && s.previous_keys.is_empty()
                    && s.public_key.as_deref().is_some_and(|p| p != first)
            })
        })
        .await?;
        let current = support::public_key(&replacement).context("current key")?;
        ensure!(current != late.public_key, "the late key was recorded");
        expect_single_key(env, ns, "late", &tenant).await?;
        env.wait_event(ns, "late", "OrphanKeyDeleted").await
    })
}

/// The finalizer was in the manifest the resource was created from, so another field manager
/// lists it too: deletion still removes it.
fn a_finalizer_co_owned_by_another_manager_is_removed(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "co-owned";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 15);
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
        let tenant = env.tenant(0, 16);
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

/// Imburse refuses the account's credentials once (a clock skew, a refusal of the moment):
/// the account is verified again by itself, without anyone editing it.
fn a_refusal_of_the_moment_does_not_stall_an_account(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "refused-once";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        env.credentials_secret(ns, "creds", 0).await?;
        env.sandbox
            .admin()
            // Twice: the first refusal's status write triggers one more verification at once.
            .set_faults(&Faults::scripted(
                imburse::Operation::Token,
                2,
                Misbehaviour::status(401, r#"{"errors":[{"errorCode":"INVALID_SIGNATURE"}]}"#),
            ))
            .await?;
        // Another spelling of the sandbox's host, so that no token cached for the account's
        // other uses answers for it.
        let base_url = env.sandbox.base_url().replace("127.0.0.1", "localhost");
        env.apply_account(ns, "imburse", json!({ "baseUrl": base_url }), "creds")
            .await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        wait_for(&accounts, "imburse", |a| {
            support::ready(a.status.as_ref().map(|s| &s.conditions))
                == Some(("False", "CredentialsInvalid"))
        })
        .await?;
        wait_for(&accounts, "imburse", |a| {
            support::ready(a.status.as_ref().map(|s| &s.conditions))
                == Some(("True", "CredentialsVerified"))
        })
        .await?;
        Ok(())
    })
}

/// Something in front of Imburse answers a revocation with a bare 404 (a route that does not
/// exist): the key is not taken for revoked, it stays queued until Imburse itself confirms.
fn a_404_without_imburse_error_body_is_no_revocation(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "bare-404";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 17);
        env.create_key(ns, "bare", &tenant, json!({})).await?;
        let old = expect_single_key(env, ns, "bare", &tenant).await?;
        env.sandbox
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
            env.sandbox_keys(&tenant).await?.contains(&old),
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
        env.sandbox.admin().set_faults(&Faults::default()).await?;
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
        ensure!(expect_single_key(env, ns, "bare", &tenant).await? == new);
        Ok(())
    })
}

/// Someone creates a Secret of the target's name while the operator waits for Imburse to
/// create the key: the operator read no Secret, but never writes over one it has not read
/// and found its own. The foreign Secret stays as it was, and the key it cannot deliver is
/// revoked at once.
fn a_secret_that_appears_meanwhile_is_never_overwritten(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "appeared";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 18);
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 3_000,
                ..Default::default()
            })
            .await?;
        env.create_key(ns, "raced", &tenant, json!({})).await?;
        poll(
            || async { Ok(!env.sandbox_keys(&tenant).await?.is_empty()) },
            "the key to be created at the sandbox",
        )
        .await?;
        let foreign = BTreeMap::from([("token".to_owned(), "someone else's".to_owned())]);
        support::create_secret(&env.client, ns, "raced", foreign).await?;
        env.wait_reason(ns, "raced", "SecretConflict").await?;
        let secret = env.secrets(ns).get("raced").await?;
        ensure!(secret.owner_references().is_empty());
        let data = secret.data.context("data")?;
        ensure!(
            data.keys().collect::<Vec<_>>() == ["token"] && data["token"].0 == b"someone else's",
            "the foreign Secret was written"
        );
        poll(
            || async { Ok(env.sandbox_keys(&tenant).await?.is_empty()) },
            "the undeliverable key to be revoked",
        )
        .await?;
        Ok(())
    })
}

/// Imburse answers a revocation with its documented "tenant not found": the tenant, and its
/// keys with it, are gone, so the key counts as revoked and deletion finishes, with an Event
/// that says so.
fn a_key_whose_tenant_is_gone_counts_as_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "tenant-gone";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 19);
        env.create_key(ns, "orphaned", &tenant, json!({})).await?;
        expect_single_key(env, ns, "orphaned", &tenant).await?;
        env.sandbox
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
