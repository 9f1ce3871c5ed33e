//! `cargo xtask release`: every artifact of a release in `target/dist/`, built from this
//! checkout without a registry or a daemon, and checked:
//!
//! - the image for linux/amd64 and linux/arm64 (static musl binaries on `scratch`, user 65532,
//!   OCI labels, `created` from the commit time) as one multi-arch index in an OCI archive; the
//!   arm64 binary is cross-built with cargo-zigbuild and started under qemu-user;
//! - the chart, its image tag and the index digest pinned, installed from a local registry
//!   holding the index exactly as the test suite's `registry-install` does;
//! - `kubectl-tsk` archives for both architectures and the krew manifest naming them, validated
//!   and installed by krew's own code;
//! - a CycloneDX SBOM and SHA256SUMS of every artifact.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use testenv::{Registry, build, versions, versions::Component};

use crate::{
    image::{self, BINARY, CA_BUNDLE, buildah, output, run_checked},
    oci::{self, Helm},
    workspace::{self, step},
};

/// The plugin's binary, archived for krew.
const PLUGIN: &str = "kubectl-tsk";
/// Where the release workflow publishes, as the chart's values and the README name them.
const SOURCE: &str = "https://github.com/imburse/tenant-key-operator";
/// cargo-zigbuild and the Zig it drives (PyPI packages), installed into a virtual environment
/// in the cache, one per pair of versions.
const CARGO_ZIGBUILD: &str = "0.24.0";
const ZIGLANG: &str = "0.17.0";
const QEMU: image::Tool = image::Tool {
    program: "qemu-aarch64",
    package: "qemu-user",
};

#[derive(Clone, Copy)]
struct Arch {
    /// GOARCH-style name, as OCI platforms and krew selectors use it.
    name: &'static str,
    triple: &'static str,
    /// Cross-built with cargo-zigbuild, and run under qemu-user to check it.
    cross: bool,
}

const ARCHES: [Arch; 2] = [
    Arch {
        name: "amd64",
        triple: "x86_64-unknown-linux-musl",
        cross: false,
    },
    Arch {
        name: "arm64",
        triple: "aarch64-unknown-linux-musl",
        cross: true,
    },
];

/// The commit a release is built from.
struct Source {
    version: String,
    revision: String,
    /// Commit time in seconds since the epoch: every timestamp of the artifacts.
    epoch: String,
    /// The same as RFC 3339, for the `created` label.
    created: String,
}

struct Built {
    arch: Arch,
    operator: PathBuf,
    plugin: PathBuf,
}

