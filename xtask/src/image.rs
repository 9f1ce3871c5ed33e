//! `cargo xtask image`: builds the container image from a static binary built here (the
//! `prebuilt` stage of the Dockerfile) with buildah, without a daemon or a registry, and checks
//! it: the configuration (user 65532, entrypoint), its files (the binary and the CA bundle,
//! nothing else), and that the binary runs from it as user 65532 on a read-only root file
//! system.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use testenv::versions;

use crate::workspace::{self, step};

const TARGET: &str = "x86_64-unknown-linux-musl";
pub(crate) const BINARY: &str = "tenant-key-operator";
/// Where Debian (and the Rust builder image) keep the CA bundle; the image has it there too.
pub(crate) const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
const USER: &str = "65532:65532";
/// The programs the image is built with, and the Debian packages that provide them.
pub(crate) const BUILDAH: Tool = Tool {
    program: "buildah",
    package: "buildah",
};
pub(crate) const MUSL: Tool = Tool {
    program: "musl-gcc",
    package: "musl-tools",
};

pub(crate) struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub fn run() -> Result<()> {
    step("tools: buildah");
    ensure_package(BUILDAH)?;
    let binary = static_binary()?;
    // `tenant-key-operator 0.1.0`: what the image's binary must print too.
    let version = output(Command::new(&binary).arg("--version"))?;

    step("image (Dockerfile, target prebuilt)");
    let context = workspace::target_dir().join("image-context");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&binary, context.join(BINARY))?;
    std::fs::copy(
        Path::new("/").join(CA_BUNDLE),
        context.join("ca-certificates.crt"),
    )
    .context("the host's CA bundle (Debian package ca-certificates)")?;
    let tag = local_tag(&version);
    let dockerfile = workspace::root().join("Dockerfile");
    run_checked(
        buildah()
            .args(["bud", "--isolation", "chroot", "--target", "prebuilt"])
            .args([
                "-f".as_ref(),
                dockerfile.as_os_str(),
                "-t".as_ref(),
                tag.as_ref(),
                context.as_os_str(),
            ]),
    )?;

    step("checks");
    check(&tag, &version, true)?;
    let size = output(buildah().args(["images", "--format", "{{.Size}}", &tag]))?;
    println!("image {tag}: {size}, user {USER}, read-only root file system works");
    Ok(())
}

/// `localhost/tenant-key-operator:<version>`, the image's name in buildah's local storage, from
/// what `tenant-key-operator --version` printed.
fn local_tag(version: &str) -> String {
    format!(
        "localhost/{BINARY}:{}",
        version.rsplit(' ').next().unwrap_or("dev")
    )
}

/// The image the last `cargo xtask image` built: its static binary (as copied out of the cache)
/// and its name in buildah's local storage.
pub fn built() -> Result<(PathBuf, String)> {
    let binary = workspace::target_dir()
        .join(TARGET)
        .join("release")
        .join(BINARY);
    ensure!(
        binary.is_file(),
        "{} is missing: run `cargo xtask image` first",
        binary.display()
    );
    let tag = local_tag(&output(Command::new(&binary).arg("--version"))?);
    output(buildah().args(["inspect", "--type", "image", &tag]))
        .with_context(|| format!("the image {tag}: run `cargo xtask image` first"))?;
    Ok((binary, tag))
}

/// buildah with the storage driver that needs no kernel overlay support.
pub(crate) fn buildah() -> Command {
    let mut command = Command::new("buildah");
    command.args(["--storage-driver", "vfs"]);
    command
}

/// Checks the image's configuration and files and, with `run`, runs its binary from it (which
/// takes the host's architecture).
pub(crate) fn check(tag: &str, version: &str, run: bool) -> Result<()> {
    check_config(tag)?;
    let container = output(buildah().args(["from", tag]))?;
    let checked = check_files_and_run(&container, version, run);
    let _ = output(buildah().args(["rm", &container]));
    checked
}

fn check_config(tag: &str) -> Result<()> {
    let inspected: serde_json::Value = serde_json::from_str(&output(
        buildah().args(["inspect", "--type", "image", tag]),
    )?)?;
    let config = &inspected["OCIv1"]["config"];
    ensure!(
        config["User"] == USER,
        "the image's user: {}",
        config["User"]
    );
    ensure!(
        config["Entrypoint"] == serde_json::json!([format!("/{BINARY}")]),
        "the image's entrypoint: {}",
        config["Entrypoint"]
    );
    ensure!(
        config["Cmd"] == serde_json::json!(["run"]),
        "the image's command: {}",
        config["Cmd"]
    );
    Ok(())
}

