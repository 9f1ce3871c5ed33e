//! The Argo CD resource customizations in `argocd/`, run with gopher-lua as Argo CD runs them:
//! their own test cases (Argo CD's `health_test.yaml` and `action_test.yaml`), and the health of
//! every status the operator can write.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use tenant_key_operator::controller::{
    error::{Error, Reason},
    status::{Outcome, set_outcome},
};
use testenv::versions::Component;

const KINDS: [&str; 3] = [
    "TenantSecurityKey",
    "ImburseAccount",
    "ClusterImburseAccount",
];

fn customizations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("argocd/resource_customizations")
}

#[derive(serde::Deserialize)]
struct CaseResult {
    kind: String,
    case: String,
    passed: bool,
    #[serde(default)]
    detail: String,
}

/// Runs the runner over a `resource_customizations` folder and returns every case's result.
fn run(folder: &Path) -> Result<Vec<CaseResult>> {
    testenv::build::ensure(Component::ArgoCdLua, &mut std::io::stderr())?;
    let output = Command::new(Component::ArgoCdLua.binary_path("argocd-lua"))
        .arg(folder)
        .output()
        .context("running argocd-lua")?;
    let results = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<CaseResult>, _>>()?;
    ensure!(
        !results.is_empty(),
        "argocd-lua ran no case ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(results)
}

fn failures(results: &[CaseResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} {}: {}", r.kind, r.case, r.detail))
        .collect()
}

#[test]
fn customizations_pass_their_test_cases() -> Result<()> {
    let results = run(&customizations())?;
    let failed = failures(&results);
    ensure!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
    let mut cases: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &results {
        cases.entry(r.kind.as_str()).or_default().push(&r.case);
    }
    for kind in KINDS {
        let kind_cases = cases
            .get(format!("imbursepayments.com/{kind}").as_str())
            .with_context(|| format!("no case for {kind}"))?;
        ensure!(
            kind_cases
                .iter()
                .filter(|c| c.starts_with("health "))
                .count()
                >= 5,
            "{kind} has too few health cases: {kind_cases:?}"
        );
    }
    let key_cases = &cases["imbursepayments.com/TenantSecurityKey"];
    ensure!(
        key_cases.iter().any(|c| c.starts_with("discovery "))
            && key_cases.iter().any(|c| c.starts_with("action rotate ")),
        "the rotate action is not tested: {key_cases:?}"
    );
    Ok(())
}

/// For every reason the operator reports, the conditions it writes (through the operator's own
/// `set_outcome`) read as Degraded when the failure is permanent and Progressing when it is
/// retried; so does a bare `Ready=False` with that reason. Written as Argo CD test cases into a
/// temporary copy of the layout.
#[test]
fn every_failure_reason_maps_to_its_health() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("tko-argocd-").tempdir()?;
    let kind_dir = dir.path().join("imbursepayments.com/TenantSecurityKey");
    std::fs::create_dir_all(kind_dir.join("testdata"))?;
    std::fs::copy(
        customizations().join("imbursepayments.com/TenantSecurityKey/health.lua"),
        kind_dir.join("health.lua"),
    )?;
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_767_323_045)?);
    let mut tests = Vec::new();
    for reason in Reason::ALL {
        let error = Error::Refused {
            reason,
            message: format!("failed with {}", reason.as_str()),
        };
        let mut written = Vec::new();
        set_outcome(&mut written, &Outcome::Failed(&error), Some(1), &now);
        let bare: Vec<_> = written
            .iter()
            .filter(|c| c.type_ == "Ready")
            .cloned()
            .collect();
        let health = if reason.is_permanent() {
            "Degraded"
        } else {
            "Progressing"
        };
        for (variant, conditions) in [("written", written), ("ready-only", bare)] {
            let path = format!("testdata/{}-{variant}.yaml", reason.as_str());
            let key = json!({
                "apiVersion": "imbursepayments.com/v1beta1",
                "kind": "TenantSecurityKey",
                "metadata": { "name": "api", "namespace": "payments", "generation": 1 },
                "status": { "observedGeneration": 1, "conditions": conditions },
            });
            std::fs::write(kind_dir.join(&path), serde_json::to_string(&key)?)?;
            tests.push(json!({
                "healthStatus": { "status": health, "message": error.to_string() },
                "inputPath": path,
            }));
        }
    }
    let mut ready = Vec::new();
    set_outcome(
        &mut ready,
        &Outcome::Ready {
            reason: "KeyReady",
            message: "key is in Secret api",
        },
        Some(1),
        &now,
    );
    std::fs::write(
        kind_dir.join("testdata/ready.yaml"),
        serde_json::to_string(&json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": { "name": "api", "namespace": "payments", "generation": 1 },
            "status": { "observedGeneration": 1, "conditions": ready },
        }))?,
    )?;
    tests.push(json!({
        "healthStatus": { "status": "Healthy", "message": "key is in Secret api" },
        "inputPath": "testdata/ready.yaml",
    }));
    std::fs::write(
        kind_dir.join("health_test.yaml"),
        serde_json::to_string(&json!({ "tests": tests }))?,
    )?;

    let results = run(dir.path())?;
    ensure!(
        results.len() == tests.len(),
        "{} results for {} cases",
        results.len(),
        tests.len()
    );
    let failed = failures(&results);
    ensure!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
    Ok(())
}