pub async fn run() -> Result<()> {
    let started = Instant::now();
    let dist = workspace::target_dir().join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist)?;
    }
    std::fs::create_dir_all(&dist)?;
    image::ensure_package(image::BUILDAH)?;
    image::ensure_package(image::MUSL)?;
    image::ensure_package(QEMU)?;

    let mut built = Vec::new();
    for arch in ARCHES {
        built.push(build_binaries(arch)?);
    }
    let source = source(&built[0].operator)?;
    let version = &source.version;

    step("images and their index");
    let list = format!("localhost/{BINARY}-release:{version}");
    let _ = output(buildah().args(["manifest", "rm", &list]));
    output(buildah().args(["manifest", "create", &list]))?;
    for binaries in &built {
        let tag = build_image(binaries, &source)?;
        output(buildah().args(["manifest", "add", &list, &tag]))?;
    }
    let archive = dist.join(format!("{BINARY}-{version}.oci.tar"));
    let archive_digest = oci::push_image(
        &list,
        &format!("oci-archive:{}:{version}", archive.display()),
        &["manifest", "push", "--all"],
    )?;

    step("the index, installed from a local registry");
    let registry = Registry::start()?;
    let repository = format!("{}/{BINARY}", registry.host());
    let digest = oci::push_image(
        &list,
        &format!("docker://{repository}:{version}"),
        &["manifest", "push", "--all"],
    )?;
    ensure!(
        digest == archive_digest,
        "the index pushed to the registry is {digest}, the archive's {archive_digest}"
    );
    oci::install_check(&registry, &repository, version, &digest, &built[0].operator).await?;
    drop(registry);

    step("chart");
    let values: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        workspace::root().join(oci::CHART).join("values.yaml"),
    )?)?;
    let published = values["image"]["repository"]
        .as_str()
        .context("values.yaml has no image.repository")?;
    oci::package_chart(&Helm::new()?, published, version, &digest, &dist)?;

    step("kubectl-tsk archives and krew manifest");
    let mut platforms = Vec::new();
    for binaries in &built {
        let archive = plugin_archive(binaries, &source, &dist)?;
        platforms.push((binaries.arch, sha256(&archive)?));
    }
    let manifest = dist.join("tsk.yaml");
    std::fs::write(&manifest, krew_manifest(version, &platforms))?;
    krew_check(
        &manifest,
        &dist.join(plugin_archive_name(ARCHES[0])),
        version,
    )?;

    step("SBOM");
    std::fs::write(
        dist.join(format!("{BINARY}-{version}.cdx.json")),
        serde_json::to_string_pretty(&sbom(&source)?)? + "\n",
    )?;
    let sums = sha256sums(&dist)?;
    std::fs::write(dist.join("SHA256SUMS"), &sums)?;

    println!("==> {} (index {digest})", dist.display());
    for line in sums.lines() {
        if let Some((_, name)) = line.split_once("  ") {
            let size = std::fs::metadata(dist.join(name))?.len();
            println!("  {name:<45} {:>8.1} MB", size as f64 / 1e6);
        }
    }
    println!("release built in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The operator and the plugin, static (musl), for `arch`, built in the cached target folder of
/// the triple; copied out to `target/release-bin/<arch>/`.
fn build_binaries(arch: Arch) -> Result<Built> {
    step(&format!("static binaries, {} ({})", arch.name, arch.triple));
    image::ensure_target(arch.triple)?;
    let target_dir = image::static_target_dir(arch.triple)?;
    std::fs::create_dir_all(&target_dir)?;
    let lock = std::fs::File::create(target_dir.join(".xtask-lock"))?;
    lock.lock()
        .with_context(|| format!("locking {}", target_dir.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    if arch.cross {
        let venv = zigbuild()?;
        command
            .arg("zigbuild")
            .env("PATH", with_path(&venv.join("bin"))?);
    } else {
        command.arg("build");
    }
    run_checked(
        command
            .args(["--release", "--locked", "--target", arch.triple])
            .args(["-p", BINARY, "-p", PLUGIN, "--bins"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(workspace::root()),
    )?;
    let out = workspace::target_dir().join("release-bin").join(arch.name);
    std::fs::create_dir_all(&out)?;
    let copy = |name: &str| -> Result<PathBuf> {
        let to = out.join(name);
        std::fs::copy(target_dir.join(arch.triple).join("release").join(name), &to)
            .with_context(|| format!("copying {name} ({})", arch.name))?;
        Ok(to)
    };
    Ok(Built {
        arch,
        operator: copy(BINARY)?,
        plugin: copy(PLUGIN)?,
    })
}

/// The cached virtual environment with cargo-zigbuild and Zig, installed with pip on first use.
/// Its scripts name its own path, so it is made where it stays, and marked complete last.
fn zigbuild() -> Result<PathBuf> {
    let venv = versions::cache_root()
        .join("zigbuild")
        .join(format!("{CARGO_ZIGBUILD}-{ZIGLANG}"));
    let complete = venv.join(".complete");
    if complete.is_file() {
        return Ok(venv);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .arg(format!("cargo-zigbuild=={CARGO_ZIGBUILD}"))
            .arg(format!("ziglang=={ZIGLANG}")),
    )?;
    std::fs::write(&complete, "")?;
    Ok(venv)
}

fn with_path(dir: &Path) -> Result<std::ffi::OsString> {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(paths)?)
}

fn source(operator: &Path) -> Result<Source> {
    let git = |args: &[&str]| {
        output(
            Command::new("git")
                .args(args)
                .current_dir(workspace::root()),
        )
    };
    let printed = output(Command::new(operator).arg("--version"))?;
    Ok(Source {
        version: printed
            .rsplit(' ')
            .next()
            .context("`--version` printed nothing")?
            .to_owned(),
        revision: git(&["rev-parse", "HEAD"])?,
        epoch: git(&["log", "-1", "--format=%ct"])?,
        created: git(&[
            "log",
            "-1",
            "--format=%cd",
            "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
        ])?,
    })
}

/// The image of one architecture, from the `prebuilt` stage, checked; returns its local name.
fn build_image(built: &Built, source: &Source) -> Result<String> {
    let arch = built.arch.name;
    let version = &source.version;
    let context = workspace::target_dir().join("release-context").join(arch);
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&built.operator, context.join(BINARY))?;
    std::fs::copy(
        Path::new("/").join(CA_BUNDLE),
        context.join("ca-certificates.crt"),
    )?;
    let tag = format!("localhost/{BINARY}-release:{version}-{arch}");
    let labels = [
        ("source", SOURCE),
        ("version", version),
        ("revision", &source.revision),
        ("licenses", "Apache-2.0"),
        ("created", &source.created),
    ];
    let mut command = buildah();
    command
        .args(["bud", "--isolation", "chroot", "--target", "prebuilt"])
        .args(["--platform", &format!("linux/{arch}")])
        .args(["--timestamp", &source.epoch]);
    for (name, value) in labels {
        command.args([
            "--label",
            &format!("org.opencontainers.image.{name}={value}"),
        ]);
    }
    run_checked(
        command
            .arg("-f")
            .arg(workspace::root().join("Dockerfile"))
            .args(["-t", &tag])
            .arg(&context),
    )?;
    let printed = format!("{BINARY} {version}");
    image::check(&tag, &printed, !built.arch.cross)?;
    let inspected: serde_json::Value = serde_json::from_str(&output(
        buildah().args(["inspect", "--type", "image", &tag]),
    )?)?;
    let oci = &inspected["OCIv1"];
    ensure!(
        oci["architecture"] == arch,
        "the {arch} image is for {}",
        oci["architecture"]
    );
    for (name, value) in labels {
        let key = format!("org.opencontainers.image.{name}");
        ensure!(
            oci["config"]["Labels"][&key] == value,
            "the {arch} image's {key} is {}",
            oci["config"]["Labels"][&key]
        );
    }
    if built.arch.cross {
        // No binfmt here: the binary runs under qemu-user directly, as it does in the image.
        let run = |arg: &str| output(Command::new(QEMU.program).arg(&built.operator).arg(arg));
        ensure!(
            run("--version")? == printed,
            "the {arch} binary's --version"
        );
        ensure!(
            run("crd")?.contains("kind: CustomResourceDefinition"),
            "the {arch} binary's crd"
        );
    }
    Ok(tag)
}

fn plugin_archive_name(arch: Arch) -> String {
    format!("{PLUGIN}-linux-{}.tar.gz", arch.name)
}

/// `kubectl-tsk-linux-<arch>.tar.gz` with the plugin and the licence, reproducible: sorted,
/// owned by root, dated at the commit, gzip without a name or time.
fn plugin_archive(built: &Built, source: &Source, dist: &Path) -> Result<PathBuf> {
    let staging = tempfile::TempDir::with_prefix("tko-plugin-")?;
    std::fs::copy(&built.plugin, staging.path().join(PLUGIN))?;
    std::fs::copy(
        workspace::root().join("LICENSE"),
        staging.path().join("LICENSE"),
    )?;
    let archive = dist.join(plugin_archive_name(built.arch));
    run_checked(
        Command::new("sh")
            .args([
                "-c",
                r#"tar --sort=name --mtime="@$1" --owner=0 --group=0 --numeric-owner -C "$2" -cf - kubectl-tsk LICENSE | gzip -n -9 > "$3""#,
                "sh",
                &source.epoch,
            ])
            .arg(staging.path())
            .arg(&archive),
    )?;
    Ok(archive)
}

/// The krew manifest (`plugins/tsk.yaml` in krew-index) for the archives of the release.
fn krew_manifest(version: &str, platforms: &[(Arch, String)]) -> String {
    let mut yaml = format!(
        "apiVersion: krew.googlecontainertools.github.com/v1alpha2\nkind: Plugin\nmetadata:\n  name: tsk\nspec:\n  version: v{version}\n  homepage: {SOURCE}\n  shortDescription: Status, rotation and audit of Imburse tenant keys\n  description: |\n    Shows the status of TenantSecurityKeys (conditions, key age, next rotation,\n    whether the Secret holds the recorded key), requests rotations, shows what a\n    key Secret holds without its private key, and audits the keys at Imburse of\n    the namespace's accounts, for the tenant-key-operator.\n  platforms:\n"
    );
    for (arch, sha256) in platforms {
        let _ = write!(
            yaml,
            "    - selector:\n        matchLabels:\n          os: linux\n          arch: {}\n      uri: {SOURCE}/releases/download/v{version}/{}\n      sha256: {sha256}\n      bin: {PLUGIN}\n      files:\n        - from: {PLUGIN}\n          to: .\n        - from: LICENSE\n          to: .\n",
            arch.name,
            plugin_archive_name(*arch)
        );
    }
    yaml
}

/// krew's own validation of the manifest, then an install from the local archive into a
/// temporary krew root, and the installed plugin run.
fn krew_check(manifest: &Path, archive: &Path, version: &str) -> Result<()> {
    build::ensure(Component::Krew, &mut std::io::stderr())?;
    // Installing every platform would download the archives from their published URLs.
    output(
        Command::new(Component::Krew.binary_path("validate-krew-manifest"))
            .arg("-skip-install")
            .arg("-manifest")
            .arg(manifest),
    )?;
    let root = tempfile::TempDir::with_prefix("tko-krew-")?;
    output(
        Command::new(Component::Krew.binary_path("krew"))
            .arg("install")
            .arg(format!("--manifest={}", manifest.display()))
            .arg(format!("--archive={}", archive.display()))
            .env("KREW_ROOT", root.path()),
    )?;
    let installed = root.path().join("bin").join(PLUGIN);
    let printed = output(Command::new(&installed).arg("--version"))?;
    ensure!(
        printed == format!("kubectl tsk {version}"),
        "the installed plugin printed {printed:?}, not version {version}"
    );
    println!("krew installed tsk v{version}: {printed}");
    Ok(())
}

/// CycloneDX 1.5: the two binaries and every crate they are built from (normal and build
/// dependencies of the operator and the plugin for Linux), with their licences.
fn sbom(source: &Source) -> Result<serde_json::Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata: serde_json::Value = serde_json::from_str(&output(
        Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", ARCHES[0].triple])
            .current_dir(workspace::root()),
    )?)?;
    let packages: BTreeMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata has no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let roots: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| p["name"] == BINARY || p["name"] == PLUGIN)
        .map(|(id, _)| *id)
        .collect();
    let mut seen = BTreeSet::new();
    let mut queue = roots.clone();
    while let Some(id) = queue.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let shipped = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"] != "dev");
            if let (true, Some(dep_id)) = (shipped, dep["pkg"].as_str()) {
                queue.push(dep_id);
            }
        }
    }
    let component = |id: &str| -> serde_json::Value {
        let p = packages[id];
        let (name, version) = (
            p["name"].as_str().unwrap_or_default(),
            p["version"].as_str().unwrap_or_default(),
        );
        let mut c = serde_json::json!({
            "type": if roots.contains(&id) { "application" } else { "library" },
            "bom-ref": id,
            "name": name,
            "version": version,
            "purl": format!("pkg:cargo/{name}@{version}"),
        });
        if let Some(license) = p["license"].as_str() {
            c["licenses"] = serde_json::json!([{ "expression": license }]);
        }
        c
    };
    let dependencies: Vec<serde_json::Value> = seen
        .iter()
        .map(|id| {
            let on: Vec<&str> = nodes
                .get(id)
                .and_then(|n| n["deps"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|d| d["pkg"].as_str())
                .filter(|d| seen.contains(d))
                .collect();
            serde_json::json!({ "ref": id, "dependsOn": on })
        })
        .collect();
    Ok(serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": source.created,
            "component": {
                "type": "application",
                "name": BINARY,
                "version": source.version,
                "purl": format!("pkg:github/imburse/tenant-key-operator@v{}", source.version),
                "licenses": [{ "expression": "Apache-2.0" }],
            },
        },
        "components": seen.iter().map(|id| component(id)).collect::<Vec<_>>(),
        "dependencies": dependencies,
    }))
}

