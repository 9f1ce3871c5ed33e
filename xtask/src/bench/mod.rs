//! `cargo xtask bench`: how fast and how frugally the operator brings many keys to Ready, set
//! against what binds it.
//!
//! For each `--keys` count, on real control planes and the sandbox with injected latency:
//! - the floors: a plain Kubernetes client making only the writes the create protocol needs
//!   per key, at the operator's concurrency and at 32 workers ([`baseline::protocol_floor`]);
//!   the same client making every request the operator makes (the mirror floor,
//!   [`baseline::kube_floor`]: a measure of the operator's logic, not of its protocol);
//!   `keys × latency / concurrency` for the Imburse calls, and the Imburse rate limit's
//!   floor. The binding floor is the largest of the protocol floor at 32 workers, the latency
//!   floor and the rate limit's floor;
//! - the manual baseline: the tutorial's flow scripted key after key ([`baseline::manual`]);
//! - the operator: time until every key is Ready, Imburse calls and Kubernetes requests per key,
//!   calls and writes at rest, resident memory (peak while creating, at rest) with as many
//!   unrelated Secrets in the namespace as `--unrelated-per-key` says, and a restart with every
//!   key Ready: time until synced, Imburse calls and Kubernetes writes.
//!
//! The figures go to `<target>/bench/results.json` with plots drawn from them ([`report`]).

mod baseline;
mod report;
mod seeded;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
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
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use tenant_key_api::crd::{READY, TenantSecurityKey};
use testenv::{
    ControlPlane, Operator,
    cluster::{Launch, create_account, free_port, start_cluster},
};

use crate::workspace::{self, step};

pub(crate) const NAMESPACE: &str = "bench";

/// How many clients create the keys at once, as a burst of `kubectl apply` or a GitOps sync.
const CREATING_CLIENTS: usize = 16;
/// Workers of the protocol floor that binds: more than the API server's two cores can serve,
/// so that the floor is the API server's, not the client's.
const PROTOCOL_WORKERS: usize = 32;

#[derive(clap::Args)]
pub struct Args {
    /// Numbers of TenantSecurityKeys to measure, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    keys: Vec<usize>,
    /// Latency the sandbox adds to every Imburse call, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// The operator's reconcile concurrency (its default), and the mirror floor client's.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// The operator's Imburse requests per second per account (its default; 0: no limit).
    #[arg(long, default_value_t = 10)]
    imburse_rate_limit: u32,
    /// The operator's Imburse burst per account (its default).
    #[arg(long, default_value_t = 20)]
    imburse_burst: u32,
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
    /// Secrets with 1 KiB of data each, not the operator's, per key, created before the
    /// operator starts: they share the namespace with the keys, as in a busy cluster.
    #[arg(long, default_value_t = 1.0)]
    unrelated_per_key: f64,
    /// Most keys the manual flow is timed on: it does one key after another, so beyond this
    /// its time is its time per key times the keys.
    #[arg(long, default_value_t = 1000)]
    manual_keys: usize,
    /// An operator binary to measure instead of a fresh build of the one the image ships, e.g.
    /// to compare two versions.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Instead of the creation runs: numbers of Ready keys to seed, comma-separated, each
    /// with as many unrelated Secrets; the operator is started on them and measured at rest.
    #[arg(long, value_delimiter = ',')]
    seed_ready: Vec<usize>,
    /// With `--seed-ready`: a second operator binary, started on the same seeded keys after
    /// the first has stopped, e.g. to compare two versions or builds.
    #[arg(long, requires = "seed_ready")]
    compare_with: Option<PathBuf>,
    /// Where to write the figures and plots (default: <target>/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the plots and a summary to docs/benchmark/, which the README shows.
    #[arg(long)]
    publish: bool,
    /// Instead of measuring: publish to docs/benchmark/ the figures an earlier run wrote to
    /// this folder (its `--out`), merged as `--publish` merges them. A run of 100,000 seeded
    /// keys takes most of an hour; it need not be measured twice to be published.
    #[arg(long, conflicts_with_all = ["publish", "seed_ready"])]
    publish_from: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.publish_from {
        let path = dir.join("results.json");
        let figures: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        report::update(&published(), &figures)?;
        println!("published {} to {}", path.display(), published().display());
        return Ok(());
    }
    let binary = operator_binary(args.operator.as_deref())?;
    if args.seed_ready.is_empty() {
        let mut runs = Vec::new();
        for &keys in &args.keys {
            runs.push(measure(&binary, keys, &args).await?);
        }
        return write(
            &args,
            &json!({
                "machine": report::machine(),
                "latencyMs": args.latency_ms,
                "concurrency": args.concurrency,
                "imburseRateLimit": args.imburse_rate_limit,
                "imburseBurst": args.imburse_burst,
                "tenants": args.tenants,
                "runs": runs,
            }),
        );
    }
    // Each seeded run is written once measured: a larger one that fails keeps the others.
    for &keys in &args.seed_ready {
        let run = seeded::measure(&binary, keys, &args).await?;
        let figures = json!({"seeded": {
            "machine": report::machine(),
            "latencyMs": args.latency_ms,
            "concurrency": args.concurrency,
            "tenants": args.tenants,
            "verifySeconds": args.verify_seconds,
            "runs": [run],
        }});
        write(&args, &figures)?;
    }
    Ok(())
}

