//! Reporting: status, Events, logs, and when to look again.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Resource, runtime::controller::Action, runtime::events::EventType};

use super::Run;
use crate::controller::{
    error::{Error, Result},
    schedule,
    status::{self, Outcome},
};
use crate::crd::TenantSecurityKeyStatus;

/// When a deletion that did not finish, without a failure, is looked at again.
const DELETION_RECHECK: Duration = Duration::from_secs(5);

impl Run<'_> {
    /// Reports the result and decides when to look again.
    pub(super) async fn finish(mut self, result: Result<()>) -> Result<Action> {
        // A resource whose finalizer is gone has no status left to report.
        if self.released || (self.deleting && !self.has_finalizer) {
            self.ctx.forget_refusal(&self.uid);
            return Ok(Action::await_change());
        }
        // Before the deletion's own exit below: a deletion that stopped for its backoff or for
        // a cache behind the API server is not done, and no change may come to wake it.
        if let Some(left) = self.waiting
            && result.is_ok()
        {
            return Ok(Action::requeue(left));
        }
        if self.stale && result.is_ok() {
            tracing::debug!("cache behind the API server; deciding again shortly");
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        // A deletion that still holds the finalizer after a run without failure (its steps ran
        // out) has nothing to report either, but must be looked at again until it is done.
        if self.deleting && result.is_ok() {
            return Ok(Action::requeue(DELETION_RECHECK));
        }
        // Someone else changed the resource since this reconcile read it: nothing went wrong,
        // but everything decided here is void. Decide again on the new version.
        if result.as_ref().is_err_and(Error::is_conflict) {
            tracing::info!("the resource changed during the reconcile; deciding again");
            return Ok(Action::requeue(Duration::from_millis(rand::random_range(
                500..1500,
            ))));
        }
        let generation = self.tsk.meta().generation;
        let message;
        let outcome = match &result {
            Ok(()) => {
                message = format!(
                    "key {} is in Secret {}",
                    self.status.public_key.as_deref().unwrap_or_default(),
                    self.desired.secret_name
                );
                Outcome::Ready {
                    reason: "KeyReady",
                    message: &message,
                }
            }
            Err(e) => Outcome::Failed(e),
        };
        let handled = result.as_ref().map_or_else(Error::is_permanent, |()| true);
        if handled {
            self.status.observed_generation = generation;
        }
        // Recorded before any endpoint was: the key lives where the account points.
        if self.status.public_key.is_some() && self.status.endpoint.is_none() && result.is_ok() {
            self.status.endpoint = self.desired.endpoint.clone();
        }
        self.schedule();
        let previous = self.tsk.status.clone().unwrap_or_default();
        status::set_outcome(
            &mut self.status.conditions,
            &outcome,
            generation,
            &status::now(),
        );
        if self.status != previous {
            // A status that records a key decision is written only on the version the
            // decision was made on: another writer in between (a second operator process)
            // makes it fail, and the next reconcile decides again.
            let version = self
                .guarded
                .then_some(self.resource_version.as_deref())
                .flatten();
            status::apply_status(self.ctx, &self.keys, &self.name, &self.status, version).await?;
        }
        match result {
            Ok(()) => {
                self.ctx.forget_refusal(&self.uid);
                let now = Timestamp::now();
                let next_rotation = self
                    .status
                    .next_rotation_at
                    .as_ref()
                    .and_then(|t| schedule::until(now, t.0));
                Ok(self
                    .next_revocation()
                    .into_iter()
                    .chain(next_rotation)
                    .chain(self.restart_retry)
                    .min()
                    .map_or_else(Action::await_change, Action::requeue))
            }
            Err(e) => {
                let reason = e.reason().as_str();
                tracing::warn!(
                    reason,
                    error = %e,
                    correlation_id = e.correlation_id(),
                    permanent = e.is_permanent(),
                    "reconcile failed"
                );
                let changed = ready_reason(&previous) != Some(reason);
                if changed || !e.is_permanent() {
                    self.event(EventType::Warning, reason, "Reconcile", e.event_note())
                        .await;
                }
                match self.retry_in {
                    Some(delay) => Ok(Action::requeue(delay)),
                    None if e.is_permanent() => Ok(Action::await_change()),
                    None => Err(e),
                }
            }
        }
    }

    /// Brings the recorded schedule in line with the spec and the current key: the next
    /// rotation, and which key the restart targets know. Targets listed for the first time
    /// are taken to run with the current key, so only a later key change restarts them.
    fn schedule(&mut self) {
        self.status.next_rotation_at = self.next_rotation().map(Time);
        if self.tsk.spec.rollout_restart_targets.is_empty() {
            self.status.rollout_restart_fingerprint = None;
        } else if self.status.rollout_restart_fingerprint.is_none() {
            self.status.rollout_restart_fingerprint = self.status.fingerprint.clone();
        }
    }

    /// Time until the next replaced key leaves its grace period.
    fn next_revocation(&self) -> Option<Duration> {
        let now = Timestamp::now();
        self.status
            .previous_keys
            .iter()
            .filter(|p| p.revocation_error.is_none())
            .filter_map(|p| p.revoke_after.as_ref())
            .filter_map(|t| Duration::try_from(t.0.duration_since(now)).ok())
            .min()
    }
}

fn ready_reason(status: &TenantSecurityKeyStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::controller::status::READY)
        .map(|c| c.reason.as_str())
}
