//! The echoes of the operator's own writes. A write comes back as a watch event of the version
//! it produced; the reconcile that wrote it decided on exactly that content, so waking its key
//! again would only read the Secret once more to decide the same. Any other version (an edit,
//! a deletion, a write by another process) and any other cause (an account, a namespace, a key
//! found missing at Imburse) wakes the key as before.
//!
//! - [`SecretWrites`]: a Secret's echo wakes nothing, also when it outruns the write's answer;
//! - [`KeyWrites`]: a key's echo of an earlier write than the last waits for the last one; the
//!   echo of a write that settled the key is answered from what that reconcile found, without
//!   a request.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::runtime::controller::Action;

/// Writes remembered at most: one per key being created at once is enough, and an echo lost
/// to a relist must not make the map grow.
const LIMIT: usize = 4096;

/// A Secret this process writes: the call in flight (with the versions whose events came
/// meanwhile: the answer and the event of a write race), or the version the write produced.
#[derive(Debug)]
enum SecretWrite {
    InFlight(Vec<String>),
    Written(String),
}

/// What a watch event of a Secret is to the key that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretEvent {
    /// The echo of this process's last write: nothing to do.
    Echo,
    /// It came while this process was writing the Secret: the write tells, when it returns,
    /// whether the event was its echo ([`SecretWrites::finish`]).
    DuringWrite,
    /// Anything else: the key must look.
    Other,
}

/// A Secret write in flight. Dropped without [`Writing::finish`] (its reconcile cancelled),
/// it is forgotten, so that later events of the Secret count as anyone's.
pub struct Writing<'a> {
    writes: &'a SecretWrites,
    key: (String, String),
    finished: bool,
}

impl Writing<'_> {
    /// Notes how the write ended: at `version`, or failed (`None`). Whether an event that came
    /// during the write was not its echo: someone else changed the Secret meanwhile.
    pub fn finish(mut self, version: Option<&str>) -> bool {
        self.finished = true;
        let mut writes = self.writes.lock();
        let seen = match writes.remove(&self.key) {
            Some(SecretWrite::InFlight(seen)) => seen,
            _ => Vec::new(),
        };
        let Some(version) = version else {
            return !seen.is_empty();
        };
        if !seen.iter().any(|v| v == version) {
            writes.insert(self.key.clone(), SecretWrite::Written(version.to_owned()));
        }
        seen.iter().any(|v| v != version)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.writes.lock().remove(&self.key);
        }
    }
}

/// This process's writes of Secrets, by namespace and name, until their echoes arrive.
#[derive(Debug, Default)]
pub struct SecretWrites(Mutex<HashMap<(String, String), SecretWrite>>);

