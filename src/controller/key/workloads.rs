//! Rollout restarts: workloads that read the Secret get new pods once per key change.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::Run;
use crate::controller::{error::Result, secret::FINGERPRINT_ANNOTATION, status};
use crate::crd::{ConditionStatus, RolloutRestartTarget, WorkloadKind, set_condition};

/// Condition reporting the last rollout restart: `True` when every target was restarted,
/// `False` when some were skipped (missing, or not patchable by the operator).
pub const ROLLOUT_CONDITION: &str = "RolloutRestarted";

impl Run<'_> {
    /// Sets the key's fingerprint as a pod template annotation of every target, then records
    /// that the targets were restarted for this key. The patch is idempotent (a template that
    /// already carries the fingerprint does not roll), so a crash before the record repeats it
    /// harmlessly, and only a new key ever changes a template. A target that is missing or that
    /// the operator may not patch is reported and skipped: the key itself is fine.
    pub(super) async fn restart_workloads(&mut self) -> Result<()> {
        let Some(fingerprint) = self.status.fingerprint.clone() else {
            return Ok(());
        };
        let namespace = self.tsk.namespace().unwrap_or_default();
        let patch = json!({ "spec": { "template": { "metadata": { "annotations": {
            FINGERPRINT_ANNOTATION: fingerprint,
        } } } } });
        let mut restarted = Vec::new();
        let mut skipped = Vec::new();
        for target in &self.tsk.spec.rollout_restart_targets {
            let label = format!("{:?}/{}", target.kind, target.name);
            self.ctx.metrics.kube_write(kind_plural(target), "patch");
            match patch_target(self.ctx.client.clone(), &namespace, target, &patch).await {
                Ok(()) => restarted.push(label),
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404) => {
                    let why = if e.code == 404 {
                        "not found"
                    } else {
                        "the operator may not patch it"
                    };
                    tracing::warn!(target = %label, why, "rollout restart target skipped");
                    skipped.push(format!("{label} ({why})"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.status.rollout_restart_fingerprint = Some(fingerprint);
        let (state, reason, message) = if skipped.is_empty() {
            (
                ConditionStatus::True,
                "Restarted",
                format!("restarted {}", restarted.join(", ")),
            )
        } else {
            (
                ConditionStatus::False,
                "TargetSkipped",
                format!("rollout restart skipped: {}", skipped.join(", ")),
            )
        };
        // Its own condition, so the outcome stays visible until the next key change.
        set_condition(
            &mut self.status.conditions,
            ROLLOUT_CONDITION,
            state,
            reason,
            &message,
            self.tsk.metadata.generation,
            &status::now(),
        );
        if !restarted.is_empty() {
            self.event(
                EventType::Normal,
                "RolloutRestarted",
                "RestartWorkloads",
                format!("restarted {} for the new key", restarted.join(", ")),
            )
            .await;
        }
        if !skipped.is_empty() {
            self.event(
                EventType::Warning,
                "RolloutTargetSkipped",
                "RestartWorkloads",
                message,
            )
            .await;
        }
        Ok(())
    }
}

fn kind_plural(target: &RolloutRestartTarget) -> &'static str {
    match target.kind {
        WorkloadKind::Deployment => "deployments",
        WorkloadKind::StatefulSet => "statefulsets",
        WorkloadKind::DaemonSet => "daemonsets",
    }
}

async fn patch_target(
    client: kube::Client,
    namespace: &str,
    target: &RolloutRestartTarget,
    patch: &serde_json::Value,
) -> kube::Result<()> {
    match target.kind {
        WorkloadKind::Deployment => {
            patch_one::<Deployment>(client, namespace, &target.name, patch).await
        }
        WorkloadKind::StatefulSet => {
            patch_one::<StatefulSet>(client, namespace, &target.name, patch).await
        }
        WorkloadKind::DaemonSet => {
            patch_one::<DaemonSet>(client, namespace, &target.name, patch).await
        }
    }
}

async fn patch_one<K>(
    client: kube::Client,
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> kube::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}
