//! A key's life after its creation, on the real control plane and the sandbox: scheduled and
//! requested rotation with a grace period, crashes in the middle of a rotation, rollout
//! restarts, adoption of a hand-made key, and a key revoked behind the operator's back.
//! Sandbox statistics are global, so the tests run one at a time against one environment.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::Config;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Env, TestFn, by_hand, create_secret, deployment, expect_single_key,
    no_secret_in_logs_events_or_status, poll, public_key, request_rotation, secret_key_pair,
    template_state, wait_for, wait_replaced,
};

fn main() -> std::process::ExitCode {
    // Live keys are checked at the sandbox every three seconds, and keys rotate within
    // seconds. One process without leader election: a restarted one works at once, not after
    // its predecessor's Lease expired.
    let start = || {
        Env::start_with(
            Config::generate(1, 12),
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
    let tests: Vec<(&str, TestFn)> = crate::named_tests![
        a_scheduled_rotation_keeps_the_old_key_for_its_grace_period,
        a_rotation_request_is_served_once,
        a_rotation_survives_a_crash_at_any_point,
        restart_targets_roll_once_per_key_change,
        a_hand_made_key_is_adopted_only_when_asked,
        a_key_revoked_elsewhere_is_replaced,
        // Last: scans what every test above made the operator write.
        no_secret_in_logs_events_or_status,
    ];
    support::run_suite(start, tests)
}

/// Keys created at the sandbox so far.
async fn created(env: &Env) -> Result<u64> {
    Ok(env
        .sandbox
        .admin()
        .stats()
        .await?
        .count(imburse::Operation::CreateKey, 201))
}

/// Whether the pair gets a token from the sandbox.
async fn authenticates(env: &Env, pair: &imburse::KeyPair) -> Result<bool> {
    let http = imburse::Client::new(Default::default())?;
    match imburse::authenticate(
        &http,
        &env.sandbox.base_url(),
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
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        let before = created(env).await?;
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
            authenticates(env, &old_pair).await?,
            "old key revoked early"
        );
        ensure!(authenticates(env, &new_pair).await?);
        poll(
            || async { Ok(!authenticates(env, &old_pair).await?) },
            "the old key to be revoked after its grace period",
        )
        .await?;
        ensure!(authenticates(env, &new_pair).await?);
        ensure!(
            created(env).await? - before == 2,
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

/// Each new annotation value rotates once; the same value again, or an operator restart, does
/// not rotate a second time.
fn a_rotation_request_is_served_once(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "requested";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        let before = created(env).await?;
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
            created(env).await? - before == 2,
            "a request was served twice"
        );
        request_rotation(env, ns, "on-request", "2026-11-27T11:00:00Z").await?;
        wait_replaced(env, ns, "on-request", &second).await?;
        expect_single_key(env, ns, "on-request", &tenant).await?;
        ensure!(created(env).await? - before == 3);
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
        let tenant = env.tenant(0, 2);
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
        let tenant = env.tenant(0, 3);
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
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 4);
        let made = env.key_by_hand(&tenant, "Hand Made").await?;
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
        let before = created(env).await?;
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
        ensure!(expect_single_key(env, ns, "adopting", &tenant).await? == made.public_key);
        ensure!(created(env).await? == before, "adoption created a key");
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
        let other = env.key_by_hand(&tenant, "Other").await?;
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
            created(env).await? == before + 1,
            "a refused adoption created a key"
        );
        Ok(())
    })
}

/// A key revoked at Imburse by someone else is found by the periodic check and replaced.
fn a_key_revoked_elsewhere_is_replaced(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "drift";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 5);
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
