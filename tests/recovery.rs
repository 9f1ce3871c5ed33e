//! Recovery from crashes and Imburse faults. The sandbox's faults are global, so these tests
//! run one at a time against their own environment.

mod support;

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults};
use serde_json::json;
use support::{Env, TestFn, poll};

fn main() -> std::process::ExitCode {
    // One process without leader election: a restarted one works at once, not after its
    // predecessor's Lease expired.
    let start = || {
        let env = Env::start_with(
            Config::generate(1, 8),
            imburse_sandbox::Options::default(),
            &["--leader-election=false"],
        )?;
        env.block_on(env.namespace_with_account("recovery", 0))?;
        Ok(env)
    };
    let tests: Vec<(&str, TestFn)> = crate::named_tests![
        lost_create_response_leaves_no_orphan,
        crash_between_create_and_secret_write_leaves_no_orphan,
        deletion_while_a_create_is_in_flight_revokes_its_key,
        rate_limiting_is_reported_then_recovered,
        server_errors_are_reported_then_recovered,
        restart_at_rest_creates_and_writes_nothing,
    ];
    support::run_suite(start, tests)
}

const NS: &str = "recovery";

/// Waits until the key is Ready and the tenant has exactly that one key at the sandbox.
async fn expect_single_key(env: &Env, name: &str, tenant: &str) -> Result<String> {
    let key = env.wait_ready(NS, name).await?;
    let public_key = key.status.and_then(|s| s.public_key).context("publicKey")?;
    ensure!(
        env.sandbox_keys(tenant).await? == std::slice::from_ref(&public_key),
        "the tenant has other keys than the recorded one"
    );
    let secret = env.secrets(NS).get(name).await?;
    ensure!(support::secret_key_pair(&secret)?.public_key == public_key);
    Ok(public_key)
}

fn lost_create_response_leaves_no_orphan(env: &Env) -> Result<()> {
    env.block_on(async {
        let tenant = env.tenant(0, 0);
        let faults = Faults {
            lose_create_responses: 1,
            ..Default::default()
        };
        env.sandbox.admin().set_faults(&faults).await?;
        env.create_key(NS, "lost-response", &tenant, json!({}))
            .await?;
        expect_single_key(env, "lost-response", &tenant).await?;
        env.wait_event(NS, "lost-response", "OrphanKeyDeleted")
            .await?;
        Ok(())
    })
}

/// The operator is killed after Imburse created the key and before the Secret was written;
/// the restarted operator revokes the unreachable key and creates a new one.
fn crash_between_create_and_secret_write_leaves_no_orphan(env: &Env) -> Result<()> {
    env.block_on(async {
        let tenant = env.tenant(0, 1);
        let faults = Faults {
            create_response_delay_ms: 5_000,
            ..Default::default()
        };
        env.sandbox.admin().set_faults(&faults).await?;
        env.create_key(NS, "crashed", &tenant, json!({})).await?;
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
            env.secrets(NS).get_opt("crashed").await?.is_none(),
            "Secret written before the crash"
        );
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart()?;
        expect_single_key(env, "crashed", &tenant).await?;
        env.wait_event(NS, "crashed", "OrphanKeyDeleted").await?;
        Ok(())
    })
}

/// The resource is deleted while Imburse holds the response to its create: the key reaches
/// the Secret, but recording it fails on the deleted resource's new version. The deletion
/// revokes that key before the Secret goes with it.
fn deletion_while_a_create_is_in_flight_revokes_its_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let tenant = env.tenant(0, 5);
        let faults = Faults {
            create_response_delay_ms: 3_000,
            ..Default::default()
        };
        env.sandbox.admin().set_faults(&faults).await?;
        env.create_key(NS, "deleted-in-flight", &tenant, json!({}))
            .await?;
        poll(
            || async { Ok(!env.sandbox_keys(&tenant).await?.is_empty()) },
            "the key to be created at the sandbox",
        )
        .await?;
        env.delete_key(NS, "deleted-in-flight").await?;
        env.wait_gone(NS, "deleted-in-flight").await?;
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        let live = env.sandbox_keys(&tenant).await?;
        ensure!(
            live.is_empty(),
            "the deleted resource's key lives on: {live:?}"
        );
        Ok(())
    })
}

fn rate_limiting_is_reported_then_recovered(env: &Env) -> Result<()> {
    env.block_on(async {
        let tenant = env.tenant(0, 2);
        let faults = Faults::rate_limited(10_000, 1);
        env.sandbox.admin().set_faults(&faults).await?;
        env.create_key(NS, "throttled", &tenant, json!({})).await?;
        env.wait_reason(NS, "throttled", "RateLimited").await?;
        env.wait_event(NS, "throttled", "RateLimited").await?;
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        expect_single_key(env, "throttled", &tenant).await?;
        Ok(())
    })
}

fn server_errors_are_reported_then_recovered(env: &Env) -> Result<()> {
    env.block_on(async {
        let tenant = env.tenant(0, 3);
        env.sandbox
            .admin()
            .set_faults(&Faults {
                error_rate: 1.0,
                ..Default::default()
            })
            .await?;
        env.create_key(NS, "unavailable", &tenant, json!({}))
            .await?;
        let key = env
            .wait_reason(NS, "unavailable", "ImburseUnavailable")
            .await?;
        let reconciling = key
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Reconciling"))
            .map(|c| c.status.clone());
        ensure!(
            reconciling.as_deref() == Some("True"),
            "a transient error must keep the key reconciling"
        );
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        expect_single_key(env, "unavailable", &tenant).await?;
        Ok(())
    })
}

/// A restarted operator finds every key in place: no key is created or revoked, no Secret
/// or status is written.
fn restart_at_rest_creates_and_writes_nothing(env: &Env) -> Result<()> {
    env.block_on(async {
        let tenant = env.tenant(0, 4);
        env.create_key(NS, "at-rest", &tenant, json!({})).await?;
        let before = expect_single_key(env, "at-rest", &tenant).await?;
        let key_version = env.keys(NS).get("at-rest").await?.metadata.resource_version;
        let secret_version = env
            .secrets(NS)
            .get("at-rest")
            .await?
            .metadata
            .resource_version;
        env.sandbox.admin().reset_stats().await?;
        let restarted = env.restart_operator()?;
        env.wait_reconciled_since_restart(&restarted, NS, "at-rest")
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
            env.keys(NS).get("at-rest").await?.metadata.resource_version == key_version,
            "resource rewritten"
        );
        ensure!(
            env.secrets(NS)
                .get("at-rest")
                .await?
                .metadata
                .resource_version
                == secret_version,
            "Secret rewritten"
        );
        ensure!(expect_single_key(env, "at-rest", &tenant).await? == before);
        Ok(())
    })
}
