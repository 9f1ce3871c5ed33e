//! An isolated Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on free
//! loopback ports, with its state, certificates and logs in one folder.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::build::{self, Binaries};
use crate::pki::{ADMIN_USER, Pki};
use crate::process::{Lifetime, Process, STOP_GRACE};

const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
const CONTROLLER_MANAGER_READY_TIMEOUT: Duration = Duration::from_secs(120);
const TEMP_DIR_PREFIX: &str = "tko-controlplane-";
/// Holds the pid of the process that owns a temporary control plane folder.
const OWNER_FILE: &str = "owner.pid";
/// How the Go components and etcd report a port that is already bound.
const PORT_CLASH: &str = "address already in use";
const POLL: Duration = Duration::from_millis(250);
/// Lifetime of the tokens that [`ControlPlane::service_account_kubeconfig`] requests.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 24 * 60 * 60;

/// A running control plane.
///
/// Started with [`ControlPlane::start`], it lives in a temporary folder and its processes die
/// with the test process (even when that is killed); dropping it stops them and removes the
/// folder. Started with [`ControlPlane::start_detached`], it lives in a given folder, keeps
/// running after this process exits, and is stopped with [`crate::detached::stop`].
pub struct ControlPlane {
    dir: PathBuf,
    lifetime: Lifetime,
    binaries: Binaries,
    server_url: String,
    kubeconfig: PathBuf,
    controller_manager_url: String,
    etcd: Option<Process>,
    apiserver: Option<Process>,
    controller_manager: Option<Process>,
    /// Set once a detached control plane is fully up: from then on dropping the handle leaves
    /// its processes running.
    leave_running: bool,
    // Declared last so that it is removed after the processes are stopped.
    _temp_dir: Option<TempDir>,
}

impl ControlPlane {
    /// Starts a control plane owned by this process in a fresh temporary folder, building any
    /// missing binary first.
    ///
    /// A control plane that is never dropped (one kept in a `static`, or one whose test binary
    /// was killed) still has its processes killed when this process exits; its folder is removed
    /// by the next `start` on the machine.
    pub async fn start() -> Result<ControlPlane> {
        remove_abandoned_temp_dirs();
        retry_on_port_clash(|| async {
            let temp_dir = tempfile::Builder::new()
                .prefix(TEMP_DIR_PREFIX)
                .tempdir()
                .context("creating the control plane's temporary folder")?;
            let dir = temp_dir.path().to_path_buf();
            fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
            Self::launch(dir, Lifetime::Owned, Some(temp_dir)).await
        })
        .await
    }

    /// Starts a control plane in `dir` whose processes outlive this one: each runs in its own
    /// process group, and its pid is written to `<dir>/<component>.pid`. `dir` is emptied first
    /// and must not hold a running control plane.
    pub async fn start_detached(dir: &Path) -> Result<ControlPlane> {
        if crate::detached::status(dir).iter().any(|c| c.running) {
            bail!(
                "a control plane is already running in {}; stop it first",
                dir.display()
            );
        }
        let mut plane = retry_on_port_clash(|| async {
            if dir.exists() {
                fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
            }
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Self::launch(dir.to_path_buf(), Lifetime::Detached, None).await
        })
        .await?;
        plane.leave_running = true;
        Ok(plane)
    }

