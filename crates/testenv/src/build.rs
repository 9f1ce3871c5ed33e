//! Builds the control plane's binaries from the Go module proxy with the machine's Go, and caches
//! them by version (see [`crate::versions`]).
//!
//! Every binary is written under a temporary name and renamed into place, so an interrupted build
//! never leaves a half-written binary behind; a per-component file lock lets concurrent test
//! binaries wait for one build instead of starting their own.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use crate::versions::{self, Component};

const KUBERNETES_BUILD_TAGS: &str = "selinux,notest,grpcnotrace";

/// Paths of every cached binary the tests and the demo use.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
    pub helm: PathBuf,
}

impl Binaries {
    /// Where the pinned versions live in the cache, whether or not they are built yet.
    pub fn cached() -> Binaries {
        Binaries {
            kube_apiserver: Component::Kubernetes.binary_path("kube-apiserver"),
            kube_controller_manager: Component::Kubernetes.binary_path("kube-controller-manager"),
            etcd: Component::Etcd.binary_path("etcd"),
            helm: Component::Helm.binary_path("helm"),
        }
    }
}

/// Builds every missing binary of the pinned versions and returns their paths. A second call
/// finds everything cached and builds nothing.
pub fn ensure_all(progress: &mut dyn Write) -> Result<Binaries> {
    if Component::ALL.into_iter().all(|c| missing(c).is_empty()) {
        return Ok(Binaries::cached());
    }
    writeln!(
        progress,
        "control plane: {} (cache: {})",
        versions::summary(),
        versions::cache_root().display()
    )?;
    for component in Component::ALL {
        ensure(component, progress)?;
    }
    Ok(Binaries::cached())
}

/// Builds the binaries of one component that are missing from the cache.
pub fn ensure(component: Component, progress: &mut dyn Write) -> Result<()> {
    let dir = component.dir();
    if missing(component).is_empty() {
        return Ok(());
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = lock(&dir.join(".lock"), component, progress)?;
    // Another process may have finished the build while this one waited for the lock.
    let missing = missing(component);
    if missing.is_empty() {
        return Ok(());
    }
    let log = dir.join("build.log");
    writeln!(
        progress,
        "building {} v{} ({}); Go output goes to {}",
        component.name(),
        component.version(),
        missing.join(", "),
        log.display()
    )?;
    let go = Go::new(&log)?;
    match component {
        Component::Kubernetes => build_kubernetes(&go, &dir, &missing, progress),
        Component::Etcd => build_etcd(&go, &dir, progress),
        Component::Helm => build_helm(&go, &dir, progress),
        Component::ArgoCdLua => build_go_tool(
            &go,
            component,
            &[
                format!("github.com/yuin/gopher-lua@v{}", versions::GOPHER_LUA),
                format!("sigs.k8s.io/yaml@v{}", versions::SIGS_YAML),
            ],
            progress,
        ),
        Component::RulesCheck => build_go_tool(
            &go,
            component,
            &[format!(
                "github.com/prometheus/prometheus@v{}",
                versions::PROMETHEUS
            )],
            progress,
        ),
        Component::Registry => {
            writeln!(progress, "  compiling registry")?;
            go_install(
                &go,
                &dir,
                "registry",
                &format!(
                    "github.com/distribution/distribution/v3/cmd/registry@v{}",
                    versions::DISTRIBUTION
                ),
                &format!(
                    "-X github.com/distribution/distribution/v3/version.version=v{}",
                    versions::DISTRIBUTION
                ),
                progress,
            )
        }
        Component::Krew => missing.iter().try_for_each(|binary| {
            writeln!(progress, "  compiling {binary}")?;
            go_install(
                &go,
                &dir,
                binary,
                &format!("sigs.k8s.io/krew/cmd/{binary}@v{}", versions::KREW),
                &format!(
                    "-X sigs.k8s.io/krew/internal/version.gitTag=v{}",
                    versions::KREW
                ),
                progress,
            )
        }),
    }
    .with_context(|| {
        format!(
            "building {} v{} failed; last lines of {}:\n{}",
            component.name(),
            component.version(),
            log.display(),
            crate::log_tail(&log, 30)
        )
    })
}

fn missing(component: Component) -> Vec<&'static str> {
    component
        .binaries()
        .iter()
        .copied()
        .filter(|binary| !component.binary_path(binary).is_file())
        .collect()
}

