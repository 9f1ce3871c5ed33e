//! The Helm chart: it lints, renders, installs into a real kube-apiserver, and its RBAC is
//! enough for the operator's whole job and no more. The operator runs as a local process with
//! the environment of the chart's Deployment and the token of the chart's ServiceAccount, so
//! every request it makes is authorized exactly as in a cluster.
//!
//! Also: the schema refuses wrong values, `helm upgrade` updates the CRDs (from the previous
//! chart layout too), the HA, network and RBAC options render as documented, and the alerts and
//! the dashboard's queries load in Prometheus' own rule parser.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use imburse_sandbox::{Config, Sandbox};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        core::v1::Secret,
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceColumnDefinition, CustomResourceDefinition,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams},
    runtime::{conditions, wait::await_condition},
};
use libtest_mimic::{Arguments, Trial};
use serde_json::json;
use support::{WAIT, create_namespace, create_secret, poll, ready, wait_for};
use tempfile::TempDir;
use tenant_key_operator::crd::{ClusterImburseAccount, ImburseAccount, TenantSecurityKey};
use testenv::{ControlPlane, Operator, versions::Component};

/// The release is named after the chart, so its objects carry the plain name.
const RELEASE: &str = "tenant-key-operator";
const RELEASE_NAMESPACE: &str = "tenant-key-operator";
/// Name the downward API gives the operator's pod in place of a scheduled pod's.
const POD_NAME: &str = "tenant-key-operator-0";

type TestFn = fn() -> Result<()>;

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let tests: Vec<(&str, TestFn)> = vec![
        ("chart_lints", chart_lints),
        (
            "chart_crds_are_the_generated_ones",
            chart_crds_are_the_generated_ones,
        ),
        (
            "values_are_checked_by_the_schema",
            values_are_checked_by_the_schema,
        ),
        (
            "artifact_hub_annotations_describe_the_crds",
            artifact_hub_annotations_describe_the_crds,
        ),
        (
            "flux_example_installs_this_chart",
            flux_example_installs_this_chart,
        ),
        ("service_monitor_is_optional", service_monitor_is_optional),
        (
            "pod_monitor_scrapes_the_metrics_port",
            pod_monitor_scrapes_the_metrics_port,
        ),
        (
            "probes_and_metrics_have_ports_of_their_own",
            probes_and_metrics_have_ports_of_their_own,
        ),
        ("escape_hatches_reach_the_pod", escape_hatches_reach_the_pod),
        (
            "replicas_get_a_disruption_budget_and_rolling_updates",
            replicas_get_a_disruption_budget_and_rolling_updates,
        ),
        (
            "leader_election_flags_and_lease_rbac",
            leader_election_flags_and_lease_rbac,
        ),
        (
            "network_policy_allows_dns_api_server_imburse_and_scrapes",
            network_policy_allows_dns_api_server_imburse_and_scrapes,
        ),
        (
            "aggregated_roles_extend_view_and_edit",
            aggregated_roles_extend_view_and_edit,
        ),
        (
            "alerts_parse_with_the_prometheus_rule_parser",
            alerts_parse_with_the_prometheus_rule_parser,
        ),
        ("dashboard_is_valid", dashboard_is_valid),
        (
            "helm_upgrade_updates_the_crds",
            helm_upgrade_updates_the_crds,
        ),
        (
            "namespaced_mode_grants_roles_only",
            namespaced_mode_grants_roles_only,
        ),
        (
            "operator_runs_under_the_chart_rbac",
            operator_runs_under_the_chart_rbac,
        ),
        (
            "operator_runs_namespaced_under_the_chart_rbac",
            operator_runs_namespaced_under_the_chart_rbac,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| Trial::test(name, move || test().map_err(|e| format!("{e:#}").into())))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repository().join("charts/tenant-key-operator")
}

/// The pinned helm binary, with its configuration, cache and data in a folder of its own.
struct Helm {
    binary: PathBuf,
    home: TempDir,
}

impl Helm {
    fn new() -> Result<Helm> {
        testenv::build::ensure(Component::Helm, &mut io::stderr())?;
        Ok(Helm {
            binary: Component::Helm.binary_path("helm"),
            home: tempfile::Builder::new().prefix("tko-helm-").tempdir()?,
        })
    }

    /// Runs helm and returns its standard output; fails with its standard error.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
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

    fn template(&self, values: &[&str]) -> Result<Vec<serde_json::Value>> {
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
fn documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Ok(serde_json::Value::deserialize(doc)?))
        .filter(|doc| !matches!(doc, Ok(serde_json::Value::Null)))
        .collect()
}

fn kinds(documents: &[serde_json::Value]) -> BTreeSet<String> {
    documents
        .iter()
        .filter_map(|d| d["kind"].as_str().map(Into::into))
        .collect()
}

/// The kinds of the objects a default install creates: the Role and RoleBinding are the
/// leader election's.
fn default_kinds() -> BTreeSet<String> {
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

/// The namespaces a namespaced install watches, and one it must leave alone.
const WATCHED: [&str; 2] = ["payments", "orders"];
const UNWATCHED: &str = "elsewhere";

/// How the chart is installed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The defaults: every namespace, with a ClusterRole. Only the allowed Imburse hosts name
    /// the sandbox's loopback address, which the defaults leave out.
    AllNamespaces,
    /// `watchNamespaces` set to [`WATCHED`], and the allowed Imburse hosts narrowed to the
    /// sandbox's.
    Namespaced,
}

impl Mode {
    fn values(self) -> Vec<String> {
        match self {
            Mode::AllNamespaces => vec!["allowedImburseHosts={127.0.0.1}".into()],
            Mode::Namespaced => vec![
                format!("watchNamespaces={{{}}}", WATCHED.join(",")),
                "allowedImburseHosts={127.0.0.1}".into(),
            ],
        }
    }

    fn kinds(self) -> BTreeSet<String> {
        default_kinds()
    }
}

fn chart_lints() -> Result<()> {
    let helm = Helm::new()?;
    let chart = chart_dir();
    helm.run(&[
        OsStr::new("lint"),
        OsStr::new("--strict"),
        chart.as_os_str(),
    ])?;
    helm.run(&[
        OsStr::new("lint"),
        OsStr::new("--strict"),
        OsStr::new("--set"),
        OsStr::new("serviceMonitor.enabled=true,rbac.create=false,serviceAccount.create=false,serviceAccount.name=existing"),
        chart.as_os_str(),
    ])?;
    helm.run(&[
        OsStr::new("lint"),
        OsStr::new("--strict"),
        OsStr::new("--set"),
        OsStr::new("replicaCount=2,prometheusRule.enabled=true,grafanaDashboard.enabled=true,networkPolicy.enabled=true,crds.enabled=false"),
        chart.as_os_str(),
    ])?;
    Ok(())
}