    async fn launch(
        dir: PathBuf,
        lifetime: Lifetime,
        temp_dir: Option<TempDir>,
    ) -> Result<ControlPlane> {
        let binaries = build::ensure_all(&mut io::stderr())?;
        let ports = Ports::pick()?;
        let mut plane = ControlPlane {
            server_url: format!("https://127.0.0.1:{}", ports.apiserver),
            kubeconfig: dir.join("kubeconfig"),
            controller_manager_url: format!("https://127.0.0.1:{}", ports.controller_manager),
            dir,
            lifetime,
            binaries,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            leave_running: false,
            _temp_dir: temp_dir,
        };
        // On any error below, dropping `plane` stops what was already started.
        let pki = Pki::generate(&plane.dir)?;
        fs::write(
            &plane.kubeconfig,
            admin_kubeconfig(&plane.server_url, &pki)?,
        )?;

        let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
        plane.etcd = Some(Process::start(
            "etcd",
            &plane.binaries.etcd,
            args([
                "--name=tenant-key-operator".into(),
                format!("--data-dir={}", plane.dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=tenant-key-operator={peer_url}"),
                // Test data need not survive a power cut.
                "--unsafe-no-fsync=true".into(),
            ]),
            &plane.dir,
            lifetime,
        )?);
        plane.wait_for_etcd(ports.etcd_client).await?;

        let cert_dir = plane.dir.join("apiserver-certs");
        plane.apiserver = Some(Process::start(
            "kube-apiserver",
            &plane.binaries.kube_apiserver,
            args([
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", cert_dir.display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.apiserver),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                // No controller creates `default` ServiceAccounts here.
                "--disable-admission-plugins=ServiceAccount".into(),
                // As on clusters that enforce it (OpenShift among them), so that RBAC proofs
                // hold there too: blockOwnerDeletion would need `update` on the owner's
                // finalizers.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
                "--authorization-mode=RBAC".into(),
                // The `kubernetes` Service cannot point at a loopback address, and no pod needs it.
                "--endpoint-reconciler-type=none".into(),
                format!("--service-account-issuer={}", plane.server_url),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_public_key.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
            ]),
            &plane.dir,
            lifetime,
        )?);
        plane.wait_for_apiserver().await?;

        let kubeconfig = plane.kubeconfig.display().to_string();
        plane.controller_manager = Some(Process::start(
            "kube-controller-manager",
            &plane.binaries.kube_controller_manager,
            args([
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                // No front proxy: nothing to look up from the extension-apiserver-authentication
                // ConfigMap, which would only log missing CA bundles.
                "--authentication-skip-lookup=true".into(),
                // Only what the tests rely on: owner references and namespace deletion.
                "--controllers=garbage-collector-controller,namespace-controller".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.controller_manager),
            ]),
            &plane.dir,
            lifetime,
        )?);
        plane.wait_for_controller_manager().await?;
        Ok(plane)
    }

    /// The admin kubeconfig (group `system:masters`), usable by kube-rs, kubectl and helm.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The folder holding the control plane's state, certificates and `<component>.log` files.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Paths of the binaries in use, including `helm`.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Process ids of etcd, kube-apiserver and kube-controller-manager.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.processes()
            .into_iter()
            .filter_map(|p| Some((p.name, p.pid()?)))
            .collect()
    }

    /// A client with the admin identity.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A client that impersonates `user` in `groups` (plus `system:authenticated`), so its
    /// requests are authorized by RBAC exactly as that user's would be.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let mut config = config_from_kubeconfig(&self.kubeconfig).await?;
        config.auth_info.impersonate = Some(user.to_string());
        if !groups.is_empty() {
            config.auth_info.impersonate_groups =
                Some(groups.iter().map(|g| g.to_string()).collect());
        }
        Client::try_from(config).context("building an impersonating client")
    }

    /// Writes a kubeconfig that authenticates as the ServiceAccount `namespace/name` with a
    /// token from the TokenRequest API, for a process (the operator, kubectl, helm) that must
    /// run with exactly that ServiceAccount's permissions. The ServiceAccount must exist.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = service_account_token(&self.client().await?, namespace, name).await?;
        let ca = fs::read(Pki::paths(&self.dir).ca_cert)?;
        let path = self
            .dir
            .join(format!("kubeconfig-serviceaccount-{namespace}-{name}"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        fs::write(
            &path,
            kubeconfig(&self.server_url, &ca, &user, &[("token", &token)]),
        )?;
        Ok(path)
    }

    /// A client authenticated as the ServiceAccount `namespace/name` (see
    /// [`ControlPlane::service_account_kubeconfig`]).
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        let path = self.service_account_kubeconfig(namespace, name).await?;
        client_from_kubeconfig(&path).await
    }

    /// Stops kube-apiserver and starts it again on the same port with the same data, waiting
    /// until it is ready. Clients keep working across the restart once it is back.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.apiserver
            .as_mut()
            .ok_or_else(|| anyhow!("kube-apiserver is not running"))?
            .restart()?;
        self.wait_for_apiserver().await
    }

    fn processes(&self) -> Vec<&Process> {
        [&self.controller_manager, &self.apiserver, &self.etcd]
            .into_iter()
            .flatten()
            .collect()
    }

    async fn wait_for_etcd(&mut self, port: u16) -> Result<()> {
        let process = self.etcd.as_mut().expect("etcd was started");
        wait_until(process, ETCD_READY_TIMEOUT, "/health", || async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream
                .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await?;
            if response.contains(r#""health":"true""#) {
                Ok(())
            } else {
                Err(anyhow!("etcd answered {response:?}"))
            }
        })
        .await
    }

    async fn wait_for_apiserver(&mut self) -> Result<()> {
        let client = self.client().await?;
        let process = self.apiserver.as_mut().expect("kube-apiserver was started");
        wait_until(process, APISERVER_READY_TIMEOUT, "/readyz", || {
            get_ok(&client, "/readyz")
        })
        .await
    }

    async fn wait_for_controller_manager(&mut self) -> Result<()> {
        // kube-controller-manager serves /healthz to anyone over a self-signed certificate; this
        // client talks only to it, never to the API server.
        let mut config = Config::new(self.controller_manager_url.parse()?);
        config.accept_invalid_certs = true;
        let client = Client::try_from(config)?;
        let process = self
            .controller_manager
            .as_mut()
            .expect("kube-controller-manager was started");
        wait_until(
            process,
            CONTROLLER_MANAGER_READY_TIMEOUT,
            "/healthz",
            || get_ok(&client, "/healthz"),
        )
        .await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.leave_running {
            return;
        }
        // Dependants first, so nothing logs errors about a store that vanished under it.
        for process in [
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ]
        .into_iter()
        .flatten()
        {
            process.stop(STOP_GRACE);
        }
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir)
            .field("lifetime", &self.lifetime)
            .field("pids", &self.pids())
            .finish()
    }
}

