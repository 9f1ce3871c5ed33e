//! Developer commands: `cargo xtask controlplane ...` and `cargo xtask test`.

mod controlplane;
mod test;

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
    /// Run the whole test suite: formatting, lints, control plane binaries, then `cargo test`.
    Test,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Controlplane(command) => controlplane::run(command).await,
        Command::Test => test::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
