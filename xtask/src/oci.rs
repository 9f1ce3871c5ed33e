//! `cargo xtask registry-install`: the image `cargo xtask image` built and the chart, pushed to
//! a local OCI registry and installed from there as a platform team would, with nothing but
//! `helm install oci://...`: the chart must name the pushed image by digest on its own, and
//! the operator must accept the flags and environment the Deployment gives it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};
use kube::Api;
use tempfile::TempDir;
use testenv::{ControlPlane, Registry, versions::Component};

use crate::{
    image::{self, buildah, output},
    workspace::{self, step},
};

pub const CHART: &str = "charts/tenant-key-operator";
const RELEASE: &str = "tenant-key-operator";
const NAMESPACE: &str = "tenant-key-operator";
/// The repository of the image under a registry's host, as the release publishes it.
const IMAGE_REPOSITORY: &str = "tenant-key-operator";
/// Where charts go under a registry's host (`oci://<host>/charts/tenant-key-operator`).
const CHART_REPOSITORY: &str = "charts";

pub async fn run() -> Result<()> {
    let started = Instant::now();
    let (binary, tag) = image::built()?;
    step("registry (distribution, on loopback)");
    let registry = Registry::start()?;
    let version = tag.rsplit(':').next().unwrap_or_default().to_owned();
    step(&format!("push {tag} to {}", registry.host()));
    let repository = format!("{}/{IMAGE_REPOSITORY}", registry.host());
    let digest = push_image(
        &format!("containers-storage:{tag}"),
        &format!("docker://{repository}:{version}"),
        &["push"],
    )?;
    install_check(&registry, &repository, &version, &digest, &binary).await?;
    println!(
        "installed from oci://{}/{CHART_REPOSITORY}/{RELEASE} with {repository}@{digest} in {:.1}s",
        registry.host(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Pushes `source` (a name in buildah's storage) to `destination` (a transport reference:
/// `docker://` on a plain-HTTP registry, `oci-archive:`) with `push` (`buildah push`, or `buildah manifest push --all` for an index) and returns the
/// pushed manifest's digest.
pub fn push_image(source: &str, destination: &str, push: &[&str]) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("tko-push-").tempdir()?;
    let digest_file = dir.path().join("digest");
    output(
        buildah()
            .args(push)
            .args(["--tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .args([source, destination]),
    )?;
    let digest = std::fs::read_to_string(&digest_file)?.trim().to_owned();
    ensure!(
        digest.starts_with("sha256:"),
        "buildah wrote the digest {digest:?}"
    );
    Ok(digest)
}

/// Packages the chart with the image pinned to `repository:version@digest`, pushes it to
/// `registry`, installs it from there on a fresh control plane with no value set, and checks
/// the Deployment: it pulls the pushed digest, and `binary` accepts its arguments and
/// environment.
pub async fn install_check(
    registry: &Registry,
    repository: &str,
    version: &str,
    digest: &str,
    binary: &Path,
) -> Result<()> {
    let helm = Helm::new()?;
    step("package and push the chart");
    let packaged = tempfile::Builder::new().prefix("tko-chart-").tempdir()?;
    let archive = package_chart(&helm, repository, version, digest, packaged.path())?;
    helm.run(&[
        OsStr::new("push"),
        archive.as_os_str(),
        OsStr::new(&format!("oci://{}/{CHART_REPOSITORY}", registry.host())),
        OsStr::new("--plain-http"),
    ])?;

    step("install from oci:// on a control plane");
    let plane = ControlPlane::start().await?;
    helm.run(&[
        OsStr::new("install"),
        OsStr::new(RELEASE),
        OsStr::new(&format!(
            "oci://{}/{CHART_REPOSITORY}/{RELEASE}",
            registry.host()
        )),
        OsStr::new("--version"),
        OsStr::new(version),
        OsStr::new("--plain-http"),
        OsStr::new("--namespace"),
        OsStr::new(NAMESPACE),
        OsStr::new("--create-namespace"),
        OsStr::new("--kubeconfig"),
        plane.kubeconfig_path().as_os_str(),
    ])?;
    let deployment = Api::<Deployment>::namespaced(plane.client().await?, NAMESPACE)
        .get(RELEASE)
        .await?;
    let container = deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .and_then(|pod| pod.containers.into_iter().next())
        .context("the installed Deployment has no container")?;
    let reference = container.image.clone().unwrap_or_default();
    ensure!(
        reference.starts_with(repository) && reference.ends_with(&format!("@{digest}")),
        "the installed Deployment runs {reference}, not {repository}@{digest}"
    );
    accepts_arguments(binary, &container)
}

/// The chart, with values.yaml naming the image `repository:tag@digest`, packaged into
/// `destination`; returns the archive's path.
pub fn package_chart(
    helm: &Helm,
    repository: &str,
    tag: &str,
    digest: &str,
    destination: &Path,
) -> Result<PathBuf> {
    let copy = TempDir::with_prefix("tko-chart-src-")?;
    let chart = copy.path().join(RELEASE);
    testenv::copy_dir(&workspace::root().join(CHART), &chart).context("copying the chart")?;
    let values_path = chart.join("values.yaml");
    let values = std::fs::read_to_string(&values_path)?;
    let pinned = replace_value(&values, "repository", repository)?;
    let pinned = replace_value(&pinned, "tag", tag)?;
    let pinned = replace_value(&pinned, "digest", digest)?;
    std::fs::write(&values_path, pinned)?;
    let out = helm.run(&[
        OsStr::new("package"),
        chart.as_os_str(),
        OsStr::new("--destination"),
        destination.as_os_str(),
    ])?;
    // "Successfully packaged chart and saved it to: <path>"
    let archive = out
        .rsplit(": ")
        .next()
        .map(|path| PathBuf::from(path.trim()))
        .filter(|path| path.is_file())
        .with_context(|| format!("`helm package` printed {out:?}"))?;
    Ok(archive)
}

/// `values` with the value of `image.<key>` replaced, leaving the comments in place.
fn replace_value(values: &str, key: &str, value: &str) -> Result<String> {
    let image = values
        .find("\nimage:\n")
        .context("values.yaml has no image section")?;
    let prefix = format!("\n  {key}: ");
    let start = values[image..]
        .find(&prefix)
        .map(|at| image + at + prefix.len())
        .with_context(|| format!("values.yaml has no image.{key}"))?;
    let end = values[start..]
        .find('\n')
        .map_or(values.len(), |at| start + at);
    Ok(format!(
        "{}{}{}",
        &values[..start],
        serde_json::to_string(value)?,
        &values[end..]
    ))
}

/// The operator's argument parser accepts the container's arguments and environment: run with
/// them and an absent kubeconfig, it gets as far as reading the kubeconfig, which it only does
/// once every flag and variable was accepted.
fn accepts_arguments(binary: &Path, container: &Container) -> Result<()> {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .args(container.args.iter().flatten())
        .args(["--kubeconfig", "/nonexistent/kubeconfig"]);
    for var in container.env.iter().flatten() {
        // The downward API's values (pod name and namespace) are not flags' values to parse.
        let value = var.value.clone().unwrap_or_else(|| NAMESPACE.to_owned());
        command.env(&var.name, value);
    }
    let out = command
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("kubeconfig"),
        "the operator refused the installed Deployment's arguments {:?}: {stderr}",
        container.args
    );
    Ok(())
}

/// The pinned helm with its configuration, cache and registry logins in a folder of its own.
pub struct Helm {
    binary: PathBuf,
    home: TempDir,
}

impl Helm {
    pub fn new() -> Result<Helm> {
        testenv::build::ensure(Component::Helm, &mut std::io::stderr())?;
        Ok(Helm {
            binary: Component::Helm.binary_path("helm"),
            home: TempDir::with_prefix("tko-helm-")?,
        })
    }

    pub fn run(&self, args: &[&OsStr]) -> Result<String> {
        let home = self.home.path();
        output(
            Command::new(&self.binary)
                .args(args)
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::replace_value;

    #[test]
    fn image_values_are_replaced_in_place() {
        let values = "replicas: 1\nimage:\n  # -- Repository.\n  repository: ghcr.io/x/y\n  tag: \"\"\n  digest: \"\"\nother:\n  digest: keep\n";
        let pinned = replace_value(values, "repository", "127.0.0.1:5000/y").unwrap();
        let pinned = replace_value(&pinned, "digest", "sha256:ab").unwrap();
        assert_eq!(
            pinned,
            "replicas: 1\nimage:\n  # -- Repository.\n  repository: \"127.0.0.1:5000/y\"\n  tag: \"\"\n  digest: \"sha256:ab\"\nother:\n  digest: keep\n"
        );
    }
}
