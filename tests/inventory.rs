//! The inventory on the real control plane and the sandbox: a key of each class at one tenant
//! (the resource's own, one leaked on purpose with this cluster's marker and no resource, one
//! made by hand, one marked by another cluster and one with a marker of the old form for a
//! resource this cluster does not have) shows up in its class in the metric, in the alert's
//! expression, in an Event for the leaked one and in `kubectl tsk audit`;
//! `--revoke-leaked` revokes the leaked key alone; and the verifier still lists the tenant
//! once per interval.

mod support;

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use imburse_sandbox::Config;
use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use kube::{Api, api::ListParams};
use serde_json::Value;
use support::{
    Env, TestFn,
    chart::{Helm, check_rules},
    poll,
};
use tenant_key_operator::controller::intent;

/// The verifier's interval: short, so that rounds are counted within seconds.
const INTERVAL: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let start = || {
        Env::start_with(
            Config::generate(1, 2),
            imburse_sandbox::Options::default(),
            &["--verify-interval", "2s", "--log-format", "json"],
        )
    };
    let tests: Vec<(&str, TestFn)> =
        testenv::named_tests![every_key_is_classified_and_only_the_leaked_one_is_revoked];
    support::run_suite(start, tests)
}

const NAMESPACE: &str = "inventory";

/// Public keys of the keys made at the tenant, by what they are.
struct Keys {
    managed: String,
    leaked: String,
    by_hand: String,
    other_cluster: String,
    old_marker: String,
    /// Private keys of the keys made by hand, which nothing the operator writes may show.
    private: Vec<String>,
}

