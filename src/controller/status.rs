//! Writing status and Events the same way for every kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;
use tenant_key_api::crd::{Condition, ConditionStatus, set_condition};

use super::{Context, FIELD_MANAGER, error::Error};

pub use tenant_key_api::crd::READY;
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The result a reconcile reports through the kstatus conditions.
pub enum Outcome<'a> {
    Ready {
        reason: &'a str,
        message: &'a str,
    },
    /// Work is under way without a failure (a deletion revoking keys, steps left).
    Progressing {
        reason: &'a str,
        message: &'a str,
    },
    Failed(&'a Error),
}

/// Sets `Ready`, `Reconciling` and `Stalled` for an outcome. A permanent failure stalls the
/// resource; a transient one keeps it reconciling.
pub fn set_outcome(
    conditions: &mut Vec<Condition>,
    outcome: &Outcome<'_>,
    generation: Option<i64>,
    now: &Time,
) {
    let (ready, reconciling, stalled, reason, message) = match outcome {
        Outcome::Ready { reason, message } => (true, false, false, *reason, (*message).to_owned()),
        Outcome::Progressing { reason, message } => {
            (false, true, false, *reason, (*message).to_owned())
        }
        Outcome::Failed(e) => (
            false,
            !e.is_permanent(),
            e.is_permanent(),
            e.reason().as_str(),
            e.to_string(),
        ),
    };
    for (type_, value) in [
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
    ] {
        set_condition(
            conditions,
            type_,
            ConditionStatus::from(value),
            reason,
            &message,
            generation,
            now,
        );
    }
}

/// Now, in whole seconds: Kubernetes serializes times so, and a time computed from a recorded
/// one must come out the same before and after the status round trip.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(whole_seconds(now))
}

/// `at` without its fraction of a second.
pub fn whole_seconds(at: k8s_openapi::jiff::Timestamp) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// The time `delay` from now, whole seconds (as Kubernetes serializes times).
pub fn after(delay: std::time::Duration) -> Time {
    let delay = k8s_openapi::jiff::SignedDuration::try_from(delay)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    let at = k8s_openapi::jiff::Timestamp::now()
        .checked_add(delay)
        .unwrap_or(k8s_openapi::jiff::Timestamp::MAX);
    Time(at.round(k8s_openapi::jiff::Unit::Second).unwrap_or(at))
}

/// Writes `status` with server-side apply: fields the operator stops setting are removed.
/// With a `resource_version` the write only succeeds on that version of the object (a
/// conflict otherwise), for statuses that record a key decided on that version.
pub async fn apply_status<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
    resource_version: Option<&str>,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"]["resourceVersion"] = version.into();
    }
    ctx.metrics.kube_write(&K::plural(&()), "status");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch_status(name, &params, &Patch::Apply(&patch))
        .await?)
}

/// Publishes an Event about `obj`. Failing to publish never fails a reconcile.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish Event");
    }
}
