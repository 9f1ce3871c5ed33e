//! High availability and the operational surface: operator processes with leader election
//! (the default) against one cluster. Only the holder of the Lease reconciles; a crash, a
//! SIGTERM or a lost Lease hands the work over without a second key for any resource, and so
//! does a second process that reconciles beside the leader without election; the probes and
//! metrics of leader and standbys. Each test starts with the environment's operator leading,
//! and ends the same way; the tests run one at a time, as they stop, kill and add processes.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use imburse_sandbox::{Config, Faults, Options};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Env, Since, TestFn, expect_single_key, expect_single_key_at, log_lines, logged,
    metrics_address, poll, wait_for,
};
use testenv::Operator;

const NS: &str = "ha";
const LEASE: &str = "tenant-key-operator";
/// The default `--leader-election-lease-duration`.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const BURST: usize = 20;

fn main() -> std::process::ExitCode {
    let start = || {
        let env = Env::start_with(
            Config::generate(1, 5 + BURST),
            Options::default(),
            // Short, so that a create Imburse holds for seconds counts as a wedged reconcile.
            &["--log-format", "json", "--liveness-stall-timeout", "1s"],
        )?;
        env.block_on(env.namespace_with_account(NS, 0))?;
        Ok(env)
    };
    let tests: Vec<(&str, TestFn)> = testenv::named_tests![
        a_follower_does_not_reconcile_and_the_leader_reports_its_keys,
        sigterm_hands_the_lease_over_at_once,
        livez_fails_while_a_reconcile_hangs,
        secure_metrics_answer_only_authorized_readers,
        sigterm_lets_a_create_in_flight_finish,
        a_leader_that_loses_the_lease_exits,
        leader_killed_during_a_burst_leaves_one_key_per_resource,
        two_operator_processes_keep_one_key_per_resource,
    ];
    support::run_suite(start, tests)
}

/// The Lease identity of the process writing `log`, once it waits for the Lease; `except` is
/// an identity of an earlier incarnation of the process.
async fn identity(log: &Path, except: Option<&str>) -> Result<String> {
    logged(log, "waiting for the lease", "identity", |id| {
        Some(id) != except
    })
    .await
}

async fn probes_address(log: &Path) -> Result<String> {
    logged(log, "serving health probes", "address", |_| true).await
}

fn leases(env: &Env) -> Api<Lease> {
    Api::namespaced(env.client.clone(), &env.operator_namespace)
}

