//! The operator's side of a test environment: installing its CRDs and running its binary as a
//! local process against a control plane.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};

use crate::process::{Lifetime, Process};

/// Applies every CRD found in the `*.yaml` files of `dir` and waits until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("testenv").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    for name in names {
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
        let mut all: Vec<OsString> = vec!["run".into(), "--kubeconfig".into(), kubeconfig.into()];
        all.extend(args.iter().map(OsString::from));
        let mut process = Process::start(name, binary, all, dir, Lifetime::Owned)?;
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

impl Drop for Operator {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}
