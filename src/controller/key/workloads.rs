//! Rollout restarts: workloads that read the Secret get new pods once per key change, if their
//! owners consented.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;
use tenant_key_api::{
    crd::{ConditionStatus, RolloutRestartTarget, WorkloadKind, set_condition},
    key_secret::FINGERPRINT_ANNOTATION,
};

use super::Run;
use crate::controller::{error::Result, status};

/// Condition reporting the last rollout restart: `True` when every target was restarted,
/// `False` when some were skipped (missing, without consent, or refused by the API server) or
/// when the restart is retried after a failure of the API server.
pub const ROLLOUT_CONDITION: &str = "RolloutRestarted";

/// Annotation on a workload by which whoever may write it consents to its restart when the key
/// of a TenantSecurityKey it names changes: a comma-separated list of names in its namespace.
pub const RESTART_FOR_ANNOTATION: &str = "imbursepayments.com/restart-for";

/// Reads and patches of one target before a workload that changed between the read and the
/// patch every time is skipped.
const TRIES: u32 = 3;

/// The longest part of an API server message that a report quotes.
const QUOTED: usize = 256;

/// What became of one target.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Restarted,
    /// Skipped for good (until the next key change), for the reason given.
    Skipped(String),
}

impl Run<'_> {
    /// Sets the key's fingerprint as a pod template annotation of every target that consents,
    /// then records that the targets were restarted for this key. The patch is idempotent (a
    /// template that already carries the fingerprint does not roll), so a crash before the
    /// record repeats it harmlessly, and only a new key ever changes a template. A target that
    /// is missing, does not consent or is refused by the API server (any 4xx answer: RBAC, an
    /// admission policy) is reported and skipped: the key itself is fine. When the API server
    /// fails instead, the restart is retried later with backoff, and meanwhile the reconcile
    /// goes on, so a restart never holds the revocation of a replaced key.
    pub(super) async fn restart_workloads(&mut self) -> Result<()> {
        let Some(fingerprint) = self.status.fingerprint.clone() else {
            return Ok(());
        };
        let namespace = self.tsk.namespace().unwrap_or_default();
        let mut restarted = Vec::new();
        let mut skipped = Vec::new();
        let mut failure = None;
        let tsk = self.tsk;
        for target in &tsk.spec.rollout_restart_targets {
            let label = format!("{:?}/{}", target.kind, target.name);
            let outcome = restart(self, &namespace, target, &fingerprint).await;
            match outcome.map_or_else(classify, Ok) {
                Ok(Outcome::Restarted) => restarted.push(label),
                Ok(Outcome::Skipped(why)) => {
                    tracing::warn!(target = %label, why, "rollout restart target skipped");
                    skipped.push(format!("{label} ({why})"));
                }
                Err(e) => {
                    tracing::warn!(target = %label, error = %e, "rollout restart failed; retrying later");
                    failure.get_or_insert((label, e));
                }
            }
        }
        if let Some((label, e)) = failure {
            let e = crate::controller::Error::from(e);
            self.restart_retry = Some(self.ctx.retries.backoff(self.tsk, &e));
            let message = format!("rollout restart of {label} failed and is retried: {e}");
            self.set_rollout_condition(ConditionStatus::False, "RestartFailed", &message);
            self.event(
                EventType::Warning,
                "RolloutRestartFailed",
                "RestartWorkloads",
                message,
            )
            .await;
            return Ok(());
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
        self.set_rollout_condition(state, reason, &message);
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

    /// Its own condition, so the outcome stays visible until the next key change.
    fn set_rollout_condition(&mut self, state: ConditionStatus, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            ROLLOUT_CONDITION,
            state,
            reason,
            message,
            self.tsk.metadata.generation,
            &status::now(),
        );
    }
}

/// Whether the workload's owner consented to restarts for the TenantSecurityKey `name`.
fn consents(annotations: &BTreeMap<String, String>, name: &str) -> bool {
    annotations
        .get(RESTART_FOR_ANNOTATION)
        .is_some_and(|names| names.split(',').any(|n| n.trim() == name))
}

