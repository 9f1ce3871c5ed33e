//! `cargo xtask demo`: a control plane, the Imburse sandbox and the operator on this machine,
//! with the examples applied, running until Ctrl-C.

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use imburse_sandbox::{Config, Sandbox};
use kube::{Api, api::ListParams};
use tenant_key_api::crd::{READY, TenantSecurityKey};
use testenv::cluster::{Launch, free_port, start_cluster};

use crate::workspace::{self, step};

/// The examples in the order they are applied.
const EXAMPLES: [&str; 5] = [
    "account-secret.yaml",
    "imburse-account.yaml",
    "cluster-account.yaml",
    "tenant-security-key.yaml",
    "tenant-security-key-templated.yaml",
];
const OPERATOR_NAMESPACE: &str = "tenant-key-operator";
const DEMO_NAMESPACE: &str = "payments";

/// Runs the demo; with `exit_when_ready` it stops as soon as the keys are Ready instead of
/// waiting for Ctrl-C (used by the test suite to prove the demo works).
pub async fn run(exit_when_ready: bool) -> Result<()> {
    let root = workspace::root();
    step("building the operator");
    let operator_binary = workspace::build_operator("debug")?;

    step("starting etcd, kube-apiserver and kube-controller-manager");
    // The operator's namespace too: it holds its leader election Lease there.
    let (plane, client) = start_cluster(&[OPERATOR_NAMESPACE]).await?;
    let kubeconfig = plane.kubeconfig_path().to_path_buf();

    step("starting the Imburse sandbox with a generated account and tenant");
    let config = Config::generate(1, 1);
    let sandbox = Sandbox::start(config.clone()).await?;

    step("starting the operator");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let probes = format!("127.0.0.1:{}", free_port()?);
    let operator = Launch {
        namespace: OPERATOR_NAMESPACE,
        metrics: &listen,
        probes: &probes,
        ..Launch::default()
    }
    .start(&operator_binary, &plane, plane.data_dir())?;

    step("applying examples/");
    kubectl(&kubeconfig, &["create", "namespace", DEMO_NAMESPACE], None)?;
    kubectl(
        &kubeconfig,
        &[
            "label",
            "namespace",
            DEMO_NAMESPACE,
            "imburse.example.com/keys=allowed",
        ],
        None,
    )?;
    let values = placeholder_values(&config, &sandbox);
    for example in EXAMPLES {
        let text = std::fs::read_to_string(root.join("examples").join(example))?;
        kubectl(
            &kubeconfig,
            &["apply", "-f", "-"],
            Some(&substitute(&text, &values)),
        )?;
    }

    step("waiting until both TenantSecurityKeys are Ready");
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    wait_ready(&keys, operator.log_path()).await?;
    println!();
    kubectl(&kubeconfig, &["get", "tsk", "-n", DEMO_NAMESPACE], None)?;
    println!();
    for key in keys.list(&ListParams::default()).await? {
        let Some(secret) = key.status.as_ref().and_then(|s| s.secret_name.clone()) else {
            continue;
        };
        let entries =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), DEMO_NAMESPACE)
                .get(&secret)
                .await?
                .data
                .unwrap_or_default()
                .into_keys()
                .collect::<Vec<_>>()
                .join(", ");
        println!("Secret {DEMO_NAMESPACE}/{secret} holds: {entries}");
    }
    if exit_when_ready {
        return Ok(());
    }
    print_hints(&kubeconfig, &listen, &probes, operator.log_path());
    tokio::signal::ctrl_c().await?;
    step("stopping the operator, the sandbox and the control plane");
    drop(operator);
    drop(sandbox);
    drop(plane);
    Ok(())
}

fn print_hints(kubeconfig: &Path, listen: &str, probes: &str, log: &Path) {
    println!(
        "\nThe demo runs until Ctrl-C. In another terminal:\n\
         \n  export KUBECONFIG={kubeconfig}\
         \n  kubectl get tsk,imburseaccounts -A\
         \n  kubectl describe tsk checkout-api -n {ns}\
         \n  kubectl get events -n {ns}\
         \n  kubectl patch tsk checkout-api -n {ns} --type merge -p '{{\"spec\":{{\"roles\":[\"tenant-admin\",\"tenant-app-read\"]}}}}'   # replaces the key\
         \n  kubectl delete secret checkout-api -n {ns}   # the operator issues a new key\
         \n  kubectl delete tsk checkout-api -n {ns}      # revokes the key at Imburse\
         \n  curl -s http://{listen}/metrics | grep tenant_key_operator\
         \n  curl -s http://{probes}/livez http://{probes}/readyz\
         \n  tail -f {log}\n",
        kubeconfig = kubeconfig.display(),
        ns = DEMO_NAMESPACE,
        log = log.display(),
    );
}

/// Values for the `${...}` placeholders of the examples, from the sandbox's account.
fn placeholder_values(config: &Config, sandbox: &Sandbox) -> BTreeMap<&'static str, String> {
    let account = &config.accounts[0];
    BTreeMap::from([
        ("IMBURSE_BASE_URL", sandbox.base_url()),
        ("IMBURSE_ACCOUNT_PUBLIC_KEY", account.public_key.clone()),
        (
            "IMBURSE_ACCOUNT_PRIVATE_KEY",
            imburse::ExposeSecret::expose_secret(&account.private_key).to_owned(),
        ),
        ("IMBURSE_TENANT_ID", config.tenants[0].tenant_id.clone()),
    ])
}

fn substitute(text: &str, values: &BTreeMap<&'static str, String>) -> String {
    values.iter().fold(text.to_owned(), |text, (name, value)| {
        text.replace(&format!("${{{name}}}"), value)
    })
}

async fn wait_ready(keys: &Api<TenantSecurityKey>, log: &Path) -> Result<()> {
    for _ in 0..300 {
        let list = keys.list(&ListParams::default()).await?;
        let ready = list.items.iter().filter(|k| is_ready(k)).count();
        if list.items.len() == 2 && ready == 2 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the TenantSecurityKeys did not become Ready within a minute; see {}",
        log.display()
    )
}

fn is_ready(key: &TenantSecurityKey) -> bool {
    key.status
        .as_ref()
        .is_some_and(|s| tenant_key_api::crd::is_true(&s.conditions, READY))
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .context("running kubectl")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("kubectl {} failed ({status})", args.join(" "));
    }
    Ok(())
}