impl SecretWrites {
    /// Notes that this process is about to write `namespace/name`; the write ends with
    /// [`Writing::finish`].
    pub fn begin(&self, namespace: &str, name: &str) -> Writing<'_> {
        let mut writes = self.lock();
        if writes.len() >= LIMIT {
            writes.clear();
        }
        let key = (namespace.to_owned(), name.to_owned());
        writes.insert(key.clone(), SecretWrite::InFlight(Vec::new()));
        Writing {
            writes: self,
            key,
            finished: false,
        }
    }

    /// What an event of `namespace/name` at `version` is; an echo is recognised once.
    pub fn event(&self, namespace: &str, name: &str, version: &str) -> SecretEvent {
        let mut writes = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        match writes.get_mut(&key) {
            Some(SecretWrite::InFlight(seen)) => {
                seen.push(version.to_owned());
                SecretEvent::DuringWrite
            }
            Some(SecretWrite::Written(written)) if written == version => {
                writes.remove(&key);
                SecretEvent::Echo
            }
            _ => SecretEvent::Other,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), SecretWrite>> {
        // Entries are written whole: a panic elsewhere leaves the map usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long the echoes of a key's writes are waited for: they come within a second, and a
/// memory of the world older than this is not trusted.
const REMEMBERED_FOR: Duration = Duration::from_secs(30);
/// Writes remembered per key: a reconcile makes a handful.
const WRITES_PER_KEY: usize = 8;

/// What this process last wrote to a key.
#[derive(Debug)]
struct Written {
    uid: String,
    /// The resource versions its writes produced, oldest first.
    versions: Vec<String>,
    at: Instant,
    /// When the last write settled the key: when it is due to be looked at again.
    settled: Option<Option<Duration>>,
}

/// How a reconcile of a key at some version relates to this process's own writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Echo {
    /// Not one of them (or too old to trust): reconcile.
    No,
    /// An earlier version than this process's last write of the key: the cache has not caught
    /// up yet, and the event of that write will wake the key again.
    Behind,
    /// The last write, which settled the key: what was decided then holds.
    Settled(Action),
}

/// The writes this process made to each key, by namespace and name, until their echoes.
#[derive(Debug, Default)]
pub struct KeyWrites(Mutex<HashMap<(String, String), Written>>);

impl KeyWrites {
    /// Remembers that this process wrote `namespace/name` (`uid`), producing `version`.
    pub fn wrote(
        &self,
        (namespace, name): (&str, &str),
        (uid, version): (&str, &str),
        now: Instant,
    ) {
        let mut writes = self.lock();
        if writes.len() >= LIMIT {
            writes.clear();
        }
        let key = (namespace.to_owned(), name.to_owned());
        let written = writes.entry(key).or_insert_with(|| Written {
            uid: uid.to_owned(),
            versions: Vec::new(),
            at: now,
            settled: None,
        });
        if written.uid != uid {
            written.uid = uid.to_owned();
            written.versions.clear();
        }
        if written.versions.len() >= WRITES_PER_KEY {
            written.versions.remove(0);
        }
        written.versions.push(version.to_owned());
        written.at = now;
        written.settled = None;
    }

    /// Remembers that the last write settled the key, due again after `next`.
    pub fn settled(&self, (namespace, name): (&str, &str), next: Option<Duration>) {
        if let Some(written) = self
            .lock()
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        {
            written.settled = Some(next);
        }
    }

    /// How a reconcile of `namespace/name` (`uid`) at `version` relates to this process's
    /// writes. A settled key's echo is answered once, with the time passed taken off.
    pub fn echo(
        &self,
        (namespace, name): (&str, &str),
        (uid, version): (&str, &str),
        now: Instant,
    ) -> Echo {
        let mut writes = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(written) = writes.get(&key) else {
            return Echo::No;
        };
        let age = now.checked_duration_since(written.at);
        let trusted = written.uid == uid && age.is_some_and(|age| age <= REMEMBERED_FOR);
        let last = written.versions.last().map(String::as_str);
        let echo = match (trusted, written.settled, age) {
            (false, _, _) => Echo::No,
            (true, Some(next), Some(age)) if last == Some(version) => {
                Echo::Settled(next.map_or_else(Action::await_change, |next| {
                    Action::requeue(next.saturating_sub(age))
                }))
            }
            (true, _, _)
                if last != Some(version) && written.versions.iter().any(|v| v == version) =>
            {
                return Echo::Behind;
            }
            _ => Echo::No,
        };
        writes.remove(&key);
        echo
    }

    /// Forgets `namespace/name`: something besides its own writes wants it looked at.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Written>> {
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
        let writes = KeyWrites::default();
        let now = Instant::now();
        assert_eq!(
            writes.echo(KEY, ("u1", "7"), now),
            Echo::No,
            "nothing was written"
        );
        writes.wrote(KEY, ("u1", "7"), now);
        writes.settled(KEY, Some(Duration::from_secs(60)));
        let later = now + Duration::from_secs(10);
        assert_eq!(
            writes.echo(KEY, ("u1", "7"), later),
            Echo::Settled(Action::requeue(Duration::from_secs(50)))
        );
        assert_eq!(
            writes.echo(KEY, ("u1", "7"), later),
            Echo::No,
            "answered twice"
        );
    }

    #[test]
    fn a_cache_behind_the_last_write_waits_for_it() {
        let writes = KeyWrites::default();
        let now = Instant::now();
        for version in ["5", "6", "7"] {
            writes.wrote(KEY, ("u1", version), now);
        }
        writes.settled(KEY, None);
        for behind in ["5", "6"] {
            assert_eq!(writes.echo(KEY, ("u1", behind), now), Echo::Behind);
        }
        assert_eq!(
            writes.echo(KEY, ("u1", "7"), now),
            Echo::Settled(Action::await_change())
        );
        // A last write that did not settle the key is reconciled when it comes back.
        writes.wrote(KEY, ("u1", "8"), now);
        writes.wrote(KEY, ("u1", "9"), now);
        assert_eq!(writes.echo(KEY, ("u1", "8"), now), Echo::Behind);
        assert_eq!(writes.echo(KEY, ("u1", "9"), now), Echo::No);
    }

    #[test]
    fn anything_but_an_echo_is_reconciled() {
        let writes = KeyWrites::default();
        let now = Instant::now();
        for (uid, version, at) in [
            ("u1", "8", now),
            ("u2", "7", now),
            ("u1", "7", now + REMEMBERED_FOR + Duration::from_secs(1)),
        ] {
            writes.wrote(KEY, ("u1", "6"), now);
            writes.wrote(KEY, ("u1", "7"), now);
            writes.settled(KEY, None);
            assert_eq!(
                writes.echo(KEY, (uid, version), at),
                Echo::No,
                "{uid} {version}"
            );
        }
        writes.wrote(KEY, ("u1", "6"), now);
        writes.wrote(KEY, ("u1", "7"), now);
        writes.settled(KEY, None);
        writes.forget("pay", "checkout");
        assert_eq!(writes.echo(KEY, ("u1", "6"), now), Echo::No, "forgotten");
        assert_eq!(writes.echo(KEY, ("u1", "7"), now), Echo::No, "forgotten");
        writes.wrote(KEY, ("u1", "7"), now);
        writes.settled(KEY, None);
        assert_eq!(
            writes.echo(("orders", "checkout"), ("u1", "7"), now),
            Echo::No
        );
    }

    #[test]
    fn only_the_version_written_is_an_echo_and_only_once() {
        let writes = SecretWrites::default();
        assert_eq!(writes.event("pay", "key", "10"), SecretEvent::Other);
        assert!(!writes.begin("pay", "key").finish(Some("10")));
        assert_eq!(writes.event("pay", "key", "9"), SecretEvent::Other, "older");
        assert_eq!(writes.event("pay", "other", "10"), SecretEvent::Other);
        assert_eq!(writes.event("orders", "key", "10"), SecretEvent::Other);
        assert_eq!(writes.event("pay", "key", "10"), SecretEvent::Echo);
        assert_eq!(
            writes.event("pay", "key", "10"),
            SecretEvent::Other,
            "a relist"
        );
    }

    #[test]
    fn events_during_a_write_are_told_apart_when_it_returns() {
        let writes = SecretWrites::default();
        // The echo outran the answer: nothing raced, and nothing is left to wait for.
        let writing = writes.begin("pay", "key");
        assert_eq!(writes.event("pay", "key", "11"), SecretEvent::DuringWrite);
        assert!(!writing.finish(Some("11")));
        assert_eq!(writes.event("pay", "key", "11"), SecretEvent::Other);
        // Someone else's change came meanwhile.
        let writing = writes.begin("pay", "key");
        assert_eq!(writes.event("pay", "key", "12"), SecretEvent::DuringWrite);
        assert!(writing.finish(Some("13")));
        assert_eq!(writes.event("pay", "key", "13"), SecretEvent::Echo);
        // A failed write with an event meanwhile, and one without.
        let writing = writes.begin("pay", "key");
        assert_eq!(writes.event("pay", "key", "14"), SecretEvent::DuringWrite);
        assert!(writing.finish(None));
        assert!(!writes.begin("pay", "key").finish(None));
        // A write whose reconcile was cancelled leaves nothing in flight.
        drop(writes.begin("pay", "key"));
        assert_eq!(writes.event("pay", "key", "15"), SecretEvent::Other);
    }

    #[test]
    fn the_memory_is_bounded() {
        let writes = SecretWrites::default();
        let keys = KeyWrites::default();
        for i in 0..=LIMIT {
            writes.begin("pay", &i.to_string()).finish(Some("1"));
            keys.wrote(("pay", &i.to_string()), ("u", "1"), Instant::now());
        }
        for version in 0..=WRITES_PER_KEY {
            keys.wrote(KEY, ("u", &version.to_string()), Instant::now());
        }
        assert!(writes.lock().len() <= LIMIT);
        assert!(keys.lock().len() <= LIMIT);
        assert!(
            keys.lock()
                .values()
                .all(|w| w.versions.len() <= WRITES_PER_KEY)
        );
    }
}
