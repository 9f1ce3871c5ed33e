//! Bearer tokens: parsing the token response and caching the management token per account.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// A bearer token and when it expires.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token sent as `Authorization: Bearer {access_token}`.
    pub access_token: SecretString,
    /// Expiry as stated by the API; `None` when the answer stated none.
    pub expires_at: Option<SystemTime>,
}

/// Epoch values below this are seconds, above it milliseconds (10^12 ms is in 2001; 10^12 s is
/// tens of thousands of years away).
const MILLIS_THRESHOLD: f64 = 1e12;

/// How long a token without a usable expiry (none stated, or one already past, e.g. because
/// of a skewed clock) is reused. Short, so a dead token is not kept; nonzero, so the cache
/// does not ask for a token on every call. A token that dies earlier is replaced on its first
/// 401 anyway.
pub(crate) const UNKNOWN_EXPIRY_REUSE: Duration = Duration::from_secs(30);

/// Refresh at most this long before expiry...
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// ...or this share of the token's lifetime, whichever is smaller, so short-lived tokens are
/// still used for most of their life.
const REFRESH_MARGIN_SHARE: u32 = 10;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires: Value,
}

/// Parses `{"accessToken": "...", "expires": "1560514835115" | 1560514835115}`. A missing or
/// `null` `expires` yields a token without expiry (reused only briefly); one that is present
/// but no epoch time means the answer is not what it claims to be.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<Token, Error> {
    let response: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| Error::InvalidResponse("token response is not {accessToken, expires}"))?;
    if response.access_token.expose_secret().is_empty() {
        return Err(Error::InvalidResponse(
            "token response has an empty accessToken",
        ));
    }
    let expires_at = match &response.expires {
        Value::Null => None,
        stated => Some(parse_expires(stated)?),
    };
    Ok(Token {
        access_token: response.access_token,
        expires_at,
    })
}

/// `expires` is a string (v1) or a number (v2), in epoch milliseconds; a value below 10^12 is
/// taken as seconds because no document states the unit.
fn parse_expires(value: &Value) -> Result<SystemTime, Error> {
    const BAD: Error = Error::InvalidResponse("token expiry is not an epoch time");
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite() && *n >= 0.0)
    .ok_or(BAD)?;
    let since_epoch = if number < MILLIS_THRESHOLD {
        Duration::try_from_secs_f64(number).ok()
    } else {
        // Whole milliseconds: dividing by 1000 in floating point would add rounding noise.
        Some(Duration::from_millis(number.round() as u64))
    };
    since_epoch
        .and_then(|since_epoch| UNIX_EPOCH.checked_add(since_epoch))
        .ok_or(BAD)
}

/// One account's cached token. The lock is held while a token is fetched, so concurrent
/// callers wait for the one request in flight instead of each asking for a token.
#[derive(Default)]
pub(crate) struct TokenCache {
    slot: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    token: Token,
    refresh_at: Instant,
}

impl TokenCache {
    /// The cached token while it is fresh, otherwise the result of `fetch` (which is cached).
    pub(crate) async fn get_or_fetch<F, Fut>(&self, fetch: F) -> Result<Token, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, Error>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(cached.token.clone());
        }
        let token = fetch().await?;
        *slot = Some(Cached {
            refresh_at: refresh_at(&token),
            token: token.clone(),
        });
        Ok(token)
    }

    /// Forgets `rejected` if it is still the cached token; a newer token fetched meanwhile by
    /// another caller is kept.
    pub(crate) async fn invalidate(&self, rejected: &Token) {
        let mut slot = self.slot.lock().await;
        let same = slot.as_ref().is_some_and(|c| {
            c.token.access_token.expose_secret() == rejected.access_token.expose_secret()
        });
        if same {
            *slot = None;
        }
    }
}