fn every_key_is_classified_and_only_the_leaked_one_is_revoked(env: &Env) -> Result<()> {
    let tenant = env.tenant(0, 0);
    let keys = env.block_on(make_keys(env, &tenant))?;

    // The metric, as the verifier counts what it lists anyway.
    let expected = [
        ("managed", 1),
        ("leaked", 1),
        ("foreign", 2),
        ("unmanaged", 1),
    ];
    let counted = |samples: &BTreeMap<String, f64>| {
        expected
            .iter()
            .all(|(class, n)| samples.get(*class) == Some(&f64::from(*n)))
    };
    let mut samples = BTreeMap::new();
    for _ in 0..60 {
        samples = env.block_on(scrape_inventory(env, &tenant))?;
        if counted(&samples) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure!(
        counted(&samples),
        "the inventory metric counted {samples:?}"
    );

    // The alert selects the leaked series, which is above its threshold.
    let rule = leaked_alert()?;
    let expr = rule["expr"].as_str().context("expr")?;
    ensure!(
        expr == r#"tenant_key_operator_imburse_keys{class="leaked"} > 0"#,
        "the alert's expression changed: {expr}"
    );
    ensure!(samples["leaked"] > 0.0, "the alert would not fire");

    // The account's Event names the leaked key's public key.
    env.block_on(poll(
        || async {
            Ok(account_events(env)
                .await?
                .iter()
                .any(|(reason, note)| reason == "LeakedKeyFound" && note.contains(&keys.leaked)))
        },
        "a LeakedKeyFound Event naming the leaked key",
    ))?;
    let events = env.block_on(account_events(env))?;
    ensure!(
        events
            .iter()
            .filter(|(reason, _)| reason == "LeakedKeyFound")
            .all(|(_, note)| note.contains(&keys.leaked)),
        "an Event calls another key leaked: {events:?}"
    );

    // The listing cost: one call per tenant per round, the inventory adds none. Rounds come
    // every 0.9 to 1 interval.
    env.block_on(env.sandbox.admin().reset_stats())?;
    let window = INTERVAL * 6;
    std::thread::sleep(window);
    let listed = env
        .block_on(env.sandbox.admin().stats())?
        .total(imburse::Operation::ListKeys);
    let most = (window.as_secs_f64() / (INTERVAL.as_secs_f64() * 0.9)).ceil() as u64 + 1;
    let least = (window.as_secs_f64() / INTERVAL.as_secs_f64()).floor() as u64 - 1;
    ensure!(
        (least..=most).contains(&listed),
        "{listed} listings in {window:?}, expected one per round ({least} to {most})"
    );

    // `kubectl tsk audit` classifies the same way, and names the owner of the managed key.
    let audit = plugin(env, &["audit", "-n", NAMESPACE, "-o", "json"])?;
    let audited = classes(&audit)?;
    let owner = |public_key: &str| {
        audit[0]["audit"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["publicKey"] == public_key)
            .and_then(|k| k["owner"].as_str().map(str::to_owned))
    };
    ensure!(
        audited
            == BTreeMap::from([
                (keys.managed.clone(), "managed".to_owned()),
                (keys.leaked.clone(), "leaked".to_owned()),
                (keys.by_hand.clone(), "unmanaged".to_owned()),
                (keys.other_cluster.clone(), "foreign".to_owned()),
                (keys.old_marker.clone(), "foreign".to_owned()),
            ]),
        "audit: {audit}"
    );
    ensure!(
        owner(&keys.managed).as_deref() == Some(&format!("TenantSecurityKey {NAMESPACE}/pay")),
        "audit: {audit}"
    );
    let table = plugin_text(env, &["audit", "-n", NAMESPACE])?;
    ensure!(
        table.contains("troubleshooting.md#leakedkeyfound"),
        "the table does not say what to do about the leaked key:\n{table}"
    );

    // Revoking refuses without a confirmation, and then revokes the leaked key only.
    let refused = plugin_command(env, &["audit", "-n", NAMESPACE, "--revoke-leaked"])?
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(!refused.status.success(), "revoked without a confirmation");
    let revoked = plugin(
        env,
        &[
            "audit",
            "-n",
            NAMESPACE,
            "--revoke-leaked",
            "--yes",
            "-o",
            "json",
        ],
    )?;
    ensure!(
        revoked[0]["audit"]["revoked"] == serde_json::json!([keys.leaked]),
        "revoked: {revoked}"
    );
    let mut left = env.block_on(env.sandbox_keys(&tenant))?;
    left.sort();
    let mut kept = vec![
        keys.managed.clone(),
        keys.by_hand.clone(),
        keys.other_cluster.clone(),
        keys.old_marker.clone(),
    ];
    kept.sort();
    ensure!(left == kept, "the tenant holds {left:?}, expected {kept:?}");

    // A revocation of anything else is refused by the operator, whatever the request names.
    let forged = env.block_on(forge_revocation(
        env,
        &[&keys.by_hand, &keys.other_cluster, &keys.managed],
    ))?;
    ensure!(forged.len() == 3, "refusals: {forged:?}");
    let mut after = env.block_on(env.sandbox_keys(&tenant))?;
    after.sort();
    ensure!(after == kept, "a forged request revoked a key: {after:?}");
    // No private key in what the operator wrote or the plugin printed.
    let account: Value = serde_json::to_value(
        env.block_on(
            Api::<tenant_key_api::crd::ImburseAccount>::namespaced(env.client.clone(), NAMESPACE)
                .get("imburse"),
        )?,
    )?;
    let written = format!(
        "{audit}{revoked}{table}{account}{:?}{}",
        env.block_on(account_events(env))?,
        env.operator_log()?
    );
    ensure!(
        keys.private.iter().all(|k| !written.contains(k.as_str())),
        "a private key shows in the audit, the account, its Events or the log"
    );
    Ok(())
}

/// Makes the managed key through a resource, and the others by hand with account 0.
async fn make_keys(env: &Env, tenant: &str) -> Result<Keys> {
    env.namespace_with_account(NAMESPACE, 0).await?;
    env.create_key(NAMESPACE, "pay", tenant, serde_json::json!({}))
        .await?;
    let managed = support::expect_single_key(env, NAMESPACE, "pay", tenant).await?;
    let kube_system = Api::<Namespace>::all(env.client.clone())
        .get("kube-system")
        .await?;
    let here = intent::cluster_id(kube_system.metadata.uid.as_deref().unwrap_or_default());
    let gone = "9b2f0a4e-5c1d-4e7f-8a6b-3c2d1e0f9a8b";
    let attempt = "0123456789abcdef";
    let names = [
        intent::key_name("inventory/gone", gone, attempt, &here),
        "Admin Key".into(),
        intent::key_name("inventory/pay", gone, attempt, "ffffffffffff"),
        format!("inventory/old #tko:{gone}:{attempt}"),
    ];
    let mut made = Vec::new();
    for name in names {
        made.push(env.key_by_hand(tenant, &name).await?);
    }
    let public = |i: usize| made[i].public_key.clone();
    Ok(Keys {
        managed,
        leaked: public(0),
        by_hand: public(1),
        other_cluster: public(2),
        old_marker: public(3),
        private: made
            .iter()
            .map(|k| secrecy::ExposeSecret::expose_secret(&k.private_key).to_owned())
            .collect(),
    })
}

/// The operator's `tenant_key_operator_imburse_keys` samples of `tenant`, by class.
async fn scrape_inventory(env: &Env, tenant: &str) -> Result<BTreeMap<String, f64>> {
    let address = env.metrics_address().await?;
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await?
        .text()
        .await?;
    let tenant_label = format!("tenant=\"{tenant}\"");
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("tenant_key_operator_imburse_keys{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !labels.contains(&tenant_label)
            || !labels.contains(&format!("namespace=\"{NAMESPACE}\""))
        {
            continue;
        }
        let class = labels
            .split("class=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("a sample without class")?;
        samples.insert(class.to_owned(), value.parse()?);
    }
    Ok(samples)
}

/// The chart's ImburseKeyLeaked rule, once Prometheus' rule parser accepts it and finds that
/// it selects only the inventory metric.
fn leaked_alert() -> Result<Value> {
    let rendered = Helm::new()?.template(&["prometheusRule.enabled=true"])?;
    let leaked = rendered
        .iter()
        .filter(|doc| doc["kind"] == "PrometheusRule")
        .flat_map(|rule| rule["spec"]["groups"].as_array().into_iter().flatten())
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .find(|r| r["alert"] == "ImburseKeyLeaked")
        .cloned()
        .context("no ImburseKeyLeaked alert")?;
    let checked =
        check_rules(&serde_json::json!({"groups": [{"name": "leaked", "rules": [leaked]}]}))?;
    ensure!(
        checked.metrics == ["tenant_key_operator_imburse_keys"],
        "the alert selects {:?}",
        checked.metrics
    );
    Ok(leaked)
}

/// (reason, note) of the Events about the namespace's account.
async fn account_events(env: &Env) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    Ok(events
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ImburseAccount"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// Writes a revocation request by hand, as anyone who may annotate the account could, naming
/// keys that are not leaked; returns the refusals of the answer.
async fn forge_revocation(env: &Env, public_keys: &[&str]) -> Result<Vec<String>> {
    use tenant_key_api::crd::{
        AUDIT_REQUESTED_AT_ANNOTATION, ImburseAccount, REVOKE_LEAKED_ANNOTATION,
    };
    let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), NAMESPACE);
    let request = "forged";
    let patch = serde_json::json!({"metadata": {"annotations": {
        AUDIT_REQUESTED_AT_ANNOTATION: request,
        REVOKE_LEAKED_ANNOTATION: public_keys.join(","),
    }}});
    accounts
        .patch(
            "imburse",
            &Default::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    let answered = support::wait_for(&accounts, "imburse", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.audit.as_ref())
            .is_some_and(|audit| audit.request == request)
    })
    .await?;
    let audit = answered.status.and_then(|s| s.audit).context("audit")?;
    ensure!(audit.revoked.is_empty(), "revoked {:?}", audit.revoked);
    Ok(audit.refused)
}

/// The public keys of an audit's answer, with their class.
fn classes(audit: &Value) -> Result<BTreeMap<String, String>> {
    let keys = audit[0]["audit"]["keys"].as_array().context("no keys")?;
    Ok(keys
        .iter()
        .filter_map(|k| {
            Some((
                k["publicKey"].as_str()?.to_owned(),
                k["class"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// The plugin binary, built once in this workspace's target directory.
fn plugin_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "kubectl-tsk"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    ensure!(status.success(), "building kubectl-tsk failed");
    // The test binary lives in <target>/<profile>/deps.
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("no target directory")?;
    Ok(profile.join("kubectl-tsk"))
}

fn plugin_command(env: &Env, args: &[&str]) -> Result<Command> {
    let kubeconfig = env
        .control_plane
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .kubeconfig_path()
        .to_owned();
    let mut command = Command::new(plugin_binary()?);
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    Ok(command)
}

fn plugin_text(env: &Env, args: &[&str]) -> Result<String> {
    let output = plugin_command(env, args)?.output()?;
    if !output.status.success() {
        bail!(
            "kubectl tsk {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn plugin(env: &Env, args: &[&str]) -> Result<Value> {
    Ok(serde_json::from_str(&plugin_text(env, args)?)?)
}
