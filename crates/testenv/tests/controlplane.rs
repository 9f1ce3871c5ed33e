//! Starts one real control plane and checks everything the project's tests rely on, in one test
//! so the cost of starting it is paid once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use testenv::ControlPlane;

const GARBAGE_COLLECTION_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn control_plane_serves_clients_and_collects_garbage() -> Result<()> {
    let mut plane = ControlPlane::start().await?;
    let client = plane.client().await?;

    let names = namespace_names(&client).await?;
    ensure!(
        names.iter().any(|n| n == "default") && names.iter().any(|n| n == "kube-system"),
        "unexpected namespaces {names:?}"
    );

    let readyz = run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(["get", "--raw", "/readyz"]))?;
    ensure!(
        readyz.trim() == "ok",
        "kubectl get --raw /readyz printed {readyz:?}"
    );

    run(Command::new(&plane.binaries().helm)
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(["list", "--all-namespaces"]))?;

    dependent_is_garbage_collected(&client).await?;
    identities_are_subject_to_rbac(&plane).await?;

    plane.restart_apiserver().await?;
    namespace_names(&client)
        .await
        .context("the admin client after restarting kube-apiserver")?;

    let pids = plane.pids();
    let dir = plane.data_dir().to_path_buf();
    ensure!(pids.len() == 3, "expected three processes, got {pids:?}");
    drop(plane);
    for (name, pid) in pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still exists after the control plane was dropped"
        );
    }
    ensure!(!dir.exists(), "{} was not removed", dir.display());
    Ok(())
}

async fn namespace_names(client: &Client) -> Result<Vec<String>> {
    let list = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect())
}

/// kube-controller-manager's garbage collector deletes an object whose owner is gone.
async fn dependent_is_garbage_collected(client: &Client) -> Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.context("owner has no uid")?,
        ..Default::default()
    };
    config_maps
        .create(
            &PostParams::default(),
            &config_map("dependent", Some(owner_ref)),
        )
        .await?;
    config_maps
        .delete("owner", &DeleteParams::background())
        .await?;

    let started = Instant::now();
    while config_maps.get_opt("dependent").await?.is_some() {
        if started.elapsed() > GARBAGE_COLLECTION_TIMEOUT {
            bail!(
                "the dependent ConfigMap still exists {GARBAGE_COLLECTION_TIMEOUT:?} after its owner was deleted"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Impersonated users and ServiceAccount tokens authenticate, and RBAC then denies what they
/// were not granted.
async fn identities_are_subject_to_rbac(plane: &ControlPlane) -> Result<()> {
    let impersonated = plane.client_as("jane", &["developers"]).await?;
    expect_forbidden(namespace_names(&impersonated).await, "User \"jane\"")?;

    let accounts: Api<ServiceAccount> = Api::namespaced(plane.client().await?, "default");
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("probe".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &account).await?;
    let service_account = plane.service_account_client("default", "probe").await?;
    expect_forbidden(
        namespace_names(&service_account).await,
        "system:serviceaccount:default:probe",
    )?;

    let kubeconfig = plane.service_account_kubeconfig("default", "probe").await?;
    let whoami = run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]))?;
    ensure!(
        whoami == "system:serviceaccount:default:probe",
        "kubectl auth whoami printed {whoami:?}"
    );
    Ok(())
}

fn expect_forbidden<T: std::fmt::Debug>(result: Result<T>, user: &str) -> Result<()> {
    match result {
        Err(err) => {
            let message = format!("{err:#}");
            ensure!(
                message.contains("forbidden") && message.contains(user),
                "expected {user} to be forbidden, got {message}"
            );
            Ok(())
        }
        Ok(value) => bail!("expected {user} to be forbidden, got {value:?}"),
    }
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("key".into(), "value".into())])),
        ..Default::default()
    }
}

/// Runs a command, returning its stdout, or an error with its stderr.
fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Stops a detached control plane even when the test fails half-way.
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = testenv::detached::stop(self.0);
    }
}

#[tokio::test]
async fn detached_control_plane_outlives_its_handle_until_stopped() -> Result<()> {
    let state = tempfile::tempdir()?;
    let dir = state.path().join("run");
    let _guard = StopOnDrop(&dir);

    let plane = ControlPlane::start_detached(&dir).await?;
    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let pids = plane.pids();
    drop(plane);

    let status = testenv::detached::status(&dir);
    ensure!(
        status.iter().all(|c| c.running),
        "not all running after the handle was dropped: {status:?}"
    );
    let client = testenv::client_from_kubeconfig(&kubeconfig).await?;
    namespace_names(&client).await?;
    ensure!(
        ControlPlane::start_detached(&dir).await.is_err(),
        "a second control plane started in the same folder"
    );

    let mut stopped = testenv::detached::stop(&dir)?;
    stopped.sort();
    let mut expected = pids.clone();
    expected.sort();
    ensure!(stopped == expected, "stopped {stopped:?}, started {pids:?}");
    for (name, pid) in pids {
        // This test process started them, so they stay zombies until it exits.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        ensure!(
            state.is_empty() || state.contains(") Z "),
            "{name} (pid {pid}) still runs: {state}"
        );
    }
    ensure!(!dir.exists(), "{} was not removed", dir.display());
    ensure!(
        testenv::detached::stop(&dir)?.is_empty(),
        "stopping twice stopped something"
    );
    Ok(())
}
