//! Rotation and replacement: a new key replaces the old one on schedule, on request, or when
//! the spec, the Secret or the account's endpoint changes; the old key lives for its grace
//! period and is then revoked, whatever crashes in between; workloads that consent restart
//! once per key change.
//!
//! Every test works in a namespace and with a tenant of its own, and those that make Imburse
//! misbehave or count its calls do it on a sandbox of their own, so they run at once; those
//! that crash the operator run one at a time after them, and a final pass scans everything
//! the operator wrote for secrets.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults, Misbehaviour, Sandbox, ScriptedFault};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Env, TestFn, by_hand, created, deployment, expect_single_key, expect_single_key_at,
    no_secret_in_logs_events_or_status, poll, public_key, ready, recorded_key, request_rotation,
    template_state, tenant_keys, wait_for, wait_replaced,
};
use tenant_key_api::crd::ImburseAccount;
use testenv::keys::secret_key_pair;

fn main() -> std::process::ExitCode {
    // Live keys are checked at Imburse every three seconds, and keys rotate within seconds.
    // One process without leader election: a restarted one works at once, not after its
    // predecessor's Lease expired.
    let start = || {
        Env::start_with(
            Config::generate(1, 11),
            imburse_sandbox::Options::default(),
            &[
                "--verify-interval",
                "3s",
                "--min-rotation-interval",
                "1s",
                "--leader-election=false",
            ],
        )
    };
    let at_once: Vec<(&str, TestFn)> = testenv::named_tests![
        a_scheduled_rotation_keeps_the_old_key_for_its_grace_period,
        a_key_revoked_elsewhere_is_replaced,
        changing_roles_replaces_the_key,
        deleting_the_secret_replaces_the_key,
        editing_the_secret_replaces_the_key,
        renaming_the_secret_moves_the_key,
        endpoint_change_replaces_the_key_where_it_lives,
        rotations_stop_at_the_cap_and_deletion_revokes_them_all,
        a_rotation_interval_below_the_floor_mints_nothing,
        a_listing_that_lacks_a_key_replaces_nothing,
    ];
    let one_at_a_time: Vec<(&str, TestFn)> = testenv::named_tests![
        a_rotation_request_is_served_once,
        a_rotation_survives_a_crash_at_any_point,
        restart_targets_roll_once_per_key_change,
        // Last: scans what every test above made the operator write.
        no_secret_in_logs_events_or_status,
    ];
    support::run_suites(start, at_once, one_at_a_time)
}

