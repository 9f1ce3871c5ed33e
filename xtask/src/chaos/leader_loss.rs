//! Two operator processes with leader election; the leader is SIGKILLed `--leader-kills` times
//! and started again while the keys are created, each time after the other replica (or the
//! restarted one) has taken over.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use testenv::{Replicas, chaos};

use super::{Args, LEASE_NAMESPACE, Storm, pause};
use crate::workspace::step;

const LEASE: &str = "tenant-key-operator";
/// Longest wait for a leader: a lease duration, plus start-up and a loaded machine.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(60);

pub(super) async fn run(storm: Storm, args: &Args) -> Result<serde_json::Value> {
    let mut replicas = Replicas::new(
        vec![
            (
                "operator-a".to_owned(),
                storm.operator("operator-a", &chaos::SHORT_LEASE_ARGS)?,
            ),
            (
                "operator-b".to_owned(),
                storm.operator("operator-b", &chaos::SHORT_LEASE_ARGS)?,
            ),
        ],
        Api::<Lease>::namespaced(storm.client.clone(), LEASE_NAMESPACE),
        LEASE,
    );
    replicas.wait_leader(None, TAKEOVER_LIMIT).await?;
    let started = storm.begin(args).await?;
    step(&format!(
        "creating {} keys while the leader is killed {} times",
        storm.burst.count(),
        args.leader_kills
    ));
    let kills = async {
        let mut takeovers = Vec::new();
        for _ in 0..args.leader_kills {
            pause(args.max_kill_interval_ms).await;
            takeovers.push(replicas.kill_leader(TAKEOVER_LIMIT).await?.as_secs_f64());
        }
        anyhow::Ok(takeovers)
    };
    let ((), takeovers) = futures::try_join!(storm.burst.create_all(|_| ()), kills)?;
    let storm_seconds = started.elapsed().as_secs_f64();
    let mut figures = storm.settle(args, started, &[]).await?;
    let slowest = takeovers.iter().copied().fold(0.0, f64::max);
    figures["leaderKills"] = json!(args.leader_kills);
    figures["takeovers"] = json!(takeovers.len());
    figures["takeoverSeconds"] = json!({
        "mean": takeovers.iter().sum::<f64>() / takeovers.len().max(1) as f64,
        "max": slowest,
    });
    figures["stepDowns"] = json!(replicas.revived);
    figures["stormSeconds"] = json!(storm_seconds);
    Ok(figures)
}
