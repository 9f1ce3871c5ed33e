//! What the controllers remember of failures, by object uid: transient failures and their
//! backoff, and creates Imburse refused. Bounded, so objects that failed and were deleted do
//! not accumulate.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{Resource, runtime::controller::Action};

use super::{
    Context,
    error::{Error, Reason, Result},
};

/// Objects remembered at most; beyond it, entries whose wait is over are forgotten first.
const REMEMBERED: usize = 16_384;

/// Longest wait before asking again what Imburse refused: an hour.
const STALLED_CAP: Duration = Duration::from_secs(3600);

/// A create Imburse refused outright.
struct Refusal {
    generation: Option<i64>,
    until: Instant,
    /// Consecutive refusals, for the backoff.
    count: u32,
    reason: Reason,
    message: String,
}

/// Consecutive failures of one object.
struct Failures {
    count: u32,
    /// End of the current backoff.
    not_before: Instant,
    /// What the user asked when it failed: a new spec or a deletion is worth trying at once.
    asked: (Option<i64>, bool),
}

fn asked<K: Resource>(obj: &K) -> (Option<i64>, bool) {
    (
        obj.meta().generation,
        obj.meta().deletion_timestamp.is_some(),
    )
}

fn uid<K: Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

/// Failures and refusals per object uid, with the delays they call for.
pub struct Retries {
    /// First delay after a transient failure; doubled per consecutive failure.
    base: Duration,
    /// Longest delay after a transient failure.
    cap: Duration,
    /// First delay before asking again what Imburse refused; doubled up to an hour.
    stalled: Duration,
    failures: Mutex<HashMap<String, Failures>>,
    refusals: Mutex<HashMap<String, Refusal>>,
}

impl Retries {
    pub fn new(base: Duration, cap: Duration, stalled: Duration) -> Self {
        Self {
            base,
            cap,
            stalled,
            failures: Mutex::default(),
            refusals: Mutex::default(),
        }
    }

    /// Delay before retrying `obj` after a transient error: exponential per object, capped,
    /// with jitter so that objects failing together do not retry together.
    pub fn backoff<K: Resource>(&self, obj: &K, error: &Error) -> Duration {
        let jittered = self.exponential(obj, self.base, self.cap);
        let delay = error
            .retry_after()
            .map_or(jittered, |after| after.max(jittered));
        if let Some(entry) = lock(&self.failures).get_mut(&uid(obj)) {
            entry.not_before = Instant::now() + delay;
            entry.asked = asked(obj);
        }
        delay
    }

    /// Time left in the object's backoff after a transient failure. A reconcile triggered
    /// meanwhile by the operator's own writes must not call Imburse before it ends, or each
    /// failed attempt's writes would start the next at once; a new spec or a deletion is
    /// tried at once.
    pub fn backing_off<K: Resource>(&self, obj: &K) -> Option<Duration> {
        let map = lock(&self.failures);
        let failures = map.get(&uid(obj)).filter(|f| f.asked == asked(obj))?;
        failures.not_before.checked_duration_since(Instant::now())
    }

    /// Records that Imburse refused a create of `obj`; returns the delay before it may be
    /// asked again.
    pub fn refused<K: Resource>(&self, obj: &K, error: &Error) -> Duration {
        let generation = obj.meta().generation;
        let mut map = lock(&self.refusals);
        let count = map
            .get(&uid(obj))
            .filter(|r| r.generation == generation)
            .map_or(1, |r| r.count.saturating_add(1));
        let delay = doubled(self.stalled, count, self.stalled_cap());
        let now = Instant::now();
        if map.len() >= REMEMBERED {
            map.retain(|_, r| r.until > now);
        }
        map.insert(
            uid(obj),
            Refusal {
                generation,
                until: now + delay,
                count,
                reason: error.reason(),
                message: error.to_string(),
            },
        );
        delay
    }

    /// The refusal still standing for `obj` at its generation, as the error to report, with
    /// the time left.
    pub fn refusal<K: Resource>(&self, obj: &K) -> Option<(Error, Duration)> {
        let map = lock(&self.refusals);
        let refusal = map
            .get(&uid(obj))
            .filter(|r| r.generation == obj.meta().generation)?;
        let left = refusal.until.checked_duration_since(Instant::now())?;
        Some((
            Error::Refused {
                reason: refusal.reason,
                message: refusal.message.clone(),
            },
            left,
        ))
    }

