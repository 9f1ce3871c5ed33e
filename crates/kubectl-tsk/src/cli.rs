//! Arguments in kubectl's conventions, and the dispatch to the subcommands.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::{audit, cluster, inspect, migrate, output::Format, rotate, status, version};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl tsk",
    bin_name = "kubectl tsk",
    version,
    about = "Status, rotation and key Secrets of TenantSecurityKeys, and an audit of the keys at Imburse"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes, anywhere on the line, as kubectl's own.
#[derive(Debug, Args)]
pub struct Global {
    /// Namespace (default: the kubeconfig context's namespace, then `default`).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (for `status` without a name, `rotate --all` or `-l`, and `audit`, which
    /// then also audits the ClusterImburseAccounts).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Machine-readable output of the same data.
    #[arg(short, long, global = true, value_enum)]
    pub output: Option<Format>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Conditions, key age, next rotation, pending revocations, whether the Secret holds the
    /// recorded key, the account's readiness and recent Events; without NAME, a table of all.
    Status {
        /// The TenantSecurityKey.
        name: Option<String>,
    },
    /// Requests a new key, which the operator creates and writes into the Secret.
    Rotate(RotateArgs),
    /// Shows what a key Secret holds, never the private key.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// Every key at Imburse of the namespace's accounts (or of --account), classified by the
    /// operator as managed (with the resource that holds it), leaked, foreign or unmanaged.
    Audit(AuditArgs),
    /// After an upgrade that changed the storage version: rewrites every TenantSecurityKey,
    /// ImburseAccount and ClusterImburseAccount at it, then sets the CRDs'
    /// status.storedVersions to it alone, so that a later release can stop serving the old
    /// version. Leaves storedVersions alone if any rewrite failed; safe to run again.
    Migrate,
    /// This plugin's version and the operator's, read from the image tag of each operator
    /// Deployment in the cluster.
    Version,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// One account: NAME or imburseaccount/NAME (in the namespace), or
    /// clusterimburseaccount/NAME.
    #[arg(long)]
    pub account: Option<String>,
    /// After the audit, revoke the leaked keys it found, once confirmed; the operator revokes
    /// only those it finds leaked again at that moment.
    #[arg(long)]
    pub revoke_leaked: bool,
    /// Confirm --revoke-leaked without asking.
    #[arg(long, requires = "revoke_leaked")]
    pub yes: bool,
    /// Longest wait for the operator's answer, e.g. `90s`, `5m`.
    #[arg(long, default_value = "2m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("targets").required(true).args(["names", "all", "selector"])))]
pub struct RotateArgs {
    /// TenantSecurityKeys to rotate.
    pub names: Vec<String>,
    /// Every TenantSecurityKey in the namespace (in every namespace with -A).
    #[arg(long)]
    pub all: bool,
    /// TenantSecurityKeys matching a label selector, e.g. `team=payments`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Wait until the operator reports each new key in its Secret and the key Ready.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait, e.g. `90s`, `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// A Secret written by the operator: public key, fingerprint, tenant, account, owner.
    Secret {
        /// The Secret.
        name: String,
    },
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    tenant_key_api::crd::parse_duration(value)
        .ok_or_else(|| format!("{value:?} is not a duration such as 90s, 5m or 1h"))
}

/// Which namespaces a command looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out a cause the text so far already quotes: kube's and
/// std's errors often repeat their source in their own message.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

async fn run(cli: Cli) -> Result<()> {
    // kube is built with rustls on aws-lc-rs; installing the provider explicitly keeps a second
    // provider elsewhere in the dependency tree from making TLS panic.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Cli { global, command } = cli;
    let connection = cluster::connect(global.kubeconfig.as_deref(), global.context.as_deref())
        .await
        .context("loading the kubeconfig")?;
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| connection.default_namespace.clone());
    let scope = if global.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(namespace.clone())
    };
    let client = connection.client;
    match command {
        Command::Status { name: Some(name) } => {
            refuse_name_across_namespaces(&scope)?;
            status::show(client, &namespace, &name, global.output).await
        }
        Command::Status { name: None } => status::list(client, &scope, global.output).await,
        Command::Rotate(args) => {
            if !args.names.is_empty() {
                refuse_name_across_namespaces(&scope)?;
            }
            rotate::run(client, &scope, &args, global.output).await
        }
        Command::Inspect {
            what: Inspect::Secret { name },
        } => {
            refuse_name_across_namespaces(&scope)?;
            inspect::secret(client, &namespace, &name, global.output).await
        }
        Command::Audit(args) => audit::run(client, &scope, &args, global.output).await,
        Command::Migrate => migrate::run(&client, global.output).await,
        Command::Version => version::show(client, global.output).await,
    }
}

/// A name is looked up in one namespace, as `kubectl get NAME -A` refuses to guess which.
fn refuse_name_across_namespaces(scope: &Scope) -> Result<()> {
    if *scope == Scope::All {
        bail!("a resource cannot be retrieved by name across all namespaces: use -n instead of -A");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "kubectl-tsk",
            "rotate",
            "-n",
            "payments",
            "checkout",
            "--wait",
            "--timeout",
            "90s",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("payments"));
        assert_eq!(cli.global.output, Some(Format::Json));
        let Command::Rotate(args) = cli.command else {
            panic!("not rotate: {:?}", cli.command)
        };
        assert_eq!(args.names, ["checkout"]);
        assert!(args.wait);
        assert_eq!(args.timeout, Duration::from_secs(90));
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io)
            .context("failed to read /nowhere: no such file")
            .context("loading the kubeconfig");
        assert_eq!(
            describe(&error),
            "loading the kubeconfig: failed to read /nowhere: no such file"
        );
    }

    #[test]
    fn audit_confirms_only_revocations() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["kubectl-tsk", "audit"].iter().chain(args)).map(|c| c.command)
        };
        assert!(parse(&["--yes"]).is_err());
        let Ok(Command::Audit(args)) = parse(&["-A", "--revoke-leaked", "--yes"]) else {
            panic!("not audit")
        };
        assert!(args.revoke_leaked && args.yes);
        assert_eq!(args.timeout, Duration::from_secs(120));
    }

    #[test]
    fn rotate_needs_exactly_one_way_to_choose() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["kubectl-tsk", "rotate"].iter().chain(args)).map(|_| ())
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["a", "--all"]).is_err());
        assert!(parse(&["--all", "-l", "team=x"]).is_err());
        assert!(parse(&["-l", "team=x"]).is_ok());
        assert!(parse(&["a", "b"]).is_ok());
        assert!(parse(&["a", "--timeout", "soon"]).is_err());
    }
}