async fn holder(env: &Env) -> Result<Option<String>> {
    Ok(leases(env)
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

async fn wait_holder(env: &Env, identity: &str) -> Result<()> {
    poll(
        || async { Ok(holder(env).await?.as_deref() == Some(identity)) },
        &format!("{identity} to hold the lease"),
    )
    .await
}

/// The environment's operator leads; a second process stands by. Returns both identities.
async fn standby(env: &Env, logs: &Path) -> Result<(Operator, String, String)> {
    let leader = identity(&env.operator_log_path(), None).await?;
    wait_holder(env, &leader).await?;
    let standby = env.start_operator("standby", logs, &["--log-format", "json"])?;
    let standby_identity = identity(standby.log_path(), None).await?;
    ensure!(holder(env).await?.as_deref() == Some(leader.as_str()));
    Ok((standby, leader, standby_identity))
}

/// Hands the lease back to the environment's operator: restarted (it then stands by), while
/// the standby process is stopped, which releases the lease.
async fn hand_back(env: &Env, standby: Operator, previous: &str) -> Result<()> {
    {
        let mut operator = env.operator.lock().unwrap_or_else(|e| e.into_inner());
        operator.restart()?;
    }
    let identity = identity(&env.operator_log_path(), Some(previous)).await?;
    drop(standby);
    wait_holder(env, &identity).await
}

async fn scrape(address: &str, path: &str) -> Result<(u16, String)> {
    let response = reqwest::get(format!("http://{address}{path}")).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// A standing-by process has no cache and reconciles nothing, yet is ready; the leader
/// reports its keys' gauges.
fn a_follower_does_not_reconcile_and_the_leader_reports_its_keys(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-ha-").tempdir()?;
    env.block_on(async {
        let (standby, _, _) = standby(env, logs.path()).await?;
        let tenant = env.tenant(0, 0);
        env.create_key(NS, "observed", &tenant, json!({ "rotation": { "interval": "720h" } }))
            .await?;
        expect_single_key(env, NS, "observed", &tenant).await?;

        let leader = env.metrics_address().await?;
        let (status, text) = scrape(&leader, "/metrics").await?;
        ensure!(status == 200, "leader /metrics: {status}");
        for expected in [
            r#"tenant_key_operator_key_ready_status{namespace="ha",name="observed",condition="true"} 1"#,
            r#"tenant_key_operator_key_ready_status{namespace="ha",name="observed",condition="false"} 0"#,
            r#"tenant_key_operator_key_rotation_interval_seconds{namespace="ha",name="observed"} 2592000.0"#,
            r#"tenant_key_operator_previous_keys_pending{namespace="ha",name="observed"} 0"#,
            r#"tenant_key_operator_previous_keys_overdue{namespace="ha",name="observed"} 0"#,
        ] {
            ensure!(text.contains(expected), "no {expected} in:\n{text}");
        }
        for prefix in [
            r#"tenant_key_operator_key_created_timestamp_seconds{namespace="ha",name="observed"} "#,
            r#"tenant_key_operator_build_info{version=""#,
            r#"tenant_key_operator_account_ready{kind="ImburseAccount",namespace="ha",name=""#,
            r#"tenant_key_operator_imburse_request_duration_seconds_count{operation="create_key"} "#,
        ] {
            ensure!(
                text.lines().any(|l| l.starts_with(prefix)),
                "no {prefix} in:\n{text}"
            );
        }

        let follower = metrics_address(standby.log_path()).await?;
        let (status, text) = scrape(&follower, "/metrics").await?;
        ensure!(status == 200, "follower /metrics: {status}");
        let reconciles: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("tenant_key_operator_reconciles_total{")
                    || l.starts_with("tenant_key_operator_key_ready_status{")
            })
            .collect();
        ensure!(
            reconciles.is_empty(),
            "the follower reconciled or cached keys: {reconciles:?}"
        );
        let follower_probes = probes_address(standby.log_path()).await?;
        for (probes, path) in [
            (&follower_probes, "/readyz"),
            (&follower_probes, "/livez"),
            (&follower_probes, "/healthz"),
        ] {
            let (status, _) = scrape(probes, path).await?;
            ensure!(status == 200, "{probes}{path}: {status}");
        }
        let (status, _) = scrape(&follower_probes, "/metrics").await?;
        ensure!(status == 404, "the probes address serves /metrics: {status}");
        drop(standby);
        anyhow::Ok(())
    })
}

/// A reconcile that runs past `--liveness-stall-timeout` (here: a create Imburse does not
/// answer) fails `/livez`, so that the kubelet would restart the process; once it ends, `/livez`
/// passes again. `/readyz` is not affected.
fn livez_fails_while_a_reconcile_hangs(env: &Env) -> Result<()> {
    env.block_on(async {
        let probes = probes_address(&env.operator_log_path()).await?;
        let livez = || async {
            let (status, body) = scrape(&probes, "/livez").await?;
            anyhow::Ok((status, body))
        };
        poll(
            || async { Ok(livez().await?.0 == 200) },
            "/livez to pass at rest",
        )
        .await?;
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 6_000,
                ..Default::default()
            })
            .await?;
        let tenant = env.tenant(0, 4 + BURST);
        env.create_key(NS, "hanging", &tenant, json!({})).await?;
        let failed = std::cell::RefCell::new(None);
        poll(
            || async {
                let (status, body) = livez().await?;
                if status == 503 {
                    failed.replace(Some(body));
                }
                Ok(failed.borrow().is_some())
            },
            "/livez to fail while the create hangs",
        )
        .await?;
        let body = failed.take().unwrap_or_default();
        ensure!(body.contains("TenantSecurityKey"), "/livez said {body:?}");
        let (status, _) = scrape(&probes, "/readyz").await?;
        ensure!(status == 200, "/readyz failed with /livez: {status}");
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        expect_single_key(env, NS, "hanging", &tenant).await?;
        poll(
            || async { Ok(livez().await?.0 == 200) },
            "/livez to pass once the create ended",
        )
        .await
    })
}

