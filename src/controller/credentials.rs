//! The account key pairs read from their Secrets, kept for a short while. Every reconcile that
//! talks to Imburse needs its account's pair; reading the Secret each time made it the most
//! frequent request of a burst of creates. A pair is read again after any event of its Secret
//! (the account controllers watch every credentials Secret), and at the latest after
//! [`KEPT_FOR`], so that a missed event costs no more than that. Every key records the
//! fingerprint of the pair it was made with, so a pair used a moment after it was replaced is
//! recorded as what it is.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use imburse::KeyPair;

/// How long a pair is used without reading its Secret again.
const KEPT_FOR: Duration = Duration::from_secs(30);
/// Pairs kept at most: one per account and entry names.
const LIMIT: usize = 1024;

/// Which pair: the Secret's namespace and name, and the names of its two entries (accounts may
/// share a Secret and read different entries).
pub type Source = (String, String, String, String);

/// The pairs, by where they were read, and the reads in flight.
#[derive(Debug, Default)]
pub struct Credentials(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    pairs: HashMap<Source, (KeyPair, Instant)>,
    /// Reads in flight per Secret, and whether it changed while they ran: what they read may
    /// be older than the change, and is not kept.
    reads: HashMap<(String, String), (usize, bool)>,
}

/// A read of a Secret in flight; ends when dropped.
pub struct Reading<'a> {
    credentials: &'a Credentials,
    source: Source,
}

impl Reading<'_> {
    /// Keeps the pair this read found, unless its Secret changed meanwhile.
    pub fn keep(self, pair: &KeyPair, now: Instant) {
        let mut state = self.credentials.lock();
        let changed = state
            .reads
            .get(&secret(&self.source))
            .is_some_and(|(_, changed)| *changed);
        if !changed {
            if state.pairs.len() >= LIMIT {
                state.pairs.clear();
            }
            state.pairs.insert(self.source.clone(), (pair.clone(), now));
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut state = self.credentials.lock();
        let key = secret(&self.source);
        if let Some((count, _)) = state.reads.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                state.reads.remove(&key);
            }
        }
    }
}

impl Credentials {
    /// The pair read from `source` within [`KEPT_FOR`] of `now`, if no event of its Secret came
    /// since.
    pub fn get(&self, source: &Source, now: Instant) -> Option<KeyPair> {
        let state = self.lock();
        let (pair, read) = state.pairs.get(source)?;
        (now.checked_duration_since(*read)? <= KEPT_FOR).then(|| pair.clone())
    }

    /// Starts a read of `source`'s Secret, whose pair [`Reading::keep`] keeps.
    pub fn read(&self, source: &Source) -> Reading<'_> {
        let mut state = self.lock();
        if state.reads.len() >= LIMIT {
            // Reads in flight are few; so many means their guards were lost.
            state.reads.clear();
        }
        state.reads.entry(secret(source)).or_insert((0, false)).0 += 1;
        Reading {
            credentials: self,
            source: source.clone(),
        }
    }

    /// Forgets every pair read from the Secret `namespace/name`, which just changed.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        state
            .pairs
            .retain(|(ns, secret, _, _), _| ns != namespace || secret != name);
        if let Some((_, changed)) = state
            .reads
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        {
            *changed = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Entries are written whole: a panic elsewhere leaves the maps usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Secret a source is read from.
fn secret((namespace, name, _, _): &Source) -> (String, String) {
    (namespace.clone(), name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str) -> Source {
        (
            "pay".into(),
            name.into(),
            "publicKey".into(),
            "privateKey".into(),
        )
    }

    fn pair(public: &str) -> KeyPair {
        KeyPair::new(public, imburse::SecretString::from("c2VjcmV0"))
    }

    #[test]
    fn a_pair_is_kept_until_its_secret_changes_or_time_passes() {
        let credentials = Credentials::default();
        let now = Instant::now();
        assert!(credentials.get(&source("account"), now).is_none());
        credentials.read(&source("account")).keep(&pair("p1"), now);
        credentials.read(&source("other")).keep(&pair("p2"), now);
        let kept = credentials.get(&source("account"), now + KEPT_FOR);
        assert_eq!(kept.map(|p| p.public_key), Some("p1".to_owned()));
        assert!(
            credentials
                .get(&source("account"), now + KEPT_FOR + Duration::from_secs(1))
                .is_none(),
            "kept too long"
        );
        credentials.forget("pay", "account");
        assert!(
            credentials.get(&source("account"), now).is_none(),
            "changed"
        );
        assert!(
            credentials.get(&source("other"), now).is_some(),
            "another Secret"
        );
        credentials.forget("orders", "other");
        assert!(
            credentials.get(&source("other"), now).is_some(),
            "another namespace"
        );
    }

    #[test]
    fn a_read_overtaken_by_a_change_is_not_kept() {
        let credentials = Credentials::default();
        let now = Instant::now();
        let reading = credentials.read(&source("account"));
        credentials.forget("pay", "account");
        reading.keep(&pair("old"), now);
        assert!(credentials.get(&source("account"), now).is_none());
        // Once that read is over, the next one is kept.
        credentials.read(&source("account")).keep(&pair("new"), now);
        let kept = credentials.get(&source("account"), now);
        assert_eq!(kept.map(|p| p.public_key), Some("new".to_owned()));
        assert!(credentials.lock().reads.is_empty(), "reads left behind");
    }

    #[test]
    fn the_memory_is_bounded() {
        let credentials = Credentials::default();
        for i in 0..=LIMIT {
            credentials
                .read(&source(&i.to_string()))
                .keep(&pair("p"), Instant::now());
        }
        assert!(credentials.lock().pairs.len() <= LIMIT);
    }
}