/// Runs `launch` again, with fresh ports, when a component failed because another process took
/// one of its ports between [`Ports::pick`] and the component binding it.
async fn retry_on_port_clash<F, Fut>(mut launch: F) -> Result<ControlPlane>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ControlPlane>>,
{
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match launch().await {
            Err(err) if attempt < ATTEMPTS && format!("{err:#}").contains(PORT_CLASH) => {
                eprintln!("control plane: a port was taken while starting; retrying");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Removes the temporary folders of owned control planes whose owning process is gone.
fn remove_abandoned_temp_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEMP_DIR_PREFIX)
        {
            continue;
        }
        let owner = fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !crate::process::alive(pid)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A client for the cluster and identity that a kubeconfig file names.
/// A token of the ServiceAccount `namespace/name` from the TokenRequest API, valid for a day.
/// The ServiceAccount must exist.
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
        .status
        .and_then(|status| status.token)
        .ok_or_else(|| anyhow!("the TokenRequest for {namespace}/{name} returned no token"))
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    Client::try_from(config_from_kubeconfig(path).await?).context("building a client")
}

async fn config_from_kubeconfig(path: &Path) -> Result<Config> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))
}

async fn get_ok(client: &Client, path: &str) -> Result<()> {
    let request = http::Request::get(path).body(Vec::new())?;
    let body = client.request_text(request).await?;
    if body.trim() == "ok" {
        Ok(())
    } else {
        Err(anyhow!("{path} answered {body:?}"))
    }
}

/// Polls `check` until it succeeds, failing early if the process exits and after `timeout` with
/// the last error and the end of the process's log.
async fn wait_until<F, Fut>(
    process: &mut Process,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    loop {
        process.check_running()?;
        let last_error = match check().await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        if started.elapsed() > timeout {
            bail!(
                "{} was not ready ({what}) within {timeout:?}: {last_error:#}; last lines of {}:\n{}",
                process.name,
                process.log.display(),
                crate::log_tail(&process.log, 40)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Free loopback ports, found by binding to port 0. Another process could take one before the
/// component binds it; the component then exits and the start fails with its log.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
}

impl Ports {
    fn pick() -> Result<Ports> {
        // Hold all listeners at once so the four ports differ.
        let listeners = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<Vec<_>>>()
            .context("finding free loopback ports")?;
        let port = |i: usize| listeners[i].local_addr().map(|a| a.port());
        Ok(Ports {
            etcd_client: port(0)?,
            etcd_peer: port(1)?,
            apiserver: port(2)?,
            controller_manager: port(3)?,
        })
    }
}

fn args<const N: usize>(args: [String; N]) -> Vec<OsString> {
    args.into_iter().map(OsString::from).collect()
}

fn admin_kubeconfig(server: &str, pki: &Pki) -> Result<String> {
    let ca = fs::read(&pki.ca_cert)?;
    let cert = fs::read(&pki.admin_cert)?;
    let key = fs::read(&pki.admin_key)?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(kubeconfig(
        server,
        &ca,
        ADMIN_USER,
        &[
            ("client-certificate-data", &b64(&cert)),
            ("client-key-data", &b64(&key)),
        ],
    ))
}

/// A kubeconfig with one cluster, one user and one context, all named `tenant-key-operator`
/// except the user, whose credentials are `credentials` (already encoded).
fn kubeconfig(server: &str, ca_pem: &[u8], user: &str, credentials: &[(&str, &str)]) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: tenant-key-operator\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user:?}\n  user:\n"
    );
    for (key, value) in credentials {
        text.push_str(&format!("    {key}: {value}\n"));
    }
    text.push_str(&format!(
        "contexts:\n- name: tenant-key-operator\n  context:\n    cluster: tenant-key-operator\n    user: {user:?}\ncurrent-context: tenant-key-operator\n"
    ));
    text
}
