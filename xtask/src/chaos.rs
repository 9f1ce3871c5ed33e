//! `cargo xtask chaos`: a kill storm. Creates `--keys` TenantSecurityKeys at once, SIGKILLs the
//! operator `--kills` times at random moments while the sandbox answers with 503s, 429s with
//! `Retry-After` and lost create responses, then checks the end state: every key Ready, exactly
//! one live key per resource at Imburse, each Secret's key authenticates, and no more creates
//! than 5 % over one per key beyond the interrupted ones that were found and revoked. Figures go
//! to a JSON file.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use imburse::Operation;
use imburse_sandbox::{Config, Faults, Options, RateLimitedFault, Sandbox};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use rand::Rng as _;
use serde_json::json;
use tenant_key_operator::crd::TenantSecurityKey;
use testenv::Operator;

use crate::{
    bench::{NAMESPACE, create_key, prepare, setup_account, wait_all_ready},
    workspace::{self, step},
};

#[derive(clap::Args)]
pub struct Args {
    /// TenantSecurityKeys to create, each for a tenant of its own.
    #[arg(long, default_value_t = 500)]
    keys: usize,
    /// How many times the operator is SIGKILLed and started again.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// Longest wait between two kills, in milliseconds (each wait is uniform up to it).
    #[arg(long, default_value_t = 3000)]
    max_kill_interval_ms: u64,
    /// Share of Imburse calls answered with 503 during the storm.
    #[arg(long, default_value_t = 0.1)]
    error_rate: f64,
    /// Imburse calls answered with 429 and `Retry-After: 1` at the start of the storm.
    #[arg(long, default_value_t = 50)]
    rate_limited: u32,
    /// Creates whose key is stored but whose response is lost.
    #[arg(long, default_value_t = 10)]
    lost_creates: u32,
    /// An operator binary to use instead of a fresh release build.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Where to write the figures (default: <target>/chaos/results.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    let (binary, plane, client) = prepare(args.operator.as_deref()).await?;
    let config = Config::generate(1, args.keys.max(1));
    let sandbox = Sandbox::start_with(config.clone(), Options::default()).await?;
    let listen = format!("127.0.0.1:{}", workspace::free_port()?);
    let mut operator = Operator::start(
        "operator",
        &binary,
        plane.kubeconfig_path(),
        plane.data_dir(),
        // One process killed again and again: its crash safety is under test, not the
        // handover, and each restart would otherwise wait for the killed leader's Lease.
        &[
            "--listen-address",
            &listen,
            "--log-filter",
            "info",
            "--leader-election=false",
        ],
    )?;
    setup_account(&client, &config, &sandbox).await?;

    step(&format!(
        "creating {} keys while the operator is killed {} times",
        args.keys, args.kills
    ));
    let admin = sandbox.admin();
    admin.reset_stats().await?;
    admin
        .set_faults(&Faults {
            jitter_ms: 100,
            error_rate: args.error_rate,
            rate_limited: Some(RateLimitedFault {
                count: args.rate_limited,
                retry_after_seconds: 1,
            }),
            lose_create_responses: args.lost_creates,
            ..Faults::default()
        })
        .await?;
    let started = Instant::now();
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let tenants: Vec<&str> = config
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    let creating = stream::iter(0..args.keys)
        .map(|i| create_key(&keys, i, tenants[i]))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>();
    let storm = async {
        for _ in 0..args.kills {
            let pause = rand::rng().random_range(0..=args.max_kill_interval_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            operator.kill();
            operator.restart()?;
        }
        anyhow::Ok(())
    };
    futures::try_join!(creating, storm)?;
    let storm_seconds = started.elapsed().as_secs_f64();

    // Imburse keeps failing until the end: what the storm interrupted is finished through it.
    step("waiting for every key to be Ready");
    wait_all_ready(&keys, args.keys).await?;
    let to_ready = started.elapsed();
    admin.set_faults(&Faults::default()).await?;
    let figures = check(&client, &keys, &sandbox, &args).await?;
    let stats = admin.stats().await?;
    let creates = stats.count(Operation::CreateKey, 201);
    let revoked = stats.count(Operation::DeleteKey, 204);
    let figures = json!({
        "keys": args.keys,
        "kills": args.kills,
        "errorRate": args.error_rate,
        "rateLimited": args.rate_limited,
        "lostCreates": args.lost_creates,
        "stormSeconds": storm_seconds,
        "secondsToAllReady": to_ready.as_secs_f64(),
        "creates": creates,
        "revoked": revoked,
        "createsPerKey": creates as f64 / args.keys as f64,
        "createsPerKeyBeyondRevoked": creates.saturating_sub(revoked) as f64 / args.keys as f64,
        "liveKeysAtImburse": figures.live,
        "secretsAuthenticated": figures.authenticated,
        "sandboxCalls": stats.calls,
    });
    let out = args
        .out
        .unwrap_or_else(|| workspace::target_dir().join("chaos/results.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&figures)?)?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    println!("figures written to {}", out.display());
    ensure!(
        creates as f64 <= args.keys as f64 * 1.05 + revoked as f64,
        "{creates} keys created and {revoked} revoked for {} resources",
        args.keys
    );
    drop(operator);
    Ok(())
}

struct EndState {
    live: usize,
    authenticated: usize,
}

/// Every resource has exactly the one live key its status names, and its Secret's key
/// authenticates.
async fn check(
    client: &kube::Client,
    keys: &Api<TenantSecurityKey>,
    sandbox: &Sandbox,
    args: &Args,
) -> Result<EndState> {
    step("checking keys at Imburse and in the Secrets");
    let mut live: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in sandbox.admin().keys(None).await? {
        live.entry(key.tenant_id).or_default().push(key.public_key);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let http = imburse::Client::new(Default::default())?;
    let resources = keys.list(&ListParams::default()).await?.items;
    ensure!(resources.len() == args.keys, "resources went missing");
    let authenticated = stream::iter(resources)
        .map(|resource| {
            let (secrets, http, live) = (&secrets, &http, &live);
            async move {
                let name = resource.metadata.name.clone().unwrap_or_default();
                let status = resource.status.context("status")?;
                let public_key = status.public_key.context("publicKey")?;
                let tenant_keys = live.get(&resource.spec.tenant_id);
                ensure!(
                    tenant_keys.is_some_and(|k| k == std::slice::from_ref(&public_key)),
                    "{name}: Imburse holds {tenant_keys:?}, the status names {public_key}"
                );
                let secret = secrets
                    .get(&status.secret_name.context("secretName")?)
                    .await?;
                let entry = |entry: &str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(entry))
                        .and_then(|v| String::from_utf8(v.0.clone()).ok())
                        .with_context(|| format!("{name}: the Secret has no {entry}"))
                };
                let pair = imburse::KeyPair::new(entry("publicKey")?, entry("privateKey")?);
                ensure!(
                    pair.public_key == public_key,
                    "{name}: the Secret holds another key"
                );
                imburse::authenticate(
                    http,
                    &sandbox.base_url(),
                    imburse::ApiGeneration::Seed,
                    &pair,
                )
                .await
                .with_context(|| format!("{name}: the Secret's key does not authenticate"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_fold(0, |n, ()| async move { Ok(n + 1) })
        .await?;
    Ok(EndState {
        live: live.values().map(Vec::len).sum(),
        authenticated,
    })
}