/// When to stop reusing a token: `min(60 s, lifetime / 10)` before it expires, or after
/// [`UNKNOWN_EXPIRY_REUSE`] when its expiry is unknown or already past. Measured on the
/// monotonic clock from now, so a wall-clock jump does not keep a dead token alive.
fn refresh_at(token: &Token) -> Instant {
    let lifetime = token
        .expires_at
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .filter(|lifetime| !lifetime.is_zero());
    let Some(lifetime) = lifetime else {
        return Instant::now() + UNKNOWN_EXPIRY_REUSE;
    };
    let margin = MAX_REFRESH_MARGIN.min(lifetime / REFRESH_MARGIN_SHARE);
    Instant::now() + (lifetime - margin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn expires_accepts_string_number_millis_and_seconds() {
        let at = UNIX_EPOCH + Duration::from_millis(1_560_514_835_115);
        for body in [
            r#"{"accessToken":"t","expires":"1560514835115"}"#,
            r#"{"accessToken":"t","expires":1560514835115}"#,
        ] {
            assert_eq!(
                parse_token_response(body.as_bytes()).unwrap().expires_at,
                Some(at)
            );
        }
        let seconds = parse_token_response(br#"{"accessToken":"t","expires":1560514835}"#).unwrap();
        assert_eq!(
            seconds.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_560_514_835))
        );
        for unstated in [
            r#"{"accessToken":"t"}"#,
            r#"{"accessToken":"t","expires":null}"#,
        ] {
            let token = parse_token_response(unstated.as_bytes()).unwrap();
            assert_eq!(token.expires_at, None, "{unstated}");
        }
        for bad in [
            r#"{"accessToken":"t","expires":"soon"}"#,
            r#"{"accessToken":"t","expires":-5}"#,
            r#"{"accessToken":"t","expires":{}}"#,
            r#"{"accessToken":"","expires":1}"#,
            r#"{"expires":1}"#,
            "<html></html>",
            "",
        ] {
            assert!(parse_token_response(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        // The token endpoint's answer is untrusted: any body is a token or an error, never a
        // panic, whatever `expires` holds.
        #[test]
        fn token_response_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_token_response(&body);
        }

        #[test]
        fn any_json_expiry_is_read_or_refused(expires in json_value()) {
            let body = serde_json::json!({"accessToken": "t", "expires": expires});
            let _ = parse_token_response(body.to_string().as_bytes());
        }

        // Milliseconds since the epoch read back exactly, as a number or as a string.
        #[test]
        fn expiry_in_millis_round_trips(millis in 1_000_000_000_000u64..=4_102_444_800_000) {
            let at = Some(UNIX_EPOCH + Duration::from_millis(millis));
            for expires in [serde_json::json!(millis), serde_json::json!(millis.to_string())] {
                let body = serde_json::json!({"accessToken": "t", "expires": expires});
                let token = parse_token_response(body.to_string().as_bytes()).unwrap();
                proptest::prop_assert_eq!(token.expires_at, at);
            }
        }
    }

    /// Any JSON value, numbers of every magnitude and sign included.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,30}".prop_map(Value::from),
            any::<f64>().prop_map(|n| Value::from(n.to_string())),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn a_token_without_usable_expiry_is_reused_briefly() {
        for expires_at in [
            None,
            Some(SystemTime::now() - Duration::from_secs(3600)),
            Some(UNIX_EPOCH),
        ] {
            let token = Token {
                access_token: "t".into(),
                expires_at,
            };
            let reuse = refresh_at(&token) - Instant::now();
            assert!(
                reuse <= UNKNOWN_EXPIRY_REUSE && reuse > UNKNOWN_EXPIRY_REUSE / 2,
                "{expires_at:?}"
            );
        }
    }

    #[test]
    fn refresh_margin_is_the_smaller_of_60s_and_a_tenth() {
        let token = |lifetime: Duration| Token {
            access_token: "t".into(),
            expires_at: Some(SystemTime::now() + lifetime),
        };
        let long = refresh_at(&token(Duration::from_secs(3600))) - Instant::now();
        assert!(long <= Duration::from_secs(3540) && long > Duration::from_secs(3530));
        let short = refresh_at(&token(Duration::from_secs(100))) - Instant::now();
        assert!(short <= Duration::from_secs(90) && short > Duration::from_secs(85));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_invalidate_forces_a_new_one() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicU32::new(0));
        let fetch = |fetches: Arc<AtomicU32>| async move {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Token {
                access_token: format!("token-{n}").into(),
                expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
            })
        };
        let callers = (0..10).map(|_| {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tokio::spawn(async move { cache.get_or_fetch(|| fetch(fetches)).await.unwrap() })
        });
        for caller in callers {
            assert_eq!(
                caller.await.unwrap().access_token.expose_secret(),
                "token-0"
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let stale = Token {
            access_token: "token-0".into(),
            expires_at: Some(SystemTime::now()),
        };
        cache.invalidate(&stale).await;
        let fresh = cache.get_or_fetch(|| fetch(fetches.clone())).await.unwrap();
        assert_eq!(fresh.access_token.expose_secret(), "token-1");
        // Invalidating an older token leaves the newer one cached.
        cache.invalidate(&stale).await;
        let again = cache.get_or_fetch(|| fetch(fetches.clone())).await.unwrap();
        assert_eq!(again.access_token.expose_secret(), "token-1");
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        // Token responses come from the network: any bytes are read or refused, never a panic.
        #[test]
        fn token_responses_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_token_response(&body);
        }

        // Near misses of the documented shape, with any expiry: a refusal never repeats the
        // token it was handed.
        #[test]
        fn refused_token_responses_never_show_the_token(
            token in "[A-Za-z0-9._-]{8,40}",
            expires in proptest::prop_oneof![
                proptest::prelude::any::<f64>().prop_map(|n| serde_json::json!(n)),
                proptest::prelude::any::<i64>().prop_map(|n| serde_json::json!(n)),
                ".{0,24}".prop_map(|s| serde_json::json!(s)),
                proptest::prelude::Just(serde_json::json!([1, 2])),
                proptest::prelude::Just(serde_json::json!({"at": 1})),
            ],
        ) {
            let body = serde_json::json!({"accessToken": token, "expires": expires}).to_string();
            if let Err(e) = parse_token_response(body.as_bytes()) {
                proptest::prop_assert!(!e.to_string().contains(&token));
                let debug = format!("{e:?}");
                proptest::prop_assert!(!debug.contains(&token));
            }
        }
    }
}