/// Holds an exclusive `flock` on the file until dropped.
struct Lock {
    _file: File,
}

fn lock(path: &Path, component: Component, progress: &mut dyn Write) -> Result<Lock> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        writeln!(
            progress,
            "waiting for another process building {} ({})",
            component.name(),
            path.display()
        )?;
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(Lock { _file: file })
}

/// Runs the machine's `go` with a fixed environment, appending its output to a build log.
struct Go {
    log: PathBuf,
}

impl Go {
    fn new(log: &Path) -> Result<Go> {
        File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Ok(Go {
            log: log.to_path_buf(),
        })
    }

    fn command(&self, dir: &Path, args: &[&str]) -> Result<Command> {
        let mut log = fs::OpenOptions::new().append(true).open(&self.log)?;
        writeln!(log, "+ (cd {}; go {})", dir.display(), args.join(" "))?;
        let mut cmd = Command::new(go_program());
        cmd.args(args)
            .current_dir(dir)
            // The pinned versions build with the installed Go; never fetch another toolchain.
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOWORK", "off")
            .env("CGO_ENABLED", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    fn run(&self, dir: &Path, args: &[&str]) -> Result<()> {
        let status = self
            .command(dir, args)?
            .status()
            .context("running `go` (is Go installed and on PATH?)")?;
        if !status.success() {
            bail!(
                "`go {}` in {} failed: {status}",
                args.join(" "),
                dir.display()
            );
        }
        Ok(())
    }

    fn output(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
        let output = self
            .command(dir, args)?
            .stdout(Stdio::piped())
            .output()
            .context("running `go` (is Go installed and on PATH?)")?;
        if !output.status.success() {
            bail!(
                "`go {}` in {} failed: {}",
                args.join(" "),
                dir.display(),
                output.status
            );
        }
        Ok(output.stdout)
    }

    /// The path of a module's go.mod in the module cache, downloading it if needed.
    fn module_go_mod(&self, dir: &Path, module: &str) -> Result<String> {
        let json = self.output(dir, &["mod", "download", "-json", module])?;
        let info: serde_json::Value = serde_json::from_slice(&json)
            .with_context(|| format!("parsing `go mod download -json {module}`"))?;
        let path = info["GoMod"]
            .as_str()
            .ok_or_else(|| anyhow!("`go mod download -json {module}` named no GoMod"))?;
        fs::read_to_string(path).with_context(|| format!("reading {path}"))
    }
}

/// `go` from PATH, else from Go's standard install folder, which a non-login shell may not have
/// on its PATH.
fn go_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("go").is_file()));
    let standard = Path::new("/usr/local/go/bin/go");
    if !on_path && standard.is_file() {
        standard.to_path_buf()
    } else {
        PathBuf::from("go")
    }
}

