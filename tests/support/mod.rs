//! A complete environment for end-to-end tests: a real control plane with the CRDs installed,
//! the Imburse sandbox, and the operator binary running as a local process. Each test works in
//! a namespace of its own.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod chart;

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use imburse_sandbox::{Account, Config, Options, Sandbox};
use k8s_openapi::{
    ByteString,
    api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    runtime::reflector::ObjectRef,
};
use serde_json::json;
use tenant_key_api::crd::{ClusterImburseAccount, Condition, ImburseAccount, TenantSecurityKey};
pub use testenv::cluster::{create_namespace, merge};
use testenv::{
    ControlPlane, Operator,
    cluster::{Launch, start_cluster},
};

/// How long a test waits for the operator to reach a state before it fails. A bound on
/// waiting, not a performance assertion.
pub const WAIT: Duration = Duration::from_secs(90);

/// The finalizer the operator puts on every TenantSecurityKey it manages.
pub const FINALIZER: &str = "imbursepayments.com/revoke-key";

pub struct Env {
    pub runtime: tokio::runtime::Runtime,
    /// Behind a lock so that tests can restart kube-apiserver.
    pub control_plane: std::sync::Mutex<ControlPlane>,
    pub client: Client,
    pub sandbox: Sandbox,
    pub config: Config,
    /// Behind a lock so that tests can crash and restart it.
    pub operator: std::sync::Mutex<Operator>,
    pub operator_namespace: String,
    /// Sandboxes of single tests (see [`Env::own_sandbox`]).
    own_sandboxes: std::sync::Mutex<Vec<Arc<Sandbox>>>,
    _logs: tempfile::TempDir,
}

impl Env {
    /// Starts everything. The sandbox has `config`'s accounts and tenants.
    pub fn start(config: Config) -> Result<Env> {
        Self::start_with(config, Options::default(), &[])
    }

