//! Command line: `run` (the default) starts the operator, `crd` prints the CRDs.

use std::{
    io::Write,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use tenant_key_api::crd;
use tracing_subscriber::EnvFilter;

use crate::{
    allowed_hosts::AllowedHosts,
    controller::{self, Context, KeyLimits, Settings},
    http::{self, BindAddress},
    kube_client, leader,
    liveness::Liveness,
    metrics::{self, Metrics},
};

#[derive(Parser, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    name = "tenant-key-operator",
    version,
    about = "Declares Imburse Tenant Security Keys as Kubernetes resources and delivers them as Secrets"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (the default when no command is given).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address `/metrics` is served on: `ip:port`, `:port` for every interface, or `0` for
    /// none.
    #[arg(long, env = "TKO_METRICS_BIND_ADDRESS", default_value = ":8080")]
    metrics_bind_address: BindAddress,
    /// Serve `/metrics` over HTTPS, and only to callers whose bearer token the API server
    /// authenticates and authorizes for `get` on the non-resource URL `/metrics` (a
    /// TokenReview and a SubjectAccessReview, each verdict reused for up to a minute).
    #[arg(
        long,
        env = "TKO_METRICS_SECURE",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = false,
        default_missing_value = "true"
    )]
    metrics_secure: bool,
    /// Directory with `tls.crt` and `tls.key` for --metrics-secure (read at start); without it,
    /// a self-signed certificate is made at start.
    #[arg(long, env = "TKO_METRICS_CERT_DIR")]
    metrics_cert_dir: Option<std::path::PathBuf>,
    /// Address the probes (`/livez`, `/readyz`, `/healthz`) are served on, in the same form.
    #[arg(long, env = "TKO_HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    health_probe_bind_address: BindAddress,
    /// How long a reconcile may run before `/livez` fails, so that Kubernetes restarts a
    /// controller that is wedged (each Imburse and Kubernetes request has a timeout of its own,
    /// so a healthy reconcile ends well within it).
    #[arg(long, env = "TKO_LIVENESS_STALL_TIMEOUT", default_value = "5m", value_parser = parse_interval)]
    liveness_stall_timeout: Duration,
    /// Namespace the operator runs in; ClusterImburseAccount credentials are read from here
    /// unless --cluster-account-secret-namespace says otherwise.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tenant-key-operator")]
    namespace: String,
    /// Namespace of the credentials Secrets of ClusterImburseAccounts.
    #[arg(long, env = "TKO_CLUSTER_ACCOUNT_SECRET_NAMESPACE")]
    cluster_account_secret_namespace: Option<String>,
    /// Namespaces whose TenantSecurityKeys, ImburseAccounts and Secrets the operator watches,
    /// comma-separated; none (the default) watches all namespaces. ClusterImburseAccount
    /// credentials are read from --cluster-account-secret-namespace either way.
    #[arg(long, env = "TKO_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Hosts an account's baseUrl may name, comma-separated: host names, `*.domain` wildcards
    /// (subdomains only) or IP addresses. Requests signed with account credentials go nowhere
    /// else.
    #[arg(long, env = "TKO_ALLOWED_IMBURSE_HOSTS", default_value_t = AllowedHosts::default())]
    allowed_imburse_hosts: AllowedHosts,
    /// Reconciles running at once per resource kind.
    #[arg(long, env = "TKO_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Sustained Imburse requests per second per account (0: no client-side limit).
    #[arg(long, env = "TKO_IMBURSE_RATE_LIMIT", default_value_t = 10)]
    imburse_rate_limit: u32,
    /// Imburse requests allowed in a burst per account.
    #[arg(long, env = "TKO_IMBURSE_BURST", default_value_t = 20)]
    imburse_burst: u32,
    /// Timeout of one Imburse request.
    #[arg(long, env = "TKO_IMBURSE_TIMEOUT", default_value = "30s", value_parser = parse_positive)]
    imburse_timeout: Duration,
    /// How long before an account whose credentials Imburse refused (401 or 403), or a key
    /// that cannot be proven revoked, is looked at again; doubled per refusal up to an hour: a
    /// refusal may be of the moment (clock skew), and nothing in the cluster changes when
    /// Imburse recovers.
    #[arg(long, env = "TKO_CREDENTIALS_RETRY_INTERVAL", default_value = "2m", value_parser = parse_positive)]
    credentials_retry_interval: Duration,
    /// Sustained Kubernetes API requests per second (0: no client-side limit; the API
    /// server's priority and fairness still applies). Watches count once, when they start;
    /// the leader election Lease is renewed outside the limit.
    #[arg(long, env = "TKO_KUBE_API_QPS", default_value_t = 0)]
    kube_api_qps: u32,
    /// Kubernetes API requests allowed in a burst above --kube-api-qps.
    #[arg(long, env = "TKO_KUBE_API_BURST", default_value_t = 0)]
    kube_api_burst: u32,
    /// How often every live key is checked at Imburse, as a duration (`1h`, `30m`; `0s`
    /// never checks). One listing per account and tenant, not per key; a key Imburse no
    /// longer knows is replaced.
    #[arg(long, env = "TKO_VERIFY_INTERVAL", default_value = "1h", value_parser = parse_interval)]
    verify_interval: Duration,
    /// Shortest `rotation.interval` a TenantSecurityKey may ask for (`1h`, `30m`): each
    /// rotation mints a key at Imburse, so whoever can edit a key must not mint them in a loop.
    /// A shorter interval stalls the resource with `InvalidSpec`.
    #[arg(long, env = "TKO_MIN_ROTATION_INTERVAL", default_value = "1h", value_parser = parse_interval)]
    min_rotation_interval: Duration,
    /// Longest `rotation.gracePeriod` a TenantSecurityKey may ask for: a replaced key stays
    /// valid that long, and pending replaced keys are capped.
    #[arg(long, env = "TKO_MAX_GRACE_PERIOD", default_value = "168h", value_parser = parse_interval)]
    max_grace_period: Duration,
    /// Kubeconfig to use instead of the in-cluster configuration or $KUBECONFIG.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "TKO_LOG_FILTER", default_value = "info,kube=warn")]
    log_filter: String,
    /// Log format.
    #[arg(long, env = "TKO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Run the controllers only while holding a Lease, so that of several replicas one works
    /// and the others stand by; `--leader-election=false` for a single replica.
    #[arg(
        long,
        env = "TKO_LEADER_ELECTION",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    leader_election: bool,
    /// Namespace of the leader election Lease (default: --namespace).
    #[arg(long, env = "TKO_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "TKO_LEADER_ELECTION_LEASE_NAME",
        default_value = "tenant-key-operator"
    )]
    leader_election_lease_name: String,
    /// How long the other replicas wait after the leader's last renewal before taking over
    /// (whole seconds).
    #[arg(long, env = "TKO_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_interval)]
    leader_election_lease_duration: Duration,
    /// How long after its last renewal a leader that cannot renew stops (and exits); shorter
    /// than the lease duration, so that it stops before another replica takes over.
    #[arg(long, env = "TKO_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_interval)]
    leader_election_renew_deadline: Duration,
    /// How often the leader renews the Lease (whole seconds).
    #[arg(long, env = "TKO_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_interval)]
    leader_election_retry_period: Duration,
}

