//! `kubectl tsk`: a kubectl plugin for TenantSecurityKeys. kubectl runs any `kubectl-<name>`
//! binary on the PATH as `kubectl <name>`, passing the remaining arguments unchanged.

mod audit;
mod cli;
mod cluster;
mod inspect;
mod migrate;
mod output;
mod rotate;
mod status;
mod version;

fn main() -> std::process::ExitCode {
    cli::main()
}
