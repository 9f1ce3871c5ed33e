//! `cargo xtask bench`: how fast and how frugally the operator brings many keys to Ready.
//!
//! Runs the release binary against a real control plane and the sandbox with injected latency,
//! creates `--keys` TenantSecurityKeys at once, and writes the figures to a JSON file: time to
//! all Ready against the floor `keys × latency / concurrency`, Imburse calls and Kubernetes writes
//! per key, calls and writes while at rest, and the operator's resident memory.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use imburse::Operation;
use imburse_sandbox::{Config, Faults, Options, Sandbox};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};
use serde_json::json;
use tenant_key_operator::crd::{ImburseAccount, TenantSecurityKey};
use testenv::{ControlPlane, Operator};

use crate::workspace::{self, step};

const NAMESPACE: &str = "bench";

#[derive(clap::Args)]
pub struct Args {
    /// TenantSecurityKeys to create.
    #[arg(long, default_value_t = 200)]
    keys: usize,
    /// Latency the sandbox adds to every Imburse call, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// The operator's reconcile concurrency.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Tenants the keys are spread over (round robin).
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// How often the operator verifies live keys at Imburse, in seconds; at rest it should
    /// list once per tenant per interval, whatever the number of keys.
    #[arg(long, default_value_t = 5)]
    verify_seconds: u64,
    /// How long to watch the operator at rest after all keys are Ready, in seconds.
    #[arg(long, default_value_t = 20)]
    rest_seconds: u64,
    /// Where to write the figures (default: <target>/bench/results.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    step("building the operator (release)");
    let binary = workspace::build_operator("release")?;
    step("starting the control plane and the sandbox");
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    testenv::install_crds(&client, &workspace::root().join("crds")).await?;
    let config = Config::generate(1, args.tenants.max(1));
    let faults = Faults {
        latency_ms: args.latency_ms,
        ..Faults::default()
    };
    let sandbox = Sandbox::start_with(
        config.clone(),
        Options {
            faults,
            ..Options::default()
        },
    )
    .await?;
    let metrics_port = workspace::free_port()?;
    let listen = format!("127.0.0.1:{metrics_port}");
    let concurrency = args.concurrency.to_string();
    let verify_interval = format!("{}s", args.verify_seconds);
    let operator = Operator::start(
        "operator",
        &binary,
        plane.kubeconfig_path(),
        plane.data_dir(),
        &[
            "--listen-address",
            &listen,
            "--concurrency",
            &concurrency,
            "--imburse-rate-limit",
            "0",
            "--verify-interval",
            &verify_interval,
            "--log-filter",
            "warn",
        ],
    )?;
    setup_account(&client, &config, &sandbox).await?;

    step(&format!("creating {} TenantSecurityKeys", args.keys));
    let admin = sandbox.admin();
    admin.reset_stats().await?;
    let writes_before = kube_writes(&listen).await?;
    let started = Instant::now();
    let tenants: Vec<&str> = config
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    stream::iter(0..args.keys)
        .map(|i| create_key(&keys, i, tenants[i % tenants.len()]))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    wait_all_ready(&keys, args.keys).await?;
    let to_ready = started.elapsed();
    let stats = admin.stats().await?;
    let writes = writes_since(&writes_before, kube_writes(&listen).await?);

    step(&format!(
        "watching the operator at rest for {} s",
        args.rest_seconds
    ));
    admin.reset_stats().await?;
    let writes_at_rest_before = kube_writes(&listen).await?;
    tokio::time::sleep(Duration::from_secs(args.rest_seconds)).await;
    let rest = admin.stats().await?;
    let writes_at_rest: u64 = writes_since(&writes_at_rest_before, kube_writes(&listen).await?)
        .values()
        .sum();
    let rss_kib = operator.pid().map(rss_kib).transpose()?.unwrap_or(0);

