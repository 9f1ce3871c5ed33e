//! Quiet: nothing happens when nothing changed. A Ready key causes no Imburse call and no
//! write, neither when something irrelevant about it changes nor when the operator restarts.
//!
//! The restart runs alone, after the other test: it counts every call the sandbox got. One
//! process without leader election: a restarted one works at once, not after its
//! predecessor's Lease expired.

mod support;

use anyhow::{Result, ensure};
use imburse_sandbox::Config;
use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use support::{Env, TestFn, expect_single_key, no_secret_in_logs_events_or_status};

fn main() -> std::process::ExitCode {
    let start = || {
        Env::start_with(
            Config::generate(1, 2),
            imburse_sandbox::Options::default(),
            &["--leader-election=false"],
        )
    };
    let at_once: Vec<(&str, TestFn)> =
        testenv::named_tests![steady_state_makes_no_calls_and_no_writes];
    // Last: scans what every test above made the operator write.
    let one_at_a_time: Vec<(&str, TestFn)> = testenv::named_tests![
        restart_at_rest_creates_and_writes_nothing,
        no_secret_in_logs_events_or_status
    ];
    support::run_suites(start, at_once, one_at_a_time)
}

/// A Ready key causes no Imburse call and no write while nothing changes.
fn steady_state_makes_no_calls_and_no_writes(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "steady";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        env.create_key(ns, "calm", &tenant, json!({})).await?;
        let key = env.wait_ready(ns, "calm").await?;
        let secret = env.secrets(ns).get("calm").await?;
        // Touching an unrelated annotation triggers a reconcile that must change nothing.
        let touched = env.operator_now()?;
        let patch = json!({"metadata": {"annotations": {"touched": "yes"}}});
        env.keys(ns)
            .patch("calm", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        env.wait_reconciled_since_restart(&touched, ns, "calm")
            .await?;
        let after = env.keys(ns).get("calm").await?;
        ensure!(after.status == key.status, "status was rewritten");
        let secret_after = env.secrets(ns).get("calm").await?;
        ensure!(
            secret_after.resource_version() == secret.resource_version(),
            "Secret was rewritten"
        );
        ensure!(env.sandbox_keys(&tenant).await?.len() == 1);
        Ok(())
    })
}

/// A restarted operator finds every key in place: no key is created or revoked, no Secret
/// or status is written.
fn restart_at_rest_creates_and_writes_nothing(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "at-rest";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        env.create_key(ns, "at-rest", &tenant, json!({})).await?;
        let before = expect_single_key(env, ns, "at-rest", &tenant).await?;
        let key_version = env.keys(ns).get("at-rest").await?.metadata.resource_version;
        let secret_version = env
            .secrets(ns)
            .get("at-rest")
            .await?
            .metadata
            .resource_version;
        env.sandbox.admin().reset_stats().await?;
        let restarted = env.restart_operator()?;
        env.wait_reconciled_since_restart(&restarted, ns, "at-rest")
            .await?;
        let stats = env.sandbox.admin().stats().await?;
        ensure!(
            stats.total(imburse::Operation::CreateKey) == 0,
            "keys created at rest: {stats:?}"
        );
        ensure!(
            stats.total(imburse::Operation::DeleteKey) == 0,
            "keys revoked at rest: {stats:?}"
        );
        ensure!(
            env.keys(ns).get("at-rest").await?.metadata.resource_version == key_version,
            "resource rewritten"
        );
        ensure!(
            env.secrets(ns)
                .get("at-rest")
                .await?
                .metadata
                .resource_version
                == secret_version,
            "Secret rewritten"
        );
        ensure!(expect_single_key(env, ns, "at-rest", &tenant).await? == before);
        Ok(())
    })
}
