//! `kubectl tsk rotate`: asks the operator for new keys through the rotate annotation, and
//! optionally waits until they are delivered.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, bail};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::wait::await_condition,
};
use serde::Serialize;
use serde_json::json;
use tenant_key_api::crd::{ROTATE_REQUESTED_AT_ANNOTATION, TenantSecurityKey};
use tokio::task::JoinSet;

use crate::{
    cli::{RotateArgs, Scope},
    output::{self, Format},
};

/// What happened to one resource.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub namespace: String,
    pub name: String,
    /// The annotation's new value; the operator echoes it in `status.lastHandledRotateRequest`.
    pub requested_at: String,
    /// With `--wait`: whether the new key is in the Secret and Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated: Option<bool>,
    /// Fingerprint of the new key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the operator has handled the rotate request `requested_at`: the Secret holds the
/// new key (the handled value is recorded only then) and the key is Ready.
pub fn handled(tsk: &TenantSecurityKey, requested_at: &str) -> bool {
    tsk.status.as_ref().is_some_and(|s| {
        s.last_handled_rotate_request.as_deref() == Some(requested_at)
            && tenant_key_api::crd::is_true(&s.conditions, tenant_key_api::crd::READY)
    })
}

pub async fn run(
    client: Client,
    scope: &Scope,
    args: &RotateArgs,
    format: Option<Format>,
) -> Result<()> {
    let targets = targets(&client, scope, args).await?;
    if targets.is_empty() {
        let where_ = match scope {
            Scope::Namespace(ns) => format!("{ns} namespace"),
            Scope::All => "any namespace".to_owned(),
        };
        eprintln!("No resources found in {where_}.");
        return Ok(());
    }
    // One value for the whole run: each resource is asked once, and the value tells which
    // request the status answers.
    let requested_at = Timestamp::now().to_string();
    let patch =
        json!({"metadata": {"annotations": {ROTATE_REQUESTED_AT_ANNOTATION: requested_at}}});
    let mut rotations = Vec::new();
    for (namespace, name) in targets {
        let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), &namespace);
        let error = match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => None,
            Err(kube::Error::Api(status)) if status.is_not_found() => Some(format!(
                "tenantsecuritykey {name:?} not found in namespace {namespace:?}"
            )),
            Err(e) => Some(format!("requesting rotation of {namespace}/{name}: {e}")),
        };
        match &error {
            Some(error) => eprintln!("error: {error}"),
            None if format.is_none() => {
                output::emit(&format!(
                    "tenantsecuritykey {namespace}/{name} rotation requested ({ROTATE_REQUESTED_AT_ANNOTATION}={requested_at})\n"
                ))?;
            }
            None => {}
        }
        rotations.push(Rotation {
            namespace,
            name,
            requested_at: requested_at.clone(),
            rotated: None,
            fingerprint: None,
            error,
        });
    }
    let waited = if args.wait {
        wait(&client, &mut rotations, args.timeout, format.is_none()).await
    } else {
        Ok(())
    };
    if let Some(format) = format {
        output::emit(&output::render(format, &rotations)?)?;
    }
    waited?;
    let failed = rotations.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} TenantSecurityKeys were not rotated",
            rotations.len()
        );
    }
    Ok(())
}

/// The resources named, or selected by `--all` or `-l`, as (namespace, name).
async fn targets(
    client: &Client,
    scope: &Scope,
    args: &RotateArgs,
) -> Result<Vec<(String, String)>> {
    let Scope::Namespace(namespace) = scope else {
        return select(Api::all(client.clone()), args).await;
    };
    if args.names.is_empty() {
        return select(Api::namespaced(client.clone(), namespace), args).await;
    }
    Ok(args
        .names
        .iter()
        .map(|name| (namespace.clone(), name.clone()))
        .collect())
}

async fn select(api: Api<TenantSecurityKey>, args: &RotateArgs) -> Result<Vec<(String, String)>> {
    let mut params = ListParams::default();
    if let Some(selector) = &args.selector {
        params = params.labels(selector);
    }
    Ok(api
        .list(&params)
        .await?
        .iter()
        .map(|k| (k.namespace().unwrap_or_default(), k.name_any()))
        .collect())
}

/// Waits for every requested rotation, reporting each as it completes. Watches rather than
/// polls, so a rotation shows the moment the operator records it.
async fn wait(
    client: &Client,
    rotations: &mut [Rotation],
    timeout: Duration,
    print: bool,
) -> Result<()> {
    let mut waits = JoinSet::new();
    let mut pending = BTreeMap::new();
    for (index, rotation) in rotations.iter().enumerate() {
        if rotation.error.is_some() {
            continue;
        }
        let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), &rotation.namespace);
        let name = rotation.name.clone();
        let requested_at = rotation.requested_at.clone();
        pending.insert(index, format!("{}/{}", rotation.namespace, name));
        waits.spawn(async move {
            // A deleted resource ends the wait too; it is reported as not rotated.
            let done =
                move |k: Option<&TenantSecurityKey>| k.is_none_or(|k| handled(k, &requested_at));
            (index, await_condition(api, &name, done).await)
        });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while !pending.is_empty() {
        let Ok(Some(joined)) = tokio::time::timeout_at(deadline, waits.join_next()).await else {
            break;
        };
        let (index, result) = joined?;
        pending.remove(&index);
        let rotation = &mut rotations[index];
        match result {
            Ok(Some(tsk)) => {
                rotation.rotated = Some(true);
                rotation.fingerprint = tsk.status.and_then(|s| s.fingerprint);
                if print {
                    output::emit(&format!(
                        "tenantsecuritykey {}/{} rotated (fingerprint {})\n",
                        rotation.namespace,
                        rotation.name,
                        rotation.fingerprint.as_deref().unwrap_or("<none>")
                    ))?;
                }
            }
            Ok(None) => {
                rotation.rotated = Some(false);
                rotation.error = Some("deleted while waiting for the rotation".to_owned());
            }
            Err(e) => {
                rotation.rotated = Some(false);
                rotation.error = Some(format!("watching for the rotation: {e}"));
            }
        }
        if let Some(error) = &rotation.error {
            eprintln!("error: {}/{}: {error}", rotation.namespace, rotation.name);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    for index in pending.keys() {
        rotations[*index].rotated = Some(false);
        rotations[*index].error = Some("timed out waiting for the rotation".to_owned());
    }
    let names: Vec<&str> = pending.values().map(String::as_str).collect();
    bail!(
        "timed out after {} waiting for the rotation of {}",
        output::duration(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX)),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use tenant_key_api::crd::TenantSecurityKeyStatus;

    use super::*;

    fn key(handled_request: Option<&str>, ready: &str) -> TenantSecurityKey {
        let mut tsk: TenantSecurityKey = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {
                "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
                "tenantId": "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
                "roles": ["tenant-admin"],
            },
        }))
        .unwrap();
        tsk.status = Some(TenantSecurityKeyStatus {
            last_handled_rotate_request: handled_request.map(Into::into),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                reason: "KeyReady".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        tsk
    }

    #[test]
    fn handled_needs_the_same_request_and_ready() {
        assert!(handled(&key(Some("t2"), "True"), "t2"));
        assert!(!handled(&key(Some("t1"), "True"), "t2"));
        assert!(!handled(&key(Some("t2"), "False"), "t2"));
        assert!(!handled(&key(None, "True"), "t2"));
    }
}
