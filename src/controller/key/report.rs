//! Reporting: status, Events, logs, and when to look again.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Resource, ResourceExt, runtime::controller::Action, runtime::events::EventType};
use tenant_key_api::crd::TenantSecurityKeyStatus;

use super::{Run, Stop};
use crate::controller::{
    error::{Error, Result},
    schedule,
    status::{self, Outcome},
};

impl Run<'_> {
    /// Reports the result and decides when to look again.
    pub(super) async fn finish(mut self, result: Result<Stop>) -> Result<Action> {
        match &result {
            // A resource whose finalizer is gone has no status left to report.
            Ok(Stop::Released) => {
                self.forget();
                return Ok(Action::await_change());
            }
            _ if self.deleting && !self.has_finalizer => {
                self.forget();
                return Ok(Action::await_change());
            }
            // Nothing was done; the status still tells why. Also a deletion must be looked
            // at again, as no change may come to wake it.
            Ok(Stop::Waiting(left)) => return Ok(Action::requeue(*left)),
            Ok(Stop::Stale) => {
                tracing::debug!("cache behind the API server; deciding again shortly");
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            // Someone else changed the resource since this reconcile read it: nothing went
            // wrong, but everything decided here is void. Decide again on the new version.
            Err(e) if e.is_conflict() => return Ok(changed_meanwhile()),
            _ => {}
        }
        let generation = self.tsk.meta().generation;
        let message;
        let outcome = match &result {
            Ok(Stop::Settled) => {
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
            Ok(_) if self.deleting => {
                message = format!(
                    "revoking keys before the resource goes: {} replaced key(s) left",
                    self.status.previous_keys.len()
                );
                Outcome::Progressing {
                    reason: "Deleting",
                    message: &message,
                }
            }
            Ok(_) => Outcome::Progressing {
                reason: "Progressing",
                message: "more steps are needed; they follow shortly",
            },
            Err(e) => Outcome::Failed(e),
        };
        let handled = result
            .as_ref()
            .map_or_else(Error::is_permanent, |stop| *stop == Stop::Settled);
        if handled {
            self.status.observed_generation = generation;
        }
        if matches!(result, Ok(Stop::Settled)) {
            self.fill_in_older_records().await;
        }
        self.schedule();
        let previous = self.tsk.status.clone().unwrap_or_default();
        status::set_outcome(
            &mut self.status.conditions,
            &outcome,
            generation,
            &status::now(),
        );
        let wrote_status = self.status != previous;
        if wrote_status {
            // Every status write is made on the version its content was derived from: another
            // writer in between (a second operator process, a lagging cache) makes it fail,
            // and the next reconcile decides again.
            match status::apply_status(
                self.ctx,
                &self.keys,
                &self.name,
                &self.status,
                self.resource_version.as_deref(),
            )
            .await
            {
                Ok(written) => self.wrote(&written),
                Err(e) if e.is_conflict() => return Ok(changed_meanwhile()),
                Err(e) => {
                    tracing::warn!(reason = e.reason().as_str(), error = %e, "the status could not be written");
                    return Err(e);
                }
            }
        }
        if self.guarded {
            self.drop_intent_annotation().await?;
        }
        match result {
            Ok(Stop::Settled) => {
                self.ctx.retries.forget_refusal(self.tsk);
                let now = Timestamp::now();
                let next_rotation = self
                    .status
                    .next_rotation_at
                    .as_ref()
                    .and_then(|t| schedule::until(now, t.0));
                let next = self
                    .next_revocation()
                    .into_iter()
                    .chain(next_rotation)
                    .chain(self.restart_retry)
                    .min();
                // The write comes back as a watch event of this very version: answered from
                // what was just decided, without reading the Secret again.
                if wrote_status && !self.secret_raced {
                    self.ctx.key_writes.settled(
                        (&self.tsk.namespace().unwrap_or_default(), &self.name),
                        next,
                    );
                }
                Ok(next.map_or_else(Action::await_change, Action::requeue))
            }
            // Not at once: a decision that kept coming back to the same steps must not spin.
            Ok(_) => Ok(Action::requeue(MORE_STEPS)),
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

    /// Forgets what was remembered of a resource that is gone.
    fn forget(&self) {
        self.ctx.retries.forget(self.tsk);
        self.ctx.forget_revoked_remotely(&self.uid);
    }

    /// Keys recorded by older versions lack where they live and the credentials they were
    /// made with: both are where the account points, and with its credentials, when the key
    /// is found healthy. Recorded once, so a later change of the account is seen as one. The
    /// credentials are filled in once the account can be connected to; until then the key is
    /// reported as it is.
    async fn fill_in_older_records(&mut self) {
        if self.status.public_key.is_none() || self.account.is_none() {
            return;
        }
        if self.status.endpoint.is_none() {
            self.status.endpoint = self.desired.endpoint.clone();
        }
        if self.status.credentials_fingerprint.is_none() {
            match self.client().await {
                Ok(client) => {
                    self.status.credentials_fingerprint =
                        Some(client.credentials_fingerprint().to_owned());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "credentials of an older key not recorded yet")
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
    pub(super) fn next_revocation(&self) -> Option<Duration> {
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

/// When a reconcile that ran out of steps goes on.
const MORE_STEPS: Duration = Duration::from_secs(1);

/// When to decide again after someone else changed the resource: soon, with jitter, so that
/// two processes that collided do not collide again.
fn changed_meanwhile() -> Action {
    tracing::info!("the resource changed during the reconcile; deciding again");
    Action::requeue(Duration::from_millis(rand::random_range(500..1500)))
}

fn ready_reason(status: &TenantSecurityKeyStatus) -> Option<&str> {
    tenant_key_api::crd::find_condition(&status.conditions, tenant_key_api::crd::READY)
        .map(|c| c.reason.as_str())
}
