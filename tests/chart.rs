//! The Helm chart on a real kube-apiserver: it installs, `helm upgrade` updates the CRDs (from the
//! previous chart layout too), and its RBAC is enough for the operator's whole job and no more.
//! The operator runs as a local process with the environment of the chart's Deployment and the
//! token of the chart's ServiceAccount, so every request it makes is authorized exactly as in a
//! cluster. `tests/chart_render.rs` checks what the chart renders.

mod support;

use std::{
    collections::BTreeMap,
    ffi::OsStr,
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
        core::v1::{Secret, ServiceAccount},
        events::v1::Event,
        rbac::v1::ClusterRoleBinding,
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
use serde_json::json;
use support::{
    WAIT,
    chart::{Helm, Mode, RELEASE, RELEASE_NAMESPACE, chart_dir, container_env, documents, kinds},
    create_namespace, poll, ready, wait_for,
};
use tenant_key_api::crd::{ClusterImburseAccount, ImburseAccount, TenantSecurityKey};
use testenv::{
    ControlPlane, Operator,
    cluster::{imburse_account, key_pair_secret},
};

/// A namespace that a namespaced install must leave alone.
const UNWATCHED: &str = "elsewhere";

fn main() -> std::process::ExitCode {
    support::chart::run(testenv::named_tests![
        helm_upgrade_updates_the_crds,
        operator_runs_under_the_chart_rbac,
        operator_runs_namespaced_under_the_chart_rbac,
    ])
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
        for crd in tenant_key_api::crd::all() {
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
    testenv::copy_dir(&chart_dir(), &chart)?;
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
    for mut crd in tenant_key_api::crd::all() {
        if crd.spec.names.kind == "TenantSecurityKey" {
            edit(&mut crd);
        }
        std::fs::write(
            crd_dir.join(tenant_key_api::crd::file_name(&crd)),
            tenant_key_api::crd::to_yaml(&crd)?,
        )?;
    }
    Ok(chart)
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
                // The pod's port 8080 may be taken on this machine.
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
                "--log-filter",
                "debug,hyper=info,hyper_util=info,tower=info,h2=info,rustls=info,reqwest=info",
            ],
        )?;

        let lifecycle = match world.key_lifecycles().await {
            Ok(()) if mode == Mode::Namespaced => match world.unwatched_key_is_ignored().await {
                Ok(()) => {
                    secure_metrics_reach_the_chart_reader(&control_plane, operator.log_path()).await
                }
                other => other,
            },
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
    for crd in tenant_key_api::crd::all() {
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

/// The operator under the chart's RBAC reviews a scraper's token, and the chart's
/// `metrics-reader` ClusterRole is what lets the scraper in.
async fn secure_metrics_reach_the_chart_reader(
    control_plane: &ControlPlane,
    log: &Path,
) -> Result<()> {
    let admin = control_plane.client().await?;
    let text = std::fs::read_to_string(log)?;
    let address = text
        .lines()
        .find(|l| l.contains("serving metrics") && l.contains("secure=true"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
        })
        .context("the operator did not log a secure metrics address")?
        .to_owned();
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": { "name": "prometheus", "namespace": RELEASE_NAMESPACE },
    }))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .create(&PostParams::default(), &account)
        .await?;
    let token = testenv::service_account_token(&admin, RELEASE_NAMESPACE, "prometheus").await?;
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()?;
    let url = format!("https://{address}/metrics");
    let status = client.get(&url).bearer_auth(&token).send().await?.status();
    ensure!(
        status == 403,
        "a ServiceAccount without the reader role got {status}"
    );
    let reader = format!("{RELEASE}-metrics-reader");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "prometheus-metrics" },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": reader,
        },
        "subjects": [{
            "kind": "ServiceAccount",
            "name": "prometheus",
            "namespace": RELEASE_NAMESPACE,
        }],
    }))?;
    Api::<ClusterRoleBinding>::all(admin)
        .create(&PostParams::default(), &binding)
        .await?;
    // Denials are remembered for a few seconds.
    poll(
        || async {
            let response = client.get(&url).bearer_auth(&token).send().await?;
            if response.status() != 200 {
                return Ok(false);
            }
            let text = response.text().await?;
            ensure!(
                text.contains("tenant_key_operator_build_info"),
                "metrics:\n{text}"
            );
            Ok(true)
        },
        "the chart's metrics reader to be let in",
    )
    .await
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

fn verified(conditions: Option<&Vec<tenant_key_api::crd::Condition>>) -> bool {
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
        let secret = key_pair_secret(name, &account.public_key, &account.private_key);
        Api::<Secret>::namespaced(self.admin.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
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
            "apiVersion": "imbursepayments.com/v1beta1",
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
        let account =
            imburse_account(namespace, name, &self.sandbox.base_url(), secret, json!({}))?;
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
            "apiVersion": "imbursepayments.com/v1beta1",
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
