//! `cargo xtask bench`: how fast and how frugally the operator brings many keys to Ready.
//!
//! Runs the release binary against a real control plane and the sandbox with injected latency,
//! creates `--keys` TenantSecurityKeys at once, and writes the figures to a JSON file: time to
//! all Ready against the floor `keys × latency / concurrency`, Imburse calls and Kubernetes writes
//! per key, calls and writes while at rest, and the operator's resident memory: its peak while
//! the keys are created, at rest, and after a restart that lists every key at once, with
//! `--unrelated-secrets` Secrets in the namespace that the operator must not hold on to.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, future, stream};
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

pub(crate) const NAMESPACE: &str = "bench";

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
    /// Secrets with 1 KiB of data each, not the operator's, created before the operator
    /// starts: they share the namespace with the keys, as in a busy cluster.
    #[arg(long, default_value_t = 0)]
    unrelated_secrets: usize,
    /// An operator binary to measure instead of a fresh release build, e.g. to compare two
    /// versions.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Where to write the figures (default: <target>/bench/results.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    let (binary, plane, client) = prepare(args.operator.as_deref()).await?;
    if args.unrelated_secrets > 0 {
        step(&format!(
            "creating {} unrelated Secrets",
            args.unrelated_secrets
        ));
        create_unrelated_secrets(&client, args.unrelated_secrets).await?;
    }
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
    let mut operator = Operator::start(
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
            // Where the leader election Lease goes: a namespace every cluster has.
            "--namespace",
            "default",
            "--log-filter",
            "warn",
        ],
    )?;
    setup_account(&client, &config, &sandbox).await?;
    let pid = operator.pid().context("the operator is not running")?;
    let sampled = sample_peak_rss(pid);
    let startup = Memory::of(pid)?;

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
    let creating = Memory::of(pid)?;
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
    let at_rest = Memory::of(pid)?;
    let sampled_peak = sampled.peak_mib();

    step("restarting the operator: it lists every key and owned Secret, and reconciles each");
    operator.kill();
    let restarted = Instant::now();
    operator.restart()?;
    let pid = operator.pid().context("the operator did not restart")?;
    let sampled_after_restart = sample_peak_rss(pid);
    wait_reconciled(&listen, args.keys).await?;
    let restart_listed = restarted.elapsed();
    ensure!(
        answers_ready(&listen).await,
        "/readyz does not answer 200 though every key was reconciled"
    );
    let after_list = Memory::of(pid)?;
    tokio::time::sleep(Duration::from_secs(args.rest_seconds)).await;
    let after_restart = Memory::of(pid)?;

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
        "unrelatedSecrets": args.unrelated_secrets,
        "operatorRssMiB": at_rest.rss_mib(),
        "memoryMiB": {
            "peakAtStartup": startup.peak_mib(),
            "peakWhileCreating": creating.peak_mib(),
            "atRest": at_rest.rss_mib(),
            "peakAfterRestartList": after_list.peak_mib(),
            "peakAfterRestart": after_restart.peak_mib(),
            "atRestAfterRestart": after_restart.rss_mib(),
            "sampledPeak": sampled_peak,
            "sampledPeakAfterRestart": sampled_after_restart.peak_mib(),
        },
        "secondsToListAfterRestart": restart_listed.as_secs_f64(),
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

/// The operator binary (`operator`, or a fresh release build), and a control plane with the
/// CRDs and the namespace the keys go in.
pub(crate) async fn prepare(
    operator: Option<&std::path::Path>,
) -> Result<(PathBuf, ControlPlane, Client)> {
    let binary = match operator {
        Some(binary) => binary.to_owned(),
        None => {
            step("building the operator (release)");
            workspace::build_operator("release")?
        }
    };
    step("starting the control plane and the sandbox");
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    testenv::install_crds(&client, &workspace::root().join("crds")).await?;
    create_namespace(&client).await?;
    Ok((binary, plane, client))
}

async fn create_namespace(client: &Client) -> Result<()> {
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
    Ok(())
}

/// Secrets like an application's: a label of their own and 1 KiB of data.
async fn create_unrelated_secrets(client: &Client, count: usize) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    stream::iter(0..count)
        .map(|i| {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i:05}")),
                    labels: Some(BTreeMap::from([("app".to_owned(), "unrelated".to_owned())])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "payload".to_owned(),
                    ByteString(vec![b'x'; 1024]),
                )])),
                ..Default::default()
            };
            let secrets = secrets.clone();
            async move { secrets.create(&PostParams::default(), &secret).await }
        })
        .buffer_unordered(16)
        .try_for_each(|_| future::ready(Ok(())))
        .await?;
    Ok(())
}

pub(crate) async fn setup_account(
    client: &Client,
    config: &Config,
    sandbox: &Sandbox,
) -> Result<()> {
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

pub(crate) async fn create_key(
    keys: &Api<TenantSecurityKey>,
    i: usize,
    tenant: &str,
) -> Result<()> {
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

pub(crate) async fn wait_all_ready(keys: &Api<TenantSecurityKey>, expected: usize) -> Result<()> {
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

/// Waits until a freshly started operator has listed the keys and reconciled each once.
async fn wait_reconciled(listen: &str, keys: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600 + keys as u64 / 10);
    while Instant::now() < deadline {
        if let Ok(reconciles) = key_reconciles(listen).await
            && reconciles >= keys as u64
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the operator did not reconcile every key after its restart")
}

/// Whether `/readyz` answers 200 within 10 seconds.
async fn answers_ready(listen: &str) -> bool {
    for _ in 0..100 {
        let ready = reqwest::get(format!("http://{listen}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `tenant_key_operator_reconciles_total` of TenantSecurityKeys, all results.
async fn key_reconciles(listen: &str) -> Result<u64> {
    let body = reqwest::get(format!("http://{listen}/metrics"))
        .await?
        .text()
        .await?;
    Ok(body
        .lines()
        .filter_map(|l| l.strip_prefix("tenant_key_operator_reconciles_total{"))
        .filter(|l| l.contains(r#"kind="TenantSecurityKey""#))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum())
}

/// The largest resident size of `pid` seen so far, sampled every 50 ms until it exits. The
/// kernel's own peak (VmHWM) is only brought up to date at some events, so it can miss a peak
/// that was given back; neither figure is exact, together they bound it from below.
fn sample_peak_rss(pid: u32) -> SampledPeak {
    let peak_kib = Arc::new(AtomicU64::new(0));
    let peak = peak_kib.clone();
    tokio::spawn(async move {
        while let Ok(memory) = Memory::of(pid) {
            peak.fetch_max(memory.rss_kib, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    SampledPeak { peak_kib }
}

struct SampledPeak {
    peak_kib: Arc<AtomicU64>,
}

impl SampledPeak {
    fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// A process's resident memory now and at its peak so far, from `/proc/<pid>/status`.
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}