/// Creates `<dir>/src` as a Go module by running `init` in a fresh temporary folder and renaming
/// it into place, so a half-initialised module is never reused.
fn wrapper_module(dir: &Path, init: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let src = dir.join("src");
    if src.join("go.sum").is_file() {
        return Ok(src);
    }
    let partial = dir.join("src.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    init(&partial)?;
    if src.exists() {
        fs::remove_dir_all(&src)?;
    }
    fs::rename(&partial, &src)?;
    Ok(src)
}

/// Runs `build(partial_path)` and renames the result to `<dir>/<binary>`, reporting the time.
fn build_binary(
    dir: &Path,
    binary: &str,
    progress: &mut dyn Write,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let started = Instant::now();
    let partial = dir.join(format!(".{binary}.partial"));
    build(&partial)?;
    fs::rename(&partial, dir.join(binary))
        .with_context(|| format!("moving {} into place", partial.display()))?;
    let secs = started.elapsed().as_secs();
    writeln!(
        progress,
        "  built {binary} in {}m{:02}s",
        secs / 60,
        secs % 60
    )?;
    Ok(())
}

/// `k8s.io/kubernetes` requires its staging modules at v0.0.0 and replaces them with local paths,
/// so `go install` cannot build it. A wrapper module replaces each staging module with its
/// published `v0.<minor>.<patch>` (the workaround from kubernetes issue 79384), taking the list
/// from the real go.mod.
fn build_kubernetes(go: &Go, dir: &Path, missing: &[&str], progress: &mut dyn Write) -> Result<()> {
    let version = versions::KUBERNETES;
    let (major, rest) = version
        .split_once('.')
        .ok_or_else(|| anyhow!("bad Kubernetes version {version}"))?;
    let minor = rest.split('.').next().unwrap_or_default();
    let staging_version = format!("v0.{rest}");

    let src = wrapper_module(dir, |src| {
        writeln!(progress, "  resolving k8s.io/kubernetes v{version} modules")?;
        let go_mod = go.module_go_mod(src, &format!("k8s.io/kubernetes@v{version}"))?;
        let mut edit = vec!["mod".to_string(), "edit".to_string()];
        for module in staging_modules(&go_mod) {
            edit.push(format!("-replace={module}={module}@{staging_version}"));
        }
        edit.push(format!("-require=k8s.io/kubernetes@v{version}"));
        go.run(src, &["mod", "init", "tko.local/kubernetes-wrapper"])?;
        go.run(src, &edit.iter().map(String::as_str).collect::<Vec<_>>())?;
        fs::write(
            src.join("tools.go"),
            "//go:build tools\n\npackage tools\n\nimport (\n\t_ \"k8s.io/kubernetes/cmd/kube-apiserver\"\n\t_ \"k8s.io/kubernetes/cmd/kube-controller-manager\"\n)\n",
        )?;
        go.run(src, &["mod", "tidy"])
    })?;

    let ldflags = format!(
        "-X k8s.io/component-base/version.gitVersion=v{version} \
         -X k8s.io/component-base/version.gitMajor={major} \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/client-go/pkg/version.gitVersion=v{version}"
    );
    for binary in missing {
        writeln!(
            progress,
            "  compiling {binary} (a cold build takes many minutes on two cores)"
        )?;
        build_binary(dir, binary, progress, |out| {
            go.run(
                &src,
                &[
                    "build",
                    "-trimpath",
                    "-tags",
                    KUBERNETES_BUILD_TAGS,
                    "-ldflags",
                    &ldflags,
                    "-o",
                    &out.to_string_lossy(),
                    &format!("k8s.io/kubernetes/cmd/{binary}"),
                ],
            )
        })?;
    }
    Ok(())
}

/// The `k8s.io/...` modules that a Kubernetes go.mod replaces with `./staging/...` paths.
fn staging_modules(go_mod: &str) -> Vec<&str> {
    go_mod
        .lines()
        .filter_map(|line| {
            let (module, target) = line.trim().split_once("=>")?;
            let module = module.trim();
            (module.starts_with("k8s.io/") && target.trim().starts_with("./staging/"))
                .then_some(module)
        })
        .collect()
}

/// etcd's `package main` lives in `go.etcd.io/etcd/server/v3`, whose go.mod replaces its sibling
/// modules with local paths; a wrapper module uses their published releases instead.
fn build_etcd(go: &Go, dir: &Path, progress: &mut dyn Write) -> Result<()> {
    let version = versions::ETCD;
    let src = wrapper_module(dir, |src| {
        writeln!(progress, "  resolving go.etcd.io/etcd/server/v3 v{version}")?;
        go.run(src, &["mod", "init", "tko.local/etcd-wrapper"])?;
        go.run(
            src,
            &["get", &format!("go.etcd.io/etcd/server/v3@v{version}")],
        )
    })?;
    writeln!(progress, "  compiling etcd")?;
    build_binary(dir, "etcd", progress, |out| {
        go.run(
            &src,
            &[
                "build",
                "-trimpath",
                "-o",
                &out.to_string_lossy(),
                "go.etcd.io/etcd/server/v3",
            ],
        )
    })
}

/// Helm has no replace directives, so `go install helm.sh/helm/v3/cmd/helm@<version>` builds it.
/// Its Makefile stamps the version and the Kubernetes minor version of its client-go through
/// `-ldflags`; the same is done here so `helm version` and `helm template` report them.
fn build_helm(go: &Go, dir: &Path, progress: &mut dyn Write) -> Result<()> {
    let version = versions::HELM;
    let go_mod = go.module_go_mod(dir, &format!("helm.sh/helm/v3@v{version}"))?;
    let client_go_minor = go_mod
        .lines()
        .find_map(|line| line.trim().strip_prefix("k8s.io/client-go v0."))
        .and_then(|rest| rest.split('.').next())
        .ok_or_else(|| anyhow!("helm v{version}'s go.mod names no k8s.io/client-go"))?
        .to_string();
    let mut ldflags = format!("-X helm.sh/helm/v3/internal/version.version=v{version}");
    for package in ["pkg/lint/rules", "pkg/chartutil"] {
        ldflags.push_str(&format!(
            " -X helm.sh/helm/v3/{package}.k8sVersionMajor=1 -X helm.sh/helm/v3/{package}.k8sVersionMinor={client_go_minor}"
        ));
    }
    writeln!(progress, "  compiling helm")?;
    go_install(
        go,
        dir,
        "helm",
        &format!("helm.sh/helm/v3/cmd/helm@v{version}"),
        &ldflags,
        progress,
    )
}

/// `go install <package>@<version>` of a module without replace directives, into
/// `<dir>/<binary>`.
fn go_install(
    go: &Go,
    dir: &Path,
    binary: &str,
    package: &str,
    ldflags: &str,
    progress: &mut dyn Write,
) -> Result<()> {
    let gobin = dir.join(".gobin.partial");
    build_binary(dir, binary, progress, |out| {
        if gobin.exists() {
            fs::remove_dir_all(&gobin)?;
        }
        let mut cmd = go.command(dir, &["install", "-trimpath", "-ldflags", ldflags, package])?;
        // `go install pkg@version` builds outside any module; `-mod` does not apply there.
        cmd.env("GOFLAGS", "").env("GOBIN", &gobin);
        let status = cmd.status().context("running `go install`")?;
        if !status.success() {
            bail!("`go install {package}` failed: {status}");
        }
        fs::rename(gobin.join(binary), out)?;
        fs::remove_dir_all(&gobin)?;
        Ok(())
    })
}

/// A test tool: its program from this repository in a module of its own that requires the
/// pinned `modules`, built into `<dir>/<name>`.
fn build_go_tool(
    go: &Go,
    component: Component,
    modules: &[String],
    progress: &mut dyn Write,
) -> Result<()> {
    let dir = component.dir();
    let name = component.name();
    let source = component
        .go_source()
        .ok_or_else(|| anyhow!("{name} has no Go program"))?;
    let src = wrapper_module(&dir, |src| {
        writeln!(progress, "  resolving the modules of {name}")?;
        go.run(src, &["mod", "init", &format!("tko.local/{name}")])?;
        fs::write(src.join("main.go"), source)?;
        let mut get = vec!["get"];
        get.extend(modules.iter().map(String::as_str));
        go.run(src, &get)?;
        go.run(src, &["mod", "tidy"])
    })?;
    writeln!(progress, "  compiling {name}")?;
    build_binary(&dir, name, progress, |out| {
        go.run(
            &src,
            &["build", "-trimpath", "-o", &out.to_string_lossy(), "."],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::staging_modules;

    #[test]
    fn staging_modules_are_read_from_replace_lines() {
        let go_mod = "module k8s.io/kubernetes\n\nrequire k8s.io/api v0.0.0\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n\tgithub.com/x/y => github.com/x/y v1.0.0\n)\n";
        assert_eq!(staging_modules(go_mod), ["k8s.io/api", "k8s.io/client-go"]);
    }
}
