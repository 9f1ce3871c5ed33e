//! The Helm chart as rendered, without a cluster: it lints, the schema refuses wrong values, its
//! CRDs are the generated ones, the HA, network, RBAC and monitoring options render as
//! documented (the rendered flags are ones the operator binary accepts), and the alerts and the
//! dashboard's queries load in Prometheus' own rule parser. `tests/chart.rs` installs it.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use kube::ResourceExt;
use serde_json::json;
use support::chart::{
    Helm, Mode, RELEASE, RELEASE_NAMESPACE, WATCHED, chart_dir, check_rules, container_env,
    default_kinds, documents, kinds, repository,
};
use tenant_key_api::crd::{ClusterImburseAccount, ImburseAccount, TenantSecurityKey};

fn main() -> std::process::ExitCode {
    support::chart::run(testenv::named_tests![
        chart_lints,
        chart_crds_are_the_generated_ones,
        values_are_checked_by_the_schema,
        artifact_hub_annotations_describe_the_crds,
        flux_example_installs_this_chart,
        gitops_examples_pin_this_version,
        service_monitor_is_optional,
        pod_monitor_scrapes_the_metrics_port,
        probes_and_metrics_have_ports_of_their_own,
        escape_hatches_reach_the_pod,
        replicas_get_a_disruption_budget_and_rolling_updates,
        leader_election_flags_and_lease_rbac,
        network_policy_allows_dns_api_server_imburse_and_scrapes,
        aggregated_roles_extend_view_and_edit,
        alerts_parse_with_the_prometheus_rule_parser,
        dashboard_is_valid,
        namespaced_mode_grants_roles_only,
    ])
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
    let generated = tenant_key_api::crd::all();
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

/// Chart.yaml's Artifact Hub annotations name exactly the generated CRDs and the image of the
/// chart's appVersion, list its changes, and every example reads as the typed resource the
/// operator would see.
fn artifact_hub_annotations_describe_the_crds() -> Result<()> {
    let chart: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    let annotations = &chart["annotations"];
    ensure!(annotations["artifacthub.io/operator"] == "true");
    ensure!(annotations["artifacthub.io/license"] == "Apache-2.0");
    let images: Vec<serde_json::Value> = serde_yaml::from_str(
        annotations["artifacthub.io/images"]
            .as_str()
            .context("no artifacthub.io/images")?,
    )?;
    let values: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml"))?)?;
    let image = format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap_or_default(),
        chart["appVersion"].as_str().unwrap_or_default()
    );
    ensure!(
        images.iter().map(|i| &i["image"]).eq([&json!(image)]),
        "artifacthub.io/images lists {images:?}, not {image}"
    );
    let changes: Vec<serde_json::Value> = serde_yaml::from_str(
        annotations["artifacthub.io/changes"]
            .as_str()
            .context("no artifacthub.io/changes")?,
    )?;
    ensure!(
        !changes.is_empty()
            && changes
                .iter()
                .all(|c| c["kind"].is_string() && c["description"].is_string()),
        "artifacthub.io/changes: {changes:?}"
    );
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
    let generated: BTreeSet<(String, String, String)> = tenant_key_api::crd::all()
        .iter()
        .map(|c| {
            (
                c.name_any(),
                c.spec.names.kind.clone(),
                tenant_key_api::crd::VERSION.to_owned(),
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
    let rendered = render_with_values(&release["spec"]["values"])?;
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

/// The GitOps examples install the release of this version (Flux: the Git tag of the chart;
/// Argo CD: the chart's version at the OCI registry), with values this chart accepts, so that
/// they cannot lag behind a release again.
fn gitops_examples_pin_this_version() -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let chart: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    ensure!(
        chart["version"] == version && chart["appVersion"] == version,
        "Chart.yaml's version {} and appVersion {} are not the workspace's {version}",
        chart["version"],
        chart["appVersion"]
    );

    let flux = documents(&std::fs::read_to_string(
        repository().join("examples/flux/operator.yaml"),
    )?)?;
    let tag = &find(&flux, "GitRepository")?["spec"]["ref"]["tag"];
    ensure!(
        *tag == format!("v{version}"),
        "examples/flux/operator.yaml pins {tag}, not v{version}"
    );

    let argocd = documents(&std::fs::read_to_string(
        repository().join("examples/argocd/application.yaml"),
    )?)?;
    let source = &find(&argocd, "Application")?["spec"]["source"];
    ensure!(
        source["targetRevision"] == version,
        "examples/argocd/application.yaml pins {}, not {version}",
        source["targetRevision"]
    );
    ensure!(
        source["chart"] == chart["name"],
        "the Application installs the chart {}",
        source["chart"]
    );
    let values = &source["helm"]["valuesObject"];
    ensure!(values.is_object(), "the Application passes no valuesObject");
    let rendered = render_with_values(values)?;
    ensure!(kinds(&rendered).contains("ServiceMonitor"));
    Ok(())
}

/// The chart rendered with `values` as a values file: the schema checks them as an install
/// would.
fn render_with_values(values: &serde_json::Value) -> Result<Vec<serde_json::Value>> {
    let file = tempfile::Builder::new()
        .prefix("tko-values-")
        .suffix(".yaml")
        .tempfile()?;
    std::fs::write(file.path(), serde_yaml::to_string(values)?)?;
    let helm = Helm::new()?;
    documents(&helm.run(&[
        OsStr::new("template"),
        OsStr::new(RELEASE),
        chart_dir().as_os_str(),
        OsStr::new("--values"),
        file.path().as_os_str(),
    ])?)
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
                    "namespaces",
                    // Secure metrics review their callers.
                    "subjectaccessreviews",
                    "tokenreviews",
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
    ensure!(monitor["spec"]["endpoints"][0]["scheme"].is_null());

    // Secure metrics: scraped over HTTPS with the scraper's token, from a certificate the
    // operator reads where the chart mounts its Secret.
    let secure = helm.template(&[
        "serviceMonitor.enabled=true",
        "metrics.secure=true",
        "metrics.certSecret=tko-metrics",
    ])?;
    let endpoint = &find(&secure, "ServiceMonitor")?["spec"]["endpoints"][0];
    ensure!(endpoint["scheme"] == "https", "endpoint {endpoint}");
    ensure!(endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token");
    ensure!(endpoint["tlsConfig"]["insecureSkipVerify"] == true);
    let pod = &find(&secure, "Deployment")?["spec"]["template"]["spec"];
    ensure!(pod["volumes"][0]["secret"]["secretName"] == "tko-metrics");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .context("no certificate mount")?;
    let env = container_env(&serde_json::from_value(container.clone())?)?;
    for (name, value) in [
        ("TKO_METRICS_SECURE", "true"),
        ("TKO_METRICS_CERT_DIR", mount),
    ] {
        ensure!(
            env.iter().any(|(n, v)| n == name && v == value),
            "{name}={value} missing from {env:?}"
        );
    }
    ensure!(
        secure.iter().any(
            |d| d["kind"] == "ClusterRole" && d["rules"][0]["nonResourceURLs"][0] == "/metrics"
        ),
        "no metrics reader ClusterRole"
    );
    match helm.template(&["metrics.secure=true", "podMonitor.enabled=true"]) {
        Ok(_) => bail!("a PodMonitor without a token was rendered for secure metrics"),
        Err(e) => ensure!(format!("{e:#}").contains("use serviceMonitor"), "{e:#}"),
    }
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
