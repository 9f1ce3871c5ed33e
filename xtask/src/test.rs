//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

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
    let totals = test_step(
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
    step(
        "container image",
        Command::new(&cargo).args(["xtask", "image"]),
    )?;
    println!("==> all steps passed");
    // One closing line over every test binary, so that the suite's result does not read as the
    // last binary's (often a binary target without tests).
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test`, echoing its output and adding up the `test result:` lines.
fn test_step(command: &mut Command) -> Result<Totals> {
    println!("==> cargo test");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("step `cargo test` could not start")?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(result) = line.strip_prefix("test result: ") {
                totals.passed += count(result, "passed");
                totals.failed += count(result, "failed");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("step `cargo test` failed ({status})");
    }
    Ok(totals)
}

/// The number before `word` in a libtest summary such as `ok. 14 passed; 0 failed; ...`.
fn count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_libtest_summaries() {
        let ok =
            "ok. 14 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 8.89s";
        assert_eq!((count(ok, "passed"), count(ok, "failed")), (14, 0));
        let failed = "FAILED. 10 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!((count(failed, "passed"), count(failed, "failed")), (10, 4));
    }
}
