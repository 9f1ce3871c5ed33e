//! Adding and removing one finalizer with JSON patches conditional on the version read.
//!
//! A server-side apply that leaves a finalizer out does not remove it while another field
//! manager also lists it (an object created with the finalizer in its manifest, or restored by
//! a backup tool), and a merge patch of the whole list would drop a finalizer someone added
//! in between. A JSON patch that tests the resource version and the entry it removes does
//! neither.

use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{Error, Result};
use crate::metrics::Metrics;

/// Attempts before giving up on an object that keeps changing under the patch.
const TRIES: usize = 3;

/// Adds `finalizer` to the object named `name` (`present`) or removes it, and confirms the
/// result. Returns false when the object does not exist (any more).
pub async fn set<K>(
    api: &Api<K>,
    name: &str,
    finalizer: &str,
    present: bool,
    metrics: &Metrics,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    if present {
        add(api, name, finalizer, metrics).await
    } else {
        remove(api, name, finalizer, metrics).await
    }
}

/// Adds `finalizer` to the object named `name` unless it is there. Returns false when the
/// object does not exist.
async fn add<K>(api: &Api<K>, name: &str, finalizer: &str, metrics: &Metrics) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    retry(api, name, finalizer, metrics, |obj| {
        if obj.finalizers().iter().any(|f| f == finalizer) {
            return None;
        }
        let add = if obj.meta().finalizers.is_some() {
            json!({ "op": "add", "path": "/metadata/finalizers/-", "value": finalizer })
        } else {
            json!({ "op": "add", "path": "/metadata/finalizers", "value": [finalizer] })
        };
        Some(vec![add])
    })
    .await
}

/// Removes `finalizer` from the object named `name` and confirms it is gone. Returns false
/// when the object does not exist (any more).
pub async fn remove<K>(api: &Api<K>, name: &str, finalizer: &str, metrics: &Metrics) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    retry(api, name, finalizer, metrics, |obj| {
        let index = obj.finalizers().iter().position(|f| f == finalizer)?;
        let path = format!("/metadata/finalizers/{index}");
        Some(vec![
            json!({ "op": "test", "path": path, "value": finalizer }),
            json!({ "op": "remove", "path": path }),
        ])
    })
    .await
}

/// Reads the object, asks `ops` for the operations that bring it where it should be (none:
/// it is there), and applies them on the version read; a conflict reads it again.
async fn retry<K>(
    api: &Api<K>,
    name: &str,
    finalizer: &str,
    metrics: &Metrics,
    ops: impl Fn(&K) -> Option<Vec<Value>>,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    for _ in 0..TRIES {
        let Some(obj) = api.get_opt(name).await? else {
            return Ok(false);
        };
        let Some(changes) = ops(&obj) else {
            return Ok(true);
        };
        let mut operations = vec![json!({
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": obj.resource_version(),
        })];
        operations.extend(changes);
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(operations))
            .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
        metrics.kube_write(&K::plural(&()), "patch");
        match api
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(written) if ops(&written).is_none() => return Ok(true),
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
            // A failed test (the object changed since it was read): read it again.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::conflict(&format!(
        "finalizer {finalizer} on {name}: the object keeps changing"
    )))
}