    /// Starts everything, the sandbox with `options` (e.g. a state file that keeps the keys)
    /// and the operator with extra arguments.
    pub fn start_with(config: Config, options: Options, operator_args: &[&str]) -> Result<Env> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let operator_namespace = "tenant-key-operator".to_owned();
        let (control_plane, client, sandbox) = runtime.block_on(async {
            let (control_plane, client) = start_cluster(&[&operator_namespace]).await?;
            let sandbox = Sandbox::start_with(config.clone(), options).await?;
            anyhow::Ok((control_plane, client, sandbox))
        })?;
        let logs = tempfile::Builder::new().prefix("tko-operator-").tempdir()?;
        let operator = start_operator(
            "operator",
            &control_plane,
            logs.path(),
            &operator_namespace,
            operator_args,
        )?;
        Ok(Env {
            runtime,
            client,
            sandbox,
            config,
            control_plane: std::sync::Mutex::new(control_plane),
            operator: std::sync::Mutex::new(operator),
            operator_namespace,
            own_sandboxes: std::sync::Mutex::default(),
            _logs: logs,
        })
    }

    /// Starts one more operator process against the same cluster, logging into `dir`, with
    /// `extra` arguments.
    pub fn start_operator(
        &self,
        name: &'static str,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Operator> {
        self.start_operator_with_env(name, dir, &[], extra)
    }

    /// Like [`Env::start_operator`], with `env` added to the process's environment.
    pub fn start_operator_with_env(
        &self,
        name: &'static str,
        dir: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Operator> {
        start_operator_with_env(
            name,
            &self.control_plane.lock().unwrap_or_else(|e| e.into_inner()),
            dir,
            &self.operator_namespace,
            env,
            extra,
        )
    }

    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.handle().block_on(f)
    }

    /// Everything the operator has logged so far.
    pub fn operator_log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.operator_log_path())?)
    }

    /// Where the environment's operator logs.
    pub fn operator_log_path(&self) -> PathBuf {
        let operator = self.operator.lock().unwrap_or_else(|e| e.into_inner());
        operator.log_path().to_owned()
    }

    /// The address the environment's operator serves its metrics on (it must log JSON).
    pub async fn metrics_address(&self) -> Result<String> {
        metrics_address(&self.operator_log_path()).await
    }

    pub fn keys(&self, namespace: &str) -> Api<TenantSecurityKey> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub fn account(&self, index: usize) -> &Account {
        &self.config.accounts[index]
    }

    /// The `index`-th tenant of account `account`.
    pub fn tenant(&self, account: usize, index: usize) -> String {
        self.config
            .tenants_of(&self.config.accounts[account].account_id)
            .nth(index)
            .map(|t| t.tenant_id.clone())
            .unwrap_or_default()
    }

    /// A sandbox of the calling test's own, with the environment's accounts and tenants: the
    /// faults a test sets there reach no other test, and its statistics count that test's
    /// calls only, so such tests can run at once. It lives as long as the environment, so
    /// that the keys made there stay verifiable after the test.
    pub async fn own_sandbox(&self) -> Result<Arc<Sandbox>> {
        let sandbox = Arc::new(Sandbox::start(self.config.clone()).await?);
        self.own_sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sandbox.clone());
        Ok(sandbox)
    }

    /// Creates a namespace holding the credentials Secret of sandbox account `account`
    /// (`imburse-credentials`) and an `ImburseAccount` named `imburse` for it, and waits until
    /// the account is Ready.
    pub async fn namespace_with_account(&self, namespace: &str, account: usize) -> Result<()> {
        self.namespace_with_account_at(namespace, account, &self.sandbox)
            .await
    }

    /// Like [`Env::namespace_with_account`], with the account at `sandbox` (see
    /// [`Env::own_sandbox`]).
    pub async fn namespace_with_account_at(
        &self,
        namespace: &str,
        account: usize,
        sandbox: &Sandbox,
    ) -> Result<()> {
        create_namespace(&self.client, namespace, BTreeMap::new()).await?;
        testenv::cluster::create_account(
            &self.client,
            namespace,
            "imburse",
            self.account(account),
            &sandbox.base_url(),
        )
        .await
    }

    /// Stores the key pair of sandbox account `account` in a Secret.
    pub async fn credentials_secret(
        &self,
        namespace: &str,
        name: &str,
        account: usize,
    ) -> Result<()> {
        let account = self.account(account);
        let secret =
            testenv::cluster::key_pair_secret(name, &account.public_key, &account.private_key);
        self.secrets(namespace)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// Creates an `ImburseAccount` against the sandbox; `extra` is merged into its spec.
    pub async fn apply_account(
        &self,
        namespace: &str,
        name: &str,
        extra: serde_json::Value,
        secret: &str,
    ) -> Result<()> {
        let account = testenv::cluster::imburse_account(
            namespace,
            name,
            &self.sandbox.base_url(),
            secret,
            extra,
        )?;
        Api::<ImburseAccount>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &account)
            .await?;
        Ok(())
    }

    /// Creates a `ClusterImburseAccount` against the sandbox whose credentials are in the
    /// operator's namespace; `extra` is merged into its spec.
    pub async fn apply_cluster_account(
        &self,
        name: &str,
        account: usize,
        extra: serde_json::Value,
    ) -> Result<()> {
        let secret = format!("{name}-credentials");
        self.credentials_secret(&self.operator_namespace, &secret, account)
            .await?;
        let mut spec = json!({
            "baseUrl": self.sandbox.base_url(),
            "credentialsSecretRef": { "name": secret },
        });
        merge(&mut spec, extra);
        let account: ClusterImburseAccount = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "ClusterImburseAccount",
            "metadata": { "name": name },
            "spec": spec,
        }))?;
        Api::<ClusterImburseAccount>::all(self.client.clone())
            .create(&PostParams::default(), &account)
            .await?;
        Ok(())
    }

    /// Creates a TenantSecurityKey using the namespace's `imburse` account for tenant
    /// `tenant`; `extra` is merged into its spec. Replaced keys are revoked at once
    /// (`gracePeriod: 0s`) unless `extra` says otherwise, so tests see the end state at once.
    pub async fn create_key(
        &self,
        namespace: &str,
        name: &str,
        tenant: &str,
        extra: serde_json::Value,
    ) -> Result<TenantSecurityKey> {
        let mut spec = json!({
            "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
            "tenantId": tenant,
            "roles": ["tenant-admin"],
            "rotation": { "gracePeriod": "0s" },
        });
        merge(&mut spec, extra);
        let key: TenantSecurityKey = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        }))?;
        Ok(self
            .keys(namespace)
            .create(&PostParams::default(), &key)
            .await?)
    }

    /// Waits until the key is Ready for its current generation.
    pub async fn wait_ready(&self, namespace: &str, name: &str) -> Result<TenantSecurityKey> {
        wait_for(&self.keys(namespace), name, |k| {
            let status = k.status.as_ref();
            status.and_then(|s| s.observed_generation) == k.metadata.generation
                && ready(status.map(|s| &s.conditions)) == Some(("True", "KeyReady"))
        })
        .await
    }

    /// Waits until the key's Ready condition is False with `reason`.
    pub async fn wait_reason(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
    ) -> Result<TenantSecurityKey> {
        wait_for(&self.keys(namespace), name, |k| {
            ready(k.status.as_ref().map(|s| &s.conditions)) == Some(("False", reason))
        })
        .await
    }

    /// Public keys of the tenant's keys at the sandbox.
    pub async fn sandbox_keys(&self, tenant: &str) -> Result<Vec<String>> {
        tenant_keys(&self.sandbox, tenant).await
    }

    /// Reasons of the Events about an object.
    pub async fn event_reasons(&self, namespace: &str, name: &str) -> Result<Vec<String>> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), namespace);
        Ok(events
            .list(&ListParams::default())
            .await?
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect())
    }

    /// Waits until an Event with `reason` about the object exists.
    pub async fn wait_event(&self, namespace: &str, name: &str, reason: &str) -> Result<()> {
        poll(
            || async {
                Ok(self
                    .event_reasons(namespace, name)
                    .await?
                    .iter()
                    .any(|r| r == reason))
            },
            &format!("an Event {reason} about {namespace}/{name}"),
        )
        .await
    }

    /// Waits until a key is gone from the API server.
    pub async fn wait_gone(&self, namespace: &str, name: &str) -> Result<()> {
        let api = self.keys(namespace);
        poll(
            || async { Ok(api.get_opt(name).await?.is_none()) },
            &format!("{namespace}/{name} to be deleted"),
        )
        .await
    }

    pub async fn delete_key(&self, namespace: &str, name: &str) -> Result<()> {
        self.keys(namespace)
            .delete(name, &DeleteParams::default())
            .await?;
        Ok(())
    }

    /// SIGKILLs the environment's operator, as a crash would, and starts it again. Returns
    /// the new process's start, for [`Env::wait_reconciled_since_restart`].
    pub fn crash_operator(&self) -> Result<Since> {
        let mut operator = self.operator.lock().unwrap_or_else(|e| e.into_inner());
        operator.kill();
        let since = Since::restart(&operator)?;
        operator.restart()?;
        Ok(since)
    }

    /// Stops the environment's operator gracefully (SIGTERM) and starts it again. Returns the
    /// new process's start.
    pub fn restart_operator(&self) -> Result<Since> {
        let mut operator = self.operator.lock().unwrap_or_else(|e| e.into_inner());
        let since = Since::restart(&operator)?;
        operator.restart()?;
        Ok(since)
    }

    /// This moment in the life of the environment's operator, which is running.
    pub fn operator_now(&self) -> Result<Since> {
        Since::now(&self.operator.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// See [`wait_reconciled_since_restart`]; the Lease is looked for in the operator's
    /// namespace.
    pub async fn wait_reconciled_since_restart(
        &self,
        since: &Since,
        namespace: &str,
        name: &str,
    ) -> Result<()> {
        wait_reconciled_since_restart(
            &self.client,
            &self.operator_namespace,
            since,
            namespace,
            name,
        )
        .await
    }

    /// See [`wait_working`].
    pub async fn wait_working(&self, since: &Since) -> Result<u64> {
        wait_working(&self.client, &self.operator_namespace, since).await
    }
}

/// The operator's log filter in tests: its own debug lines, its libraries' from info.
const LOG_FILTER: &str =
    "debug,kube=info,hyper=info,hyper_util=info,tower=info,h2=info,rustls=info,reqwest=info";

/// Starts the operator binary against the control plane, logging into `logs`, with `extra`
/// arguments after the common ones (debug logs, a free metrics port).
pub fn start_operator(
    name: &'static str,
    control_plane: &ControlPlane,
    logs: &Path,
    operator_namespace: &str,
    extra: &[&str],
) -> Result<Operator> {
    start_operator_with_env(name, control_plane, logs, operator_namespace, &[], extra)
}

/// Like [`start_operator`], with `env` added to the process's environment.
pub fn start_operator_with_env(
    name: &'static str,
    control_plane: &ControlPlane,
    logs: &Path,
    operator_namespace: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Result<Operator> {
    Launch {
        name,
        namespace: operator_namespace,
        log_filter: Some(LOG_FILTER),
        env,
        args: extra,
        ..Launch::default()
    }
    .start(
        Path::new(env!("CARGO_BIN_EXE_tenant-key-operator")),
        control_plane,
        logs,
    )
}

/// The JSON log lines of a process whose message is `message`, oldest first.
pub fn log_lines(log: &Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

/// A field of the last log line with `message`, once there is one that `accept`s.
pub async fn logged(
    log: &Path,
    message: &str,
    field: &str,
    accept: impl Fn(&str) -> bool,
) -> Result<String> {
    let mut value = None;
    poll(
        || {
            value = log_lines(log, message)
                .last()
                .and_then(|l| l["fields"][field].as_str().map(str::to_owned))
                .filter(|v| accept(v));
            let found = value.is_some();
            async move { Ok(found) }
        },
        &format!("{} to log {message:?}", log.display()),
    )
    .await
    .with_context(|| testenv::log_tail(log, 20))?;
    value.context("logged")
}

/// The address an operator logging JSON into `log` serves its metrics on.
pub async fn metrics_address(log: &Path) -> Result<String> {
    logged(log, "serving metrics", "address", |_| true).await
}

/// A test of a binary whose tests share one [`Env`].
pub type TestFn = fn(&Env) -> Result<()>;

/// Runs `tests` one after another in the environment `start` makes.
pub fn run_suite(
    start: impl FnOnce() -> Result<Env>,
    tests: Vec<(&'static str, TestFn)>,
) -> std::process::ExitCode {
    testenv::suite::run(start, Vec::new(), tests)
}

/// Runs the tests of `at_once` all at the same time, then those of `one_at_a_time` one after
/// another (see [`testenv::suite::run`]). A test of `at_once` works in a namespace and with
/// tenants of its own, leaves the environment's operator alone and sets no fault on the
/// environment's sandbox (it sets them on a sandbox of its own, [`Env::own_sandbox`]). A test
/// that stops, crashes or restarts the operator, or counts what the environment's sandbox was
/// asked, belongs to `one_at_a_time`.
pub fn run_suites(
    start: impl FnOnce() -> Result<Env>,
    at_once: Vec<(&'static str, TestFn)>,
    one_at_a_time: Vec<(&'static str, TestFn)>,
) -> std::process::ExitCode {
    testenv::suite::run(start, at_once, one_at_a_time)
}

/// After a test that may have disturbed it, the next one starts with a running operator and
/// without faults at the environment's sandbox.
impl testenv::suite::World for Env {
    fn restore(&self) -> Result<()> {
        let mut operator = self.operator.lock().unwrap_or_else(|e| e.into_inner());
        let restarted = match operator.pid() {
            Some(_) => Ok(()),
            None => operator.restart(),
        };
        drop(operator);
        let reset = self.block_on(
            self.sandbox
                .admin()
                .set_faults(&imburse_sandbox::Faults::default()),
        );
        restarted.and(reset.map_err(Into::into))
    }
}

impl Env {
    /// A `tenant-admin` key named `name` for `tenant`, made by hand with sandbox account 0 as
    /// the tutorial makes one.
    pub async fn key_by_hand(&self, tenant: &str, name: &str) -> Result<imburse::CreatedKey> {
        self.key_by_hand_at(&self.sandbox, tenant, name).await
    }

    /// Like [`Env::key_by_hand`], at `sandbox`.
    pub async fn key_by_hand_at(
        &self,
        sandbox: &Sandbox,
        tenant: &str,
        name: &str,
    ) -> Result<imburse::CreatedKey> {
        let key = by_hand(self, &sandbox.base_url())?
            .create_key(
                tenant,
                &imburse::NewKey {
                    name: Some(name.to_owned()),
                    roles: vec!["tenant-admin".into()],
                },
            )
            .await?;
        Ok(key)
    }
}

/// An Imburse client acting as sandbox account 0, as a person following the tutorial.
pub fn by_hand(env: &Env, base_url: &str) -> Result<imburse::AccountClient> {
    let http = imburse::Client::new(Default::default())?;
    Ok(http.account(imburse::AccountConfig {
        base_url: base_url.into(),
        generation: imburse::ApiGeneration::Seed,
        account_id: None,
        credentials: env.account(0).key_pair(),
    })?)
}

/// Waits until the key is Ready, its tenant has exactly that key at `sandbox`, and its Secret
/// holds it and authenticates there. Returns the public key.
pub async fn expect_single_key_at(
    env: &Env,
    sandbox: &Sandbox,
    ns: &str,
    name: &str,
    tenant: &str,
) -> Result<String> {
    let key = env.wait_ready(ns, name).await?;
    let status = key.status.context("status")?;
    let public_key = status.public_key.context("publicKey")?;
    let secret_name = status.secret_name.context("secretName")?;
    poll(
        || async { Ok(tenant_keys(sandbox, tenant).await? == [public_key.clone()]) },
        &format!("{ns}/{name} to be the tenant's only key"),
    )
    .await?;
    let secret = env.secrets(ns).get(&secret_name).await?;
    let http = imburse::Client::new(Default::default())?;
    testenv::keys::holds_working_key(&secret, &public_key, &http, sandbox).await?;
    Ok(public_key)
}

pub async fn expect_single_key(env: &Env, ns: &str, name: &str, tenant: &str) -> Result<String> {
    expect_single_key_at(env, &env.sandbox, ns, name, tenant).await
}

/// Public keys of the tenant's keys at the sandbox.
pub async fn tenant_keys(sandbox: &Sandbox, tenant: &str) -> Result<Vec<String>> {
    Ok(sandbox
        .admin()
        .keys(Some(tenant))
        .await?
        .into_iter()
        .map(|k| k.public_key)
        .collect())
}

/// Keys created at `sandbox` so far.
pub async fn created(sandbox: &Sandbox) -> Result<u64> {
    Ok(sandbox
        .admin()
        .stats()
        .await?
        .count(imburse::Operation::CreateKey, 201))
}

/// The public key the resource's status records.
pub async fn recorded_key(env: &Env, ns: &str, name: &str) -> Result<String> {
    env.keys(ns)
        .get(name)
        .await?
        .status
        .and_then(|s| s.public_key)
        .context("no public key recorded")
}

/// Ready condition's status and reason.
pub fn ready(conditions: Option<&Vec<Condition>>) -> Option<(&str, &str)> {
    conditions?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

pub async fn create_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

pub fn public_key(key: &TenantSecurityKey) -> Option<&str> {
    key.status.as_ref()?.public_key.as_deref()
}

/// Waits until the key's public key is another than `old`, the key Ready and its Secret
/// switched; returns the resource.
pub async fn wait_replaced(
    env: &Env,
    ns: &str,
    name: &str,
    old: &str,
) -> Result<TenantSecurityKey> {
    wait_for(&env.keys(ns), name, |k| {
        public_key(k).is_some_and(|p| p != old)
            && ready(k.status.as_ref().map(|s| &s.conditions)) == Some(("True", "KeyReady"))
    })
    .await
}

/// Requests a rotation with the annotation's new `value`.
pub async fn request_rotation(env: &Env, ns: &str, name: &str, value: &str) -> Result<()> {
    env.keys(ns)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "metadata": { "annotations": {
                tenant_key_api::crd::ROTATE_REQUESTED_AT_ANNOTATION: value,
            } } })),
        )
        .await?;
    Ok(())
}

/// A Deployment whose pods never need to run; with `restart_for`, its owner consents to
/// restarts for the TenantSecurityKeys it names.
pub fn deployment(name: &str, restart_for: Option<&str>) -> Result<Deployment> {
    let annotations: BTreeMap<&str, &str> = restart_for
        .map(|names| ("imbursepayments.com/restart-for", names))
        .into_iter()
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "example.com/app:1" }] },
            },
        },
    }))?)
}

