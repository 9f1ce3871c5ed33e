//! Reaching the cluster the way kubectl does, and lookups that fail with kubectl's messages.

use std::{fmt::Debug, path::Path};

use anyhow::{Context as _, Result, anyhow};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

pub struct Connection {
    pub client: Client,
    /// The context's namespace, or `default`.
    pub default_namespace: String,
}

/// Loads `--kubeconfig` when given, else $KUBECONFIG or ~/.kube/config, and falls back to the
/// in-cluster configuration only when no context was asked for.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Connection> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(file, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer().await?,
    };
    let default_namespace = config.default_namespace.clone();
    Ok(Connection {
        client: Client::try_from(config)?,
        default_namespace,
    })
}

/// Gets a namespaced object, turning "not found" into a message that names what was missing.
pub async fn get<K>(api: &Api<K>, namespace: &str, name: &str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let kind = K::kind(&()).to_lowercase();
    api.get_opt(name)
        .await
        .with_context(|| format!("reading {kind} {name:?} in namespace {namespace:?}"))?
        .ok_or_else(|| anyhow!("{kind} {name:?} not found in namespace {namespace:?}"))
}
