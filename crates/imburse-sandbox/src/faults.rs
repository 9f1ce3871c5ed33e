//! Faults the sandbox injects, set by flags or at runtime through `PUT /_sandbox/faults`.

use serde::{Deserialize, Serialize};

/// The fault set. Every field is optional in JSON; a `PUT` replaces the whole set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Fixed delay added to every API call.
    pub latency_ms: u64,
    /// Extra random delay, uniform in `0..=jitter_ms`, added to every API call.
    pub jitter_ms: u64,
    /// Share (0..=1) of API calls answered with 503.
    pub error_rate: f64,
    /// The next `count` API calls are answered with 429 and `Retry-After`.
    pub rate_limited: Option<RateLimitedFault>,
    /// The next N create calls store the key, then drop the connection without a response.
    pub lose_create_responses: u32,
    /// Delay between storing a created key and answering, to widen crash windows.
    pub create_response_delay_ms: u64,
    /// The next N delete calls are answered with 503 and delete nothing, so that a client's
    /// pending revocations stay pending.
    pub fail_deletes: u32,
}

/// A burst of 429 answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitedFault {
    /// How many of the next API calls get 429 (counts down as they are served).
    pub count: u32,
    /// The `Retry-After` value sent, in seconds.
    pub retry_after_seconds: u64,
}

impl Faults {
    /// No fault but a burst of `count` 429 answers carrying `Retry-After: retry_after_seconds`.
    pub fn rate_limited(count: u32, retry_after_seconds: u64) -> Self {
        Self {
            rate_limited: Some(RateLimitedFault {
                count,
                retry_after_seconds,
            }),
            ..Self::default()
        }
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("errorRate must be between 0 and 1".into());
        }
        Ok(())
    }
}
