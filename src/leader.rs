//! Leader election: only the replica holding a `coordination.k8s.io` Lease runs the
//! controllers, so that several replicas can run with exactly one doing the work.
//!
//! `kube-lease-manager` acquires, renews and releases the Lease. Reading the Lease once per
//! retry period (a GET, as Kubernetes' own leader election does, so the Lease needs no `list`
//! or `watch` permission) adds two things it does not do:
//! - a leader that cannot confirm a renewal within the renew deadline steps down. The crate
//!   keeps retrying a failed renewal and would keep leading while another replica, after the
//!   lease duration, takes over; the deadline ends the leadership a margin before that.
//! - a follower contests a released Lease at its next read. The crate sleeps until the expiry
//!   it last read, so a rolling update would otherwise wait out a whole lease duration.
//!
//! Stepping down ends the process with an error: the controllers are dropped, which cancels
//! the reconciles in flight (each is crash-safe), and Kubernetes restarts the container, which
//! then follows. SIGTERM instead lets the reconciles in flight finish (for at most
//! [`DRAIN_LIMIT`]) and then releases the Lease, so that a successor starts at once.

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use tokio::{sync::watch, task::JoinHandle};

/// How long reconciles in flight may run on after SIGTERM before they are cancelled and the
/// Lease released: within Kubernetes' default termination grace period of 30 seconds.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// How leadership is contested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's name in the Lease; unique per process.
    pub identity: String,
    /// How long followers wait after the leader's last renewal before taking over.
    pub lease_duration: Duration,
    /// How long after its last renewal a leader that cannot renew steps down.
    pub renew_deadline: Duration,
    /// How often the leader renews.
    pub retry_period: Duration,
}

/// Why leader election ended the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election settings: {0}")]
    Settings(String),
    #[error("leader election: {0}")]
    Lease(#[from] LeaseManagerError),
    #[error("leadership lost: {0}")]
    Lost(String),
}

impl Settings {
    /// The Lease duration and the grace of `kube-lease-manager` (it renews when that much of
    /// the lease is left, so `duration - grace` is the renewal period), in whole seconds as
    /// the Lease records them. The renew deadline must fall between the retry period and the
    /// lease duration, as with Kubernetes' own components, or a leader would either give up
    /// between two renewals or still lead when others take over.
    fn lease_params(&self) -> Result<(u64, u64), Error> {
        let whole = |d: Duration, what: &str| {
            if d.subsec_nanos() == 0 && d.as_secs() > 0 {
                Ok(d.as_secs())
            } else {
                Err(Error::Settings(format!(
                    "the {what} must be a positive number of whole seconds, not {d:?}"
                )))
            }
        };
        let duration = whole(self.lease_duration, "lease duration")?;
        let retry = whole(self.retry_period, "retry period")?;
        if self.renew_deadline >= self.lease_duration {
            return Err(Error::Settings(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            )));
        }
        if self.renew_deadline <= self.retry_period {
            return Err(Error::Settings(format!(
                "the renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            )));
        }
        Ok((duration, duration - retry))
    }

    /// Checks the settings, so that bad flags fail at start-up.
    pub fn check(&self) -> Result<(), Error> {
        self.lease_params().map(|_| ())
    }
}

/// A name for this process in the Lease: the pod name (or else the host name) with a random
/// suffix, so that a restarted container does not mistake its predecessor's lease for its own.
pub fn identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "tenant-key-operator".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}_{}", &suffix[..8])
}

/// What a Lease says about `identity`'s leadership.
#[derive(Debug, PartialEq, Eq)]
enum Holding {
    /// Held by `identity`: it must step down at this time unless it renews before.
    Until(SystemTime),
    /// Held by another replica, or by none.
    Not(Option<String>),
}

