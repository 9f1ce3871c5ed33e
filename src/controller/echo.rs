//! The echoes of the operator's own writes. A write comes back as a watch event of the version
//! it produced; the reconcile that wrote it decided on exactly that content, so waking its key
//! again would only read the Secret once more to decide the same. Any other version (an edit,
//! a deletion, a write by another process) and any other cause (an account, a namespace, a key
//! found missing at Imburse) wakes the key as before.
//!
//! - [`SecretWrites`]: a Secret's echo wakes nothing;
//! - [`SettledKeys`]: a key's own echo, after a reconcile that settled it, is answered from
//!   what that reconcile found, without a request.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::runtime::controller::Action;

/// Writes remembered at most: one per key being created at once is enough, and an echo lost
/// to a relist must not make the map grow.
const LIMIT: usize = 4096;

/// The version of each Secret this process wrote last, by namespace and name, until its echo
/// arrives.
#[derive(Debug, Default)]
pub struct SecretWrites(Mutex<HashMap<(String, String), String>>);

impl SecretWrites {
    /// Remembers that this process wrote `namespace/name` at `version`.
    pub fn wrote(&self, namespace: &str, name: &str, version: &str) {
        let mut writes = self.lock();
        if writes.len() >= LIMIT {
            writes.clear();
        }
        writes.insert((namespace.to_owned(), name.to_owned()), version.to_owned());
    }

    /// Whether an event of `namespace/name` at `version` is the echo of the last write; an
    /// echo is recognised once.
    pub fn is_echo(&self, namespace: &str, name: &str, version: &str) -> bool {
        let mut writes = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let echo = writes.get(&key).is_some_and(|written| written == version);
        if echo {
            writes.remove(&key);
        }
        echo
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        // Entries are written whole: a panic elsewhere leaves the map usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a settled key's echo is waited for: it comes within a second, and a memory of
/// the world older than this is not trusted.
const SETTLED_FOR: Duration = Duration::from_secs(30);

/// A key as the reconcile that settled it left it.
#[derive(Debug)]
struct Settled {
    uid: String,
    /// The resource version its last status write produced.
    version: String,
    at: Instant,
    /// When it is due to be looked at again.
    next: Option<Duration>,
}

/// Keys this process settled with a status write, by namespace and name, until the echo of
/// that write.
#[derive(Debug, Default)]
pub struct SettledKeys(Mutex<HashMap<(String, String), Settled>>);

impl SettledKeys {
    /// Remembers that a reconcile settled `namespace/name` (`uid`) and wrote its status at
    /// `version` at `now`, due again after `next`.
    pub fn settled(
        &self,
        (namespace, name): (&str, &str),
        (uid, version): (&str, &str),
        next: Option<Duration>,
        now: Instant,
    ) {
        let mut settled = self.lock();
        if settled.len() >= LIMIT {
            settled.clear();
        }
        settled.insert(
            (namespace.to_owned(), name.to_owned()),
            Settled {
                uid: uid.to_owned(),
                version: version.to_owned(),
                at: now,
                next,
            },
        );
    }

    /// When the key `namespace/name` (`uid`) at `version` is the echo of its settling write:
    /// what that reconcile decided, with the time already passed taken off. An echo is
    /// answered once.
    pub fn echo(
        &self,
        (namespace, name): (&str, &str),
        uid: &str,
        version: &str,
        now: Instant,
    ) -> Option<Action> {
        let settled = self
            .lock()
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let age = now.checked_duration_since(settled.at)?;
        if settled.uid != uid || settled.version != version || age > SETTLED_FOR {
            return None;
        }
        Some(settled.next.map_or_else(Action::await_change, |next| {
            Action::requeue(next.saturating_sub(age))
        }))
    }

    /// Forgets `namespace/name`: something besides its own write wants it looked at.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Settled>> {
        // Entries are written whole: a panic elsewhere leaves the map usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: (&str, &str) = ("pay", "checkout");

    #[test]
    fn a_settled_keys_echo_is_answered_once_with_the_time_left() {
        let settled = SettledKeys::default();
        let now = Instant::now();
        assert_eq!(
            settled.echo(KEY, "u1", "7", now),
            None,
            "nothing was settled"
        );
        settled.settled(KEY, ("u1", "7"), Some(Duration::from_secs(60)), now);
        let later = now + Duration::from_secs(10);
        assert_eq!(
            settled.echo(KEY, "u1", "7", later),
            Some(Action::requeue(Duration::from_secs(50)))
        );
        assert_eq!(settled.echo(KEY, "u1", "7", later), None, "answered twice");
    }

    #[test]
    fn anything_but_the_echo_is_reconciled() {
        let settled = SettledKeys::default();
        let now = Instant::now();
        for (uid, version, at) in [
            ("u1", "8", now),
            ("u2", "7", now),
            ("u1", "7", now + SETTLED_FOR + Duration::from_secs(1)),
        ] {
            settled.settled(KEY, ("u1", "7"), None, now);
            assert_eq!(settled.echo(KEY, uid, version, at), None, "{uid} {version}");
        }
        settled.settled(KEY, ("u1", "7"), None, now);
        settled.forget("pay", "checkout");
        assert_eq!(settled.echo(KEY, "u1", "7", now), None, "forgotten");
        settled.settled(KEY, ("u1", "7"), None, now);
        assert_eq!(settled.echo(("orders", "checkout"), "u1", "7", now), None);
        assert_eq!(
            settled.echo(KEY, "u1", "7", now),
            Some(Action::await_change())
        );
    }

    #[test]
    fn only_the_version_written_is_an_echo_and_only_once() {
        let writes = SecretWrites::default();
        assert!(!writes.is_echo("pay", "key", "10"), "nothing was written");
        writes.wrote("pay", "key", "10");
        assert!(!writes.is_echo("pay", "key", "9"), "an older version");
        assert!(!writes.is_echo("pay", "other", "10"), "another Secret");
        assert!(!writes.is_echo("orders", "key", "10"), "another namespace");
        assert!(writes.is_echo("pay", "key", "10"));
        assert!(
            !writes.is_echo("pay", "key", "10"),
            "a relist after the echo"
        );
        writes.wrote("pay", "key", "11");
        writes.wrote("pay", "key", "12");
        assert!(
            !writes.is_echo("pay", "key", "11"),
            "superseded by a later write"
        );
        assert!(writes.is_echo("pay", "key", "12"));
    }

    #[test]
    fn the_memory_is_bounded() {
        let writes = SecretWrites::default();
        let settled = SettledKeys::default();
        for i in 0..=LIMIT {
            writes.wrote("pay", &i.to_string(), "1");
            settled.settled(("pay", &i.to_string()), ("u", "1"), None, Instant::now());
        }
        assert!(writes.lock().len() <= LIMIT);
        assert!(settled.lock().len() <= LIMIT);
    }
}
