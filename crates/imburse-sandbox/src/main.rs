//! `imburse-sandbox`: runs the sandbox as a process. Prints `listening on http://ADDR` on
//! stdout once bound (launchers wait for that line); logs go to stderr.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use imburse_sandbox::{Config, Faults, Options, RateLimitedFault, Sandbox, SandboxError};

/// A local stand-in for the Imburse API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Sandbox configuration (YAML: accounts, tenants, keys, tokenLifetimeSeconds).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// JSON file that keeps created keys across restarts.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Fixed delay added to every API call.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Random extra delay (0..=N ms) added to every API call.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Share (0..=1) of API calls answered with 503.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Answer the first N API calls with 429.
    #[arg(long, default_value_t = 0)]
    rate_limited_count: u32,
    /// Retry-After (seconds) sent with those 429 answers.
    #[arg(long, default_value_t = 1)]
    retry_after_seconds: u64,
    /// Store the first N created keys but drop the connection instead of answering.
    #[arg(long, default_value_t = 0)]
    lose_create_responses: u32,
    /// Delay between storing a created key and answering.
    #[arg(long, default_value_t = 0)]
    create_response_delay_ms: u64,
    /// Answer the first N delete calls with 503 without deleting.
    #[arg(long, default_value_t = 0)]
    fail_deletes: u32,
}

impl Args {
    fn faults(&self) -> Faults {
        Faults {
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
            error_rate: self.error_rate,
            rate_limited: (self.rate_limited_count > 0).then_some(RateLimitedFault {
                count: self.rate_limited_count,
                retry_after_seconds: self.retry_after_seconds,
            }),
            lose_create_responses: self.lose_create_responses,
            create_response_delay_ms: self.create_response_delay_ms,
            fail_deletes: self.fail_deletes,
            scripted: Vec::new(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imburse-sandbox: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), SandboxError> {
    let config = Config::load(&args.config)?;
    let options = Options {
        listen: args.listen,
        state_file: args.state.clone(),
        faults: args.faults(),
    };
    let sandbox = Sandbox::start_with(config, options).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", sandbox.base_url())?;
    stdout.flush()?;
    drop(stdout);
    shutdown_signal().await?;
    sandbox.stop().await
}

/// Resolves on Ctrl-C, or SIGTERM where there is one (how launchers stop the process).
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