/// Where published figures go: the README and docs/scale.md show them.
fn published() -> PathBuf {
    workspace::root().join("docs/benchmark")
}

/// Merges `figures` into those in `--out`, and in docs/benchmark/ with `--publish`: the
/// creation runs and the seeded runs are measured apart, and each keeps the other's figures.
fn write(args: &Args, figures: &Value) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace::target_dir().join("bench"));
    report::update(&out, figures)?;
    println!("{}", serde_json::to_string_pretty(figures)?);
    println!("figures and plots written to {}", out.display());
    if args.publish {
        report::update(&published(), figures)?;
        println!("published to {}", published().display());
    }
    Ok(())
}

/// One run: the floors and the manual flow on a control plane of their own, then the operator
/// on a fresh one, so that neither sees the other's objects.
async fn measure(binary: &Path, keys: usize, args: &Args) -> Result<Value> {
    let config = Config::generate(1, args.tenants.max(1));
    let tenants: Vec<&str> = config
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    let concurrency = usize::from(args.concurrency);
    let latency = Sandbox::start_with(config.clone(), with_latency(args.latency_ms)).await?;

    step(&format!("{keys} keys: the floors and the manual flow"));
    let (plane, client) = start_plane().await?;
    let mut protocol = BTreeMap::new();
    for workers in std::collections::BTreeSet::from([concurrency, PROTOCOL_WORKERS]) {
        let floor = baseline::protocol_floor(&client, keys, workers, &tenants).await?;
        protocol.insert(workers.to_string(), floor.as_secs_f64());
    }
    let requests_before = apiserver_requests(&client).await?;
    let mirror_floor = baseline::kube_floor(&client, keys, concurrency, &tenants).await?;
    let mirror_requests = since(&requests_before, apiserver_requests(&client).await?);
    let manual_keys = keys.min(args.manual_keys);
    let manual = baseline::manual(&client, &config, &latency.base_url(), manual_keys).await?;
    drop(plane);
    let manual_seconds = manual.as_secs_f64() * keys as f64 / manual_keys as f64;

    let operator = measure_operator(binary, keys, args, &config, &latency).await?;
    let latency_floor = keys as f64 * args.latency_ms as f64 / concurrency as f64 / 1000.0;
    // One account: the burst passes at once, the rest at the sustained rate.
    let rate_floor = match args.imburse_rate_limit {
        0 => 0.0,
        rate => keys.saturating_sub(args.imburse_burst as usize) as f64 / f64::from(rate),
    };
    let protocol_floor = protocol[&PROTOCOL_WORKERS.to_string()];
    let binding = protocol_floor.max(latency_floor).max(rate_floor);
    let to_ready = operator["secondsToAllReady"].as_f64().unwrap_or_default();
    Ok(json!({
        "keys": keys,
        "operator": operator,
        "protocolFloorSecondsByWorkers": protocol,
        "protocolFloorSeconds": protocol_floor,
        "mirrorFloorSeconds": mirror_floor.as_secs_f64(),
        "mirrorFloorRequestsPerKey": per_key(&mirror_requests, keys),
        "latencyFloorSeconds": latency_floor,
        "rateLimitFloorSeconds": rate_floor,
        "bindingFloorSeconds": binding,
        "timesBindingFloor": to_ready / binding,
        "timesProtocolFloor": to_ready / protocol_floor,
        "manualSeconds": manual_seconds,
        "manualKeysTimed": manual_keys,
        "speedUpOverManual": manual_seconds / to_ready,
    }))
}

fn with_latency(latency_ms: u64) -> Options {
    Options {
        faults: Faults {
            latency_ms,
            ..Faults::default()
        },
        ..Options::default()
    }
}