fn holding(lease: &Lease, identity: &str, renew_deadline: Duration) -> Holding {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.clone());
    let renewed = spec.and_then(|s| s.renew_time.as_ref());
    match (holder, renewed) {
        // The renewal time was written by this process, so its own clock compares it.
        (Some(holder), Some(renewed)) if holder == identity => {
            Holding::Until(SystemTime::from(renewed.0) + renew_deadline)
        }
        (holder, _) => Holding::Not(holder),
    }
}

/// Until when a Lease is held: its holder's last renewal plus its duration.
fn held_until(lease: &Lease) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    spec.holder_identity.as_ref()?;
    let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
    let duration = u64::try_from(spec.lease_duration_seconds?).ok()?;
    Some(renewed + Duration::from_secs(duration))
}

/// Whether the holder gave the Lease up before it expired (a leader shutting down), which the
/// manager would only notice at the expiry. An expired Lease cleared by a follower (the
/// manager itself, usually) is not: the manager is acquiring it already.
fn released_early(held_until: Option<SystemTime>, now: &Lease, at: SystemTime) -> bool {
    let unheld = now
        .spec
        .as_ref()
        .is_none_or(|s| s.holder_identity.is_none());
    unheld && held_until.is_some_and(|until| until > at)
}

/// Runs `controllers` while this process holds the Lease; returns once `shutdown` resolved
/// and the Lease is released, or with [`Error::Lost`] as soon as leadership is lost.
pub async fn run<S>(
    client: Client,
    settings: &Settings,
    shutdown: S,
    controllers: impl Future<Output = ()>,
) -> Result<(), Error>
where
    S: Future<Output = ()> + Clone,
{
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let Some((leading, manager)) = follow(&client, &leases, settings, shutdown.clone()).await?
    else {
        return Ok(());
    };
    tracing::info!(
        identity = %settings.identity,
        lease = %settings.lease_name,
        "acquired the lease: starting the controllers"
    );
    lead(&leases, settings, leading, manager, shutdown, controllers).await
}

type Manager = JoinHandle<Result<LeaseManager, LeaseManagerError>>;

/// Waits until this process holds the Lease (returns the manager that renews it) or
/// `shutdown` resolves (returns `None`).
async fn follow<S>(
    client: &Client,
    leases: &Api<Lease>,
    settings: &Settings,
    shutdown: S,
) -> Result<Option<(watch::Receiver<bool>, Manager)>, Error>
where
    S: Future<Output = ()> + Clone,
{
    let (duration, grace) = settings.lease_params()?;
    loop {
        let reads = lease_reads(leases, &settings.lease_name, settings.retry_period);
        futures::pin_mut!(reads);
        // The first read comes before the manager's: a release between the manager's read and
        // ours would otherwise look like a Lease never held, and the manager would sleep until
        // the expiry it read.
        let mut seen_until = match reads.next().await {
            Some(Ok(lease)) => lease.as_ref().and_then(held_until),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading the lease");
                None
            }
            None => None,
        };
        let (mut leading, manager) = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.namespace)
            .with_parameters(LeaseParams::new(&settings.identity, duration, grace))
            .build()
            .await?
            .watch()
            .await;
        tracing::info!(
            identity = %settings.identity,
            lease = %settings.lease_name,
            "waiting for the lease"
        );
        loop {
            tokio::select! {
                () = shutdown.clone() => {
                    stop(leading, manager).await;
                    return Ok(None);
                }
                changed = leading.changed() => match changed {
                    Ok(()) if *leading.borrow_and_update() => {
                        return Ok(Some((leading, manager)));
                    }
                    Ok(()) => {}
                    Err(_) => return Err(ended(manager).await),
                },
                read = reads.next() => match read {
                    Some(Ok(Some(lease))) => {
                        if released_early(seen_until, &lease, SystemTime::now()) {
                            break;
                        }
                        seen_until = held_until(&lease);
                    }
                    Some(Ok(None)) | None => break,
                    Some(Err(e)) => tracing::debug!(error = %e, "reading the lease"),
                },
            }
        }
        // Released (or deleted): a new manager reads the Lease at once instead of sleeping
        // until the expiry the current one last read.
        tracing::debug!("the lease was released: contesting it now");
        stop(leading, manager).await;
    }
}