/// A failed read or patch of a target: any refusal by the API server (4xx) skips the target;
/// a conflict left after every try too. A failure of the server itself, of the connection, or
/// a request to slow down (429) is retried later.
fn classify(error: kube::Error) -> Result<Outcome, kube::Error> {
    match &error {
        kube::Error::Api(e) if e.code == 404 => Ok(Outcome::Skipped("not found".into())),
        kube::Error::Api(e) if (400..500).contains(&e.code) && e.code != 429 => Ok(
            Outcome::Skipped(format!("refused ({}): {}", e.code, quote(&e.message))),
        ),
        _ => Err(error),
    }
}

/// At most [`QUOTED`] bytes of `message`, cut at a character boundary.
fn quote(message: &str) -> String {
    if message.len() <= QUOTED {
        return message.to_owned();
    }
    let mut end = QUOTED;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

async fn restart(
    run: &Run<'_>,
    namespace: &str,
    target: &RolloutRestartTarget,
    fingerprint: &str,
) -> kube::Result<Outcome> {
    let client = run.ctx.client.clone();
    match target.kind {
        WorkloadKind::Deployment => {
            restart_one::<Deployment>(run, client, namespace, &target.name, fingerprint).await
        }
        WorkloadKind::StatefulSet => {
            restart_one::<StatefulSet>(run, client, namespace, &target.name, fingerprint).await
        }
        WorkloadKind::DaemonSet => {
            restart_one::<DaemonSet>(run, client, namespace, &target.name, fingerprint).await
        }
    }
}

/// Reads the workload, and patches its pod template only if it consents, on the version that
/// was read: consent withdrawn in between makes the patch fail rather than apply.
async fn restart_one<K>(
    run: &Run<'_>,
    client: kube::Client,
    namespace: &str,
    name: &str,
    fingerprint: &str,
) -> kube::Result<Outcome>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client, namespace);
    for _ in 0..TRIES {
        let workload = api.get(name).await?;
        if !consents(workload.annotations(), &run.name) {
            return Ok(Outcome::Skipped(format!(
                "its owner has not consented; whoever may write it consents by annotating it with {RESTART_FOR_ANNOTATION}={}",
                run.name
            )));
        }
        let patch = json!({
            "metadata": { "resourceVersion": workload.resource_version() },
            "spec": { "template": { "metadata": { "annotations": {
                FINGERPRINT_ANNOTATION: fingerprint,
            } } } },
        });
        run.ctx.metrics.kube_write(&K::plural(&()), "patch");
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(Outcome::Restarted),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Outcome::Skipped(format!(
        "it changed between read and patch {TRIES} times"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Refused")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn consent_names_the_resource_in_a_list() {
        let with = |v: &str| BTreeMap::from([(RESTART_FOR_ANNOTATION.to_owned(), v.to_owned())]);
        assert!(consents(&with("pay"), "pay"));
        assert!(consents(&with("reporting, pay ,other"), "pay"));
        assert!(!consents(&with("payments"), "pay"));
        assert!(!consents(&with(""), "pay"));
        assert!(!consents(&BTreeMap::new(), "pay"));
        let elsewhere =
            BTreeMap::from([("imbursepayments.com/other".to_owned(), "pay".to_owned())]);
        assert!(!consents(&elsewhere, "pay"));
    }

    #[test]
    fn every_refusal_skips_and_every_failure_retries() {
        assert_eq!(
            classify(refused(404, "x")).ok(),
            Some(Outcome::Skipped("not found".into()))
        );
        for code in [400, 403, 409, 413, 422] {
            let outcome = classify(refused(code, "denied by policy")).ok();
            assert_eq!(
                outcome,
                Some(Outcome::Skipped(format!(
                    "refused ({code}): denied by policy"
                ))),
                "{code}"
            );
        }
        for code in [429, 500, 503] {
            assert!(classify(refused(code, "busy")).is_err(), "{code}");
        }
    }

    #[test]
    fn quoted_messages_are_bounded() {
        let long = "é".repeat(QUOTED);
        let quoted = quote(&long);
        assert!(quoted.len() <= QUOTED + '…'.len_utf8());
        assert!(quoted.ends_with('…'));
        assert_eq!(quote("short"), "short");
    }
}
