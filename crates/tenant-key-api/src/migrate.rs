//! Stored-version migration: rewrites every object of the operator's kinds at the storage
//! version, then drops the older versions from each CRD's `status.storedVersions`. Until
//! then etcd may hold objects at a version that a later release no longer serves, and the API
//! server would refuse to drop it from the CRD.
//!
//! An object is rewritten by an empty merge patch: the API server reads it (converting and
//! defaulting it as stored), and writes it back encoded at the storage version, which differs
//! from the stored bytes whenever they are of an older version. Nothing else changes, so the
//! generation stays and the operator has nothing to do.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::crd::{self, VERSION};

/// Attempts at one object when the API server reports a conflict.
const ATTEMPTS: u32 = 5;
/// Objects listed per request.
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CustomResourceDefinition {0} is not installed")]
    NotInstalled(String),
    #[error(
        "CustomResourceDefinition {crd} stores {found}, not {VERSION}: install this version's CRDs first"
    )]
    StorageVersion { crd: String, found: String },
    #[error("reading CustomResourceDefinition {crd}")]
    ReadCrd {
        crd: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {plural}")]
    List {
        plural: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting status.storedVersions of {crd}")]
    StoredVersions {
        crd: String,
        #[source]
        source: kube::Error,
    },
}

/// What the migration did with one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindReport {
    /// The CRD's name, `<plural>.<group>`.
    pub crd: String,
    /// `status.storedVersions` as found.
    pub stored_versions: Vec<String>,
    /// Objects written back at the storage version (or deleted meanwhile).
    pub rewritten: usize,
    /// Objects that could not be rewritten, as `namespace/name: error`.
    pub failed: Vec<String>,
    /// Whether `status.storedVersions` was set to the storage version alone (false when it
    /// already was, or when a rewrite failed).
    pub stored_versions_updated: bool,
}

impl KindReport {
    /// Whether etcd may still hold objects of another version.
    fn needs_rewrite(&self) -> bool {
        self.stored_versions != [VERSION]
    }
}

/// Migrates every kind of [`crd::all`]. Each kind whose `storedVersions` lists another
/// version has all its objects rewritten; only once every rewrite of every kind succeeded are
/// the `storedVersions` set, so that a failure leaves each CRD claiming what etcd may hold.
/// Running it again is harmless: kinds already migrated are left alone.
pub async fn run(client: &Client) -> Result<Vec<KindReport>, Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut reports = Vec::new();
    for generated in crd::all() {
        let name = generated.name_any();
        let installed = crds
            .get_opt(&name)
            .await
            .map_err(|source| Error::ReadCrd {
                crd: name.clone(),
                source,
            })?
            .ok_or_else(|| Error::NotInstalled(name.clone()))?;
        let storage = installed
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map_or_else(String::new, |v| v.name.clone());
        if storage != VERSION {
            return Err(Error::StorageVersion {
                crd: name,
                found: storage,
            });
        }
        let mut report = KindReport {
            stored_versions: installed
                .status
                .and_then(|s| s.stored_versions)
                .unwrap_or_default(),
            crd: name,
            ..KindReport::default()
        };
        if report.needs_rewrite() {
            rewrite_all(client, &generated, &mut report).await?;
        }
        reports.push(report);
    }
    if reports.iter().any(|r| !r.failed.is_empty()) {
        return Ok(reports);
    }
    for report in reports.iter_mut().filter(|r| r.needs_rewrite()) {
        let status = json!({ "status": { "storedVersions": [VERSION] } });
        crds.patch_status(&report.crd, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|source| Error::StoredVersions {
                crd: report.crd.clone(),
                source,
            })?;
        report.stored_versions_updated = true;
    }
    Ok(reports)
}

/// Rewrites every object of the CRD's kind, page by page, recording failures in `report`.
async fn rewrite_all(
    client: &Client,
    crd: &CustomResourceDefinition,
    report: &mut KindReport,
) -> Result<(), Error> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&crd.spec.group, VERSION, &crd.spec.names.kind),
        &crd.spec.names.plural,
    );
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = all.list(&params).await.map_err(|source| Error::List {
            plural: resource.plural.clone(),
            source,
        })?;
        for object in &page.items {
            let name = object.name_any();
            let namespace = object.namespace();
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            match rewrite(&api, &name).await {
                Ok(()) => report.rewritten += 1,
                Err(e) => report.failed.push(format!(
                    "{}{name}: {e}",
                    namespace.map(|ns| format!("{ns}/")).unwrap_or_default()
                )),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Writes one object back unchanged, retrying conflicts. An object deleted meanwhile needs
/// no rewrite.
async fn rewrite(api: &Api<DynamicObject>, name: &str) -> Result<(), kube::Error> {
    let mut attempt = 1;
    loop {
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({})))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