/// Runs the controllers until they finish after `shutdown` (then releases the Lease) or
/// leadership is lost.
async fn lead<S>(
    leases: &Api<Lease>,
    settings: &Settings,
    mut leading: watch::Receiver<bool>,
    manager: Manager,
    shutdown: S,
    controllers: impl Future<Output = ()>,
) -> Result<(), Error>
where
    S: Future<Output = ()> + Clone,
{
    let reads = lease_reads(leases, &settings.lease_name, settings.retry_period);
    let drain = async {
        shutdown.await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    // Leaving the select drops the controllers: whatever was still running is cancelled
    // before the Lease is released.
    tokio::select! {
        () = controllers => {}
        () = drain => tracing::warn!(
            limit = ?DRAIN_LIMIT,
            "reconciles still running after the shutdown signal: cancelled"
        ),
        reason = leadership(&mut leading, reads, settings) => {
            tracing::error!(%reason, "leadership lost: stopping");
            // Not released: a leader that cannot renew may not reach the API server either,
            // and another replica may hold the Lease already.
            return Err(Error::Lost(reason));
        }
    }
    stop(leading, manager).await;
    tracing::info!(lease = %settings.lease_name, "released the lease");
    Ok(())
}

/// Resolves, with the reason, when this process must stop leading.
async fn leadership(
    leading: &mut watch::Receiver<bool>,
    reads: impl Stream<Item = kube::Result<Option<Lease>>>,
    settings: &Settings,
) -> String {
    futures::pin_mut!(reads);
    // The manager reported the Lease acquired just now.
    let mut deadline = tokio::time::Instant::now() + settings.renew_deadline;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                return format!(
                    "no renewal of the lease confirmed within the renew deadline ({:?})",
                    settings.renew_deadline
                );
            }
            changed = leading.changed() => match changed {
                Ok(()) if !*leading.borrow_and_update() => {
                    return "the lease is held by another replica".to_owned();
                }
                Ok(()) => {}
                Err(_) => return "the lease manager stopped".to_owned(),
            },
            read = reads.next() => match read {
                Some(Ok(Some(lease))) => {
                    match holding(&lease, &settings.identity, settings.renew_deadline) {
                        Holding::Until(until) => {
                            let left = until
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            deadline = tokio::time::Instant::now() + left;
                        }
                        Holding::Not(holder) => {
                            return format!(
                                "the lease is held by {}",
                                holder.as_deref().unwrap_or("no one")
                            );
                        }
                    }
                }
                Some(Ok(None)) | None => return "the lease was deleted".to_owned(),
                // The deadline covers an API server that cannot be reached.
                Some(Err(e)) => tracing::debug!(error = %e, "reading the lease"),
            },
        }
    }
}

/// The Lease (`None` once it is gone), read now and then every `period`. A GET without a
/// resource version is served from etcd, never from a cache that may predate this process's
/// own acquisition.
fn lease_reads(
    leases: &Api<Lease>,
    name: &str,
    period: Duration,
) -> impl Stream<Item = kube::Result<Option<Lease>>> + use<> {
    let (leases, name) = (leases.clone(), name.to_owned());
    futures::stream::unfold(true, move |first| {
        let (leases, name) = (leases.clone(), name.clone());
        async move {
            if !first {
                tokio::time::sleep(period).await;
            }
            Some((leases.get_opt(&name).await, false))
        }
    })
}

/// Stops a manager: closing its channel makes it release the Lease if this process holds it.
async fn stop(leading: watch::Receiver<bool>, manager: Manager) {
    drop(leading);
    match manager.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
        Err(e) => tracing::warn!(error = %e, "the lease manager failed"),
    }
}

