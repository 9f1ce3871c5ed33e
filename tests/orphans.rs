//! Orphans: a key Imburse created that no Secret holds (a lost answer, a crash, a slower
//! process's late key, an intent wiped by a replace) is revoked, and no key the operator did
//! not make is touched.
//!
//! The tests that only make Imburse misbehave do it on a sandbox of their own and run at once;
//! those that kill or stop the operator run one at a time after them, and a final pass scans
//! everything the operator wrote for secrets. One process without leader election: a
//! restarted one works at once, not after its predecessor's Lease expired.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Env, FINALIZER, TestFn, expect_single_key, expect_single_key_at,
    no_secret_in_logs_events_or_status, poll, tenant_keys, wait_for,
};
use tenant_key_operator::controller::{FIELD_MANAGER, intent};

fn main() -> std::process::ExitCode {
    let start = || {
        Env::start_with(
            Config::generate(1, 6),
            imburse_sandbox::Options::default(),
            &["--leader-election=false"],
        )
    };
    let at_once: Vec<(&str, TestFn)> = testenv::named_tests![
        lost_create_response_leaves_no_orphan,
        orphan_cleanup_spares_keys_it_did_not_make,
    ];
    let one_at_a_time: Vec<(&str, TestFn)> = testenv::named_tests![
        crash_between_create_and_secret_write_leaves_no_orphan,
        orphans_are_found_after_the_intent_was_wiped,
        a_late_key_of_a_superseded_attempt_is_revoked,
        // Last: scans what every test above made the operator write.
        no_secret_in_logs_events_or_status,
    ];
    support::run_suites(start, at_once, one_at_a_time)
}

fn lost_create_response_leaves_no_orphan(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "lost-response";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 0);
        let faults = Faults {
            lose_create_responses: 1,
            ..Default::default()
        };
        sandbox.admin().set_faults(&faults).await?;
        env.create_key(ns, "lost-response", &tenant, json!({}))
            .await?;
        expect_single_key_at(env, &sandbox, ns, "lost-response", &tenant).await?;
        env.wait_event(ns, "lost-response", "OrphanKeyDeleted")
            .await?;
        Ok(())
    })
}

/// Two resources with the same key name and a key made by hand with that name too: the
/// second resource's lost create response is cleaned up without touching the others.
fn orphan_cleanup_spares_keys_it_did_not_make(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "same-name";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 1);
        let hand_made = env
            .key_by_hand_at(&sandbox, &tenant, "Admin Key")
            .await?
            .public_key;
        let named = json!({ "name": "Admin Key" });
        env.create_key(ns, "first", &tenant, named.clone()).await?;
        let first = env
            .wait_ready(ns, "first")
            .await?
            .status
            .and_then(|s| s.public_key)
            .context("first key")?;
        sandbox
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
        let mut live = tenant_keys(&sandbox, &tenant).await?;
        live.sort();
        ensure!(
            live == expected,
            "live keys {live:?}, expected {expected:?}"
        );
        Ok(())
    })
}

/// The operator is killed after Imburse created the key and before the Secret was written;
/// the restarted operator revokes the unreachable key and creates a new one.
fn crash_between_create_and_secret_write_leaves_no_orphan(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "crashed";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 2);
        let faults = Faults {
            create_response_delay_ms: 5_000,
            ..Default::default()
        };
        env.sandbox.admin().set_faults(&faults).await?;
        env.create_key(ns, "crashed", &tenant, json!({})).await?;
        poll(
            || async { Ok(!env.sandbox_keys(&tenant).await?.is_empty()) },
            "the key to be created at the sandbox",
        )
        .await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        ensure!(
            env.secrets(ns).get_opt("crashed").await?.is_none(),
            "Secret written before the crash"
        );
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart()?;
        expect_single_key(env, ns, "crashed", &tenant).await?;
        env.wait_event(ns, "crashed", "OrphanKeyDeleted").await?;
        Ok(())
    })
}

/// A replacement is interrupted after Imburse created the key, and the operator's metadata is
/// then wiped by a replace of the whole object: the key nobody knows is still revoked.
fn orphans_are_found_after_the_intent_was_wiped(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "wiped";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 3);
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

/// The state a slow process leaves when another superseded its attempt: the other process's
/// own attempt is open, and the Secret holds the key the slow one made meanwhile (its status
/// write lost the race). That key is in no status; the Secret is about to be overwritten by the
/// open attempt, so the key is revoked rather than lost.
fn a_late_key_of_a_superseded_attempt_is_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "late-key";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 4);
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