/// With `--metrics-secure`, `/metrics` is served over HTTPS to callers whose token the API
/// server authenticates and authorizes for `get /metrics` (a standby serves it like the
/// leader): no token and an unknown token get 401, a ServiceAccount without the grant 403, one
/// bound to a reader ClusterRole the metrics.
fn secure_metrics_answer_only_authorized_readers(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-ha-").tempdir()?;
    env.block_on(async {
        for name in ["scraper", "stranger"] {
            let account: ServiceAccount = serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": NS },
            }))?;
            Api::<ServiceAccount>::namespaced(env.client.clone(), NS)
                .create(&PostParams::default(), &account)
                .await?;
        }
        let role: ClusterRole = serde_json::from_value(json!({
            "metadata": { "name": "tko-metrics-reader" },
            "rules": [{ "nonResourceURLs": ["/metrics"], "verbs": ["get"] }],
        }))?;
        Api::<ClusterRole>::all(env.client.clone())
            .create(&PostParams::default(), &role)
            .await?;
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": { "name": "tko-metrics-reader" },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "tko-metrics-reader",
            },
            "subjects": [{ "kind": "ServiceAccount", "name": "scraper", "namespace": NS }],
        }))?;
        Api::<ClusterRoleBinding>::all(env.client.clone())
            .create(&PostParams::default(), &binding)
            .await?;

        let leader = identity(&env.operator_log_path(), None).await?;
        wait_holder(env, &leader).await?;
        let secure = env.start_operator(
            "secure",
            logs.path(),
            &["--log-format", "json", "--metrics-secure"],
        )?;
        let address = metrics_address(secure.log_path()).await?;
        let url = format!("https://{address}/metrics");
        // The certificate is self-signed: the token is what is checked here.
        let client = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()?;
        let status = |token: Option<String>| {
            let request = client.get(&url);
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            async move { anyhow::Ok(request.send().await?.status().as_u16()) }
        };
        let token = |name| testenv::service_account_token(&env.client, NS, name);
        ensure!(status(None).await? == 401, "no token was let in");
        ensure!(
            status(Some("not-a-token".to_owned())).await? == 401,
            "an unknown token was let in"
        );
        ensure!(
            status(Some(token("stranger").await?)).await? == 403,
            "a ServiceAccount without the grant was let in"
        );
        let reader = token("scraper").await?;
        let response = client.get(&url).bearer_auth(&reader).send().await?;
        ensure!(
            response.status() == 200,
            "the reader got {}",
            response.status()
        );
        let text = response.text().await?;
        ensure!(
            text.contains("tenant_key_operator_build_info"),
            "metrics:\n{text}"
        );
        // Plain HTTP is not served on the secure address.
        ensure!(
            scrape(&address, "/metrics").await.is_err(),
            "/metrics answered over plain HTTP"
        );
        let log = std::fs::read_to_string(secure.log_path())?;
        ensure!(!log.contains(&reader), "the operator logged a bearer token");
        drop(secure);
        anyhow::Ok(())
    })
}

/// SIGTERM: the leader finishes, releases the lease, and the standby takes over well within
/// one lease duration.
fn sigterm_hands_the_lease_over_at_once(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-ha-").tempdir()?;
    env.block_on(async {
        let (standby, leader, standby_identity) = standby(env, logs.path()).await?;
        let releases = log_lines(&env.operator_log_path(), "released the lease").len();
        let started = Instant::now();
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop(Duration::from_secs(30));
        let stopped = started.elapsed();
        wait_holder(env, &standby_identity).await?;
        let handed_over = started.elapsed();
        println!("SIGTERM: leader exited after {stopped:?}, successor leads after {handed_over:?}");
        ensure!(
            log_lines(&env.operator_log_path(), "released the lease").len() == releases + 1,
            "the leader did not log the release"
        );
        ensure!(
            handed_over < LEASE_DURATION / 2,
            "the successor took over after {handed_over:?}; the lease lasts {LEASE_DURATION:?}"
        );
        let tenant = env.tenant(0, 1);
        env.create_key(NS, "after-handover", &tenant, json!({}))
            .await?;
        expect_single_key(env, NS, "after-handover", &tenant).await?;
        hand_back(env, standby, &leader).await
    })
}

/// SIGTERM while Imburse is creating a key: the leader waits for the answer and records the
/// key before it releases the lease, so nothing is created twice or revoked as an orphan.
fn sigterm_lets_a_create_in_flight_finish(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-ha-").tempdir()?;
    env.block_on(async {
        let (standby, leader, standby_identity) = standby(env, logs.path()).await?;
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 3_000,
                ..Default::default()
            })
            .await?;
        env.sandbox.admin().reset_stats().await?;
        let tenant = env.tenant(0, 3);
        env.create_key(NS, "in-flight", &tenant, json!({})).await?;
        // The sandbox stores a key before it answers: the create is in flight.
        poll(
            || async { Ok(!env.sandbox_keys(&tenant).await?.is_empty()) },
            "the create to reach Imburse",
        )
        .await?;
        let log = env.operator_log_path();
        let releases = log_lines(&log, "released the lease").len();
        let started = Instant::now();
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop(Duration::from_secs(30));
        let stopped = started.elapsed();
        println!("SIGTERM during a create: the leader exited after {stopped:?}");
        ensure!(
            stopped > Duration::from_secs(1),
            "the leader exited after {stopped:?}, before Imburse answered the create"
        );
        ensure!(
            log_lines(&log, "released the lease").len() == releases + 1,
            "the leader did not release the lease"
        );
        ensure!(
            log_lines(
                &log,
                "reconciles still running after the shutdown signal: cancelled"
            )
            .is_empty(),
            "the create was cancelled"
        );
        wait_holder(env, &standby_identity).await?;
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        expect_single_key(env, NS, "in-flight", &tenant).await?;
        // The recorded key is enough for the check above: the successor must have looked too.
        let successor = Since::started(&standby)?;
        env.wait_reconciled_since_restart(&successor, NS, "in-flight")
            .await?;
        let stats = env.sandbox.admin().stats().await?;
        ensure!(
            stats.total(imburse::Operation::CreateKey) == 1
                && stats.total(imburse::Operation::DeleteKey) == 0,
            "a key was created again or revoked: {stats:?}"
        );
        hand_back(env, standby, &leader).await
    })
}