/// Whether the pair gets a token from `sandbox`.
async fn authenticates(sandbox: &Sandbox, pair: &imburse::KeyPair) -> Result<bool> {
    let http = imburse::Client::new(Default::default())?;
    match imburse::authenticate(
        &http,
        &sandbox.base_url(),
        imburse::ApiGeneration::Seed,
        pair,
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(imburse::Error::Unauthorized(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// With a 16 s interval and a 6 s grace period: the key rotates by itself, both keys
/// authenticate while the grace period runs, then only the new one; two keys were made.
fn a_scheduled_rotation_keeps_the_old_key_for_its_grace_period(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "scheduled";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 0);
        let before = created(&sandbox).await?;
        env.create_key(
            ns,
            "rotating",
            &tenant,
            json!({ "rotation": { "interval": "16s", "gracePeriod": "6s" } }),
        )
        .await?;
        let first = env.wait_ready(ns, "rotating").await?;
        let status = first.status.clone().context("status")?;
        let next = status.next_rotation_at.context("nextRotationAt")?;
        let created_at = status.created_at.context("createdAt")?;
        let early = created_at.0.duration_until(next.0);
        ensure!(
            early <= k8s_openapi::jiff::SignedDuration::from_secs(16)
                && early >= k8s_openapi::jiff::SignedDuration::from_secs(14),
            "next rotation {next:?} is not an interval (less up to a tenth, in whole seconds) after {created_at:?}"
        );
        let old_pair = secret_key_pair(&env.secrets(ns).get("rotating").await?)?;
        let old = status.public_key.context("publicKey")?;
        let rotated = wait_replaced(env, ns, "rotating", &old).await?;
        let new_pair = secret_key_pair(&env.secrets(ns).get("rotating").await?)?;
        ensure!(Some(new_pair.public_key.as_str()) == public_key(&rotated));
        let pending = rotated.status.clone().context("status")?.previous_keys;
        ensure!(
            pending.len() == 1 && pending[0].public_key == old && pending[0].revoke_after.is_some(),
            "the old key is not waiting for its grace period: {pending:?}"
        );
        ensure!(
            authenticates(&sandbox, &old_pair).await?,
            "old key revoked early"
        );
        ensure!(authenticates(&sandbox, &new_pair).await?);
        poll(
            || async { Ok(!authenticates(&sandbox, &old_pair).await?) },
            "the old key to be revoked after its grace period",
        )
        .await?;
        ensure!(authenticates(&sandbox, &new_pair).await?);
        ensure!(
            created(&sandbox).await? - before == 2,
            "exactly two keys were made"
        );
        for reason in ["RotationStarted", "KeyRotated", "PreviousKeyRevoked"] {
            env.wait_event(ns, "rotating", reason).await?;
        }
        env.delete_key(ns, "rotating").await?;
        env.wait_gone(ns, "rotating").await?;
        Ok(())
    })
}

/// A key revoked at Imburse by someone else is found by the periodic check and replaced.
fn a_key_revoked_elsewhere_is_replaced(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "drift";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        env.create_key(ns, "drifting", &tenant, json!({})).await?;
        let old = expect_single_key(env, ns, "drifting", &tenant).await?;
        by_hand(env, &env.sandbox.base_url())?
            .delete_key(&tenant, &old)
            .await?;
        wait_replaced(env, ns, "drifting", &old).await?;
        expect_single_key(env, ns, "drifting", &tenant).await?;
        env.wait_event(ns, "drifting", "KeyRevokedExternally")
            .await?;
        Ok(())
    })
}

/// Applies `change`, then waits for exactly one new key at the sandbox and the old one revoked.
async fn expect_replacement(
    env: &Env,
    ns: &str,
    name: &str,
    tenant: &str,
    change: impl Future<Output = Result<()>>,
) -> Result<()> {
    let before = env.wait_ready(ns, name).await?;
    let old = before
        .status
        .and_then(|s| s.public_key)
        .context("publicKey")?;
    change.await?;
    let after = wait_for(&env.keys(ns), name, |k| {
        let s = k.status.as_ref();
        s.and_then(|s| s.public_key.as_deref())
            .is_some_and(|p| p != old)
            && s.and_then(|s| s.observed_generation) == k.metadata.generation
            && ready(s.map(|s| &s.conditions)) == Some(("True", "KeyReady"))
            && s.is_some_and(|s| s.previous_keys.is_empty())
    })
    .await?;
    let new = after
        .status
        .and_then(|s| s.public_key)
        .context("publicKey")?;
    ensure!(
        env.sandbox_keys(tenant).await? == [new.clone()],
        "old key not revoked or extra keys"
    );
    let secret = env.secrets(ns).get(name).await?;
    ensure!(
        secret_key_pair(&secret)?.public_key == new,
        "Secret not switched"
    );
    env.wait_event(ns, name, "PreviousKeyRevoked").await?;
    Ok(())
}

fn changing_roles_replaces_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "roles-change";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        env.create_key(ns, "rotating", &tenant, json!({})).await?;
        expect_replacement(env, ns, "rotating", &tenant, async {
            let patch = json!({"spec": {"roles": ["tenant-admin", "tenant-transaction-read"]}});
            env.keys(ns)
                .patch("rotating", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .await
    })
}

fn deleting_the_secret_replaces_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-deleted";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 2);
        env.create_key(ns, "lost", &tenant, json!({})).await?;
        expect_replacement(env, ns, "lost", &tenant, async {
            env.secrets(ns).delete("lost", &Default::default()).await?;
            Ok(())
        })
        .await
    })
}

