//! `kubectl tsk version`: this plugin's version, and the operator's as the cluster runs it.
//!
//! The operator publishes no version through the API, so the server's version is read from
//! what runs: the image of each operator Deployment (found by the label the chart gives it,
//! `app.kubernetes.io/name=tenant-key-operator`, in every namespace), whose tag the release
//! sets to the operator's version. The chart's `app.kubernetes.io/version` label is not used:
//! it names the chart's appVersion even when `image.tag` installs another image.

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;

use crate::output::{Format, emit, render};

const SELECTOR: &str = "app.kubernetes.io/name=tenant-key-operator";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Versions {
    client_version: &'static str,
    /// One per operator Deployment found.
    servers: Vec<Server>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Server {
    namespace: String,
    deployment: String,
    image: String,
    /// The image's tag; absent when the image is named by digest alone.
    version: Option<String>,
}

pub async fn show(client: Client, format: Option<Format>) -> Result<()> {
    let deployments = Api::<Deployment>::all(client)
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .with_context(|| format!("listing the Deployments labelled {SELECTOR}"))?;
    let servers = deployments
        .items
        .iter()
        .filter_map(|deployment| {
            let image = deployment
                .spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()?;
            Some(Server {
                namespace: deployment.namespace().unwrap_or_default(),
                deployment: deployment.name_any(),
                version: tag(&image).map(str::to_owned),
                image,
            })
        })
        .collect();
    let versions = Versions {
        client_version: env!("CARGO_PKG_VERSION"),
        servers,
    };
    match format {
        Some(format) => emit(&render(format, &versions)?),
        None => emit(&text(&versions)),
    }
}

fn text(versions: &Versions) -> String {
    let mut text = format!("Client Version: {}\n", versions.client_version);
    if versions.servers.is_empty() {
        text.push_str(&format!(
            "Server Version: unknown (no Deployment labelled {SELECTOR})\n"
        ));
    }
    for server in &versions.servers {
        text.push_str(&format!(
            "Server Version: {} ({}/{}, image {})\n",
            server.version.as_deref().unwrap_or("unknown"),
            server.namespace,
            server.deployment,
            server.image
        ));
    }
    text
}

/// The tag of an image reference (`registry:port/repo:tag@sha256:...`), if it has one.
fn tag(image: &str) -> Option<&str> {
    let named = image.split_once('@').map_or(image, |(named, _)| named);
    let (repository, tag) = named.rsplit_once(':')?;
    // A colon before the last slash separates a registry's port, not a tag.
    (!tag.contains('/') && !repository.is_empty()).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::tag;

    #[test]
    fn tags_are_read_from_image_references() {
        assert_eq!(
            tag("ghcr.io/imburse/tenant-key-operator:0.5.0"),
            Some("0.5.0")
        );
        assert_eq!(
            tag("127.0.0.1:5000/tenant-key-operator:0.5.0@sha256:ab"),
            Some("0.5.0")
        );
        assert_eq!(tag("127.0.0.1:5000/tenant-key-operator@sha256:ab"), None);
        assert_eq!(tag("tenant-key-operator"), None);
    }
}
