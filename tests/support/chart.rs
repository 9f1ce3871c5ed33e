//! What the chart's tests share, whether they render the chart or install it: the pinned helm,
//! the chart, its release, how it is installed, and the runner of tests that each set up their
//! own.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail, ensure};
use libtest_mimic::{Arguments, Trial};
use tempfile::TempDir;
use testenv::versions::Component;

/// The release is named after the chart, so its objects carry the plain name.
pub const RELEASE: &str = "tenant-key-operator";
pub const RELEASE_NAMESPACE: &str = "tenant-key-operator";

/// A test that sets up whatever it needs itself.
pub type TestFn = fn() -> Result<()>;

/// Runs `tests` as libtest would, by name.
pub fn run(tests: Vec<(&'static str, TestFn)>) -> ExitCode {
    let args = Arguments::from_args();
    let trials = tests
        .into_iter()
        .map(|(name, test)| Trial::test(name, move || test().map_err(|e| format!("{e:#}").into())))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repository().join("charts/tenant-key-operator")
}

/// The pinned helm binary, with its configuration, cache and data in a folder of its own.
pub struct Helm {
    binary: PathBuf,
    home: TempDir,
}

impl Helm {
    pub fn new() -> Result<Helm> {
        testenv::build::ensure(Component::Helm, &mut io::stderr())?;
        Ok(Helm {
            binary: Component::Helm.binary_path("helm"),
            home: tempfile::Builder::new().prefix("tko-helm-").tempdir()?,
        })
    }

    /// Runs helm and returns its standard output; fails with its standard error.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let home = self.home.path();
        let output = Command::new(&self.binary)
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .with_context(|| format!("running {}", self.binary.display()))?;
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        ensure!(
            output.status.success(),
            "helm {} failed ({}):\n{}{}",
            shown.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    pub fn template(&self, values: &[&str]) -> Result<Vec<serde_json::Value>> {
        let chart = chart_dir();
        let mut args = vec![
            OsStr::new("template").to_owned(),
            RELEASE.into(),
            chart.into_os_string(),
            "--namespace".into(),
            RELEASE_NAMESPACE.into(),
        ];
        for value in values {
            args.extend(["--set".into(), (*value).into()]);
        }
        documents(&self.run(&args)?)
    }
}

/// The non-empty documents of a multi-document YAML stream.
pub fn documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Ok(serde_json::Value::deserialize(doc)?))
        .filter(|doc| !matches!(doc, Ok(serde_json::Value::Null)))
        .collect()
}

pub fn kinds(documents: &[serde_json::Value]) -> BTreeSet<String> {
    documents
        .iter()
        .filter_map(|d| d["kind"].as_str().map(Into::into))
        .collect()
}

/// The kinds of the objects a default install creates: the Role and RoleBinding are the
/// leader election's.
pub fn default_kinds() -> BTreeSet<String> {
    [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .map(Into::into)
    .into()
}

/// The namespaces a namespaced install watches.
pub const WATCHED: [&str; 2] = ["payments", "orders"];

/// How the chart is installed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The defaults: every namespace, with a ClusterRole. Only the allowed Imburse hosts name
    /// the sandbox's loopback address, which the defaults leave out.
    AllNamespaces,
    /// `watchNamespaces` set to [`WATCHED`], and the allowed Imburse hosts narrowed to the
    /// sandbox's.
    Namespaced,
}

impl Mode {
    pub fn values(self) -> Vec<String> {
        match self {
            Mode::AllNamespaces => vec!["allowedImburseHosts={127.0.0.1}".into()],
            // Secure metrics here: their reviews are cluster-scoped, which the ClusterRole of
            // this mode must still grant.
            Mode::Namespaced => vec![
                format!("watchNamespaces={{{}}}", WATCHED.join(",")),
                "allowedImburseHosts={127.0.0.1}".into(),
                "metrics.secure=true".into(),
            ],
        }
    }

    pub fn kinds(self) -> BTreeSet<String> {
        default_kinds()
    }
}

/// The pod name the downward API gives a pod of the release, as the tests resolve it.
pub const POD_NAME: &str = "tenant-key-operator-0";

/// The container's environment as the kubelet would resolve it for a pod of the release.
pub fn container_env(
    container: &k8s_openapi::api::core::v1::Container,
) -> Result<Vec<(String, String)>> {
    let mut resolved = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => POD_NAME.into(),
                Some("metadata.namespace") => RELEASE_NAMESPACE.into(),
                other => bail!("{} comes from an unexpected source {other:?}", var.name),
            },
            _ => bail!("{} has no value", var.name),
        };
        resolved.push((var.name.clone(), value));
    }
    Ok(resolved)
}

/// What rules-check reports about a rules file it accepted.
#[derive(serde::Deserialize)]
pub struct CheckedRules {
    pub alerts: Vec<String>,
    pub records: Vec<String>,
    pub metrics: Vec<String>,
}

/// Validates `{groups: ...}` with Prometheus' own rule parser.
pub fn check_rules(groups: &serde_json::Value) -> Result<CheckedRules> {
    testenv::build::ensure(Component::RulesCheck, &mut io::stderr())?;
    let file = tempfile::Builder::new()
        .prefix("tko-rules-")
        .suffix(".yaml")
        .tempfile()?;
    std::fs::write(file.path(), serde_yaml::to_string(groups)?)?;
    let output = Command::new(Component::RulesCheck.binary_path("rules-check"))
        .arg(file.path())
        .output()?;
    ensure!(
        output.status.success(),
        "Prometheus refuses the rules: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}
