//! When a key is due for rotation: pure time arithmetic, so it is the same after a restart.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

/// Share of the interval by which a key may rotate early, so that keys created together do
/// not all rotate together.
const JITTER: f64 = 0.1;

/// When a key created at `created_at` is rotated: `interval` later, less up to a tenth of it.
/// The early part is fixed by `seed` (the resource's uid and the attempt that made the key),
/// so every process computes the same time for the same key, and each new key gets another.
pub fn next_rotation(created_at: Timestamp, interval: Duration, seed: &str) -> Timestamp {
    let early = interval.mul_f64(JITTER * fraction(seed));
    let delay =
        SignedDuration::try_from(interval.saturating_sub(early)).unwrap_or(SignedDuration::MAX);
    created_at.checked_add(delay).unwrap_or(Timestamp::MAX)
}

/// A number in [0, 1) derived from `seed`.
fn fraction(seed: &str) -> f64 {
    let digest = Sha256::digest(seed.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // The top 53 bits fill an f64's mantissa exactly.
    (u64::from_be_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
}

/// Time from `now` until `at`; `None` when it has come.
pub fn until(now: Timestamp, at: Timestamp) -> Option<Duration> {
    Duration::try_from(at.duration_since(now))
        .ok()
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_early_by_at_most_a_tenth_and_stable() {
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let interval = Duration::from_secs(720 * 3600);
        let latest = created
            .checked_add(SignedDuration::from_hours(720))
            .unwrap();
        let earliest = created
            .checked_add(SignedDuration::from_hours(648))
            .unwrap();
        let mut times: Vec<Timestamp> = (0..50)
            .map(|i| next_rotation(created, interval, &format!("uid-{i}:attempt")))
            .collect();
        assert!(times.iter().all(|t| *t > earliest && *t <= latest));
        assert_eq!(
            next_rotation(created, interval, "uid-1:attempt"),
            next_rotation(created, interval, "uid-1:attempt")
        );
        times.sort();
        times.dedup();
        assert!(times.len() > 45, "keys created together rotate apart");
    }

    #[test]
    fn until_is_none_once_the_time_has_come() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let later = now.checked_add(SignedDuration::from_secs(30)).unwrap();
        assert_eq!(until(now, later), Some(Duration::from_secs(30)));
        assert_eq!(until(later, now), None);
        assert_eq!(until(now, now), None);
    }
}
