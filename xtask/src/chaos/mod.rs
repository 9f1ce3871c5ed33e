//! `cargo xtask chaos`: many keys created at once while something goes wrong, then a check of
//! the end state. Every scenario runs on a control plane and a sandbox of its own, against
//! Imburse answering with 503s, 429s with `Retry-After` and lost create responses:
//! - `kill-storm`: one operator process SIGKILLed at random moments;
//! - `leader-loss`: two processes with leader election, the leader SIGKILLed again and again;
//! - `apiserver-restart`: kube-apiserver restarted during the burst;
//! - `deletion-storm`: half of the keys deleted while they are being created.
//!
//! In the end every remaining key is Ready with exactly one live key at Imburse whose Secret
//! authenticates, no deleted resource is left Terminating or has a live key, and there are no
//! more creates than 5 % over one per key beyond the interrupted ones that were found and
//! revoked. Figures go to a JSON file, one object per scenario.

mod apiserver_restart;
mod deletion_storm;
mod kill_storm;
mod leader_loss;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use imburse_sandbox::{Config, Faults, Options, RateLimitedFault, Sandbox};
use kube::{Api, Client, api::ListParams};
use serde_json::json;
use tenant_key_api::crd::TenantSecurityKey;
use testenv::{
    ControlPlane, Operator, chaos,
    cluster::{Launch, free_port},
};

use crate::{
    bench::{NAMESPACE, create_key, key_name, prepare, setup_account, wait_all_ready},
    workspace::{self, step},
};

#[derive(clap::Args)]
pub struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Choice,
    /// TenantSecurityKeys to create, each for a tenant of its own.
    #[arg(long, default_value_t = 500)]
    keys: usize,
    /// kill-storm: how many times the operator is SIGKILLed and started again.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// leader-loss: how many times the leader is SIGKILLed and started again.
    #[arg(long, default_value_t = 12)]
    leader_kills: usize,
    /// apiserver-restart: how many times kube-apiserver is restarted.
    #[arg(long, default_value_t = 3)]
    apiserver_restarts: usize,
    /// Longest wait before each kill or restart, in milliseconds (each wait is uniform up to
    /// it).
    #[arg(long, default_value_t = 3000)]
    max_kill_interval_ms: u64,
    /// deletion-storm: longest wait between a key's creation and its deletion, in milliseconds
    /// (each wait is uniform up to it). Long enough for the operator to reach some of the keys
    /// first, so that deletions meet keys not yet created, creates in flight and Ready keys.
    #[arg(long, default_value_t = 20000)]
    max_delete_delay_ms: u64,
    /// Share of Imburse calls answered with 503 during the storm.
    #[arg(long, default_value_t = 0.1)]
    error_rate: f64,
    /// Imburse calls answered with 429 and `Retry-After: 1` at the start of the storm.
    #[arg(long, default_value_t = 50)]
    rate_limited: u32,
    /// Creates whose key is stored but whose response is lost.
    #[arg(long, default_value_t = 10)]
    lost_creates: u32,
    /// An operator binary to use instead of a fresh build of the one the image ships.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Where to write the figures (default: <target>/chaos/results.json). Scenarios not run
    /// keep the figures the file already has.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    KillStorm,
    LeaderLoss,
    ApiserverRestart,
    DeletionStorm,
}

/// Where the operators hold their Lease: a namespace every cluster has.
const LEASE_NAMESPACE: &str = "default";

const SCENARIOS: [Scenario; 4] = [
    Scenario::KillStorm,
    Scenario::LeaderLoss,
    Scenario::ApiserverRestart,
    Scenario::DeletionStorm,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::KillStorm => "kill-storm",
            Scenario::LeaderLoss => "leader-loss",
            Scenario::ApiserverRestart => "apiserver-restart",
            Scenario::DeletionStorm => "deletion-storm",
        }
    }

    async fn run(self, storm: Storm, args: &Args) -> Result<serde_json::Value> {
        match self {
            Scenario::KillStorm => kill_storm::run(storm, args).await,
            Scenario::LeaderLoss => leader_loss::run(storm, args).await,
            Scenario::ApiserverRestart => apiserver_restart::run(storm, args).await,
            Scenario::DeletionStorm => deletion_storm::run(storm, args).await,
        }
    }
}

