//! Whether the controllers make progress. An idle controller is alive: nothing to do is not a
//! fault. A reconcile that has run for longer than the stall timeout is: every request a
//! reconcile makes has a timeout of its own and its retries are bounded, so one that never
//! ends is wedged (a deadlock, a future that is never woken), and it holds one of the few
//! reconcile slots for good. `/livez` then fails, and Kubernetes restarts the process.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The reconciles in flight, oldest first.
#[derive(Debug)]
pub struct Liveness {
    stall_timeout: Duration,
    next: AtomicU64,
    in_flight: Mutex<BTreeMap<u64, Started>>,
}

#[derive(Clone, Copy, Debug)]
struct Started {
    kind: &'static str,
    at: Instant,
}

/// A reconcile that has run for longer than the stall timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The kind of resource it reconciles.
    pub kind: &'static str,
    /// How long it has run.
    pub running_for: Duration,
}

/// One reconcile in flight; it ends when this is dropped, however the reconcile ended.
#[must_use = "the reconcile counts as running until this is dropped"]
pub struct InFlight {
    liveness: Arc<Liveness>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.liveness.lock().remove(&self.id);
    }
}

impl Liveness {
    pub fn new(stall_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            stall_timeout,
            next: AtomicU64::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records a reconcile of `kind` starting now.
    pub fn start(self: &Arc<Self>, kind: &'static str) -> InFlight {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Started {
                kind,
                at: Instant::now(),
            },
        );
        InFlight {
            liveness: self.clone(),
            id,
        }
    }

    /// The oldest reconcile, when it has run for longer than the stall timeout.
    pub fn stall(&self, now: Instant) -> Option<Stall> {
        // Ids grow with time, so the first entry is the oldest.
        let (_, oldest) = self.lock().first_key_value().map(|(id, s)| (*id, *s))?;
        let running_for = now.saturating_duration_since(oldest.at);
        (running_for > self.stall_timeout).then_some(Stall {
            kind: oldest.kind,
            running_for,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Started>> {
        // The map stays consistent whatever panicked while holding it: inserts and removes are
        // single operations.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);

    #[test]
    fn an_idle_controller_is_alive() {
        let liveness = Liveness::new(TIMEOUT);
        assert_eq!(liveness.stall(Instant::now() + TIMEOUT * 10), None);
    }

    #[test]
    fn the_oldest_reconcile_past_the_timeout_is_a_stall_until_it_ends() {
        let liveness = Liveness::new(TIMEOUT);
        let first = liveness.start("TenantSecurityKey");
        let second = liveness.start("ImburseAccount");
        let later = Instant::now() + TIMEOUT + Duration::from_secs(1);
        assert_eq!(
            liveness.stall(Instant::now()),
            None,
            "not yet past the timeout"
        );
        assert_eq!(
            liveness.stall(later).map(|s| s.kind),
            Some("TenantSecurityKey")
        );
        drop(first);
        assert_eq!(
            liveness.stall(later).map(|s| s.kind),
            Some("ImburseAccount")
        );
        drop(second);
        assert_eq!(liveness.stall(later), None);
    }
}
