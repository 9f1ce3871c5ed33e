//! Where every end-to-end run starts (the integration tests, kubectl-tsk's tests, the demo, the
//! bench and the chaos runs): a control plane with the operator's CRDs, namespaces, an account
//! of the Imburse sandbox, and operator processes started with the arguments they all give.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use imburse::{ExposeSecret as _, SecretString};
use imburse_sandbox::Account;
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde_json::json;
use tenant_key_api::crd::{ImburseAccount, READY, is_true};

use crate::{ControlPlane, Operator, install_crds};

/// The CRDs `cargo xtask generate` writes.
fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds")
}

/// Starts a control plane, installs the operator's CRDs and creates `namespaces`.
pub async fn start_cluster(namespaces: &[&str]) -> Result<(ControlPlane, Client)> {
    let control_plane = ControlPlane::start().await?;
    let client = control_plane.client().await?;
    install_crds(&client, &crds_dir()).await?;
    for namespace in namespaces {
        create_namespace(&client, namespace, BTreeMap::new()).await?;
    }
    Ok((control_plane, client))
}

pub async fn create_namespace(
    client: &Client,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<()> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// A Secret holding a key pair under `publicKey` and `privateKey`, as the tutorial stores an
/// account's.
pub fn key_pair_secret(name: &str, public_key: &str, private_key: &SecretString) -> Secret {
    let entry = |value: &str| ByteString(value.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            ("publicKey".to_owned(), entry(public_key)),
            ("privateKey".to_owned(), entry(private_key.expose_secret())),
        ])),
        ..Secret::default()
    }
}

/// An `ImburseAccount` at `base_url` whose key pair is in the Secret `secret`; `extra` is merged
/// into its spec.
pub fn imburse_account(
    namespace: &str,
    name: &str,
    base_url: &str,
    secret: &str,
    extra: serde_json::Value,
) -> Result<ImburseAccount> {
    let mut spec = json!({
        "baseUrl": base_url,
        "credentialsSecretRef": { "name": secret },
    });
    merge(&mut spec, extra);
    Ok(serde_json::from_value(json!({
        "apiVersion": "imbursepayments.com/v1beta1",
        "kind": "ImburseAccount",
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    }))?)
}

/// Creates the Secret `<name>-credentials` with `account`'s key pair and the `ImburseAccount`
/// `name` at `base_url`, and waits until the operator has verified the account.
pub async fn create_account(
    client: &Client,
    namespace: &str,
    name: &str,
    account: &Account,
    base_url: &str,
) -> Result<()> {
    let secret = format!("{name}-credentials");
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &key_pair_secret(&secret, &account.public_key, &account.private_key),
        )
        .await
        .with_context(|| format!("creating Secret {namespace}/{secret}"))?;
    let accounts: Api<ImburseAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &PostParams::default(),
            &imburse_account(namespace, name, base_url, &secret, json!({}))?,
        )
        .await
        .with_context(|| format!("creating ImburseAccount {namespace}/{name}"))?;
    // A bound on waiting, not a performance assertion.
    for _ in 0..900 {
        let ready = accounts
            .get(name)
            .await?
            .status
            .is_some_and(|s| is_true(&s.conditions, READY));
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("ImburseAccount {namespace}/{name} was not Ready within 90 s")
}

/// Merges `extra` into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(base), serde_json::Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
}

/// A free loopback port for a process started next.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How an operator process is started: what every caller gives it, and each caller's own.
pub struct Launch<'a> {
    /// Names its log file (`<logs>/<name>.log`).
    pub name: &'static str,
    /// `--namespace`: where it holds its leader election Lease and reads the credentials of
    /// `ClusterImburseAccount`s.
    pub namespace: &'a str,
    /// `--metrics-bind-address`; `127.0.0.1:0` lets it pick a free port, which it logs.
    pub metrics: &'a str,
    /// `--health-probe-bind-address`.
    pub probes: &'a str,
    /// `--log-filter`; without it the operator's default, or `TKO_LOG_FILTER`.
    pub log_filter: Option<&'a str>,
    /// Added to its environment, e.g. a `POD_NAME` that names it in the Lease.
    pub env: &'a [(&'a str, &'a str)],
    /// After the common arguments.
    pub args: &'a [&'a str],
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            name: "operator",
            namespace: "tenant-key-operator",
            metrics: "127.0.0.1:0",
            probes: "127.0.0.1:0",
            log_filter: None,
            env: &[],
            args: &[],
        }
    }
}

impl Launch<'_> {
    /// Starts `binary` against `control_plane`, logging into `logs`.
    pub fn start(
        &self,
        binary: &Path,
        control_plane: &ControlPlane,
        logs: &Path,
    ) -> Result<Operator> {
        let mut args = vec![
            "--metrics-bind-address",
            self.metrics,
            "--health-probe-bind-address",
            self.probes,
            "--namespace",
            self.namespace,
        ];
        if let Some(filter) = self.log_filter {
            args.extend(["--log-filter", filter]);
        }
        args.extend_from_slice(self.args);
        Operator::start_with_env(
            self.name,
            binary,
            control_plane.kubeconfig_path(),
            logs,
            &args,
            self.env,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn merge_replaces_leaves_and_keeps_siblings() {
        let mut base = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        super::merge(&mut base, json!({"a": {"b": 3}, "d": [2], "e": null}));
        assert_eq!(base, json!({"a": {"b": 3, "c": 2}, "d": [2], "e": null}));
    }
}