/// One scenario (`Some`), or all of them.
#[derive(Clone, Copy)]
struct Choice(Option<Scenario>);

impl clap::ValueEnum for Choice {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Choice(Some(Scenario::KillStorm)),
            Choice(Some(Scenario::LeaderLoss)),
            Choice(Some(Scenario::ApiserverRestart)),
            Choice(Some(Scenario::DeletionStorm)),
            Choice(None),
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(
            self.0.map_or("all", Scenario::name),
        ))
    }
}

pub async fn run(args: Args) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace::target_dir().join("chaos/results.json"));
    let mut results = earlier_results(&out);
    let mut binary = args.operator.clone();
    let mut failed = Vec::new();
    for scenario in SCENARIOS
        .into_iter()
        .filter(|s| args.scenario.0.is_none_or(|chosen| chosen == *s))
    {
        step(&format!("scenario {}", scenario.name()));
        let storm = Storm::start(binary.as_deref(), args.keys, scenario).await?;
        binary = Some(storm.binary.clone());
        match scenario.run(storm, &args).await {
            Ok(figures) => {
                println!("{}", serde_json::to_string_pretty(&figures)?);
                if figures["createsWithinBound"] != true {
                    failed.push(format!(
                        "{}: {} keys created and {} revoked for {} resources",
                        scenario.name(),
                        figures["creates"],
                        figures["revoked"],
                        figures["keys"]
                    ));
                }
                results.insert(scenario.name().to_owned(), figures);
            }
            Err(e) => {
                eprintln!("scenario {} failed: {e:#}", scenario.name());
                failed.push(format!("{}: {e:#}", scenario.name()));
            }
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("figures written to {}", out.display());
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// The figures of the scenarios an earlier run wrote to `out`.
fn earlier_results(out: &Path) -> serde_json::Map<String, serde_json::Value> {
    let earlier: serde_json::Map<String, serde_json::Value> = std::fs::read(out)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    earlier
        .into_iter()
        .filter(|(name, _)| SCENARIOS.iter().any(|s| s.name() == name))
        .collect()
}

/// A control plane with the CRDs and the keys' namespace, and a sandbox with one tenant per
/// key, so that "one live key per resource" is "one key per tenant".
struct Storm {
    binary: PathBuf,
    /// Where the operator processes log: kept after the run, unlike the control plane's
    /// folder, as the evidence of a failed check.
    logs: PathBuf,
    plane: ControlPlane,
    client: Client,
    sandbox: Sandbox,
    config: Config,
    burst: Burst,
}

/// The keys to create, each for a tenant of its own.
struct Burst {
    keys: Api<TenantSecurityKey>,
    tenants: Vec<String>,
}

impl Burst {
    fn count(&self) -> usize {
        self.tenants.len()
    }

    /// Creates every key, 16 at a time, calling `then` with the index of each once it is
    /// stored.
    async fn create_all(&self, then: impl Fn(usize)) -> Result<()> {
        stream::iter(self.tenants.iter().enumerate())
            .map(|(i, tenant)| {
                let then = &then;
                async move {
                    create_stored(&self.keys, i, tenant).await?;
                    then(i);
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await
    }
}

impl Storm {
    async fn start(binary: Option<&Path>, count: usize, scenario: Scenario) -> Result<Storm> {
        let logs = workspace::target_dir()
            .join("chaos/logs")
            .join(scenario.name());
        if logs.exists() {
            std::fs::remove_dir_all(&logs)?;
        }
        std::fs::create_dir_all(&logs)?;
        let (binary, plane, client) = prepare(binary).await?;
        let config = Config::generate(1, count.max(1));
        let sandbox = Sandbox::start_with(config.clone(), Options::default()).await?;
        let burst = Burst {
            keys: Api::namespaced(client.clone(), NAMESPACE),
            tenants: config
                .tenants
                .iter()
                .take(count)
                .map(|t| t.tenant_id.clone())
                .collect(),
        };
        Ok(Storm {
            binary,
            logs,
            plane,
            client,
            sandbox,
            config,
            burst,
        })
    }

    /// Starts an operator process (logging into `<logs>/<name>.log`) with `args` after the
    /// common ones, and `POD_NAME=name`.
    fn operator(&self, name: &'static str, args: &[&str]) -> Result<Operator> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        Launch {
            name,
            namespace: LEASE_NAMESPACE,
            metrics: &listen,
            log_filter: Some("info"),
            env: &[("POD_NAME", name)],
            args,
            ..Launch::default()
        }
        .start(&self.binary, &self.plane, &self.logs)
    }

    /// Creates the account (which needs a running operator to become Ready), then turns the
    /// sandbox's faults on and counts its calls from zero.
    async fn begin(&self, args: &Args) -> Result<Instant> {
        setup_account(&self.client, &self.config, &self.sandbox).await?;
        chaos::start_storm(
            &self.sandbox,
            &Faults {
                jitter_ms: 100,
                error_rate: args.error_rate,
                rate_limited: Some(RateLimitedFault {
                    count: args.rate_limited,
                    retry_after_seconds: 1,
                }),
                lose_create_responses: args.lost_creates,
                ..Faults::default()
            },
        )
        .await?;
        Ok(Instant::now())
    }

    /// Waits until the resources of `deleted` are gone and the others Ready (Imburse keeps
    /// failing until then), checks the end state and returns the figures every scenario has.
    async fn settle(
        &self,
        args: &Args,
        started: Instant,
        deleted: &[usize],
    ) -> Result<serde_json::Value> {
        let (keys, count) = (&self.burst.keys, self.burst.count());
        let remaining = count - deleted.len();
        if !deleted.is_empty() {
            step(&format!("waiting for {} keys to be gone", deleted.len()));
            wait_gone(keys, remaining).await?;
        }
        step("waiting for every key to be Ready");
        wait_all_ready(keys, remaining).await?;
        let settled = started.elapsed();
        let gone: Vec<&str> = deleted
            .iter()
            .map(|&i| self.burst.tenants[i].as_str())
            .collect();
        step("checking keys at Imburse and in the Secrets");
        let expected = chaos::Expected {
            namespace: NAMESPACE,
            created: count,
            gone: &gone,
            // Every key is checked at once: a key Ready beside another live key of its
            // tenant is a failure here.
            wait: Duration::ZERO,
        };
        let end = chaos::check_end(&self.client, &self.sandbox, &expected).await?;
        Ok(json!({
            "keys": count,
            "deleted": deleted.len(),
            "errorRate": args.error_rate,
            "rateLimited": args.rate_limited,
            "lostCreates": args.lost_creates,
            "secondsToSettled": settled.as_secs_f64(),
            "creates": end.creates,
            "revoked": end.revoked,
            "createsPerKey": end.creates as f64 / count as f64,
            "createsPerKeyBeyondRevoked": end.creates.saturating_sub(end.revoked) as f64 / count as f64,
            "createsWithinBound": end.creates_within_bound(),
            "liveKeysAtImburse": end.live,
            "secretsAuthenticated": end.authenticated,
            "sandboxCalls": end.calls,
        }))
    }
}

/// Creates a key, retrying while the API server is away; a create whose response was lost
/// and that is found stored on the retry counts as done.
async fn create_stored(keys: &Api<TenantSecurityKey>, i: usize, tenant: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match create_key(keys, &key_name(i), tenant).await {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.downcast_ref(), Some(kube::Error::Api(s)) if s.code == 409) => {
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("creating key {i} again: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(format!("creating key {i}"))),
        }
    }
}

/// Waits until `remaining` resources are left and none of them is being deleted.
async fn wait_gone(keys: &Api<TenantSecurityKey>, remaining: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = keys.list(&ListParams::default()).await?;
        let terminating = list
            .items
            .iter()
            .filter(|k| k.metadata.deletion_timestamp.is_some())
            .count();
        if list.items.len() == remaining && terminating == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} resources left, {terminating} of them Terminating; expected {remaining}",
                list.items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A random pause of up to `max_ms` milliseconds.
async fn pause(max_ms: u64) {
    let ms = rand::Rng::random_range(&mut rand::rng(), 0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