impl RunArgs {
    /// The leader election settings, when it is on.
    fn leader_election(&self) -> Result<Option<leader::Settings>, leader::Error> {
        if !self.leader_election {
            return Ok(None);
        }
        let settings = leader::Settings {
            namespace: self
                .leader_election_namespace
                .clone()
                .unwrap_or_else(|| self.namespace.clone()),
            lease_name: self.leader_election_lease_name.clone(),
            identity: leader::identity(std::env::var("POD_NAME").ok().as_deref()),
            lease_duration: self.leader_election_lease_duration,
            renew_deadline: self.leader_election_renew_deadline,
            retry_period: self.leader_election_retry_period,
        };
        settings.check()?;
        Ok(Some(settings))
    }
}

/// Parses the command line and runs it.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::Crd { output_dir } => write_crds(output_dir.as_deref()),
        Command::Run(args) => run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenant-key-operator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn write_crds(output_dir: Option<&std::path::Path>) -> Result<(), BoxError> {
    let Some(dir) = output_dir else {
        std::io::stdout().write_all(crd::render_yaml()?.as_bytes())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    for definition in crd::all() {
        std::fs::write(
            dir.join(crd::file_name(&definition)),
            crd::to_yaml(&definition)?,
        )?;
    }
    Ok(())
}

fn init_tracing(filter: &str, format: LogFormat) -> Result<(), BoxError> {
    // Colours only on a terminal: container runtimes and log files keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter)?)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// glibc gives each thread that allocates under contention an arena of its own (up to eight per
/// core) and rarely returns their free pages. The runtime has a worker per core, so on a large
/// node the cache's objects, decoded on whichever worker ran the watch, would pin memory in
/// many half-empty arenas; two arenas bound that whatever the node. Done before any thread
/// starts; `MALLOC_ARENA_MAX` still overrides it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Other C libraries (musl in the container image) have no per-thread arenas to limit.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn parse_interval(value: &str) -> Result<Duration, String> {
    tenant_key_api::crd::parse_duration(value)
        .ok_or_else(|| format!("{value:?} is not a duration such as 1h, 30m or 0s"))
}

/// A duration that must not be zero: a timeout or retry delay of nothing would spin.
fn parse_positive(value: &str) -> Result<Duration, String> {
    let duration = parse_interval(value)?;
    if duration.is_zero() {
        return Err(format!("{value:?} must be longer than 0s"));
    }
    Ok(duration)
}

fn run(args: RunArgs) -> Result<(), BoxError> {
    limit_malloc_arenas();
    init_tracing(&args.log_filter, args.log_format)?;
    // One TLS crypto provider for the whole binary (kube and reqwest both use rustls).
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| "a rustls crypto provider was already installed")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run_async(args));
    // A replica that lost its leadership exits now, not after background I/O (a blocked DNS
    // lookup, say) has finished.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return futures::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down after the reconciles in flight");
}