/// Someone else holds the lease now (as after a renewal the leader could not make): the
/// leader exits with an error at once, and the standby takes over once that lease expires.
fn a_leader_that_loses_the_lease_exits(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-ha-").tempdir()?;
    env.block_on(async {
        let (standby, leader, standby_identity) = standby(env, logs.path()).await?;
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        leases(env)
            .patch(
                LEASE,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "spec": { "holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 15 }
                })),
            )
            .await?;
        let taken = Instant::now();
        let losses = log_lines(&env.operator_log_path(), "leadership lost: stopping").len();
        let mut status = None;
        poll(
            || {
                status = env
                    .operator
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .exit_status()
                    .ok()
                    .flatten();
                let exited = status.is_some();
                async move { Ok(exited) }
            },
            "the leader to exit",
        )
        .await?;
        let exited = taken.elapsed();
        println!("lease taken: the leader exited after {exited:?} ({status:?})");
        ensure!(
            status.is_some_and(|s| !s.success()),
            "the leader exited with {status:?}"
        );
        ensure!(
            exited < Duration::from_secs(5),
            "the leader exited {exited:?} after losing the lease"
        );
        ensure!(log_lines(&env.operator_log_path(), "leadership lost: stopping").len() == losses + 1);
        wait_holder(env, &standby_identity).await?;
        let tenant = env.tenant(0, 2);
        env.create_key(NS, "after-loss", &tenant, json!({})).await?;
        expect_single_key(env, NS, "after-loss", &tenant).await?;
        hand_back(env, standby, &leader).await
    })
}

/// The leader is killed (SIGKILL) while it creates a burst of keys; the standby takes over
/// once the lease expires, and every resource ends Ready with exactly one live key.
fn leader_killed_during_a_burst_leaves_one_key_per_resource(env: &Env) -> Result<()> {
    let logs = tempfile::Builder::new().prefix("tko-ha-").tempdir()?;
    env.block_on(async {
        let (standby, leader, standby_identity) = standby(env, logs.path()).await?;
        // Slow creates widen the window between a key's creation and its Secret.
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 400,
                latency_ms: 20,
                jitter_ms: 40,
                ..Default::default()
            })
            .await?;
        let tenants: Vec<String> = (0..BURST).map(|i| env.tenant(0, 4 + i)).collect();
        for (i, tenant) in tenants.iter().enumerate() {
            env.create_key(NS, &format!("burst-{i}"), tenant, json!({}))
                .await?;
        }
        let created = || async {
            let mut created = 0;
            for tenant in &tenants {
                created += env.sandbox_keys(tenant).await?.len();
            }
            anyhow::Ok(created)
        };
        poll(|| async { Ok(created().await? >= 3) }, "the first creates").await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        let killed = Instant::now();
        let at_kill = created().await?;
        let mut ready_at_kill = 0;
        for i in 0..BURST {
            let key = env.keys(NS).get(&format!("burst-{i}")).await?;
            if support::ready(key.status.as_ref().map(|s| &s.conditions)).map(|r| r.0)
                == Some("True")
            {
                ready_at_kill += 1;
            }
        }
        ensure!(
            ready_at_kill < BURST,
            "every key was Ready before the leader was killed"
        );
        wait_holder(env, &standby_identity).await?;
        let took_over = killed.elapsed();
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        for (i, tenant) in tenants.iter().enumerate() {
            expect_single_key(env, NS, &format!("burst-{i}"), tenant).await?;
        }
        let all_ready = killed.elapsed();
        ensure!(created().await? == BURST, "orphaned keys remain");
        println!(
            "SIGKILL during a burst of {BURST}: {at_kill} keys created and {ready_at_kill} Ready \
             when killed; successor leads after {took_over:?}; all Ready with one key each \
             after {all_ready:?}"
        );
        ensure!(
            took_over < LEASE_DURATION + Duration::from_secs(10),
            "the successor took over after {took_over:?}"
        );
        hand_back(env, standby, &leader).await
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
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        sandbox
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
            expect_single_key_at(env, &sandbox, ns, &format!("key-{i}"), tenant).await?;
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
            expect_single_key_at(env, &sandbox, ns, &name, tenant).await?;
        }
        anyhow::Ok(())
    });
    drop(second);
    result
}
