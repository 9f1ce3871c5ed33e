//! Chaos: keys created all at once while something goes wrong and Imburse answers with 503s,
//! 429s with `Retry-After` and lost create responses. The operator is SIGKILLed at random
//! moments; or two processes contest the leader election Lease and the leader is SIGKILLed
//! again and again; or kube-apiserver is restarted; or half of the keys are deleted while they
//! are created. Afterwards every remaining key is Ready with exactly one live key at Imburse
//! whose Secret authenticates, every deleted one is gone with its key revoked, and the creates
//! stay close to one per key: what an interrupted creation left behind was revoked, not
//! multiplied.

mod support;

use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use imburse_sandbox::{Config, Faults, RateLimitedFault};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rand::Rng as _;
use serde_json::json;
use support::{Env, TestFn, WAIT};
use testenv::{
    Replicas,
    chaos::{self, is_deleted},
};

/// The keys of one test: a namespace and a range of tenants of their own, one per key.
struct Keys {
    namespace: &'static str,
    first_tenant: usize,
    count: usize,
}

const KILL_STORM: Keys = Keys {
    namespace: "chaos",
    first_tenant: 0,
    count: 30,
};
const LEADER_LOSS: Keys = Keys {
    namespace: "chaos-leader",
    first_tenant: 30,
    count: 20,
};
const APISERVER_RESTART: Keys = Keys {
    namespace: "chaos-apiserver",
    first_tenant: 50,
    count: 20,
};
const DELETION_STORM: Keys = Keys {
    namespace: "chaos-deletion",
    first_tenant: 70,
    count: 30,
};
const ALL: [&Keys; 4] = [
    &KILL_STORM,
    &LEADER_LOSS,
    &APISERVER_RESTART,
    &DELETION_STORM,
];

const KILLS: usize = 8;
const LEADER_KILLS: usize = 3;
const APISERVER_RESTARTS: usize = 2;
/// The Lease the replicas of the leader loss test contest, not the environment operator's.
const LEASE: &str = "chaos-leader";

fn main() -> std::process::ExitCode {
    let tenants = ALL.iter().map(|k| k.first_tenant + k.count).max();
    let start = || {
        let env = Env::start(Config::generate(1, tenants.unwrap_or(1)))?;
        for keys in ALL {
            env.block_on(env.namespace_with_account(keys.namespace, 0))?;
        }
        Ok(env)
    };
    let tests: Vec<(&str, TestFn)> = testenv::named_tests![
        kill_storm_ends_with_one_working_key_each,
        leader_loss_ends_with_one_working_key_each,
        apiserver_restarts_end_with_one_working_key_each,
        deletion_storm_revokes_the_deleted_keys_and_keeps_the_others,
    ];
    support::run_suite(start, tests)
}

impl Keys {
    fn name(&self, i: usize) -> String {
        format!("key-{i:02}")
    }

    fn tenant(&self, env: &Env, i: usize) -> String {
        env.tenant(0, self.first_tenant + i)
    }

    async fn create(&self, env: &Env, i: usize) -> Result<()> {
        env.create_key(
            self.namespace,
            &self.name(i),
            &self.tenant(env, i),
            json!({}),
        )
        .await?;
        Ok(())
    }

    async fn create_all(&self, env: &Env) -> Result<()> {
        stream::iter(0..self.count)
            .map(|i| self.create(env, i))
            .buffer_unordered(self.count)
            .try_collect()
            .await
    }

    /// With Imburse working again: the keys `deleted` selects are gone and their tenants have
    /// no live key, the others are Ready with exactly one live key whose Secret authenticates,
    /// and the creates since [`start_storm`] stay within 5 % of one per key beyond the
    /// interrupted ones that were found and revoked.
    async fn expect_end(&self, env: &Env, deleted: impl Fn(usize) -> bool) -> Result<()> {
        env.sandbox.admin().set_faults(&Faults::default()).await?;
        let mut gone = Vec::new();
        for i in 0..self.count {
            let name = self.name(i);
            if deleted(i) {
                env.wait_gone(self.namespace, &name).await?;
                gone.push(self.tenant(env, i));
            } else {
                env.wait_ready(self.namespace, &name).await?;
            }
        }
        let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
        let expected = chaos::Expected {
            namespace: self.namespace,
            created: self.count,
            gone: &gone,
            wait: WAIT,
        };
        let end = chaos::check_end(&env.client, &env.sandbox, &expected).await?;
        println!("{}", end.summary());
        ensure!(end.creates_within_bound(), "{}", end.summary());
        Ok(())
    }
}