async fn measure_operator(
    binary: &Path,
    keys: usize,
    args: &Args,
    config: &Config,
    sandbox: &Sandbox,
) -> Result<Value> {
    step(&format!("{keys} keys: the operator"));
    let (plane, client) = start_plane().await?;
    let unrelated = (keys as f64 * args.unrelated_per_key).round() as usize;
    if unrelated > 0 {
        step(&format!("creating {unrelated} unrelated Secrets"));
        create_unrelated_secrets(&client, unrelated, CREATING_CLIENTS).await?;
    }
    let (mut operator, listen, probes) = start_operator(binary, &plane, args)?;
    setup_account(&client, config, sandbox).await?;
    let pid = operator.pid().context("the operator is not running")?;
    let sampled = sample_peak_rss(pid);
    let startup = Memory::of(pid)?;

    step(&format!("creating {keys} TenantSecurityKeys"));
    let admin = sandbox.admin();
    admin.reset_stats().await?;
    let writes_before = kube_writes(&listen).await?;
    let requests_before = apiserver_requests(&client).await?;
    let started = Instant::now();
    let tenants: Vec<&str> = config
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let creating = stream::iter(0..keys)
        .map(|i| {
            let api = &api;
            let tenant = tenants[i % tenants.len()];
            async move { create_key(api, &key_name(i), tenant).await }
        })
        .buffer_unordered(CREATING_CLIENTS)
        .try_collect::<Vec<()>>();
    futures::try_join!(creating, wait_all_ready(&api, keys))?;
    let to_ready = started.elapsed();
    let creating = Memory::of(pid)?;
    let stats = admin.stats().await?;
    let writes = since(&writes_before, kube_writes(&listen).await?);
    let requests = since(&requests_before, apiserver_requests(&client).await?);

    step(&format!(
        "watching the operator at rest for {} s",
        args.rest_seconds
    ));
    admin.reset_stats().await?;
    let writes_at_rest_before = kube_writes(&listen).await?;
    tokio::time::sleep(Duration::from_secs(args.rest_seconds)).await;
    let rest = admin.stats().await?;
    let writes_at_rest: u64 = since(&writes_at_rest_before, kube_writes(&listen).await?)
        .values()
        .sum();
    let at_rest = Memory::of(pid)?;
    let sampled_peak = sampled.peak_mib();

    // A rolling update: the old process hands its Lease back on SIGTERM, so the new one starts
    // at once, lists every key and owned Secret, and reconciles each.
    step("restarting the operator with every key Ready");
    operator.stop(Duration::from_secs(30));
    admin.reset_stats().await?;
    let restarted = Instant::now();
    operator.restart()?;
    let pid = operator.pid().context("the operator did not restart")?;
    let sampled_after_restart = sample_peak_rss(pid);
    wait_reconciled(&listen, keys).await?;
    let restart_reconciled = restarted.elapsed();
    ensure!(
        answers_ready(&probes, Duration::from_secs(10)).await,
        "/readyz does not answer 200 though every key was reconciled"
    );
    let after_list = Memory::of(pid)?;
    let restart_stats = admin.stats().await?;
    tokio::time::sleep(Duration::from_secs(args.rest_seconds)).await;
    let after_restart = Memory::of(pid)?;
    let restart_writes: u64 = kube_writes(&listen).await?.values().sum();
    drop(operator);
    drop(plane);

    let n = keys as f64;
    Ok(json!({
        "secondsToAllReady": to_ready.as_secs_f64(),
        "createsPerKey": stats.total(Operation::CreateKey) as f64 / n,
        "tokenCallsPerKey": stats.total(Operation::Token) as f64 / n,
        "listCallsPerKey": stats.total(Operation::ListKeys) as f64 / n,
        "kubeWritesPerKey": writes.values().sum::<u64>() as f64 / n,
        "kubeWrites": writes,
        "kubeRequestsPerKey": per_key(&requests, keys),
        "kubeRequestsPerKeyTotal": operator_requests(&requests) as f64 / n,
        "imburseCallsAtRest": calls(&rest),
        "verifySeconds": args.verify_seconds,
        "restSeconds": args.rest_seconds,
        "listCallsAtRest": rest.total(Operation::ListKeys),
        "listCallsPerTenantPerVerifyInterval": rest.total(Operation::ListKeys) as f64
            / tenants.len() as f64
            / (args.rest_seconds as f64 / args.verify_seconds.max(1) as f64),
        "kubeWritesAtRest": writes_at_rest,
        "unrelatedSecrets": unrelated,
        "memoryMiB": {
            "peakAtStartup": startup.peak_mib(),
            "peakWhileCreating": creating.peak_mib(),
            "sampledPeakWhileCreating": sampled_peak,
            "atRest": at_rest.rss_mib(),
            "peakAfterRestartList": after_list.peak_mib(),
            "sampledPeakAfterRestart": sampled_after_restart.peak_mib(),
            "atRestAfterRestart": after_restart.rss_mib(),
        },
        "restart": {
            "secondsToEveryKeyReconciled": restart_reconciled.as_secs_f64(),
            "imburseCalls": calls(&restart_stats),
            "imburseCallsBesidesListing": calls(&restart_stats)
                - restart_stats.total(Operation::ListKeys)
                - restart_stats.total(Operation::Token),
            "kubeWrites": restart_writes,
        },
    }))
}