/// `argocd/argocd-cm.yaml` (generated from the scripts) is a ConfigMap named argocd-cm whose
/// action entry is itself YAML in argocd-cm's format, and the kustomize Component merges it into
/// an Argo CD installation's argocd-cm.
#[test]
fn argocd_cm_entries_install_with_kustomize() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cm: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(
        root.join("argocd/argocd-cm.yaml"),
    )?)?;
    ensure!(cm["kind"] == "ConfigMap" && cm["metadata"]["name"] == "argocd-cm");
    for kind in KINDS {
        let key = format!("resource.customizations.health.imbursepayments.com_{kind}");
        ensure!(cm["data"][&key].is_string(), "argocd-cm has no {key}");
    }
    let actions: serde_json::Value = serde_yaml::from_str(
        cm["data"]["resource.customizations.actions.imbursepayments.com_TenantSecurityKey"]
            .as_str()
            .context("argocd-cm has no actions for TenantSecurityKey")?,
    )?;
    ensure!(actions["discovery.lua"].is_string());
    ensure!(actions["definitions"][0]["name"] == "rotate");
    ensure!(actions["definitions"][0]["action.lua"].is_string());

    // An Argo CD installation stands in as a bare argocd-cm with a setting of its own.
    let dir = tempfile::Builder::new()
        .prefix("tko-kustomize-")
        .tempdir()?;
    std::fs::write(
        dir.path().join("argocd-cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\ndata:\n  url: https://argocd.example\n",
    )?;
    let component = relative_path(&root.join("argocd"), dir.path());
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!("resources:\n  - argocd-cm.yaml\ncomponents:\n  - {component}\n"),
    )?;
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        output.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let merged: serde_json::Value = serde_yaml::from_slice(&output.stdout)?;
    ensure!(
        merged["metadata"]["namespace"] == "argocd"
            && merged["data"]["url"] == "https://argocd.example",
        "the installation's argocd-cm was not kept: {merged}"
    );
    ensure!(
        merged["data"] == {
            let mut data = cm["data"].clone();
            data["url"] = "https://argocd.example".into();
            data
        },
        "the merged argocd-cm differs from argocd/argocd-cm.yaml"
    );
    Ok(())
}

/// `target` relative to `base`, both absolute: kustomize takes components by relative path.
fn relative_path(target: &Path, base: &Path) -> String {
    let ups = base.components().count() - 1;
    format!(
        "{}{}",
        "../".repeat(ups),
        target.strip_prefix("/").unwrap_or(target).display()
    )
}