/// Counts the sandbox's calls from zero and turns its faults on.
async fn start_storm(env: &Env) -> Result<()> {
    chaos::start_storm(
        &env.sandbox,
        &Faults {
            latency_ms: 20,
            jitter_ms: 80,
            error_rate: 0.1,
            rate_limited: Some(RateLimitedFault {
                count: 10,
                retry_after_seconds: 1,
            }),
            lose_create_responses: 5,
            ..Faults::default()
        },
    )
    .await
}

fn random_pause() -> Duration {
    Duration::from_millis(rand::rng().random_range(100..1500))
}

/// Each kill hits the process at work: a restarted process first waits for its predecessor's
/// Lease to expire, and killing it then would interrupt nothing. So before each kill the
/// process holds the Lease and has finished reconciles; the kill comes a random moment later.
fn kill_storm_ends_with_one_working_key_each(env: &Env) -> Result<()> {
    let mut process =
        support::Since::started(&env.operator.lock().unwrap_or_else(|e| e.into_inner()))?;
    env.block_on(async {
        start_storm(env).await?;
        KILL_STORM.create_all(env).await
    })?;
    for kill in 1..=KILLS {
        let reconciles = env.block_on(env.wait_working(&process))?;
        let pause = random_pause();
        std::thread::sleep(pause);
        process = env.crash_operator()?;
        println!(
            "kill {kill}: the Lease holder, {pause:?} after it led with {reconciles} reconciles finished"
        );
    }
    env.block_on(KILL_STORM.expect_end(env, |_| false))?;
    support::no_secret_in_logs_events_or_status(env)
}

/// Two processes contest a Lease with short settings; the leader is SIGKILLed and started
/// again, each time after a replica has taken over.
fn leader_loss_ends_with_one_working_key_each(env: &Env) -> Result<()> {
    // The environment's operator would reconcile the keys outside the Lease under test; the
    // harness starts it again afterwards.
    env.operator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stop(Duration::from_secs(10));
    let logs = tempfile::Builder::new().prefix("tko-chaos-").tempdir()?;
    let replica = |pod_name: &'static str| {
        env.start_operator_with_env(
            pod_name,
            logs.path(),
            &[("POD_NAME", pod_name)],
            &[
                ["--leader-election-lease-name", LEASE].as_slice(),
                &chaos::SHORT_LEASE_ARGS,
            ]
            .concat(),
        )
        .map(|operator| (pod_name.to_owned(), operator))
    };
    let mut replicas = Replicas::new(
        vec![replica("chaos-a")?, replica("chaos-b")?],
        Api::<Lease>::namespaced(env.client.clone(), &env.operator_namespace),
        LEASE,
    );
    env.block_on(async {
        replicas.wait_leader(None, WAIT).await?;
        start_storm(env).await?;
        LEADER_LOSS.create_all(env).await?;
        for _ in 0..LEADER_KILLS {
            tokio::time::sleep(random_pause()).await;
            let takeover = replicas.kill_leader(WAIT).await?;
            println!("taken over {takeover:?} after the leader was killed");
        }
        LEADER_LOSS.expect_end(env, |_| false).await
    })
}

fn apiserver_restarts_end_with_one_working_key_each(env: &Env) -> Result<()> {
    env.block_on(async {
        start_storm(env).await?;
        APISERVER_RESTART.create_all(env).await
    })?;
    for _ in 0..APISERVER_RESTARTS {
        std::thread::sleep(random_pause());
        let mut control_plane = env.control_plane.lock().unwrap_or_else(|e| e.into_inner());
        env.block_on(control_plane.restart_apiserver())?;
    }
    // A leader that cannot renew within the renew deadline steps down by exiting; Kubernetes
    // would start its container again.
    let mut operator = env.operator.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(status) = operator.exit_status()? {
        println!("the operator exited ({status}) and is started again");
        operator.restart()?;
    }
    drop(operator);
    env.block_on(APISERVER_RESTART.expect_end(env, |_| false))
}

/// Every other key is deleted at a random moment after its creation: some before the
/// operator saw them, some with their create in flight at Imburse, some once Ready.
fn deletion_storm_revokes_the_deleted_keys_and_keeps_the_others(env: &Env) -> Result<()> {
    let keys = &DELETION_STORM;
    env.block_on(async {
        start_storm(env).await?;
        stream::iter(0..keys.count)
            .map(|i| async move {
                keys.create(env, i).await?;
                if is_deleted(i) {
                    tokio::time::sleep(random_pause()).await;
                    env.delete_key(keys.namespace, &keys.name(i)).await?;
                }
                anyhow::Ok(())
            })
            .buffer_unordered(keys.count)
            .try_collect::<Vec<()>>()
            .await?;
        keys.expect_end(env, is_deleted).await
    })
}