/// The operator on `plane`, with `args`' settings; its metrics and probe addresses.
fn start_operator(
    binary: &Path,
    plane: &ControlPlane,
    args: &Args,
) -> Result<(Operator, String, String)> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let probes = format!("127.0.0.1:{}", free_port()?);
    let concurrency = args.concurrency.to_string();
    let (rate_limit, burst) = (
        args.imburse_rate_limit.to_string(),
        args.imburse_burst.to_string(),
    );
    let verify_interval = format!("{}s", args.verify_seconds);
    let operator = Launch {
        // Where the leader election Lease goes: a namespace every cluster has.
        namespace: "default",
        metrics: &listen,
        probes: &probes,
        log_filter: Some("warn"),
        args: &[
            "--concurrency",
            &concurrency,
            "--imburse-rate-limit",
            &rate_limit,
            "--imburse-burst",
            &burst,
            "--verify-interval",
            &verify_interval,
        ],
        ..Launch::default()
    }
    .start(binary, plane, plane.data_dir())?;
    Ok((operator, listen, probes))
}

fn calls(stats: &imburse_sandbox::Stats) -> u64 {
    stats
        .calls
        .values()
        .flat_map(|by_status| by_status.values())
        .sum()
}

fn per_key(requests: &BTreeMap<String, u64>, keys: usize) -> BTreeMap<String, f64> {
    requests
        .iter()
        .map(|(what, n)| (what.clone(), *n as f64 / keys as f64))
        .collect()
}

/// `operator`, or the binary the image ships (static, musl, release): its allocator is part of
/// what is measured.
fn operator_binary(operator: Option<&Path>) -> Result<PathBuf> {
    match operator {
        Some(binary) => Ok(binary.to_owned()),
        None => crate::image::static_binary(),
    }
}

/// A control plane with the CRDs and the namespace the keys go in.
async fn start_plane() -> Result<(ControlPlane, Client)> {
    step("starting a control plane");
    start_cluster(&[NAMESPACE]).await
}

/// The operator binary (`operator`, or a fresh release build), and a control plane with the
/// CRDs and the namespace the keys go in.
pub(crate) async fn prepare(operator: Option<&Path>) -> Result<(PathBuf, ControlPlane, Client)> {
    let binary = operator_binary(operator)?;
    let (plane, client) = start_plane().await?;
    Ok((binary, plane, client))
}

/// Secrets like an application's: a label of their own and 1 KiB of data, `clients` at once.
async fn create_unrelated_secrets(client: &Client, count: usize, clients: usize) -> Result<()> {
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
        .buffer_unordered(clients)
        .try_for_each(|_| future::ready(Ok(())))
        .await?;
    Ok(())
}

/// The `imburse` account of the keys' namespace, with the sandbox's first account.
pub(crate) async fn setup_account(
    client: &Client,
    config: &Config,
    sandbox: &Sandbox,
) -> Result<()> {
    create_account(
        client,
        NAMESPACE,
        "imburse",
        &config.accounts[0],
        &sandbox.base_url(),
    )
    .await
}

pub(crate) async fn create_key(
    keys: &Api<TenantSecurityKey>,
    name: &str,
    tenant: &str,
) -> Result<()> {
    let key: TenantSecurityKey = serde_json::from_value(json!({
        "apiVersion": "imbursepayments.com/v1beta1",
        "kind": "TenantSecurityKey",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
            "tenantId": tenant,
            "roles": ["tenant-admin"],
        },
    }))?;
    keys.create(&PostParams::default(), &key).await?;
    Ok(())
}

/// The name of the operator's `i`th key.
pub(crate) fn key_name(i: usize) -> String {
    format!("key-{i:05}")
}

