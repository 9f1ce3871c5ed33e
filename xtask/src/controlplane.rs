//! `cargo xtask controlplane build|up|down|status`: a control plane shared by the developer's
//! terminal, kubectl, helm and the demo, running detached in `<cache root>/run`.

use std::io::{self, Write};

use anyhow::{Result, bail};
use clap::Subcommand;
use testenv::versions::{self, Component};
use testenv::{ControlPlane, build, detached};

#[derive(Subcommand)]
pub enum Command {
    /// Build the pinned binaries that are not cached yet (all of them, or the ones named).
    Build {
        /// kubernetes, etcd or helm
        components: Vec<Component>,
    },
    /// Start the control plane in the background; the last line printed is `export KUBECONFIG=...`.
    Up,
    /// Stop the background control plane and remove its state.
    Down,
    /// Show whether the background control plane is running.
    Status,
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Build { components } => build_binaries(&components),
        Command::Up => up().await,
        Command::Down => down(),
        Command::Status => status(),
    }
}

fn build_binaries(components: &[Component]) -> Result<()> {
    let mut progress = io::stderr();
    if components.is_empty() {
        build::ensure_all(&mut progress)?;
    } else {
        for component in components {
            build::ensure(*component, &mut progress)?;
        }
    }
    println!("{}", versions::summary());
    for component in Component::ALL {
        for binary in component.binaries() {
            let path = component.binary_path(binary);
            let state = if path.is_file() { "" } else { " (not built)" };
            println!("  {binary}: {}{state}", path.display());
        }
    }
    Ok(())
}

async fn up() -> Result<()> {
    let dir = detached::default_dir();
    let kubeconfig = dir.join("kubeconfig");
    let status = detached::status(&dir);
    if status.iter().all(|c| c.running) {
        eprintln!("control plane already running in {}", dir.display());
    } else {
        if status.iter().any(|c| c.running) {
            bail!(
                "control plane in {} is only partly running; run `cargo xtask controlplane down` first",
                dir.display()
            );
        }
        eprintln!(
            "starting control plane ({}) in {}",
            versions::summary(),
            dir.display()
        );
        let plane = ControlPlane::start_detached(&dir).await?;
        eprintln!("API server {} is ready", plane.server_url());
        for (name, pid) in plane.pids() {
            eprintln!(
                "  {name}: pid {pid}, log {}",
                dir.join(format!("{name}.log")).display()
            );
        }
        eprintln!("stop it with `cargo xtask controlplane down`");
    }
    let mut stdout = io::stdout();
    writeln!(stdout, "export KUBECONFIG={}", kubeconfig.display())?;
    Ok(())
}

fn down() -> Result<()> {
    let dir = detached::default_dir();
    let stopped = detached::stop(&dir)?;
    if stopped.is_empty() {
        println!("no control plane was running in {}", dir.display());
    }
    for (name, pid) in stopped {
        println!("stopped {name} (pid {pid})");
    }
    Ok(())
}

fn status() -> Result<()> {
    let dir = detached::default_dir();
    let status = detached::status(&dir);
    for component in &status {
        match (component.pid, component.running) {
            (Some(pid), true) => println!("{}: running (pid {pid})", component.name),
            (Some(pid), false) => println!("{}: not running (stale pid {pid})", component.name),
            (None, _) => println!("{}: not running", component.name),
        }
    }
    if !status.iter().all(|c| c.running) {
        bail!("the control plane in {} is not running", dir.display());
    }
    println!("KUBECONFIG={}", dir.join("kubeconfig").display());
    Ok(())
}
