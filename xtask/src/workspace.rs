//! The workspace the commands run in: its folders and its cargo.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

/// Prints a progress step.
pub fn step(what: &str) {
    println!("==> {what}");
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Builds the operator binary in `profile` (`debug` or `release`) and returns its path.
pub fn build_operator(profile: &str) -> Result<PathBuf> {
    let mut args = vec!["build", "--quiet", "--bin", "tenant-key-operator"];
    if profile == "release" {
        args.push("--release");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(target_dir().join(profile).join("tenant-key-operator"))
}