    let n = args.keys as f64;
    let floor = n * args.latency_ms as f64 / f64::from(args.concurrency) / 1000.0;
    let calls_at_rest: u64 = rest
        .calls
        .values()
        .flat_map(|by_status| by_status.values())
        .sum();
    let figures = json!({
        "keys": args.keys,
        "latencyMs": args.latency_ms,
        "concurrency": args.concurrency,
        "secondsToAllReady": to_ready.as_secs_f64(),
        "floorSeconds": floor,
        "createsPerKey": stats.total(Operation::CreateKey) as f64 / n,
        "tokenCallsPerKey": stats.total(Operation::Token) as f64 / n,
        "listCallsPerKey": stats.total(Operation::ListKeys) as f64 / n,
        "kubeWritesPerKey": writes.values().sum::<u64>() as f64 / n,
        "kubeWrites": writes,
        "imburseCallsAtRest": calls_at_rest,
        "tenants": tenants.len(),
        "verifySeconds": args.verify_seconds,
        "restSeconds": args.rest_seconds,
        "listCallsAtRest": rest.total(Operation::ListKeys),
        "listCallsPerTenantPerVerifyInterval": rest.total(Operation::ListKeys) as f64
            / tenants.len() as f64
            / (args.rest_seconds as f64 / args.verify_seconds.max(1) as f64),
        "kubeWritesAtRest": writes_at_rest,
        "operatorRssMiB": rss_kib as f64 / 1024.0,
        "sandboxCalls": stats.calls,
    });
    let out = args
        .out
        .unwrap_or_else(|| workspace::target_dir().join("bench/results.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&figures)?)?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    println!("figures written to {}", out.display());
    drop(operator);
    Ok(())
}

async fn setup_account(client: &Client, config: &Config, sandbox: &Sandbox) -> Result<()> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let account = &config.accounts[0];
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("imburse-account".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "publicKey".to_owned(),
                ByteString(account.public_key.clone().into_bytes()),
            ),
            (
                "privateKey".to_owned(),
                ByteString(
                    imburse::ExposeSecret::expose_secret(&account.private_key)
                        .as_bytes()
                        .to_vec(),
                ),
            ),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;
    let resource: ImburseAccount = serde_json::from_value(json!({
        "apiVersion": "imbursepayments.com/v1alpha1",
        "kind": "ImburseAccount",
        "metadata": {"name": "imburse", "namespace": NAMESPACE},
        "spec": {"baseUrl": sandbox.base_url(), "credentialsSecretRef": {"name": "imburse-account"}},
    }))?;
    let accounts: Api<ImburseAccount> = Api::namespaced(client.clone(), NAMESPACE);
    accounts.create(&PostParams::default(), &resource).await?;
    for _ in 0..300 {
        let ready = accounts.get("imburse").await?.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the account did not become Ready")
}

async fn create_key(keys: &Api<TenantSecurityKey>, i: usize, tenant: &str) -> Result<()> {
    let key: TenantSecurityKey = serde_json::from_value(json!({
        "apiVersion": "imbursepayments.com/v1alpha1",
        "kind": "TenantSecurityKey",
        "metadata": {"name": format!("key-{i:05}"), "namespace": NAMESPACE},
        "spec": {
            "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
            "tenantId": tenant,
            "roles": ["tenant-admin"],
        },
    }))?;
    keys.create(&PostParams::default(), &key).await?;
    Ok(())
}

async fn wait_all_ready(keys: &Api<TenantSecurityKey>, expected: usize) -> Result<()> {
    // Generous: the point is to measure, and a stuck run still ends.
    let deadline = Instant::now() + Duration::from_secs(600 + expected as u64);
    loop {
        let list = keys.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|k| {
                k.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {expected} keys became Ready");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `tenant_key_operator_kube_writes_total` by label set.
async fn kube_writes(listen: &str) -> Result<BTreeMap<String, u64>> {
    let body = reqwest::get(format!("http://{listen}/metrics"))
        .await?
        .text()
        .await?;
    Ok(body
        .lines()
        .filter_map(|l| l.strip_prefix("tenant_key_operator_kube_writes_total"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            // Counters are whole numbers, exposed in float notation.
            Some((labels.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// Writes since `before`, by label set.
fn writes_since(
    before: &BTreeMap<String, u64>,
    now: BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.into_iter()
        .map(|(labels, n)| {
            let delta = n.saturating_sub(before.get(&labels).copied().unwrap_or(0));
            (labels, delta)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc status")
}