/// The CRDs the chart renders are the ones `tenant-key-operator crd` generates, with the
/// release's labels and, by default, the keep policy; `crds.enabled=false` renders none.
fn chart_crds_are_the_generated_ones() -> Result<()> {
    let helm = Helm::new()?;
    let rendered = helm.template(&[])?;
    let crds: BTreeMap<String, &serde_json::Value> = rendered
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|d| {
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d,
            )
        })
        .collect();
    let generated = tenant_key_operator::crd::all();
    ensure!(
        crds.keys().eq(generated
            .iter()
            .map(|c| c.name_any())
            .collect::<BTreeSet<_>>()
            .iter()),
        "the chart renders {:?}",
        crds.keys().collect::<Vec<_>>()
    );
    for crd in &generated {
        let shipped = crds[&crd.name_any()];
        ensure!(
            shipped["spec"] == serde_json::to_value(&crd.spec)?,
            "the chart's {} differs from the generated one: run `cargo xtask generate`",
            crd.name_any()
        );
        ensure!(
            shipped["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
            "{} is not kept on uninstall",
            crd.name_any()
        );
        ensure!(shipped["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm");
    }
    let unkept = helm.template(&["crds.keep=false"])?;
    ensure!(
        unkept
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .all(|d| d["metadata"]["annotations"].is_null()),
        "crds.keep=false still keeps the CRDs"
    );
    let without = kinds(&helm.template(&["crds.enabled=false"])?);
    ensure!(
        !without.contains("CustomResourceDefinition"),
        "crds.enabled=false renders CRDs"
    );
    ensure!(
        !chart_dir().join("crds").exists(),
        "the chart has a crds/ folder, which Helm installs once and never upgrades"
    );
    Ok(())
}

/// Wrong values are refused by values.schema.json before anything is rendered.
fn values_are_checked_by_the_schema() -> Result<()> {
    let helm = Helm::new()?;
    for (value, complaint) in [
        ("replicaCount=two", "/replicaCount"),
        ("logFormat=xml", "/logFormat"),
        ("replicas=2", "replicas"),
        ("image.digest=latest", "/image/digest"),
        (
            "leaderElection.leaseDuration=15",
            "/leaderElection/leaseDuration",
        ),
        (
            "networkPolicy.apiServer.ports={}",
            "/networkPolicy/apiServer/ports",
        ),
        (
            "prometheusRule.imburseErrorRatio=2",
            "/prometheusRule/imburseErrorRatio",
        ),
        ("imburse.timeoutSeconds=30", "timeoutSeconds"),
        ("imburse.timeout=30", "/imburse/timeout"),
        ("health.port=0", "/health/port"),
        (
            "livenessProbe.periodSeconds=0",
            "/livenessProbe/periodSeconds",
        ),
        ("volumeMounts[0].name=ca", "/volumeMounts/0"),
        ("podMonitor.interval=often", "/podMonitor/interval"),
    ] {
        match helm.template(&[value]) {
            Ok(_) => bail!("the chart accepted {value}"),
            Err(e) => ensure!(
                format!("{e:#}").contains(complaint),
                "{value} was refused for another reason: {e:#}"
            ),
        }
    }
    match helm.template(&["replicaCount=2", "leaderElection.enabled=false"]) {
        Ok(_) => bail!("the chart accepted two replicas without leader election"),
        Err(e) => ensure!(format!("{e:#}").contains("leaderElection.enabled")),
    }
    Ok(())
}

/// Chart.yaml's Artifact Hub annotations name exactly the generated CRDs, and every example
/// reads as the typed resource the operator would see.
fn artifact_hub_annotations_describe_the_crds() -> Result<()> {
    let chart: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    let annotations = &chart["annotations"];
    ensure!(annotations["artifacthub.io/operator"] == "true");
    ensure!(annotations["artifacthub.io/license"] == "Apache-2.0");
    let listed: Vec<serde_json::Value> = serde_yaml::from_str(
        annotations["artifacthub.io/crds"]
            .as_str()
            .context("no artifacthub.io/crds")?,
    )?;
    let listed: BTreeSet<(String, String, String)> = listed
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["kind"].as_str().unwrap_or_default().to_owned(),
                c["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let generated: BTreeSet<(String, String, String)> = tenant_key_operator::crd::all()
        .iter()
        .map(|c| {
            (
                c.name_any(),
                c.spec.names.kind.clone(),
                c.spec.versions[0].name.clone(),
            )
        })
        .collect();
    ensure!(listed == generated, "artifacthub.io/crds lists {listed:?}");
    let examples: Vec<serde_json::Value> = serde_yaml::from_str(
        annotations["artifacthub.io/crdsExamples"]
            .as_str()
            .context("no artifacthub.io/crdsExamples")?,
    )?;
    let mut kinds = BTreeSet::new();
    for example in examples {
        let kind = example["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "TenantSecurityKey" => serde_json::from_value::<TenantSecurityKey>(example).map(drop),
            "ImburseAccount" => serde_json::from_value::<ImburseAccount>(example).map(drop),
            "ClusterImburseAccount" => {
                serde_json::from_value::<ClusterImburseAccount>(example).map(drop)
            }
            other => bail!("an example of unknown kind {other}"),
        }
        .with_context(|| format!("the {kind} example"))?;
        kinds.insert(kind);
    }
    ensure!(kinds.len() == generated.len(), "examples of {kinds:?} only");
    Ok(())
}

/// examples/flux/: the HelmRelease names this chart's path and values the chart accepts, and
/// the Kustomizations wait for what they apply.
fn flux_example_installs_this_chart() -> Result<()> {
    let flux = repository().join("examples/flux");
    let operator = documents(&std::fs::read_to_string(flux.join("operator.yaml"))?)?;
    let release = find(&operator, "HelmRelease")?;
    let chart = release["spec"]["chart"]["spec"]["chart"]
        .as_str()
        .context("the HelmRelease names no chart")?;
    ensure!(
        repository().join(chart) == repository().join("./charts/tenant-key-operator"),
        "the HelmRelease installs {chart}"
    );
    let values = tempfile::Builder::new()
        .prefix("tko-flux-values-")
        .suffix(".yaml")
        .tempfile()?;
    std::fs::write(
        values.path(),
        serde_yaml::to_string(&release["spec"]["values"])?,
    )?;
    let helm = Helm::new()?;
    let rendered = documents(&helm.run(&[
        OsStr::new("template"),
        OsStr::new(RELEASE),
        chart_dir().as_os_str(),
        OsStr::new("--values"),
        values.path().as_os_str(),
    ])?)?;
    ensure!(kinds(&rendered).contains("PodDisruptionBudget"));

    let kustomizations = documents(&std::fs::read_to_string(flux.join("kustomizations.yaml"))?)?;
    ensure!(!kustomizations.is_empty());
    for kustomization in &kustomizations {
        let spec = &kustomization["spec"];
        ensure!(
            spec["wait"] == true || spec["healthChecks"].is_array(),
            "Kustomization {} waits for nothing",
            kustomization["metadata"]["name"]
        );
    }
    Ok(())
}

fn find<'a>(rendered: &'a [serde_json::Value], kind: &str) -> Result<&'a serde_json::Value> {
    rendered
        .iter()
        .find(|d| d["kind"] == kind)
        .with_context(|| format!("no {kind} rendered"))
}

/// One replica is replaced stop-first and has no budget; more get a PodDisruptionBudget over
/// the Deployment's pods and a rolling update that never goes below the current count.
fn replicas_get_a_disruption_budget_and_rolling_updates() -> Result<()> {
    let helm = Helm::new()?;
    let single = helm.template(&[])?;
    ensure!(!kinds(&single).contains("PodDisruptionBudget"));
    ensure!(find(&single, "Deployment")?["spec"]["strategy"]["type"] == "Recreate");

    let replicated = helm.template(&["replicaCount=2"])?;
    let deployment = find(&replicated, "Deployment")?;
    ensure!(deployment["spec"]["replicas"] == 2);
    let strategy = &deployment["spec"]["strategy"];
    ensure!(
        strategy["type"] == "RollingUpdate" && strategy["rollingUpdate"]["maxUnavailable"] == 0,
        "strategy {strategy}"
    );
    let budget = find(&replicated, "PodDisruptionBudget")?;
    ensure!(budget["spec"]["minAvailable"] == 1);
    ensure!(
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    );
    Ok(())
}

fn container_args(rendered: &[serde_json::Value]) -> Result<Vec<String>> {
    let container = &find(rendered, "Deployment")?["spec"]["template"]["spec"]["containers"][0];
    Ok(container["args"]
        .as_array()
        .context("no container args")?
        .iter()
        .filter_map(|a| a.as_str().map(Into::into))
        .collect())
}