fn editing_the_secret_replaces_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-edited";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 3);
        env.create_key(ns, "tampered", &tenant, json!({})).await?;
        expect_replacement(env, ns, "tampered", &tenant, async {
            let patch = json!({"data": {"privateKey": "dGFtcGVyZWQ="}});
            env.secrets(ns)
                .patch("tampered", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .await
    })
}

fn renaming_the_secret_moves_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-renamed";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 4);
        env.create_key(ns, "moving", &tenant, json!({})).await?;
        env.wait_ready(ns, "moving").await?;
        let patch = json!({"spec": {"secret": {"name": "moved"}}});
        env.keys(ns)
            .patch("moving", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let key = env.wait_ready(ns, "moving").await?;
        let status = key.status.context("status")?;
        ensure!(status.secret_name.as_deref() == Some("moved"));
        let public_key = status.public_key.context("publicKey")?;
        ensure!(secret_key_pair(&env.secrets(ns).get("moved").await?)?.public_key == public_key);
        support::poll(
            || async { Ok(env.secrets(ns).get_opt("moving").await?.is_none()) },
            "the old Secret to be deleted",
        )
        .await?;
        ensure!(
            env.sandbox_keys(&tenant).await? == std::slice::from_ref(&public_key),
            "old key not revoked"
        );
        Ok(())
    })
}

/// The account moves to another Imburse endpoint: a new key is made there, and the old key is
/// revoked where it lives, not at the new endpoint.
fn endpoint_change_replaces_the_key_where_it_lives(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "moved";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 5);
        env.create_key(ns, "moved", &tenant, json!({})).await?;
        expect_single_key(env, ns, "moved", &tenant).await?;
        let other = env.own_sandbox().await?;
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

/// Rotation requests beyond the cap of replaced keys waiting for their grace period (1h) make
/// no key: the resource says why. Deleting it revokes every key, also the waiting ones.
fn rotations_stop_at_the_cap_and_deletion_revokes_them_all(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "rotation-cap";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 6);
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
            request_rotation(env, ns, "busy", &value).await?;
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

/// `rotation.interval: 1ms` is refused before any key exists: no key is minted in a loop.
fn a_rotation_interval_below_the_floor_mints_nothing(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "fast-rotation";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 7);
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

/// Imburse's listing answers without the key a few times (a partial or lagging answer): the
/// verifier asks for the key itself before it replaces anything, so the key is kept.
fn a_listing_that_lacks_a_key_replaces_nothing(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "empty-listing";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 7);
        env.create_key(ns, "steady", &tenant, json!({})).await?;
        let key = expect_single_key_at(env, &sandbox, ns, "steady", &tenant).await?;
        let empty = ScriptedFault {
            operation: imburse::Operation::ListKeys,
            count: 3,
            misbehaviour: Misbehaviour::status(200, r#"{"tenantKeys":[]}"#),
        };
        sandbox
            .admin()
            .set_faults(&Faults {
                scripted: vec![empty],
                ..Default::default()
            })
            .await?;
        poll(
            || async {
                let faults = sandbox.admin().faults().await?;
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
            tenant_keys(&sandbox, &tenant).await? == [key],
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

/// Each new annotation value rotates once; the same value again, or an operator restart, does
/// not rotate a second time.
fn a_rotation_request_is_served_once(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "requested";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 8);
        let before = created(&env.sandbox).await?;
        env.create_key(ns, "on-request", &tenant, json!({})).await?;
        let first = expect_single_key(env, ns, "on-request", &tenant).await?;
        request_rotation(env, ns, "on-request", "2026-11-27T10:00:00Z").await?;
        let second = wait_replaced(env, ns, "on-request", &first).await?;
        ensure!(
            second
                .status
                .as_ref()
                .and_then(|s| s.last_handled_rotate_request.as_deref())
                == Some("2026-11-27T10:00:00Z")
        );
        let second = expect_single_key(env, ns, "on-request", &tenant).await?;
        let restarted = env.crash_operator()?;
        // A re-sync applies the same value again.
        request_rotation(env, ns, "on-request", "2026-11-27T10:00:00Z").await?;
        env.wait_reconciled_since_restart(&restarted, ns, "on-request")
            .await?;
        ensure!(expect_single_key(env, ns, "on-request", &tenant).await? == second);
        ensure!(
            created(&env.sandbox).await? - before == 2,
            "a request was served twice"
        );
        request_rotation(env, ns, "on-request", "2026-11-27T11:00:00Z").await?;
        wait_replaced(env, ns, "on-request", &second).await?;
        expect_single_key(env, ns, "on-request", &tenant).await?;
        ensure!(created(&env.sandbox).await? - before == 3);
        Ok(())
    })
}