async fn run_async(args: RunArgs) -> Result<(), BoxError> {
    let election = args.leader_election()?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let observer_metrics = metrics.clone();
    let imburse = imburse::Client::new(imburse::ClientOptions {
        request_timeout: args.imburse_timeout,
        rate_limit: (args.imburse_rate_limit > 0).then_some(imburse::RateLimit {
            per_second: args.imburse_rate_limit,
            burst: args.imburse_burst.max(1),
        }),
        observer: Some(Arc::new(move |call: &imburse::CallRecord| {
            observer_metrics.observe_imburse(call)
        })),
        ..Default::default()
    })?;
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    // The Lease has a client of its own, outside the limit and the reconciles' connections: a
    // renewal queued behind a burst of reconciles would miss its deadline, and the leader
    // would step down exactly when it is busiest.
    let lease_client = kube_client::client(config.clone(), None)?;
    let client = kube_client::client(
        config,
        kube_client::RateLimit::from_flags(args.kube_api_qps, args.kube_api_burst),
    )?;
    let mut watch_namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .collect();
    watch_namespaces.sort();
    watch_namespaces.dedup();
    let scope = if watch_namespaces.is_empty() {
        "all".to_owned()
    } else {
        watch_namespaces.join(",")
    };
    tracing::info!(
        namespaces = %scope,
        allowed_imburse_hosts = %args.allowed_imburse_hosts,
        "watching"
    );
    // Markers name the cluster a key was made in by its `kube-system` namespace, which every
    // cluster has and which lives as long as the cluster.
    let kube_system = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    let cluster_id =
        controller::intent::cluster_id(kube_system.metadata.uid.as_deref().unwrap_or_default());
    if cluster_id.is_empty() {
        return Err("namespace kube-system has no uid to tell this cluster's keys by".into());
    }
    let settings = Settings {
        cluster_id,
        cluster_account_secret_namespace: args
            .cluster_account_secret_namespace
            .unwrap_or_else(|| args.namespace.clone()),
        watch_namespaces,
        allowed_imburse_hosts: args.allowed_imburse_hosts,
        concurrency: args.concurrency,
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(300),
        stalled_retry: args.credentials_retry_interval,
        verify_interval: (!args.verify_interval.is_zero()).then_some(args.verify_interval),
        key_limits: KeyLimits {
            min_rotation_interval: args.min_rotation_interval,
            max_grace_period: args.max_grace_period,
        },
    };
    let ready = Arc::new(AtomicBool::new(false));
    let liveness = Liveness::new(args.liveness_stall_timeout);
    let ctx = Arc::new(Context::new(
        client.clone(),
        imburse,
        metrics,
        settings,
        ready.clone(),
        liveness.clone(),
    ));
    let (keys, accounts, inventory) = (ctx.clone(), ctx.clone(), ctx.clone());
    metrics::register_cache_metrics(
        &mut registry,
        metrics::Caches {
            keys: Box::new(move || keys.cached_keys()),
            accounts: Box::new(move || accounts.cached_accounts()),
            inventory: Box::new(move || inventory.inventory.snapshot()),
        },
    );
    // Both bound, and TLS set up, before anything runs, so that a taken port or a bad
    // certificate fails start-up.
    let metrics_listener = http::bind(args.metrics_bind_address).await?;
    let probes_listener = http::bind(args.health_probe_bind_address).await?;
    let (metrics_tls, authorizer) = if args.metrics_secure {
        let names = vec!["localhost".to_owned(), "tenant-key-operator".to_owned()];
        let config = http::tls::server_config(args.metrics_cert_dir.as_deref(), names)?;
        (
            Some(config),
            Some(http::auth::Authorizer::new(client.clone())),
        )
    } else {
        (None, None)
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown_signal()));
    let mut servers = Vec::new();
    for (listener, app, tls, what) in [
        (
            metrics_listener,
            http::metrics(registry, authorizer),
            metrics_tls,
            "metrics",
        ),
        (
            probes_listener,
            http::probes(ready.clone(), liveness),
            None,
            "health probes",
        ),
    ] {
        let Some(listener) = listener else {
            tracing::info!("not serving {what}");
            continue;
        };
        let address = listener.local_addr()?;
        let shutdown = shutdown.clone();
        servers.push(match tls {
            Some(config) => {
                tracing::info!(%address, secure = true, "serving {what}");
                tokio::spawn(http::tls::serve(listener, app, config, shutdown))
            }
            None => {
                tracing::info!(%address, "serving {what}");
                tokio::spawn(http::serve(listener, app, shutdown))
            }
        });
    }
    let controllers = controller::run(ctx, shutdown.clone());
    match election {
        Some(election) => {
            // Every replica is ready, the standing-by ones too: readiness gates rolling
            // updates, which must not wait for a replica that only takes over when needed.
            ready.store(true, std::sync::atomic::Ordering::Relaxed);
            leader::run(lease_client, &election, shutdown, controllers).await?;
        }
        None => controllers.await,
    }
    for server in servers {
        server.await??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["tenant-key-operator", "run"].iter().chain(args))?;
        match cli.command {
            Some(Command::Run(args)) => Ok(*args),
            _ => unreachable!("`run` parses as the run command"),
        }
    }

    #[test]
    fn allowed_hosts_default_to_imburse() -> Result<(), clap::Error> {
        let args = run_args(&[])?;
        assert_eq!(args.allowed_imburse_hosts, AllowedHosts::default());
        assert!(args.watch_namespaces.is_empty());
        Ok(())
    }

    #[test]
    fn lists_are_comma_separated() -> Result<(), clap::Error> {
        let args = run_args(&[
            "--allowed-imburse-hosts",
            "api.imbursepayments.com,*.imburse.example",
            "--watch-namespaces",
            "payments,orders",
        ])?;
        assert_eq!(
            args.allowed_imburse_hosts.to_string(),
            "api.imbursepayments.com,*.imburse.example"
        );
        assert_eq!(args.watch_namespaces, ["payments", "orders"]);
        assert!(run_args(&["--allowed-imburse-hosts", "https://evil.example"]).is_err());
        Ok(())
    }

    #[test]
    fn leader_election_is_on_by_default() -> Result<(), Box<dyn std::error::Error>> {
        let args = run_args(&["--namespace", "operators"])?;
        let settings = args.leader_election()?.ok_or("leader election is off")?;
        assert_eq!(settings.namespace, "operators");
        assert_eq!(settings.lease_name, "tenant-key-operator");
        assert_eq!(settings.lease_duration, Duration::from_secs(15));
        assert_eq!(settings.renew_deadline, Duration::from_secs(10));
        assert_eq!(settings.retry_period, Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn leader_election_flags() -> Result<(), Box<dyn std::error::Error>> {
        assert!(
            run_args(&["--leader-election=false"])?
                .leader_election()?
                .is_none()
        );
        assert!(
            run_args(&["--leader-election"])?
                .leader_election()?
                .is_some()
        );
        let settings = run_args(&[
            "--leader-election-namespace",
            "elections",
            "--leader-election-lease-name",
            "tko",
            "--leader-election-lease-duration",
            "1m",
            "--leader-election-renew-deadline",
            "45s",
            "--leader-election-retry-period",
            "5s",
        ])?
        .leader_election()?
        .ok_or("leader election is off")?;
        assert_eq!(settings.namespace, "elections");
        assert_eq!(settings.lease_name, "tko");
        assert_eq!(settings.lease_duration, Duration::from_secs(60));
        assert_eq!(settings.renew_deadline, Duration::from_secs(45));
        assert_eq!(settings.retry_period, Duration::from_secs(5));
        assert!(run_args(&["--leader-election-lease-duration", "15"]).is_err());
        assert!(
            run_args(&["--leader-election-renew-deadline", "20s"])?
                .leader_election()
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn every_variable_carries_the_prefix() {
        use clap::CommandFactory;

        let command = Cli::command();
        let run = command
            .find_subcommand("run")
            .unwrap_or_else(|| unreachable!("`run` is a command"));
        let variables: Vec<String> = run
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .collect();
        assert!(variables.len() > 20, "{variables:?}");
        for variable in variables {
            // The namespace comes from the downward API under its conventional name.
            assert!(
                variable.starts_with("TKO_") || variable == "POD_NAMESPACE",
                "{variable}"
            );
        }
    }

    #[test]
    fn ports_and_durations_take_the_conventional_forms() -> Result<(), clap::Error> {
        let args = run_args(&[])?;
        assert_eq!(args.metrics_bind_address.to_string(), "0.0.0.0:8080");
        assert_eq!(args.health_probe_bind_address.to_string(), "0.0.0.0:8081");
        assert_eq!(args.imburse_timeout, Duration::from_secs(30));
        assert_eq!(args.credentials_retry_interval, Duration::from_secs(120));
        assert_eq!(args.liveness_stall_timeout, Duration::from_secs(300));
        assert_eq!((args.kube_api_qps, args.kube_api_burst), (0, 0));

        let args = run_args(&[
            "--metrics-bind-address",
            "0",
            "--imburse-timeout",
            "1m30s",
            "--credentials-retry-interval",
            "5s",
        ])?;
        assert_eq!(args.metrics_bind_address, BindAddress::Off);
        assert_eq!(args.imburse_timeout, Duration::from_secs(90));
        assert_eq!(args.credentials_retry_interval, Duration::from_secs(5));
        for invalid in [
            &["--imburse-timeout", "0s"][..],
            &["--imburse-timeout", "30"],
            &["--credentials-retry-interval", "0s"],
            &["--health-probe-bind-address", "8081"],
        ] {
            assert!(run_args(invalid).is_err(), "{invalid:?} parsed");
        }
        Ok(())
    }
}