/// The operator binary parses the rendered arguments: it gets as far as reading a kubeconfig
/// (that does not exist), which it only does once every flag was accepted.
fn binary_accepts(args: &[String]) -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-key-operator"))
        .args(args)
        .args(["--kubeconfig", "/nonexistent/kubeconfig"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("kubeconfig"),
        "the operator did not accept {args:?}: {stderr}"
    );
    Ok(())
}

/// The leader election values become the operator's flags, and a Role in the Lease's namespace
/// grants exactly the Lease verbs; disabled, neither.
fn leader_election_flags_and_lease_rbac() -> Result<()> {
    let helm = Helm::new()?;
    let rendered = helm.template(&[])?;
    let args = container_args(&rendered)?;
    let expected = [
        "run".to_owned(),
        "--leader-election=true".into(),
        format!("--leader-election-lease-name={RELEASE}"),
        format!("--leader-election-namespace={RELEASE_NAMESPACE}"),
        "--leader-election-lease-duration=15s".into(),
        "--leader-election-renew-deadline=10s".into(),
        "--leader-election-retry-period=2s".into(),
    ];
    ensure!(args == expected, "args {args:?}");
    binary_accepts(&args)?;
    let env: BTreeSet<&str> =
        find(&rendered, "Deployment")?["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["valueFrom"]["fieldRef"].is_object())
            .filter_map(|e| e["name"].as_str())
            .collect();
    ensure!(
        env == BTreeSet::from(["POD_NAME", "POD_NAMESPACE"]),
        "downward API env {env:?}"
    );
    let role = find(&rendered, "Role")?;
    ensure!(role["metadata"]["namespace"] == RELEASE_NAMESPACE);
    ensure!(
        role["rules"]
            == json!([{
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "create", "update", "patch"],
            }]),
        "lease rules {}",
        role["rules"]
    );
    let binding = find(&rendered, "RoleBinding")?;
    ensure!(binding["roleRef"]["name"] == role["metadata"]["name"]);
    ensure!(binding["metadata"]["namespace"] == RELEASE_NAMESPACE);

    let custom = helm.template(&[
        "leaderElection.leaseName=tko",
        "leaderElection.namespace=kube-system",
        "leaderElection.leaseDuration=30s",
        "extraArgs={--log-format=json}",
    ])?;
    let args = container_args(&custom)?;
    for arg in [
        "--leader-election-lease-name=tko",
        "--leader-election-namespace=kube-system",
        "--leader-election-lease-duration=30s",
    ] {
        ensure!(args.iter().any(|a| a == arg), "{arg} missing from {args:?}");
    }
    ensure!(args.last().map(String::as_str) == Some("--log-format=json"));
    binary_accepts(&args)?;
    ensure!(find(&custom, "Role")?["metadata"]["namespace"] == "kube-system");

    let disabled = helm.template(&["leaderElection.enabled=false"])?;
    ensure!(container_args(&disabled)? == ["run", "--leader-election=false"]);
    binary_accepts(&container_args(&disabled)?)?;
    ensure!(!kinds(&disabled).contains("Role"));
    Ok(())
}