/// The operator is killed at different moments of a rotation (before the key is created, after
/// it, after the Secret switched, before the old key is revoked): each time, after the grace
/// period, exactly one live key remains, the Secret holds it, and the request is handled.
fn a_rotation_survives_a_crash_at_any_point(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "crash-rotation";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 9);
        env.create_key(
            ns,
            "crashing",
            &tenant,
            json!({ "rotation": { "gracePeriod": "2s" } }),
        )
        .await?;
        expect_single_key(env, ns, "crashing", &tenant).await?;
        for (i, delay) in [0u64, 50, 150, 400, 1000, 2500].into_iter().enumerate() {
            let value = format!("crash-{i}");
            request_rotation(env, ns, "crashing", &value).await?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            env.crash_operator()?;
            wait_for(&env.keys(ns), "crashing", |k| {
                k.status.as_ref().is_some_and(|s| {
                    s.last_handled_rotate_request.as_deref() == Some(value.as_str())
                        && s.previous_keys.is_empty()
                })
            })
            .await?;
            expect_single_key(env, ns, "crashing", &tenant).await?;
        }
        Ok(())
    })
}

/// A listed Deployment that consents gets its pod template changed exactly once per key
/// change, never for the first key or an operator restart; a missing target is reported and
/// skipped.
fn restart_targets_roll_once_per_key_change(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "restarts";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 10);
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
        deployments
            .create(
                &PostParams::default(),
                &deployment("web", Some("reporting, restarting"))?,
            )
            .await?;
        let (_, generation) = template_state(&deployments, "web").await?;
        env.create_key(
            ns,
            "restarting",
            &tenant,
            json!({ "rolloutRestartTargets": [
                { "kind": "Deployment", "name": "web" },
                { "kind": "Deployment", "name": "absent" },
            ] }),
        )
        .await?;
        let first = expect_single_key(env, ns, "restarting", &tenant).await?;
        ensure!(
            template_state(&deployments, "web").await? == (None, generation),
            "the first key restarted the workload"
        );
        request_rotation(env, ns, "restarting", "once").await?;
        let rotated = wait_replaced(env, ns, "restarting", &first).await?;
        let fingerprint = rotated
            .status
            .as_ref()
            .and_then(|s| s.fingerprint.clone())
            .context("fingerprint")?;
        poll(
            || async {
                Ok(template_state(&deployments, "web").await?.0.as_deref()
                    == Some(fingerprint.as_str()))
            },
            "the Deployment's pod template to carry the new fingerprint",
        )
        .await?;
        ensure!(template_state(&deployments, "web").await?.1 == generation + 1);
        env.wait_event(ns, "restarting", "RolloutRestarted").await?;
        env.wait_event(ns, "restarting", "RolloutTargetSkipped")
            .await?;
        let reported = wait_for(&env.keys(ns), "restarting", |k| {
            k.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "RolloutRestarted"
                        && c.status == "False"
                        && c.message.contains("Deployment/absent")
                })
            })
        })
        .await?;
        ensure!(
            support::ready(reported.status.as_ref().map(|s| &s.conditions))
                == Some(("True", "KeyReady"))
        );
        let restarted = env.crash_operator()?;
        env.wait_reconciled_since_restart(&restarted, ns, "restarting")
            .await?;
        ensure!(
            template_state(&deployments, "web").await?.1 == generation + 1,
            "an operator restart restarted the workload"
        );
        Ok(())
    })
}
