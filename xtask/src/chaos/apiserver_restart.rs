//! kube-apiserver restarted `--apiserver-restarts` times while the keys are created, against one
//! operator process with leader election as deployed: a restart longer than the renew deadline
//! makes it step down and exit, and it is started again as Kubernetes would.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use testenv::Replicas;

use super::{Args, LEASE_NAMESPACE, Storm, pause};
use crate::workspace::step;

const LEASE: &str = "tenant-key-operator";
const LEADER_LIMIT: Duration = Duration::from_secs(60);

pub(super) async fn run(mut storm: Storm, args: &Args) -> Result<serde_json::Value> {
    let operator = storm.operator("operator", &[])?;
    let mut replicas = Replicas::new(
        vec![("operator".to_owned(), operator)],
        Api::<Lease>::namespaced(storm.client.clone(), LEASE_NAMESPACE),
        LEASE,
    );
    let started = storm.begin(args).await?;
    step(&format!(
        "creating {} keys while kube-apiserver is restarted {} times",
        storm.burst.count(),
        args.apiserver_restarts
    ));
    let creating = storm.burst.create_all(|_| ());
    let plane = &mut storm.plane;
    let restarts = async {
        let mut downtimes = Vec::new();
        for _ in 0..args.apiserver_restarts {
            pause(args.max_kill_interval_ms).await;
            let restarting = Instant::now();
            plane.restart_apiserver().await?;
            downtimes.push(restarting.elapsed().as_secs_f64());
        }
        anyhow::Ok(downtimes)
    };
    let ((), downtimes) = futures::try_join!(creating, restarts)?;
    let storm_seconds = started.elapsed().as_secs_f64();
    replicas.wait_leader(None, LEADER_LIMIT).await?;
    let mut figures = storm.settle(args, started, &[]).await?;
    figures["apiserverRestarts"] = json!(args.apiserver_restarts);
    figures["apiserverDowntimeSeconds"] = json!(downtimes);
    figures["operatorExits"] = json!(replicas.revived);
    figures["stormSeconds"] = json!(storm_seconds);
    Ok(figures)
}