/// Egress to DNS, the API server ports and Imburse's 443 (to the CIDRs when given), ingress to
/// the metrics port only; opt-in.
fn network_policy_allows_dns_api_server_imburse_and_scrapes() -> Result<()> {
    let helm = Helm::new()?;
    ensure!(!kinds(&helm.template(&[])?).contains("NetworkPolicy"));
    let open = helm.template(&["networkPolicy.enabled=true"])?;
    let policy = &find(&open, "NetworkPolicy")?["spec"];
    ensure!(
        policy["podSelector"]["matchLabels"]
            == find(&open, "Deployment")?["spec"]["selector"]["matchLabels"]
    );
    let ports = |rule: &serde_json::Value| -> Vec<(i64, String)> {
        rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["port"].as_i64().unwrap_or_default(),
                    p["protocol"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let egress = policy["egress"].as_array().context("no egress")?;
    let by_ports: Vec<Vec<(i64, String)>> = egress.iter().map(ports).collect();
    let tcp = |port: i64| (port, "TCP".to_owned());
    let expected = vec![
        vec![(53, "UDP".to_owned()), tcp(53)],
        vec![tcp(443), tcp(6443)],
        vec![tcp(443)],
    ];
    ensure!(by_ports == expected, "egress ports {by_ports:?}");
    ensure!(
        egress.iter().all(|rule| rule["to"].is_null()),
        "destinations without CIDRs"
    );
    ensure!(policy["ingress"] == json!([{ "ports": [{ "port": "metrics", "protocol": "TCP" }] }]));

    let narrowed = helm.template(&[
        "networkPolicy.enabled=true",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "networkPolicy.apiServer.ports={8443}",
        "networkPolicy.imburse.cidrs={203.0.113.0/24}",
        "networkPolicy.metrics.from[0].namespaceSelector.matchLabels.name=monitoring",
    ])?;
    let policy = &find(&narrowed, "NetworkPolicy")?["spec"];
    ensure!(policy["egress"][1]["to"] == json!([{ "ipBlock": { "cidr": "10.0.0.1/32" } }]));
    ensure!(ports(&policy["egress"][1]) == [tcp(8443)]);
    ensure!(policy["egress"][2]["to"] == json!([{ "ipBlock": { "cidr": "203.0.113.0/24" } }]));
    ensure!(
        policy["ingress"][0]["from"]
            == json!([{ "namespaceSelector": { "matchLabels": { "name": "monitoring" } } }])
    );
    Ok(())
}

/// ClusterRoles labelled into `view` and `edit` for the three kinds, on by default.
fn aggregated_roles_extend_view_and_edit() -> Result<()> {
    let helm = Helm::new()?;
    let rendered = helm.template(&[])?;
    let resources = json!([
        "tenantsecuritykeys",
        "imburseaccounts",
        "clusterimburseaccounts"
    ]);
    for (role, verbs) in [
        ("view", json!(["get", "list", "watch"])),
        (
            "edit",
            json!([
                "get", "list", "watch", "create", "update", "patch", "delete"
            ]),
        ),
    ] {
        let label = format!("rbac.authorization.k8s.io/aggregate-to-{role}");
        let aggregated = rendered
            .iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["labels"][&label] == "true")
            .with_context(|| format!("no ClusterRole aggregated to {role}"))?;
        ensure!(
            aggregated["rules"]
                == json!([{ "apiGroups": ["imbursepayments.com"], "resources": resources, "verbs": verbs }]),
            "{role} rules {}",
            aggregated["rules"]
        );
    }
    let off = helm.template(&["rbac.aggregateClusterRoles=false"])?;
    ensure!(off.iter().filter(|d| d["kind"] == "ClusterRole").count() == 1);
    Ok(())
}

/// Metric names the alerts and the dashboard may use: the operator's own metrics.
const METRICS: [&str; 16] = [
    "tenant_key_operator_account_ready",
    "tenant_key_operator_build_info",
    "tenant_key_operator_imburse_keys",
    "tenant_key_operator_imburse_request_duration_seconds_bucket",
    "tenant_key_operator_imburse_requests_total",
    "tenant_key_operator_key_created_timestamp_seconds",
    "tenant_key_operator_key_next_rotation_timestamp_seconds",
    "tenant_key_operator_key_ready_status",
    "tenant_key_operator_key_rotation_interval_seconds",
    "tenant_key_operator_keys_created_total",
    "tenant_key_operator_keys_revoked_total",
    "tenant_key_operator_kube_writes_total",
    "tenant_key_operator_previous_keys_overdue",
    "tenant_key_operator_previous_keys_pending",
    "tenant_key_operator_reconcile_duration_seconds_bucket",
    "tenant_key_operator_reconciles_total",
];

/// What rules-check reports about a rules file it accepted.
#[derive(serde::Deserialize)]
struct CheckedRules {
    alerts: Vec<String>,
    records: Vec<String>,
    metrics: Vec<String>,
}

/// Validates `{groups: ...}` with Prometheus' own rule parser.
fn check_rules(groups: &serde_json::Value) -> Result<CheckedRules> {
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

/// The PrometheusRule's groups load in Prometheus (expressions, durations, templates), raise the
/// documented alerts, and select only metrics the operator serves.
fn alerts_parse_with_the_prometheus_rule_parser() -> Result<()> {
    let helm = Helm::new()?;
    ensure!(!kinds(&helm.template(&[])?).contains("PrometheusRule"));
    let rendered = helm.template(&[
        "prometheusRule.enabled=true",
        "prometheusRule.namespace=monitoring",
        "prometheusRule.labels.release=prometheus",
        "prometheusRule.additionalAlertLabels.team=payments",
    ])?;
    let rule = find(&rendered, "PrometheusRule")?;
    ensure!(rule["metadata"]["namespace"] == "monitoring");
    ensure!(rule["metadata"]["labels"]["release"] == "prometheus");
    let checked = check_rules(&rule["spec"])?;
    ensure!(
        checked.alerts
            == [
                "TenantSecurityKeyNotReady",
                "TenantSecurityKeyRevocationOverdue",
                "TenantSecurityKeyRotationOverdue",
                "ImburseAccountNotReady",
                "ImburseKeyLeaked",
                "TenantKeyOperatorImburseErrors",
                "TenantKeyOperatorAbsent",
            ],
        "alerts {:?}",
        checked.alerts
    );
    for metric in &checked.metrics {
        ensure!(
            METRICS.contains(&metric.as_str()),
            "the alerts use unknown metric {metric}"
        );
    }
    for alert in rule["spec"]["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        ensure!(
            alert["labels"]["team"] == "payments",
            "{} lacks the extra label",
            alert["alert"]
        );
        ensure!(alert["labels"]["severity"].is_string());
        ensure!(alert["annotations"]["summary"].is_string());
        // Each alert links to its own section of the troubleshooting page.
        let runbook = format!(
            "https://github.com/imburse/tenant-key-operator/blob/main/docs/troubleshooting.md#{}",
            alert["alert"].as_str().unwrap_or_default().to_lowercase()
        );
        ensure!(
            alert["annotations"]["runbook_url"] == runbook.as_str(),
            "{} links to {}",
            alert["alert"],
            alert["annotations"]["runbook_url"]
        );
    }
    // A broken expression is caught: the check is not vacuous.
    let mut broken = rule["spec"].clone();
    broken["groups"][0]["rules"][0]["expr"] = "tenant_key_operator_key_ready_status ==".into();
    ensure!(
        check_rules(&broken).is_err(),
        "rules-check accepted a broken expression"
    );
    Ok(())
}

/// The dashboard ConfigMap carries the sidecar's label and JSON whose every query parses in
/// Prometheus (with Grafana's interval variable filled in) and selects the operator's metrics.
fn dashboard_is_valid() -> Result<()> {
    let helm = Helm::new()?;
    let rendered = helm.template(&["grafanaDashboard.enabled=true"])?;
    let config_map = find(&rendered, "ConfigMap")?;
    ensure!(config_map["metadata"]["labels"]["grafana_dashboard"] == "1");
    let text = config_map["data"]["tenant-key-operator.json"]
        .as_str()
        .context("no dashboard JSON")?;
    let dashboard: serde_json::Value = serde_json::from_str(text).context("dashboard JSON")?;
    ensure!(dashboard["uid"] == "tenant-key-operator");
    let mut rules = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("a target without expr")?;
            rules.push(json!({
                "record": format!("dashboard:panel_{}:{}", panel["id"], target["refId"].as_str().unwrap_or_default()),
                "expr": expr.replace("$__rate_interval", "5m"),
            }));
        }
    }
    let checked = check_rules(&json!({ "groups": [{ "name": "dashboard", "rules": rules }] }))?;
    ensure!(checked.records.len() == rules.len());
    for metric in &checked.metrics {
        ensure!(
            METRICS.contains(&metric.as_str()),
            "the dashboard uses unknown metric {metric}"
        );
    }
    let monitored = helm.template(&[
        "serviceMonitor.enabled=true",
        "serviceMonitor.namespace=monitoring",
        "serviceMonitor.relabelings[0].targetLabel=cluster",
        "serviceMonitor.relabelings[0].replacement=prod",
        "serviceMonitor.metricRelabelings[0].action=drop",
        "serviceMonitor.metricRelabelings[0].regex=tenant_key_operator_kube_writes_total",
    ])?;
    let endpoint = &find(&monitored, "ServiceMonitor")?["spec"]["endpoints"][0];
    ensure!(
        endpoint["honorLabels"] == true,
        "per-key namespaces would be renamed"
    );
    ensure!(endpoint["relabelings"][0]["targetLabel"] == "cluster");
    ensure!(endpoint["metricRelabelings"][0]["action"] == "drop");
    Ok(())
}

/// With `watchNamespaces`, namespaced resources are granted by Roles in those namespaces only;
/// the ClusterRole keeps the cluster-scoped reads.
fn namespaced_mode_grants_roles_only() -> Result<()> {
    let helm = Helm::new()?;
    let values = Mode::Namespaced.values();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let rendered = helm.template(&values)?;
    ensure!(kinds(&rendered) == Mode::Namespaced.kinds());
    let resources = |doc: &serde_json::Value| -> BTreeSet<String> {
        doc["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r.as_str().map(Into::into))
            .collect()
    };
    let cluster_role = rendered
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == RELEASE)
        .context("no ClusterRole of the operator")?;
    ensure!(
        resources(cluster_role)
            == BTreeSet::from(
                [
                    "clusterimburseaccounts",
                    "clusterimburseaccounts/status",
                    "namespaces"
                ]
                .map(String::from)
            ),
        "the ClusterRole grants {:?}",
        resources(cluster_role)
    );
    let roles: BTreeMap<(String, String), &serde_json::Value> = rendered
        .iter()
        .filter(|d| d["kind"] == "Role")
        .map(|d| {
            let m = &d["metadata"];
            let key = (m["namespace"].as_str(), m["name"].as_str());
            (
                (
                    key.0.unwrap_or_default().into(),
                    key.1.unwrap_or_default().into(),
                ),
                d,
            )
        })
        .collect();
    let namespaces: BTreeSet<&str> = roles.keys().map(|(ns, _)| ns.as_str()).collect();
    ensure!(
        namespaces == BTreeSet::from(["payments", "orders", RELEASE_NAMESPACE, "default"]),
        "Roles in {namespaces:?}"
    );
    for ns in WATCHED {
        let role = roles
            .get(&(ns.into(), RELEASE.into()))
            .with_context(|| format!("no Role in {ns}"))?;
        ensure!(
            resources(role).contains("secrets") && resources(role).contains("tenantsecuritykeys")
        );
    }
    for binding in rendered.iter().filter(|d| d["kind"] == "RoleBinding") {
        let m = &binding["metadata"];
        let role = (
            m["namespace"].as_str().unwrap_or_default().to_owned(),
            binding["roleRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        ensure!(
            roles.contains_key(&role),
            "RoleBinding to a missing Role {role:?}"
        );
    }
    ensure!(
        rendered
            .iter()
            .filter(|d| d["kind"] == "RoleBinding")
            .count()
            == roles.len(),
        "not every Role is bound"
    );
    Ok(())
}

fn service_monitor_is_optional() -> Result<()> {
    let helm = Helm::new()?;
    let default = kinds(&helm.template(&[])?);
    ensure!(default == default_kinds(), "default objects: {default:?}");
    let monitored = helm.template(&["serviceMonitor.enabled=true"])?;
    let monitor = monitored
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .context("no ServiceMonitor with serviceMonitor.enabled=true")?;
    let service = monitored
        .iter()
        .find(|d| d["kind"] == "Service")
        .context("no Service")?;
    ensure!(monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]);
    ensure!(monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]);
    Ok(())
}

