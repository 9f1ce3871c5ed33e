//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.

use std::process::Command;

use anyhow::{Context, Result, bail};
use testenv::{build, versions};

pub fn run() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let cache_root = versions::cache_root();

    step(
        "cargo fmt",
        Command::new(&cargo).args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy",
        Command::new(&cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;

    println!("==> control plane binaries ({})", versions::summary());
    build::ensure_all(&mut std::io::stdout()).context("step `control plane binaries` failed")?;

    // Tests find the binaries just built through the same cache root.
    step(
        "cargo test",
        Command::new(&cargo)
            .args(["test", "--workspace"])
            .env(versions::CACHE_DIR_ENV, &cache_root),
    )?;
    step(
        "demo",
        Command::new(&cargo)
            .args(["xtask", "demo", "--exit-when-ready"])
            .env(versions::CACHE_DIR_ENV, &cache_root),
    )?;
    println!("==> all steps passed");
    Ok(())
}

fn step(name: &str, command: &mut Command) -> Result<()> {
    println!("==> {name}");
    let status = command
        .status()
        .with_context(|| format!("step `{name}` could not start"))?;
    if !status.success() {
        bail!("step `{name}` failed ({status})");
    }
    Ok(())
}