fn check_files_and_run(container: &str, version: &str, run: bool) -> Result<()> {
    let root = PathBuf::from(output(buildah().args(["mount", container]))?);
    let result = (|| {
        let files = files(&root, &root)?;
        let expected: BTreeSet<String> = [BINARY.to_owned(), CA_BUNDLE.to_owned()].into();
        ensure!(files == expected, "the image holds {files:?}");
        if !run {
            return Ok(());
        }
        let out = read_only_as_user(&root, &["--version"])?;
        ensure!(out == version, "`{BINARY} --version` printed {out:?}");
        let out = read_only_as_user(&root, &["crd"])?;
        ensure!(
            out.contains("kind: CustomResourceDefinition"),
            "`{BINARY} crd` printed:\n{out}"
        );
        Ok(())
    })();
    let _ = output(buildah().args(["umount", container]));
    result
}

/// Runs the image's binary with `args` inside its root file system, remounted read-only in a
/// mount namespace of its own, as the image's user: what a pod with
/// `readOnlyRootFilesystem: true` and `runAsUser: 65532` does.
fn read_only_as_user(root: &Path, args: &[&str]) -> Result<String> {
    let root = root.to_str().context("the mount point is not UTF-8")?;
    output(
        Command::new("unshare")
            .args(["--mount", "--", "sh", "-c"])
            .arg(
                r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && root="$1" && shift && exec chroot --userspec="$USERSPEC" "$root" "$@""#,
            )
            .args(["sh", root, &format!("/{BINARY}")])
            .args(args)
            .env("USERSPEC", USER),
    )
}

/// Regular files under `dir`, relative to `root`.
fn files(root: &Path, dir: &Path) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files(root, &path)?);
        } else {
            found.insert(path.strip_prefix(root)?.to_string_lossy().into_owned());
        }
    }
    Ok(found)
}

/// Installs a tool's Debian package when the tool is missing (as root; otherwise says what to
/// do).
pub(crate) fn ensure_package(tool: Tool) -> Result<()> {
    if which(tool.program) {
        return Ok(());
    }
    let package = tool.package;
    if !can_install() {
        bail!(
            "{} is missing: install the package {package} (apt-get install {package})",
            tool.program
        );
    }
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(Command::new("apt-get").args(["install", "-y", package]))
}

/// The packages the image needs that are missing here and that this command cannot install,
/// which takes root and apt-get.
pub fn uninstallable_packages() -> Vec<&'static str> {
    if can_install() {
        return Vec::new();
    }
    [BUILDAH, MUSL]
        .into_iter()
        .filter(|tool| !which(tool.program))
        .map(|tool| tool.package)
        .collect()
}

fn can_install() -> bool {
    let root = output(Command::new("id").arg("-u")).is_ok_and(|uid| uid == "0");
    root && which("apt-get")
}

/// The operator as the image ships it: a static release binary (musl), built here into
/// `target/<triple>/release/`.
pub(crate) fn static_binary() -> Result<PathBuf> {
    step("tools: musl");
    ensure_package(MUSL)?;
    ensure_musl_target()?;
    step("static binary (release, musl)");
    let target_dir = static_target_dir(TARGET)?;
    std::fs::create_dir_all(&target_dir)?;
    // Other checkouts on the machine share the folder: the binary built from this one is copied
    // out before another build can replace it.
    let lock = std::fs::File::create(target_dir.join(".xtask-lock"))?;
    lock.lock()
        .with_context(|| format!("locking {}", target_dir.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = [
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "--bin",
        BINARY,
    ];
    run_checked(
        Command::new(&cargo)
            .args(args)
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(workspace::root()),
    )?;
    let built = target_dir.join(TARGET).join("release").join(BINARY);
    let binary = workspace::target_dir()
        .join(TARGET)
        .join("release")
        .join(BINARY);
    std::fs::create_dir_all(binary.parent().unwrap_or(Path::new(".")))?;
    std::fs::copy(&built, &binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    Ok(binary)
}

/// The static build's target folder, outside the repository under the cache root that holds the
/// control plane, so that a clean clone does not compile every dependency again. One per
/// toolchain (and target triple), so that toolchains do not overwrite each other's artifacts;
/// within one, cargo's fingerprints rebuild whatever the sources changed.
pub(crate) fn static_target_dir(target: &str) -> Result<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(
        Command::new(rustc)
            .arg("-vV")
            .current_dir(workspace::root()),
    )?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("`rustc -vV` printed no {name}"))
    };
    let release = field("release:")?;
    let commit = field("commit-hash:")?;
    let toolchain = format!("rustc-{release}-{}", commit.get(..12).unwrap_or(commit));
    Ok(versions::cache_root()
        .join("cargo-target")
        .join(target)
        .join(toolchain))
}

fn ensure_musl_target() -> Result<()> {
    ensure_target(TARGET)
}

/// Adds a Rust target with rustup unless it is installed.
pub(crate) fn ensure_target(target: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|t| t == target) {
        run_checked(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

pub(crate) fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

pub(crate) fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

/// The command's standard output, trimmed; its error output on failure.
pub(crate) fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