fn pod_monitor_scrapes_the_metrics_port() -> Result<()> {
    let helm = Helm::new()?;
    let monitored = helm.template(&["podMonitor.enabled=true", "podMonitor.labels.release=kps"])?;
    let monitor = find(&monitored, "PodMonitor")?;
    let pod = &find(&monitored, "Deployment")?["spec"]["template"];
    ensure!(monitor["metadata"]["labels"]["release"] == "kps");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    ensure!(endpoint["port"] == "metrics" && endpoint["path"] == "/metrics");
    ensure!(pod["spec"]["containers"][0]["ports"][0]["name"] == "metrics");
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("no selector")?
    {
        ensure!(
            pod["metadata"]["labels"][label] == *value,
            "{label} selects no pod"
        );
    }
    Ok(())
}

/// Metrics and probes are served on ports of their own; the probes ask `/livez` and `/readyz`
/// there, with the settings the values give, and the ports reach the binary's flags.
fn probes_and_metrics_have_ports_of_their_own() -> Result<()> {
    let helm = Helm::new()?;
    let rendered = helm.template(&[
        "metrics.port=9090",
        "health.port=9091",
        "livenessProbe.failureThreshold=6",
        "readinessProbe.periodSeconds=2",
    ])?;
    let container = &find(&rendered, "Deployment")?["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<(&str, i64)> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?, p["containerPort"].as_i64()?)))
        .collect();
    ensure!(
        ports == [("metrics", 9090), ("health", 9091)],
        "ports {ports:?}"
    );
    let liveness = &container["livenessProbe"];
    ensure!(liveness["httpGet"]["path"] == "/livez" && liveness["httpGet"]["port"] == "health");
    ensure!(liveness["failureThreshold"] == 6 && liveness["periodSeconds"] == 10);
    let readiness = &container["readinessProbe"];
    ensure!(readiness["httpGet"]["path"] == "/readyz" && readiness["httpGet"]["port"] == "health");
    ensure!(readiness["periodSeconds"] == 2);
    let env = container_env(&serde_json::from_value(container.clone())?)?;
    for (name, value) in [
        ("TKO_METRICS_BIND_ADDRESS", ":9090"),
        ("TKO_HEALTH_PROBE_BIND_ADDRESS", ":9091"),
    ] {
        ensure!(
            env.iter().any(|(n, v)| n == name && v == value),
            "{name}={value} missing from {env:?}"
        );
    }
    let service = find(&rendered, "Service")?;
    ensure!(service["spec"]["ports"][0]["targetPort"] == "metrics");
    Ok(())
}

/// The values platform teams reach for, with the names other charts use, land where Kubernetes
/// reads them.
fn escape_hatches_reach_the_pod() -> Result<()> {
    let helm = Helm::new()?;
    let default = helm.template(&[])?;
    let defaults = &find(&default, "Deployment")?["spec"];
    ensure!(defaults["template"]["spec"]["nodeSelector"]["kubernetes.io/os"] == "linux");
    ensure!(defaults["revisionHistoryLimit"] == 10);
    ensure!(defaults["template"]["spec"]["imagePullSecrets"].is_null());

    let rendered = helm.template(&[
        "commonLabels.team=payments",
        "podLabels.tier=ops",
        "podAnnotations.example\\.com/scrape=no",
        "priorityClassName=system-cluster-critical",
        "revisionHistoryLimit=3",
        "strategy.type=RollingUpdate",
        "global.imagePullSecrets[0]=shared",
        "imagePullSecrets[0].name=own",
        "imagePullSecrets[1]=shared",
        "extraArgs[0]=--verify-interval=30m",
        "extraEnv[0].name=HTTPS_PROXY",
        "extraEnv[0].value=http://proxy.corp:3128",
        "volumes[0].name=ca",
        "volumes[0].configMap.name=corporate-ca",
        "volumeMounts[0].name=ca",
        "volumeMounts[0].mountPath=/etc/corporate-ca",
        "volumeMounts[0].readOnly=true",
    ])?;
    for document in &rendered {
        ensure!(
            document["metadata"]["labels"]["team"] == "payments",
            "{} {} lacks commonLabels",
            document["kind"],
            document["metadata"]["name"]
        );
    }
    let deployment = &find(&rendered, "Deployment")?["spec"];
    let pod = &deployment["template"];
    ensure!(deployment["revisionHistoryLimit"] == 3);
    ensure!(deployment["strategy"]["type"] == "RollingUpdate");
    ensure!(pod["metadata"]["labels"]["team"] == "payments");
    ensure!(pod["metadata"]["labels"]["tier"] == "ops");
    ensure!(pod["metadata"]["annotations"]["example.com/scrape"] == "no");
    ensure!(pod["spec"]["priorityClassName"] == "system-cluster-critical");
    ensure!(
        pod["spec"]["imagePullSecrets"]
            == serde_json::json!([{ "name": "shared" }, { "name": "own" }]),
        "pull secrets {}",
        pod["spec"]["imagePullSecrets"]
    );
    ensure!(pod["spec"]["volumes"][0]["configMap"]["name"] == "corporate-ca");
    let container = &pod["spec"]["containers"][0];
    ensure!(container["volumeMounts"][0]["mountPath"] == "/etc/corporate-ca");
    ensure!(
        container_env(&serde_json::from_value(container.clone())?)?
            .iter()
            .any(|(n, v)| n == "HTTPS_PROXY" && v == "http://proxy.corp:3128")
    );
    let args = container_args(&rendered)?;
    ensure!(args.last().map(String::as_str) == Some("--verify-interval=30m"));
    binary_accepts(&args)
}

/// Chart 0.1.0 installed the CRDs from `crds/`, which Helm never upgrades. From such a release,
/// `helm upgrade --take-ownership` adopts and updates them (a plain upgrade is refused, as the
/// README says); later upgrades update them like any template, and uninstalling keeps them.
/// Along the way, the API server accepts the PodDisruptionBudget and NetworkPolicy, and a real
/// install with a wrong value is refused by the schema.
fn helm_upgrade_updates_the_crds() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let helm = Helm::new()?;
        let control_plane = ControlPlane::start().await?;
        let admin = control_plane.client().await?;
        let kubeconfig = control_plane.kubeconfig_path().to_owned();
        let charts = tempfile::Builder::new().prefix("tko-charts-").tempdir()?;
        let release = |verb: &str, chart: &Path, extra: &[&str]| -> Result<String> {
            let mut args: Vec<std::ffi::OsString> = vec![
                verb.into(),
                RELEASE.into(),
                chart.into(),
                "--namespace".into(),
                RELEASE_NAMESPACE.into(),
                "--create-namespace".into(),
                "--kubeconfig".into(),
                kubeconfig.clone().into(),
            ];
            args.extend(extra.iter().map(Into::into));
            helm.run(&args)
        };
        let columns = || async {
            let crd = Api::<CustomResourceDefinition>::all(admin.clone())
                .get("tenantsecuritykeys.imbursepayments.com")
                .await?;
            let names: Vec<String> = crd.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect();
            anyhow::Ok((names, crd.metadata))
        };

        match release("install", &chart_dir(), &["--set", "replicaCount=two"]) {
            Ok(_) => bail!("helm installed the chart with replicaCount=two"),
            Err(e) => ensure!(format!("{e:#}").contains("/replicaCount"), "{e:#}"),
        }
        ensure!(
            Api::<CustomResourceDefinition>::all(admin.clone())
                .get_opt("tenantsecuritykeys.imbursepayments.com")
                .await?
                .is_none(),
            "a refused install created the CRDs"
        );

        let previous = chart_variant(charts.path(), "previous", |crd| {
            crd.spec.versions[0]
                .additional_printer_columns
                .get_or_insert_default()
                .retain(|c| c.name != "Secret");
        })?;
        release("install", &previous, &[])?;
        let (before, _) = columns().await?;
        ensure!(!before.iter().any(|c| c == "Secret"), "columns {before:?}");

        match release("upgrade", &chart_dir(), &[]) {
            Ok(_) => bail!("helm adopted CRDs it did not install without --take-ownership"),
            Err(e) => ensure!(
                format!("{e:#}").contains("invalid ownership metadata"),
                "{e:#}"
            ),
        }
        release(
            "upgrade",
            &chart_dir(),
            &[
                "--take-ownership",
                "--set",
                "replicaCount=2",
                "--set",
                "networkPolicy.enabled=true",
            ],
        )?;
        let (after, metadata) = columns().await?;
        ensure!(after.iter().any(|c| c == "Secret"), "columns {after:?}");
        ensure!(
            metadata
                .annotations
                .unwrap_or_default()
                .get("helm.sh/resource-policy")
                .map(String::as_str)
                == Some("keep")
        );
        let manifest = helm.run(&[
            OsStr::new("get"),
            OsStr::new("manifest"),
            OsStr::new(RELEASE),
            OsStr::new("--namespace"),
            OsStr::new(RELEASE_NAMESPACE),
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ])?;
        let released = kinds(&documents(&manifest)?);
        for kind in [
            "PodDisruptionBudget",
            "NetworkPolicy",
            "CustomResourceDefinition",
        ] {
            ensure!(
                released.contains(kind),
                "the upgraded release holds {released:?}"
            );
        }

        let next = chart_variant(charts.path(), "next", |crd| {
            crd.spec.versions[0]
                .additional_printer_columns
                .get_or_insert_default()
                .push(CustomResourceColumnDefinition {
                    name: "Key Name".into(),
                    json_path: ".status.keyName".into(),
                    type_: "string".into(),
                    ..Default::default()
                });
        })?;
        release("upgrade", &next, &[])?;
        let (next_columns, _) = columns().await?;
        ensure!(
            next_columns.iter().any(|c| c == "Key Name"),
            "columns {next_columns:?}"
        );

        helm.run(&[
            OsStr::new("uninstall"),
            OsStr::new(RELEASE),
            OsStr::new("--namespace"),
            OsStr::new(RELEASE_NAMESPACE),
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ])?;
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        for crd in tenant_key_operator::crd::all() {
            ensure!(
                crds.get_opt(&crd.name_any()).await?.is_some(),
                "uninstalling deleted {}",
                crd.name_any()
            );
        }
        Ok(())
    })
}