/// The pod template annotation that restarts a workload, and the workload's generation.
pub async fn template_state(api: &Api<Deployment>, name: &str) -> Result<(Option<String>, i64)> {
    let d = api.get(name).await?;
    let annotation = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("imbursepayments.com/key-fingerprint").cloned());
    Ok((annotation, d.metadata.generation.unwrap_or_default()))
}

/// Polls `check` until it returns true, for at most [`WAIT`].
pub async fn poll<F, Fut>(mut check: F, what: &str) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the object satisfies `predicate` and returns it.
pub async fn wait_for<K>(api: &Api<K>, name: &str, predicate: impl Fn(&K) -> bool) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let obj = api.get_opt(name).await?;
        match obj {
            Some(obj) if predicate(&obj) => return Ok(obj),
            _ if tokio::time::Instant::now() > deadline => {
                bail!(
                    "gave up waiting for {name}; last seen: {}",
                    describe(obj.as_ref())
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn describe<K: serde::Serialize>(obj: Option<&K>) -> String {
    obj.and_then(|o| serde_json::to_value(o).ok())
        .map(|v| v.get("status").cloned().unwrap_or_default().to_string())
        .unwrap_or_else(|| "nothing".into())
}

/// No private key, bearer token or signature in the operator's log, in Events, or in any
/// status the operator wrote.
pub fn no_secret_in_logs_events_or_status(env: &Env) -> Result<()> {
    env.block_on(async {
        let mut secrets: Vec<String> = env
            .config
            .accounts
            .iter()
            .map(|a| secrecy::ExposeSecret::expose_secret(&a.private_key).to_owned())
            .collect();
        let managed =
            ListParams::default().labels("app.kubernetes.io/managed-by=tenant-key-operator");
        for secret in Api::<Secret>::all(env.client.clone())
            .list(&managed)
            .await?
        {
            for (name, value) in secret.data.unwrap_or_default() {
                if name.to_lowercase().contains("private") {
                    secrets.push(String::from_utf8_lossy(&value.0).into_owned());
                }
            }
        }
        // The accounts' keys are always there; without a delivered key as well, the scan
        // would prove nothing about the keys the operator handled.
        ensure!(
            secrets.len() > env.config.accounts.len(),
            "no delivered key to look for: the scan would be meaningless"
        );
        let log = env.operator_log()?;
        let events: Vec<k8s_openapi::api::events::v1::Event> = Api::all(env.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let keys: Vec<TenantSecurityKey> = Api::all(env.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let accounts: Vec<ImburseAccount> = Api::all(env.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let written = [
            ("log", log),
            ("events", serde_json::to_string(&events)?),
            (
                "statuses",
                serde_json::to_string(&keys.iter().map(|k| &k.status).collect::<Vec<_>>())?,
            ),
            (
                "account statuses",
                serde_json::to_string(&accounts.iter().map(|a| &a.status).collect::<Vec<_>>())?,
            ),
        ];
        for (what, text) in &written {
            for secret in &secrets {
                ensure!(
                    !text.contains(secret.as_str()),
                    "a private key appears in the {what}"
                );
            }
            for marker in ["Bearer ", "Hmac ", "accessToken", "authorization:"] {
                ensure!(!text.contains(marker), "{marker:?} appears in the {what}");
            }
        }
        ensure!(
            written[0].1.contains("created key"),
            "the log scan read no reconcile output"
        );
        Ok(())
    })
}

/// A moment in the life of an operator process, as a position in its log (which restarts
/// append to): what the process logged since its start and since the moment is its own, and
/// so are the counters of its metrics endpoint, which start at zero with the process.
#[derive(Clone, Debug)]
pub struct Since {
    log: PathBuf,
    /// Where the process's own lines begin.
    start: u64,
    /// Where the lines after the moment begin.
    moment: u64,
}

/// The log line of a process's start that names its metrics address.
const SERVING: &str = "serving metrics";

impl Since {
    /// Before `operator` is started again: everything the next process logs is after the
    /// moment.
    pub fn restart(operator: &Operator) -> Result<Since> {
        let log = operator.log_path().to_owned();
        let start = std::fs::metadata(&log).map_or(0, |m| m.len());
        Ok(Since {
            log,
            start,
            moment: start,
        })
    }

    /// The running `operator`'s start (it must have logged its metrics address).
    pub fn started(operator: &Operator) -> Result<Since> {
        let log = operator.log_path().to_owned();
        let start = last_start(&log)?;
        Ok(Since {
            log,
            start,
            moment: start,
        })
    }

    /// Now, in the life of the running `operator`.
    pub fn now(operator: &Operator) -> Result<Since> {
        let log = operator.log_path().to_owned();
        let start = last_start(&log)?;
        let moment = std::fs::metadata(&log)?.len();
        Ok(Since { log, start, moment })
    }

    /// The process's log lines from `offset` on, flattened (see [`flatten`]).
    fn lines_from(&self, offset: u64) -> Result<Vec<String>> {
        let bytes =
            std::fs::read(&self.log).with_context(|| format!("reading {}", self.log.display()))?;
        let from = usize::try_from(offset)?.min(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[from..])
            .lines()
            .map(flatten)
            .collect())
    }
}

/// The offset of the last line of `log` that names the metrics address: the start of its
/// current process.
fn last_start(log: &Path) -> Result<u64> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let mut offset = 0;
    let mut start = None;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if String::from_utf8_lossy(line).contains(SERVING) {
            start = Some(offset);
        }
        offset += line.len() as u64;
    }
    start.with_context(|| format!("{} has no {SERVING:?} line", log.display()))
}

/// One log line, text or JSON, as `message key=value key=value ` with the fields of the event
/// and of its spans, so that both formats are searched alike: the text format's colours are
/// dropped, the JSON format's fields written out.
fn flatten(line: &str) -> String {
    let Ok(serde_json::Value::Object(json)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An ANSI escape: `ESC [` parameters, then a letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        return plain + " ";
    };
    let mut flat = String::new();
    let mut add = |fields: &serde_json::Value| {
        for (key, value) in fields.as_object().into_iter().flatten() {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            flat.push_str(&format!("{key}={value} "));
        }
    };
    add(&json["fields"]);
    for span in json
        .get("spans")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        add(span);
    }
    flat
}

/// The value of `key=` in a flattened line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("{key}=");
    let at = line
        .match_indices(&pattern)
        .map(|(at, _)| at)
        .find(|at| *at == 0 || line[..*at].ends_with([' ', '{']))?;
    let value = &line[at + pattern.len()..];
    Some(value.split([' ', '}']).next().unwrap_or(value))
}

/// The object a line logs as settled, when it is the key controller's last decision of a
/// reconcile with nothing left to do (made after every step it took), within the span that
/// names the object.
fn settled(line: &str) -> Option<&str> {
    if line.contains("next step") && field(line, "step") == Some("Settled") {
        field(line, "object.ref")
    } else {
        None
    }
}

/// The operator's counter of finished TenantSecurityKey reconciles, per result, from a scrape
/// of its metrics endpoint.
fn key_reconciles(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tenant_key_operator_reconciles_total{")
                && l.contains(r#"kind="TenantSecurityKey""#)
        })
        .filter_map(|l| {
            let result = l.split(r#"result=""#).nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((result.to_owned(), count))
        })
        .collect()
}

/// What the process `since` names has shown of itself so far.
struct Progress {
    /// Its metrics address, once logged.
    address: Option<String>,
    /// Whether it leads: it runs without leader election, or it holds the Lease it contests.
    leading: bool,
    /// Its finished TenantSecurityKey reconciles (any result), and those with result `ok`.
    reconciles: u64,
    ok: u64,
    /// Reconciles it logged as settled since its start, of any key, and of the key asked about
    /// since the moment.
    settled: u64,
    settled_since: u64,
    /// What was seen, for the error message.
    seen: String,
}

async fn progress(
    client: &Client,
    lease_namespace: &str,
    since: &Since,
    object: Option<&str>,
) -> Result<Progress> {
    let lines = since.lines_from(since.start)?;
    let address = lines
        .iter()
        .filter(|l| l.contains(SERVING))
        .find_map(|l| field(l, "address"))
        .map(str::to_owned);
    // A process that elects logs the Lease it contests and its identity in it.
    let contest = lines
        .iter()
        .filter(|l| l.contains("waiting for the lease"))
        .find_map(|l| Some((field(l, "lease")?, field(l, "identity")?)));
    let (leading, holder) = match contest {
        None => (address.is_some(), "no leader election".to_owned()),
        Some((lease, identity)) => {
            let holder = Api::<Lease>::namespaced(client.clone(), lease_namespace)
                .get_opt(lease)
                .await?
                .and_then(|l| l.spec?.holder_identity);
            (
                holder.as_deref() == Some(identity),
                format!("{identity} contests Lease {lease}, held by {holder:?}"),
            )
        }
    };
    let kind = ObjectRef::<TenantSecurityKey>::new("").to_string();
    let settled_keys = lines
        .iter()
        .filter(|l| settled(l).is_some_and(|r| r.starts_with(&kind)))
        .count() as u64;
    let settled_since = match object {
        Some(object) => since
            .lines_from(since.moment)?
            .iter()
            .filter(|l| settled(l) == Some(object))
            .count() as u64,
        None => 0,
    };
    // Read after the log: every reconcile logged as settled by then has finished once the
    // counter has caught up with it.
    let (mut reconciles, mut ok) = (0, 0);
    if let Some(address) = &address {
        let text = reqwest::get(format!("http://{address}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        for (result, count) in key_reconciles(&text) {
            reconciles += count;
            if result == "ok" {
                ok += count;
            }
        }
    }
    let seen = format!(
        "metrics at {address:?}; {holder}; {reconciles} reconciles finished ({ok} ok), \
         {settled_keys} logged as settled{}",
        object.map_or_else(String::new, |o| format!(
            ", {settled_since} of {o} since the moment"
        ))
    );
    Ok(Progress {
        address,
        leading,
        reconciles,
        ok,
        settled: settled_keys,
        settled_since,
        seen,
    })
}

/// Polls [`progress`] until `done`, for at most [`WAIT`].
async fn wait_progress(
    client: &Client,
    lease_namespace: &str,
    since: &Since,
    object: Option<&str>,
    what: &str,
    done: impl Fn(&Progress) -> bool,
) -> Result<Progress> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let progress = progress(client, lease_namespace, since, object).await?;
        if done(&progress) {
            return Ok(progress);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "gave up waiting for {what} ({}); last seen: {}",
                since.log.display(),
                progress.seen
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the operator process `since` names has demonstrably reconciled the
/// TenantSecurityKey `namespace/name` after that moment, so that a check that nothing changed
/// since can fail rather than look before the process did anything: the process leads (it
/// holds the Lease, when it contests one in `lease_namespace`), its log shows, after the
/// moment, a reconcile of the key that settled (its last decision, after every step it took),
/// and its metrics count at least as many finished `ok` reconciles as it logged settled ones,
/// so that the reconcile's report (its status write) is done too.
pub async fn wait_reconciled_since_restart(
    client: &Client,
    lease_namespace: &str,
    since: &Since,
    namespace: &str,
    name: &str,
) -> Result<()> {
    let object = ObjectRef::<TenantSecurityKey>::new(name)
        .within(namespace)
        .to_string();
    wait_progress(
        client,
        lease_namespace,
        since,
        Some(&object),
        &format!("the operator to reconcile {namespace}/{name}"),
        |p| p.leading && p.settled_since > 0 && p.ok >= p.settled,
    )
    .await?;
    Ok(())
}

/// Waits until the operator process `since` names is at work: it leads (holds the Lease, when
/// it contests one in `lease_namespace`) and has finished a TenantSecurityKey reconcile.
/// Returns its finished reconciles.
pub async fn wait_working(client: &Client, lease_namespace: &str, since: &Since) -> Result<u64> {
    let progress = wait_progress(
        client,
        lease_namespace,
        since,
        None,
        "the operator to lead and reconcile keys",
        |p| p.leading && p.reconciles > 0,
    )
    .await?;
    Ok(progress.reconciles)
}