/// The error of a manager whose task ended on its own.
async fn ended(manager: Manager) -> Error {
    match manager.await {
        Ok(Err(e)) => Error::Lease(e),
        Ok(Ok(_)) => Error::Lost("the lease manager stopped".to_owned()),
        Err(e) => Error::Lost(format!("the lease manager failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime,
        jiff::Timestamp,
    };

    use super::*;

    fn settings(lease: u64, renew: u64, retry: u64) -> Settings {
        Settings {
            namespace: "tko".into(),
            lease_name: "tenant-key-operator".into(),
            identity: "pod-a_1234abcd".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn the_manager_renews_once_per_retry_period() {
        assert_eq!(settings(15, 10, 2).lease_params().ok(), Some((15, 13)));
        assert_eq!(settings(4, 3, 1).lease_params().ok(), Some((4, 3)));
    }

    #[test]
    fn the_renew_deadline_falls_between_retry_period_and_lease_duration() {
        for bad in [
            settings(15, 15, 2),
            settings(15, 20, 2),
            settings(15, 2, 2),
            settings(15, 1, 2),
            settings(15, 10, 0),
            settings(0, 10, 2),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let mut fractional = settings(15, 10, 2);
        fractional.retry_period = Duration::from_millis(1500);
        assert!(fractional.check().is_err());
        fractional.retry_period = Duration::from_secs(2);
        fractional.renew_deadline = Duration::from_millis(9500);
        assert!(fractional.check().is_ok());
    }

    #[test]
    fn identities_are_the_pod_name_with_a_random_suffix() {
        let a = identity(Some("operator-7d9f-x2x4z"));
        let b = identity(Some("operator-7d9f-x2x4z"));
        assert!(a.starts_with("operator-7d9f-x2x4z_"), "{a}");
        assert_eq!(a.len(), "operator-7d9f-x2x4z_".len() + 8);
        assert_ne!(a, b);
        assert!(!identity(None).starts_with('_'));
        assert!(!identity(Some(" ")).starts_with(' '));
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed
                    .map(|s| MicroTime(Timestamp::from_second(s).unwrap_or_default())),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_release_before_expiry_makes_a_follower_contest_at_once() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let held = lease(Some("pod-b_0000ffff"), Some(1_000));
        assert_eq!(held_until(&held), Some(at(1_015)));
        assert_eq!(held_until(&lease(None, None)), None);
        let released = lease(None, None);
        // The leader shut down and released the Lease.
        assert!(released_early(held_until(&held), &released, at(1_005)));
        // The Lease had expired: the manager cleared it and is taking it.
        assert!(!released_early(held_until(&held), &released, at(1_016)));
        // Nothing was held before: the manager read the Lease unheld and is taking it.
        assert!(!released_early(None, &released, at(1_005)));
        // Still held, by whoever.
        assert!(!released_early(held_until(&held), &held, at(1_005)));
    }

    #[test]
    fn a_leader_holds_until_its_last_renewal_plus_the_renew_deadline() {
        let me = "pod-a_1234abcd";
        let deadline = Duration::from_secs(10);
        assert_eq!(
            holding(&lease(Some(me), Some(1_000)), me, deadline),
            Holding::Until(SystemTime::UNIX_EPOCH + Duration::from_secs(1_010))
        );
        assert_eq!(
            holding(&lease(Some("pod-b_0000ffff"), Some(1_000)), me, deadline),
            Holding::Not(Some("pod-b_0000ffff".into()))
        );
        assert_eq!(
            holding(&lease(None, None), me, deadline),
            Holding::Not(None)
        );
        // A holder without a renewal time cannot be timed: not a lease to lead on.
        assert_eq!(
            holding(&lease(Some(me), None), me, deadline),
            Holding::Not(Some(me.into()))
        );
        assert_eq!(holding(&Lease::default(), me, deadline), Holding::Not(None));
    }
}