    /// Forgets the refusals of an object that got its key.
    pub fn forget_refusal<K: Resource>(&self, obj: &K) {
        lock(&self.refusals).remove(&uid(obj));
    }

    /// Forgets everything about an object that is gone.
    pub fn forget<K: Resource>(&self, obj: &K) {
        self.forget_refusal(obj);
        lock(&self.failures).remove(&uid(obj));
    }

    /// Delay before asking Imburse again what it refused, or answered for credentials other
    /// than a key's: nothing in the cluster may change when Imburse's answer would.
    pub fn stalled_retry<K: Resource>(&self, obj: &K) -> Duration {
        self.exponential(obj, self.stalled, self.stalled_cap())
    }

    fn stalled_cap(&self) -> Duration {
        STALLED_CAP.max(self.stalled)
    }

    /// `base` doubled per consecutive failure of `obj`, capped, with jitter so that objects
    /// failing together do not retry together.
    fn exponential<K: Resource>(&self, obj: &K, base: Duration, cap: Duration) -> Duration {
        let failures = {
            let mut map = lock(&self.failures);
            let now = Instant::now();
            if map.len() >= REMEMBERED && !map.contains_key(&uid(obj)) {
                map.retain(|_, f| f.not_before > now);
            }
            let entry = map.entry(uid(obj)).or_insert(Failures {
                count: 0,
                not_before: now,
                asked: asked(obj),
            });
            entry.count = entry.count.saturating_add(1);
            entry.count
        };
        doubled(base, failures, cap).mul_f64(rand::random_range(0.5..=1.0))
    }

    fn succeeded<K: Resource>(&self, obj: &K) {
        lock(&self.failures).remove(&uid(obj));
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        lock(&self.failures).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `base` doubled for each of `count` consecutive failures after the first, capped.
fn doubled(base: Duration, count: u32, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
        .min(cap)
}

/// The controllers' error policy: retry after the object's backoff.
pub fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.retries.backoff(obj.as_ref(), error))
}

/// Wraps a reconciler so that a success resets the object's backoff.
pub async fn with_backoff_reset<K, F, Fut>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: Resource,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    let result = reconcile(obj.clone(), ctx.clone()).await;
    // A reconcile that only waited out the backoff (see `Retries::backing_off`) is no success.
    if result.is_ok() && ctx.retries.backing_off(obj.as_ref()).is_none() {
        ctx.retries.succeeded(obj.as_ref());
    }
    result
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn object(uid: &str, generation: i64) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn retries() -> Retries {
        Retries::new(
            Duration::from_secs(1),
            Duration::from_secs(300),
            Duration::from_secs(120),
        )
    }

    /// A recreated object (same name, new uid) starts afresh; a new generation is tried at
    /// once.
    #[test]
    fn backoff_is_per_uid_and_generation() {
        let r = retries();
        let error = Error::InvalidSpec("x".into());
        r.backoff(&object("a", 1), &error);
        assert!(r.backing_off(&object("a", 1)).is_some());
        assert!(r.backing_off(&object("a", 2)).is_none());
        assert!(r.backing_off(&object("b", 1)).is_none());
        r.forget(&object("a", 1));
        assert!(r.backing_off(&object("a", 1)).is_none());
    }

    #[test]
    fn refusals_stand_for_their_generation() {
        let r = retries();
        let error = Error::InvalidSpec("x".into());
        let first = r.refused(&object("a", 1), &error);
        assert!(first <= Duration::from_secs(120));
        assert!(r.refusal(&object("a", 1)).is_some());
        assert!(r.refusal(&object("a", 2)).is_none());
        r.forget_refusal(&object("a", 1));
        assert!(r.refusal(&object("a", 1)).is_none());
    }

    /// Objects whose wait is over are forgotten once many are remembered.
    #[test]
    fn memory_is_bounded() {
        let r = Retries::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for i in 0..REMEMBERED * 2 {
            r.stalled_retry(&object(&i.to_string(), 1));
        }
        assert!(r.remembered() <= REMEMBERED);
    }
}
