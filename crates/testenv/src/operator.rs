//! The operator's side of a test environment: installing its CRDs and running its binary as a
//! local process against a control plane.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::coordination::v1::Lease,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};

use crate::process::{Lifetime, Process};

/// Applies every CRD found in the `*.yaml` files of `dir` and waits until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        crds.push(
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?,
        );
    }
    apply_crds(client, &crds).await
}

/// Applies the CRDs (creating or updating them) and waits until each is Established.
pub async fn apply_crds(client: &Client, crds: &[CustomResourceDefinition]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("testenv").force(),
            &Patch::Apply(crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
    }
    for crd in crds {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not Established within 30 s"))??;
    }
    Ok(())
}

/// The hosts the operator started here allows: its defaults (the documented Imburse hosts) and
/// loopback, where local sandboxes listen.
pub const LOCAL_IMBURSE_HOSTS: &str = "sandbox-api.imbursepayments.com,api-sandbox.imbursepayments.com,api.imbursepayments.com,127.0.0.1,localhost,::1";
/// The variable the operator reads its allowed Imburse hosts from.
const ALLOWED_HOSTS_VARIABLE: &str = "TKO_ALLOWED_IMBURSE_HOSTS";

/// The operator binary running as a local process; killed when dropped.
pub struct Operator {
    process: Process,
}

impl Operator {
    /// Starts `binary run --kubeconfig <kubeconfig> <args>` with its log in
    /// `<dir>/<name>.log`.
    pub fn start(
        name: &'static str,
        binary: &Path,
        kubeconfig: &Path,
        dir: &Path,
        args: &[&str],
    ) -> Result<Operator> {
        Self::start_with_env(name, binary, kubeconfig, dir, args, &[])
    }

    /// Like [`Operator::start`], with `env` added to its environment, e.g. a `POD_NAME` that
    /// tells it apart in the leader election Lease. The sandbox listens on loopback, which the
    /// operator does not allow by default: [`LOCAL_IMBURSE_HOSTS`] are allowed unless `env` or
    /// `args` name the hosts.
    pub fn start_with_env(
        name: &'static str,
        binary: &Path,
        kubeconfig: &Path,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Operator> {
        let mut all: Vec<OsString> = vec!["run".into(), "--kubeconfig".into(), kubeconfig.into()];
        all.extend(args.iter().map(OsString::from));
        let mut env: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        if !env.iter().any(|(k, _)| k == ALLOWED_HOSTS_VARIABLE) {
            env.push((ALLOWED_HOSTS_VARIABLE.into(), LOCAL_IMBURSE_HOSTS.into()));
        }
        let mut process = Process::start_with_env(name, binary, all, env, dir, Lifetime::Owned)?;
        std::thread::sleep(Duration::from_millis(200));
        if let Err(e) = process.check_running() {
            bail!("the operator did not start: {e}");
        }
        Ok(Operator { process })
    }

    /// Path of the operator's combined stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.process.log
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// How the operator ended, once it has exited by itself.
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.process.exit_status()
    }

    /// Kills the operator with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the operator gracefully (SIGTERM), waiting up to `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.process.stop(grace);
    }

    /// Starts the operator again with the same arguments (its log is appended to).
    pub fn restart(&mut self) -> Result<()> {
        self.process.restart()
    }
}

/// Operator processes contesting one leader election Lease, each started with a `POD_NAME` of
/// its own, so that the Lease's holder identity (`<POD_NAME>_<suffix>`) names the process.
/// A replica that exits by itself (a leader that could not renew in time steps down that way)
/// is started again, as Kubernetes restarts its container.
pub struct Replicas {
    /// Each replica's `POD_NAME` and process.
    replicas: Vec<(String, Operator)>,
    leases: Api<Lease>,
    lease: String,
    /// Replicas started again after exiting by themselves.
    pub revived: usize,
}

impl Replicas {
    /// `replicas` are `(POD_NAME, process)` pairs contesting the Lease `lease` of `leases`.
    pub fn new(replicas: Vec<(String, Operator)>, leases: Api<Lease>, lease: &str) -> Replicas {
        Replicas {
            replicas,
            leases,
            lease: lease.to_owned(),
            revived: 0,
        }
    }

    /// The Lease's holder identity.
    pub async fn holder(&self) -> Result<Option<String>> {
        Ok(self
            .leases
            .get_opt(&self.lease)
            .await?
            .and_then(|l| l.spec?.holder_identity))
    }

    /// Starts again every replica that has exited by itself.
    fn revive(&mut self) -> Result<()> {
        for (_, operator) in &mut self.replicas {
            if operator.exit_status()?.is_some() {
                operator.restart()?;
                self.revived += 1;
            }
        }
        Ok(())
    }

    /// The replica an identity belongs to.
    fn replica(&mut self, identity: &str) -> Option<&mut Operator> {
        let pod_name = identity.rsplit_once('_').map(|(pod_name, _)| pod_name)?;
        self.replicas
            .iter_mut()
            .find(|(name, _)| name == pod_name)
            .map(|(_, operator)| operator)
    }

    /// Waits up to `timeout` until one of the replicas holds the Lease under an identity other
    /// than `previous`, and returns that identity.
    pub async fn wait_leader(
        &mut self,
        previous: Option<&str>,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.revive()?;
            if let Some(holder) = self.holder().await?
                && Some(holder.as_str()) != previous
                && self.replica(&holder).is_some()
            {
                return Ok(holder);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no replica took the Lease {} within {timeout:?}",
                    self.lease
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the replica holding the Lease, as a crash would, starts it again (under a new
    /// identity) and waits until a replica takes the Lease over. Returns the time from the kill
    /// to the takeover; each wait is bounded by `timeout`.
    pub async fn kill_leader(&mut self, timeout: Duration) -> Result<Duration> {
        let leader = self.wait_leader(None, timeout).await?;
        let operator = self
            .replica(&leader)
            .context("the leader is none of the replicas")?;
        operator.kill();
        let killed = std::time::Instant::now();
        operator.restart()?;
        self.wait_leader(Some(&leader), timeout).await?;
        Ok(killed.elapsed())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}