/// Waits until `expected` keys are Ready, from a watch: polling lists of thousands of keys
/// would load the API server the operator is measured on.
pub(crate) async fn wait_all_ready(keys: &Api<TenantSecurityKey>, expected: usize) -> Result<()> {
    // Generous: the point is to measure, and a stuck run still ends.
    let deadline = Duration::from_secs(600 + expected as u64);
    let mut ready = HashSet::new();
    let events = watcher(keys.clone(), watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let watching = async {
        while let Some(event) = events.try_next().await? {
            match event {
                watcher::Event::Apply(key) | watcher::Event::InitApply(key) => {
                    let name = key.metadata.name.clone().unwrap_or_default();
                    if is_ready(&key) {
                        ready.insert(name);
                    } else {
                        ready.remove(&name);
                    }
                }
                watcher::Event::Delete(key) => {
                    ready.remove(&key.metadata.name.unwrap_or_default());
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            if ready.len() == expected {
                return Ok(());
            }
        }
        bail!("the watch of the keys ended")
    };
    match tokio::time::timeout(deadline, watching).await {
        Ok(result) => result,
        Err(_) => bail!("only {} of {expected} keys became Ready", ready.len()),
    }
}

fn is_ready(key: &TenantSecurityKey) -> bool {
    key.status
        .as_ref()
        .is_some_and(|s| tenant_key_api::crd::is_true(&s.conditions, READY))
}

/// The API server's own count of the requests it served (`apiserver_request_total`), by verb
/// and resource, for the resources the operator uses.
async fn apiserver_requests(client: &Client) -> Result<BTreeMap<String, u64>> {
    apiserver_counts(client, "apiserver_request_total{").await
}

/// The watches the API server served as streaming lists (`sendInitialEvents`), by resource.
async fn apiserver_watch_lists(client: &Client) -> Result<BTreeMap<String, u64>> {
    apiserver_counts(client, "apiserver_watch_list_duration_seconds_count{").await
}

/// The counter whose samples start with `metric` (name and opening brace), by verb and
/// resource, for the resources the operator uses.
async fn apiserver_counts(client: &Client, metric: &str) -> Result<BTreeMap<String, u64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let body = client.request_text(request).await?;
    let mut counts = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
                .unwrap_or_default()
        };
        let resource = label("resource");
        if !matches!(
            resource,
            "tenantsecuritykeys" | "imburseaccounts" | "secrets" | "events"
        ) {
            continue;
        }
        let what = match (label("subresource"), label("dry_run")) {
            ("", "") => format!("{} {resource}", label("verb")),
            ("", _) => format!("{} {resource} (dry run)", label("verb")),
            (sub, _) => format!("{} {resource}/{sub}", label("verb")),
        };
        // A metric without a verb (the streaming lists) is counted by resource alone.
        *counts.entry(what.trim_start().to_owned()).or_default() +=
            value.parse::<f64>().unwrap_or_default() as u64;
    }
    Ok(counts)
}

/// The writes among `requests`: every verb but reads, lists and watches.
fn writes(requests: &BTreeMap<String, u64>) -> u64 {
    requests
        .iter()
        .filter(|(what, _)| {
            !["GET ", "LIST ", "WATCH "]
                .iter()
                .any(|v| what.starts_with(v))
        })
        .map(|(_, count)| count)
        .sum()
}

/// The requests the operator made among `requests`: neither the bench's creates of the keys
/// nor the watches and lists (of the operator and the bench), which do not grow per key.
fn operator_requests(requests: &BTreeMap<String, u64>) -> u64 {
    requests
        .iter()
        .filter(|(what, _)| {
            what.as_str() != "POST tenantsecuritykeys"
                && !what.starts_with("WATCH ")
                && !what.starts_with("LIST ")
        })
        .map(|(_, count)| count)
        .sum()
}

/// The operator's `/metrics`.
async fn scrape(listen: &str) -> Result<String> {
    Ok(reqwest::get(format!("http://{listen}/metrics"))
        .await?
        .text()
        .await?)
}

/// `tenant_key_operator_kube_writes_total` by label set.
async fn kube_writes(listen: &str) -> Result<BTreeMap<String, u64>> {
    Ok(scrape(listen)
        .await?
        .lines()
        .filter_map(|l| l.strip_prefix("tenant_key_operator_kube_writes_total"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            // Counters are whole numbers, exposed in float notation.
            Some((labels.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// Counts since `before`, by label set.
fn since(before: &BTreeMap<String, u64>, now: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
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
        // Every scrape renders each key's gauges: not too often, or the scrapes are measured.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the operator did not reconcile every key after its restart")
}

/// Whether `/readyz` answers 200 within `limit`.
async fn answers_ready(listen: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
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
    Ok(scrape(listen)
        .await?
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
