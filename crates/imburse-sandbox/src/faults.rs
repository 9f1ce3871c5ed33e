//! Faults the sandbox injects, set by flags or at runtime through `PUT /_sandbox/faults`.

use imburse::Operation;
use serde::{Deserialize, Serialize};

/// Largest body an [`Misbehaviour::OversizedBody`] may ask for: enough to exceed any sane
/// client limit, small enough not to exhaust the sandbox's memory.
pub const MAX_OVERSIZED_BYTES: u64 = 64 * 1024 * 1024;

/// Longest [`Misbehaviour::Hang`]: longer than any client timeout worth testing.
pub const MAX_HANG_MS: u64 = 10 * 60 * 1000;

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
    /// Scripted misbehaviours of single operations. A call uses the first script for its
    /// operation that still has a count left; exhausted scripts are removed, so `GET` shows
    /// what is left.
    pub scripted: Vec<ScriptedFault>,
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

/// The next `count` calls of `operation` answer with `misbehaviour`.
///
/// JSON: `{"operation": "create_key", "count": 1, "misbehaviour": {"kind": "emptyBody"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptedFault {
    /// The operation whose calls misbehave.
    pub operation: Operation,
    /// How many calls misbehave (counts down as they are served).
    pub count: u32,
    /// What those calls answer.
    pub misbehaviour: Misbehaviour,
}

/// A way for an API call to go wrong.
///
/// Two families, because a real deployment fails in both places:
/// - *in front of the API* ([`Misbehaviour::Redirect`], [`Misbehaviour::Status`]): a gateway
///   answers instead of the API, so the call has no effect (no token issued, no key stored or
///   deleted);
/// - *after the API* (every other kind): the call takes effect as usual (a create stores its
///   key, a token is issued) and only its successful answer is spoiled on the way back. A call
///   the API refuses (e.g. 401) is answered as usual and does not use up the count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
pub enum Misbehaviour {
    /// The success status with an HTML body instead of JSON.
    NonJsonBody,
    /// The success status with an empty body.
    EmptyBody,
    /// `create_key` only: the created key's answer without `privateKey`.
    MissingPrivateKey,
    /// `create_key` only: the created key's answer with a `privateKey` that is not base64.
    InvalidPrivateKey,
    /// `token` only: the token answer without `expires`.
    MissingExpiry,
    /// `token` only: the token answer with an `expires` an hour in the past (the token itself
    /// is valid for the configured lifetime).
    ExpiredToken,
    /// The success answer padded to `bytes` bytes (a JSON object with an extra `padding`
    /// field), sent chunked without `Content-Length`.
    #[serde(rename_all = "camelCase")]
    OversizedBody {
        /// Total body size; at most [`MAX_OVERSIZED_BYTES`].
        bytes: u64,
    },
    /// The answer is held back for `ms` milliseconds, then sent (if the client still waits).
    #[serde(rename_all = "camelCase")]
    Hang {
        /// The delay; at most [`MAX_HANG_MS`].
        ms: u64,
    },
    /// A gateway answers `302 Found` with `Location: location`.
    #[serde(rename_all = "camelCase")]
    Redirect {
        /// An absolute `http` or `https` URL.
        location: String,
    },
    /// A gateway answers with `status` and `body` (sent as JSON if it parses as JSON, else as
    /// plain text), and `Retry-After` if set.
    #[serde(rename_all = "camelCase")]
    Status {
        /// An HTTP status code, 200 to 599.
        status: u16,
        /// The body, verbatim.
        #[serde(default)]
        body: String,
        /// The `Retry-After` header, in seconds.
        #[serde(default)]
        retry_after_seconds: Option<u64>,
    },
}