/// A copy of the chart under `dir/name` whose TenantSecurityKey CRD is edited by `edit`. As
/// "previous" it has chart 0.1.0's layout: the CRDs in `crds/`, no CRD templates.
fn chart_variant(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut CustomResourceDefinition),
) -> Result<PathBuf> {
    let chart = dir.join(name);
    copy_dir(&chart_dir(), &chart)?;
    let crd_dir = if name == "previous" {
        std::fs::remove_file(chart.join("templates/crds.yaml"))?;
        std::fs::remove_dir_all(chart.join("files/crds"))?;
        let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml"))?;
        let old: Vec<String> = chart_yaml
            .lines()
            .map(|l| {
                if l.starts_with("version:") {
                    "version: 0.1.0".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(chart.join("Chart.yaml"), old.join("\n") + "\n")?;
        chart.join("crds")
    } else {
        chart.join("files/crds")
    };
    std::fs::create_dir_all(&crd_dir)?;
    for mut crd in tenant_key_operator::crd::all() {
        if crd.spec.names.kind == "TenantSecurityKey" {
            edit(&mut crd);
        }
        std::fs::write(
            crd_dir.join(tenant_key_operator::crd::file_name(&crd)),
            tenant_key_operator::crd::to_yaml(&crd)?,
        )?;
    }
    Ok(chart)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Installs the chart, runs the operator as the chart's Deployment would, and follows one key
/// per account kind from creation to revocation.
fn operator_runs_under_the_chart_rbac() -> Result<()> {
    run_under_the_chart_rbac(Mode::AllNamespaces)
}

/// The same with `watchNamespaces`: keys in the watched namespaces become Ready, while the
/// operator can neither read a Secret elsewhere nor act on a key there.
fn operator_runs_namespaced_under_the_chart_rbac() -> Result<()> {
    run_under_the_chart_rbac(Mode::Namespaced)
}

fn run_under_the_chart_rbac(mode: Mode) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let helm = Helm::new()?;
        let control_plane = ControlPlane::start().await?;
        let admin = control_plane.client().await?;
        // One tenant per account: one key with each account kind.
        let config = Config::generate(2, 1);
        let sandbox = Sandbox::start(config.clone()).await?;
        let world = World {
            admin: admin.clone(),
            sandbox: &sandbox,
            config: &config,
        };
        // Namespaces a Role is rendered into must exist before the install.
        world.namespaces().await?;

        let deployment = install(&helm, &control_plane, &admin, mode).await?;
        let deployment: Deployment = Api::namespaced(admin.clone(), RELEASE_NAMESPACE)
            .get(&deployment)
            .await?;
        let pod = deployment
            .spec
            .and_then(|s| s.template.spec)
            .context("the Deployment has no pod template")?;
        let service_account = pod
            .service_account_name
            .clone()
            .context("the pod template names no ServiceAccount")?;
        let container = pod.containers.first().context("no container")?;
        let env = container_env(container)?;
        every_variable_is_read(&env)?;

        let kubeconfig = control_plane
            .service_account_kubeconfig(RELEASE_NAMESPACE, &service_account)
            .await?;
        let operator_client = testenv::client_from_kubeconfig(&kubeconfig).await?;
        denied(&operator_client).await?;
        if mode == Mode::Namespaced {
            world
                .unwatched_namespace_is_out_of_reach(&operator_client)
                .await?;
        }

        let logs = tempfile::Builder::new().prefix("tko-chart-").tempdir()?;
        let launcher = launcher(logs.path(), &env)?;
        let operator = Operator::start(
            "operator",
            &launcher,
            &kubeconfig,
            logs.path(),
            &[
                // The pod's ports may be taken on this machine.
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
                "--log-filter",
                "debug,hyper=info,hyper_util=info,tower=info,h2=info,rustls=info,reqwest=info",
            ],
        )?;

        let lifecycle = match world.key_lifecycles().await {
            Ok(()) if mode == Mode::Namespaced => world.unwatched_key_is_ignored().await,
            other => other,
        };
        // Stopped first, so that the log includes the shutdown.
        let log_path = operator.log_path().to_owned();
        drop(operator);
        let log = std::fs::read_to_string(log_path)?;
        lifecycle.with_context(|| format!("operator log:\n{}", tail(&log, 60)))?;
        ensure!(
            log.contains("serving metrics"),
            "the operator log is empty or incomplete:\n{}",
            tail(&log, 20)
        );
        let forbidden: Vec<&str> = log
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .collect();
        ensure!(
            forbidden.is_empty(),
            "the operator was refused by RBAC:\n{}",
            forbidden.join("\n")
        );
        Ok(())
    })
}

/// `helm install` with the admin kubeconfig, then checks that the API server holds every object
/// of the release and that the CRDs are established. Returns the name of the Deployment.
async fn install(
    helm: &Helm,
    control_plane: &ControlPlane,
    admin: &Client,
    mode: Mode,
) -> Result<String> {
    let kubeconfig = control_plane.kubeconfig_path().as_os_str();
    let chart = chart_dir();
    // No --wait: without a kubelet the operator's pod never runs.
    let mut args = vec![
        OsStr::new("install"),
        OsStr::new(RELEASE),
        chart.as_os_str(),
        OsStr::new("--namespace"),
        OsStr::new(RELEASE_NAMESPACE),
        OsStr::new("--create-namespace"),
        OsStr::new("--kubeconfig"),
        kubeconfig,
    ];
    let values = mode.values();
    for value in &values {
        args.extend([OsStr::new("--set"), OsStr::new(value)]);
    }
    helm.run(&args)?;
    let releases: serde_json::Value = serde_json::from_str(&helm.run(&[
        OsStr::new("list"),
        OsStr::new("--namespace"),
        OsStr::new(RELEASE_NAMESPACE),
        OsStr::new("--output"),
        OsStr::new("json"),
        OsStr::new("--kubeconfig"),
        kubeconfig,
    ])?)?;
    ensure!(
        releases[0]["name"] == RELEASE && releases[0]["status"] == "deployed",
        "helm list: {releases}"
    );

    let manifest = documents(&helm.run(&[
        OsStr::new("get"),
        OsStr::new("manifest"),
        OsStr::new(RELEASE),
        OsStr::new("--namespace"),
        OsStr::new(RELEASE_NAMESPACE),
        OsStr::new("--kubeconfig"),
        kubeconfig,
    ])?)?;
    let mut deployment = None;
    for document in &manifest {
        let object: DynamicObject = serde_json::from_value(document.clone())?;
        let types = object
            .types
            .clone()
            .context("an object without apiVersion and kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, capabilities) = kube::discovery::pinned_kind(admin, &gvk).await?;
        let api: Api<DynamicObject> = match capabilities.scope {
            kube::discovery::Scope::Namespaced => {
                let namespace = object.namespace().with_context(|| {
                    format!("{} {} has no namespace", types.kind, object.name_any())
                })?;
                Api::namespaced_with(admin.clone(), &namespace, &resource)
            }
            kube::discovery::Scope::Cluster => Api::all_with(admin.clone(), &resource),
        };
        api.get(&object.name_any()).await.with_context(|| {
            format!(
                "{} {} is not on the API server",
                types.kind,
                object.name_any()
            )
        })?;
        if types.kind == "Deployment" {
            deployment = Some(object.name_any());
        }
    }
    ensure!(
        kinds(&manifest) == mode.kinds(),
        "the release holds {:?}",
        kinds(&manifest)
    );

    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in tenant_key_operator::crd::all() {
        let name = crd.name_any();
        tokio::time::timeout(
            WAIT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} was not established"))??;
    }
    deployment.context("the release has no Deployment")
}

/// The container's environment as the kubelet would resolve it for a pod of the release.
fn container_env(
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

/// Every variable the chart sets is one the operator reads: a misspelt name would be ignored
/// silently. POD_NAME is read directly, the others through the command line.
fn every_variable_is_read(env: &[(String, String)]) -> Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_tenant-key-operator"))
        .args(["run", "--help"])
        .env_clear()
        .output()?;
    let help = String::from_utf8(output.stdout)?;
    for (name, _) in env {
        ensure!(
            name == "POD_NAME" || help.contains(&format!("[env: {name}=")),
            "the chart sets {name}, which `tenant-key-operator run` does not read:\n{help}"
        );
    }
    Ok(())
}

/// A script that runs the operator with exactly `env`, as the container would.
fn launcher(dir: &Path, env: &[(String, String)]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let assignments: Vec<String> = env
        .iter()
        .map(|(name, value)| format!("{name}={}", quote(value)))
        .collect();
    let script = format!(
        "#!/bin/sh\nexec env -i {} {} \"$@\"\n",
        assignments.join(" "),
        quote(env!("CARGO_BIN_EXE_tenant-key-operator"))
    );
    let path = dir.join("launch-operator.sh");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Requests the ServiceAccount must not be allowed, so the operator cannot have run with more
/// than the chart grants.
async fn denied(client: &Client) -> Result<()> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for (group, resource, verb) in [
        ("", "secrets", "update"),
        ("", "configmaps", "get"),
        ("", "pods", "list"),
        ("", "namespaces", "delete"),
        ("", "events", "create"),
        ("imbursepayments.com", "tenantsecuritykeys", "create"),
        ("imbursepayments.com", "tenantsecuritykeys", "delete"),
        ("imbursepayments.com", "imburseaccounts", "update"),
        ("imbursepayments.com", "clusterimburseaccounts", "delete"),
        ("rbac.authorization.k8s.io", "clusterroles", "bind"),
    ] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        ensure!(
            !answer.status.is_some_and(|s| s.allowed),
            "the chart's ServiceAccount may {verb} {resource}"
        );
    }
    Ok(())
}

fn verified(conditions: Option<&Vec<tenant_key_operator::crd::Condition>>) -> bool {
    ready(conditions) == Some(("True", "CredentialsVerified"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the test creates as an administrator, and the sandbox the keys live at.
struct World<'a> {
    admin: Client,
    sandbox: &'a Sandbox,
    config: &'a Config,
}

impl World<'_> {
    fn tenant(&self, account: usize) -> String {
        let account = &self.config.accounts[account].account_id;
        self.config
            .tenants_of(account)
            .next()
            .map(|t| t.tenant_id.clone())
            .unwrap_or_default()
    }

    async fn credentials(&self, namespace: &str, name: &str, account: usize) -> Result<()> {
        let account = &self.config.accounts[account];
        let data = BTreeMap::from([
            ("publicKey".to_owned(), account.public_key.clone()),
            (
                "privateKey".to_owned(),
                secrecy::ExposeSecret::expose_secret(&account.private_key).to_owned(),
            ),
        ]);
        create_secret(&self.admin, namespace, name, data).await
    }

    /// The namespaces of the test: `payments` (labelled `team=payments`), `orders`, and one
    /// that a namespaced install does not watch.
    async fn namespaces(&self) -> Result<()> {
        create_namespace(
            &self.admin,
            "payments",
            BTreeMap::from([("team".into(), "payments".into())]),
        )
        .await?;
        create_namespace(&self.admin, "orders", BTreeMap::new()).await?;
        create_namespace(&self.admin, UNWATCHED, BTreeMap::new()).await
    }

    /// In the unwatched namespace: the ServiceAccount is refused a Secret (403), and an
    /// account with a key is created for [`World::unwatched_key_is_ignored`].
    async fn unwatched_namespace_is_out_of_reach(&self, operator: &Client) -> Result<()> {
        self.credentials(UNWATCHED, "imburse-credentials", 1)
            .await?;
        self.create_account(UNWATCHED, "imburse", "imburse-credentials")
            .await?;
        let tenant = self.tenant(1);
        self.create_key(UNWATCHED, "api", "ImburseAccount", "imburse", &tenant)
            .await?;
        match Api::<Secret>::namespaced(operator.clone(), UNWATCHED)
            .get("imburse-credentials")
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            Err(e) => bail!("reading a Secret of {UNWATCHED} failed unexpectedly: {e}"),
            Ok(_) => bail!("the ServiceAccount read a Secret of {UNWATCHED}"),
        }
        match Api::<Secret>::all(operator.clone())
            .list_metadata(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            Err(e) => bail!("listing Secrets cluster-wide failed unexpectedly: {e}"),
            Ok(_) => bail!("the ServiceAccount listed Secrets cluster-wide"),
        }
    }

    /// After the watched keys went through their whole lifecycle, the unwatched account and
    /// key were never touched: no status, no finalizer, no key at the sandbox.
    async fn unwatched_key_is_ignored(&self) -> Result<()> {
        let key = Api::<TenantSecurityKey>::namespaced(self.admin.clone(), UNWATCHED)
            .get("api")
            .await?;
        ensure!(
            key.status.is_none() && key.finalizers().is_empty(),
            "the operator acted on {UNWATCHED}/api"
        );
        let account = Api::<ImburseAccount>::namespaced(self.admin.clone(), UNWATCHED)
            .get("imburse")
            .await?;
        ensure!(
            account.status.is_none(),
            "the operator acted on {UNWATCHED}/imburse"
        );
        ensure!(
            self.sandbox_keys(&self.tenant(1)).await?.is_empty(),
            "a key was created for {UNWATCHED}/api"
        );
        Ok(())
    }

    /// A ClusterImburseAccount (credentials in the release namespace, which the chart makes
    /// the operator's) for namespaces labelled `team=payments`, and an ImburseAccount of its
    /// own in namespace `orders`; one key with each, Ready, then deleted and revoked.
    async fn key_lifecycles(&self) -> Result<()> {
        self.credentials(RELEASE_NAMESPACE, "shared-credentials", 0)
            .await?;
        let cluster_account: ClusterImburseAccount = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1alpha1",
            "kind": "ClusterImburseAccount",
            "metadata": { "name": "shared" },
            "spec": {
                "baseUrl": self.sandbox.base_url(),
                "credentialsSecretRef": { "name": "shared-credentials" },
                "allowedNamespaces": { "selector": { "matchLabels": { "team": "payments" } } },
            },
        }))?;
        let cluster_accounts: Api<ClusterImburseAccount> = Api::all(self.admin.clone());
        cluster_accounts
            .create(&PostParams::default(), &cluster_account)
            .await?;

        self.credentials("orders", "imburse-credentials", 1).await?;
        self.create_account("orders", "imburse", "imburse-credentials")
            .await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(self.admin.clone(), "orders");

        wait_for(&cluster_accounts, "shared", |a| {
            verified(a.status.as_ref().map(|s| &s.conditions))
        })
        .await?;
        wait_for(&accounts, "imburse", |a| {
            verified(a.status.as_ref().map(|s| &s.conditions))
        })
        .await?;

        let keys = [
            (
                "payments",
                "ClusterImburseAccount",
                "shared",
                self.tenant(0),
            ),
            ("orders", "ImburseAccount", "imburse", self.tenant(1)),
        ];
        for (namespace, kind, account, tenant) in &keys {
            self.create_key(namespace, "api", kind, account, tenant)
                .await?;
        }
        for (namespace, _, _, tenant) in &keys {
            self.key_ready(namespace, tenant).await?;
        }
        for (namespace, _, _, tenant) in &keys {
            self.key_revoked(namespace, tenant).await?;
        }
        self.repeated_warning_is_a_series().await
    }

    async fn create_account(&self, namespace: &str, name: &str, secret: &str) -> Result<()> {
        let account: ImburseAccount = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1alpha1",
            "kind": "ImburseAccount",
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "baseUrl": self.sandbox.base_url(),
                "credentialsSecretRef": { "name": secret },
            },
        }))?;
        Api::<ImburseAccount>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &account)
            .await?;
        Ok(())
    }

    async fn create_key(
        &self,
        namespace: &str,
        name: &str,
        account_kind: &str,
        account: &str,
        tenant: &str,
    ) -> Result<()> {
        let key: TenantSecurityKey = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1alpha1",
            "kind": "TenantSecurityKey",
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "accountRef": { "kind": account_kind, "name": account },
                "tenantId": tenant,
                "roles": ["tenant-admin"],
            },
        }))?;
        Api::<TenantSecurityKey>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &key)
            .await?;
        Ok(())
    }

    /// A key whose account never becomes Ready fails transiently on every retry, and the
    /// repeated Warning is patched into one Event with a series.
    async fn repeated_warning_is_a_series(&self) -> Result<()> {
        self.create_account("orders", "unverified", "absent")
            .await?;
        let tenant = self.tenant(1);
        self.create_key("orders", "waiting", "ImburseAccount", "unverified", &tenant)
            .await?;
        let events: Api<Event> = Api::namespaced(self.admin.clone(), "orders");
        poll(
            || async {
                Ok(events.list(&ListParams::default()).await?.iter().any(|e| {
                    e.reason.as_deref() == Some("AccountNotReady")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("waiting")
                        && e.series.as_ref().is_some_and(|s| s.count >= 2)
                }))
            },
            "a repeated AccountNotReady Event about orders/waiting",
        )
        .await?;
        let keys: Api<TenantSecurityKey> = Api::namespaced(self.admin.clone(), "orders");
        keys.delete("waiting", &DeleteParams::default()).await?;
        poll(
            || async { Ok(keys.get_opt("waiting").await?.is_none()) },
            "orders/waiting to be deleted",
        )
        .await?;
        ensure!(
            self.sandbox_keys(&tenant).await?.is_empty(),
            "a key was created for an account that is not Ready"
        );
        Ok(())
    }

    /// Waits until the key `api` is Ready, its Secret holds the key pair the sandbox knows,
    /// and an Event reports it.
    async fn key_ready(&self, namespace: &str, tenant: &str) -> Result<()> {
        let keys: Api<TenantSecurityKey> = Api::namespaced(self.admin.clone(), namespace);
        let key = wait_for(&keys, "api", |k| {
            let status = k.status.as_ref();
            status.and_then(|s| s.observed_generation) == k.metadata.generation
                && ready(status.map(|s| &s.conditions)) == Some(("True", "KeyReady"))
        })
        .await
        .with_context(|| format!("key {namespace}/api"))?;
        let public_key = key
            .status
            .and_then(|s| s.public_key)
            .context("Ready without a public key")?;
        let secret = Api::<Secret>::namespaced(self.admin.clone(), namespace)
            .get("api")
            .await?;
        let stored = secret
            .data
            .as_ref()
            .and_then(|d| d.get("publicKey"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        ensure!(
            stored.as_deref() == Some(public_key.as_str()),
            "Secret {namespace}/api holds {stored:?}, the status says {public_key}"
        );
        ensure!(
            self.sandbox_keys(tenant).await? == [public_key],
            "the sandbox does not hold exactly the key of {namespace}/api"
        );
        let events: Api<Event> = Api::namespaced(self.admin.clone(), namespace);
        poll(
            || async {
                Ok(events
                    .list(&ListParams::default())
                    .await?
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("KeyCreated")))
            },
            &format!("a KeyCreated Event in {namespace}"),
        )
        .await
    }

    /// Deletes the key `api` and waits until it is gone, revoked and its Secret deleted.
    async fn key_revoked(&self, namespace: &str, tenant: &str) -> Result<()> {
        let keys: Api<TenantSecurityKey> = Api::namespaced(self.admin.clone(), namespace);
        keys.delete("api", &DeleteParams::default()).await?;
        poll(
            || async { Ok(keys.get_opt("api").await?.is_none()) },
            &format!("{namespace}/api to be deleted"),
        )
        .await?;
        ensure!(
            self.sandbox_keys(tenant).await?.is_empty(),
            "the key of {namespace}/api was not revoked"
        );
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), namespace);
        ensure!(
            secrets.get_opt("api").await?.is_none(),
            "Secret {namespace}/api was left behind"
        );
        Ok(())
    }

    async fn sandbox_keys(&self, tenant: &str) -> Result<Vec<String>> {
        support::tenant_keys(self.sandbox, tenant).await
    }
}