fn sha256(path: &Path) -> Result<String> {
    let printed = output(Command::new("sha256sum").arg(path))?;
    Ok(printed
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

/// `sha256sum`'s lines for every file of `dist`, by name.
fn sha256sums(dist: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dist)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    names.retain(|n| n != "SHA256SUMS");
    let printed = output(Command::new("sha256sum").args(&names).current_dir(dist))?;
    Ok(printed + "\n")
}

#[cfg(test)]
mod tests {
    use super::{Source, sbom};

    /// The SBOM lists the crates the binaries are built from, with licences, and none that only
    /// the tests use.
    #[test]
    fn sbom_lists_the_shipped_crates_only() {
        let source = Source {
            version: "1.2.3".into(),
            revision: "0".repeat(40),
            epoch: "0".into(),
            created: "1970-01-01T00:00:00Z".into(),
        };
        let bom = sbom(&source).unwrap();
        let names: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for shipped in [
            "tenant-key-operator",
            "kubectl-tsk",
            "tenant-key-api",
            "kube-client",
            "aws-lc-sys",
        ] {
            assert!(names.contains(&shipped), "the SBOM lacks {shipped}");
        }
        for test_only in ["proptest", "libtest-mimic", "testenv", "imburse-sandbox"] {
            assert!(!names.contains(&test_only), "the SBOM lists {test_only}");
        }
        assert_eq!(bom["metadata"]["component"]["version"], "1.2.3");
        assert!(
            bom["components"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "kube-client" && c["licenses"][0]["expression"].is_string())
        );
    }
}