impl Misbehaviour {
    /// A gateway's answer with `status` and `body`, without `Retry-After`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self::Status {
            status,
            body: body.into(),
            retry_after_seconds: None,
        }
    }

    /// Whether the misbehaviour answers in front of the API (the call has no effect) rather
    /// than spoiling the API's successful answer.
    pub fn replaces_call(&self) -> bool {
        matches!(self, Self::Redirect { .. } | Self::Status { .. })
    }

    /// Checks the values and that the misbehaviour makes sense for `operation`.
    fn validate(&self, operation: Operation) -> Result<(), String> {
        let only = |wanted: Operation, kind: &str| {
            if operation == wanted {
                Ok(())
            } else {
                Err(format!("{kind} applies to {wanted} only"))
            }
        };
        match self {
            Self::NonJsonBody | Self::EmptyBody => Ok(()),
            Self::MissingPrivateKey => only(Operation::CreateKey, "missingPrivateKey"),
            Self::InvalidPrivateKey => only(Operation::CreateKey, "invalidPrivateKey"),
            Self::MissingExpiry => only(Operation::Token, "missingExpiry"),
            Self::ExpiredToken => only(Operation::Token, "expiredToken"),
            Self::OversizedBody { bytes } if *bytes > MAX_OVERSIZED_BYTES => Err(format!(
                "oversizedBody.bytes must be at most {MAX_OVERSIZED_BYTES}"
            )),
            Self::OversizedBody { .. } => Ok(()),
            Self::Hang { ms } if *ms > MAX_HANG_MS => {
                Err(format!("hang.ms must be at most {MAX_HANG_MS}"))
            }
            Self::Hang { .. } => Ok(()),
            Self::Redirect { location } => reqwest::Url::parse(location)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .map(drop)
                .ok_or_else(|| "redirect.location must be an absolute http(s) URL".into()),
            Self::Status { status, .. } if !(200..=599).contains(status) => {
                Err("status.status must be between 200 and 599".into())
            }
            Self::Status { .. } => Ok(()),
        }
    }
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

    /// No fault but the next `count` calls of `operation` answering with `misbehaviour`.
    pub fn scripted(operation: Operation, count: u32, misbehaviour: Misbehaviour) -> Self {
        Self::default().and_scripted(operation, count, misbehaviour)
    }

    /// These faults plus a script, tried after the scripts already there.
    pub fn and_scripted(
        mut self,
        operation: Operation,
        count: u32,
        misbehaviour: Misbehaviour,
    ) -> Self {
        self.scripted.push(ScriptedFault {
            operation,
            count,
            misbehaviour,
        });
        self
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("errorRate must be between 0 and 1".into());
        }
        for script in &self.scripted {
            if script.count == 0 {
                return Err("scripted[].count must be at least 1".into());
            }
            script.misbehaviour.validate(script.operation)?;
        }
        Ok(())
    }

    /// The misbehaviour for the next call of `operation` at this stage (in front of the API
    /// when `replaces_call`, else after it), counting its script down.
    pub(crate) fn take_scripted(
        &mut self,
        operation: Operation,
        replaces_call: bool,
    ) -> Option<Misbehaviour> {
        let index = self.scripted.iter().position(|s| {
            s.operation == operation
                && s.count > 0
                && s.misbehaviour.replaces_call() == replaces_call
        })?;
        let script = &mut self.scripted[index];
        script.count -= 1;
        let misbehaviour = script.misbehaviour.clone();
        if script.count == 0 {
            self.scripted.remove(index);
        }
        Some(misbehaviour)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_and_validate() {
        let faults: Faults = serde_json::from_str(
            r#"{"scripted": [
                {"operation": "create_key", "count": 2, "misbehaviour": {"kind": "missingPrivateKey"}},
                {"operation": "token", "count": 1, "misbehaviour": {"kind": "oversizedBody", "bytes": 5000000}},
                {"operation": "list_keys", "count": 1, "misbehaviour": {"kind": "status", "status": 502, "body": "<html/>"}},
                {"operation": "delete_key", "count": 1, "misbehaviour": {"kind": "redirect", "location": "http://127.0.0.1:1/x"}}
            ]}"#,
        )
        .unwrap();
        assert!(faults.validate().is_ok());
        assert_eq!(
            faults.scripted[0].misbehaviour,
            Misbehaviour::MissingPrivateKey
        );
        assert_eq!(
            faults.scripted[2].misbehaviour,
            Misbehaviour::status(502, "<html/>")
        );
        let round_trip: Faults =
            serde_json::from_value(serde_json::to_value(&faults).unwrap()).unwrap();
        assert_eq!(round_trip, faults);

        for (operation, misbehaviour) in [
            (Operation::Token, Misbehaviour::MissingPrivateKey),
            (Operation::ListKeys, Misbehaviour::InvalidPrivateKey),
            (Operation::CreateKey, Misbehaviour::MissingExpiry),
            (Operation::DeleteKey, Misbehaviour::ExpiredToken),
            (
                Operation::Token,
                Misbehaviour::OversizedBody {
                    bytes: MAX_OVERSIZED_BYTES + 1,
                },
            ),
            (
                Operation::Token,
                Misbehaviour::Hang {
                    ms: MAX_HANG_MS + 1,
                },
            ),
            (
                Operation::Token,
                Misbehaviour::Redirect {
                    location: "/relative".into(),
                },
            ),
            (
                Operation::Token,
                Misbehaviour::Redirect {
                    location: "ftp://127.0.0.1/".into(),
                },
            ),
            (Operation::Token, Misbehaviour::status(102, String::new())),
        ] {
            let faults = Faults::scripted(operation, 1, misbehaviour.clone());
            assert!(faults.validate().is_err(), "{operation} {misbehaviour:?}");
        }
        assert!(
            Faults::scripted(Operation::Token, 0, Misbehaviour::EmptyBody)
                .validate()
                .is_err()
        );
        for unknown in [
            r#"{"scripted": [{"operation": "create_key", "count": 1, "misbehaviour": {"kind": "explode"}}]}"#,
            r#"{"scripted": [{"operation": "rotate", "count": 1, "misbehaviour": {"kind": "emptyBody"}}]}"#,
            r#"{"scripted": [{"operation": "token", "count": 1, "misbehaviour": {"kind": "hang", "ms": 1, "extra": 2}}]}"#,
        ] {
            assert!(
                serde_json::from_str::<Faults>(unknown).is_err(),
                "{unknown}"
            );
        }
    }

    #[test]
    fn scripts_count_down_per_operation_and_stage() {
        let mut faults = Faults::scripted(Operation::CreateKey, 2, Misbehaviour::EmptyBody)
            .and_scripted(
                Operation::CreateKey,
                1,
                Misbehaviour::status(400, String::new()),
            );
        assert_eq!(faults.take_scripted(Operation::ListKeys, false), None);
        assert!(matches!(
            faults.take_scripted(Operation::CreateKey, true),
            Some(Misbehaviour::Status { status: 400, .. })
        ));
        assert_eq!(faults.take_scripted(Operation::CreateKey, true), None);
        assert_eq!(
            faults.take_scripted(Operation::CreateKey, false),
            Some(Misbehaviour::EmptyBody)
        );
        assert_eq!(faults.scripted[0].count, 1);
        assert_eq!(
            faults.take_scripted(Operation::CreateKey, false),
            Some(Misbehaviour::EmptyBody)
        );
        assert!(faults.scripted.is_empty());
    }
}
