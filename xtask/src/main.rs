//! Developer commands: `cargo xtask demo`, `cargo xtask test`, `cargo xtask bench`,
//! `cargo xtask chaos`, `cargo xtask generate`, `cargo xtask image`,
//! `cargo xtask registry-install`, `cargo xtask release` and `cargo xtask controlplane ...`.

mod bench;
mod chaos;
mod controlplane;
mod demo;
mod generate;
mod image;
#[cfg(test)]
mod names;
mod oci;
mod reference;
mod release;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer commands for tenant-key-operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, start, stop and inspect the local Kubernetes control plane.
    #[command(subcommand)]
    Controlplane(controlplane::Command),
    /// Rewrite the generated files: the CRDs (also the chart's copy), the chart README's values
    /// table, the Argo CD argocd-cm entries and the reference pages of docs/reference/.
    Generate,
    /// Run the whole test suite: formatting, lints, control plane binaries, `cargo test` (its
    /// executables several at a time), the demo and the container image; then a table of wall
    /// times.
    Test(test::Args),
    /// Measure time to Ready, Imburse calls and Kubernetes writes per key, activity at rest and
    /// memory, against the sandbox with injected latency; figures go to a JSON file.
    Bench(bench::Args),
    /// Build the container image from a static binary with buildah (no daemon, no registry)
    /// and check it: user 65532, entrypoint, its files, and the binary running from it on a
    /// read-only root file system.
    Image,
    /// Push the image `cargo xtask image` built and the chart (the image pinned by digest) to a
    /// local OCI registry, install the chart from `oci://` on a local control plane with no
    /// value set, and check that the Deployment pulls the pushed digest and that the operator
    /// accepts its arguments.
    RegistryInstall,
    /// Build every artifact of a release into target/dist/: the linux/amd64 and linux/arm64
    /// image index as an OCI archive, the chart pinned to it (installed from a local registry
    /// to check it), kubectl-tsk archives with their krew manifest, an SBOM and SHA256SUMS.
    Release,
    /// Create many keys at once while Imburse fails and the operator is killed, its leader
    /// lost, kube-apiserver restarted or half of the keys deleted, then check that every
    /// remaining key ends Ready with exactly one working key and no deleted one leaks a key.
    Chaos(chaos::Args),
    /// Run the local demo: control plane, Imburse sandbox, operator and the examples, until
    /// Ctrl-C.
    Demo {
        /// Stop as soon as the example keys are Ready instead of waiting for Ctrl-C.
        #[arg(long)]
        exit_when_ready: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Controlplane(command) => controlplane::run(command).await,
        Command::Generate => generate::run(),
        Command::Test(args) => test::run(args),
        Command::Demo { exit_when_ready } => demo::run(exit_when_ready).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Image => image::run(),
        Command::RegistryInstall => oci::run().await,
        Command::Release => release::run().await,
        Command::Chaos(args) => chaos::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
