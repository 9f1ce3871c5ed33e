//! HMAC request signing as documented by Imburse, for both sides of the wire.
//!
//! `Authorization: Hmac {publicKey}:{nonce}:{timestamp}:{signature}` where
//! `signature = base64(HMAC-SHA256(key = base64-decoded private key,
//! message = "{publicKey}:{nonce}:{timestamp}:{bodyHash}"))` and
//! `bodyHash = base64(SHA-256(body))`, or the empty string when there is no body.
//!
//! The client signs with a [`SigningKey`], decoded and keyed once per key pair so that signing
//! itself cannot fail; the sandbox parses with [`HmacAuthorization::parse`] and checks with
//! [`HmacAuthorization::verify`], so both sides share one reading of the contract.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256};

use crate::{Error, KeyPair};

/// The scheme word the client sends; servers compare it case-insensitively.
pub const SCHEME: &str = "Hmac";

/// Length of the random nonces this client generates (as in the official JavaScript sample).
pub const NONCE_LEN: usize = 30;

type HmacSha256 = Hmac<Sha256>;

/// `base64(SHA-256(body))`, or `""` for an empty body as the contract requires.
pub fn body_hash(body: &[u8]) -> String {
    if body.is_empty() {
        String::new()
    } else {
        STANDARD.encode(Sha256::digest(body))
    }
}

/// A fresh random alphanumeric nonce of [`NONCE_LEN`] characters.
pub fn fresh_nonce() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(NONCE_LEN)
        .map(char::from)
        .collect()
}

/// A key pair ready to sign: the private key decoded and the HMAC keyed once, so that a
/// broken key is found when the account is set up, not at every request.
#[derive(Clone)]
pub struct SigningKey {
    public_key: String,
    /// Keyed with the decoded private key; cloned for each signature.
    mac: HmacSha256,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Validates the key pair (see [`KeyPair::validate`]) and keys the HMAC with it.
    pub fn new(key: &KeyPair) -> Result<Self, Error> {
        key.validate()?;
        Ok(Self {
            public_key: key.public_key.clone(),
            mac: keyed_mac(&key.private_key).ok_or_else(invalid_private_key)?,
        })
    }

    /// The `Authorization` header value for `body`, with a fresh nonce and the current
    /// whole-second UTC timestamp.
    pub fn authorization(&self, body: &[u8]) -> SecretString {
        // A clock before 1970 signs timestamp 0, which the API refuses as stale.
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.sign(&fresh_nonce(), &timestamp.to_string(), body)
    }

    /// The `Authorization` header value for `body` with the given nonce and timestamp text.
    pub fn sign(&self, nonce: &str, timestamp: &str, body: &[u8]) -> SecretString {
        let mut mac = self.mac.clone();
        mac.update(message(&self.public_key, nonce, timestamp, body).as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "{SCHEME} {}:{nonce}:{timestamp}:{signature}",
            self.public_key
        )
        .into()
    }
}

/// The `Authorization` header value for `body` with the given nonce and timestamp text, for a
/// key pair used once (tests, tools).
pub fn sign(
    key: &KeyPair,
    nonce: &str,
    timestamp: &str,
    body: &[u8],
) -> Result<SecretString, Error> {
    Ok(SigningKey::new(key)?.sign(nonce, timestamp, body))
}

/// Length of a decoded private key, as the API documents it (32 bytes). Only keys the API
/// creates are held to it: an account key of another length is left for the API to judge.
pub const PRIVATE_KEY_BYTES: usize = 32;

pub(crate) fn invalid_private_key() -> Error {
    Error::InvalidConfig("privateKey must be non-empty standard padded base64".into())
}

/// Decodes a base64 private key into memory that is zeroed on drop; `None` if it is empty or
/// not standard padded base64.
pub(crate) fn decode_private_key(private_key: &SecretString) -> Option<SecretSlice<u8>> {
    let encoded = private_key.expose_secret();
    if encoded.is_empty() {
        return None;
    }
    STANDARD.decode(encoded).ok().map(SecretSlice::from)
}

fn message(public_key: &str, nonce: &str, timestamp: &str, body: &[u8]) -> String {
    format!("{public_key}:{nonce}:{timestamp}:{}", body_hash(body))
}

fn keyed_mac(private_key: &SecretString) -> Option<HmacSha256> {
    let decoded = decode_private_key(private_key)?;
    // HMAC accepts keys of any length, so this only fails on a broken key decoding.
    HmacSha256::new_from_slice(decoded.expose_secret()).ok()
}

/// Why an `Authorization` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header does not follow `Hmac {publicKey}:{nonce}:{timestamp}:{signature}`.
    #[error("malformed HMAC authorization header: {0}")]
    Malformed(&'static str),
    /// The stored private key for this public key is not base64.
    #[error("the private key is not valid base64")]
    InvalidPrivateKey,
    /// The signature does not match the message and body.
    #[error("HMAC signature mismatch")]
    SignatureMismatch,
}

/// A parsed `Authorization: Hmac ...` header.
///
/// `Debug` shows the public key, nonce and timestamp, never the signature.
#[derive(Clone)]
pub struct HmacAuthorization {
    public_key: String,
    nonce: String,
    timestamp_text: String,
    timestamp: SystemTime,
    signature: SecretString,
}

impl fmt::Debug for HmacAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacAuthorization")
            .field("public_key", &self.public_key)
            .field("nonce", &self.nonce)
            .field("timestamp", &self.timestamp_text)
            .field("signature", &"[REDACTED]")
            .finish()
    }
}

impl HmacAuthorization {
    /// Parses a header value. The scheme word is matched case-insensitively; the timestamp may
    /// be whole (`1535617532`) or fractional (`1535617532.123`) seconds; the credentials must
    /// split into exactly four `:`-separated fields (a base64 signature never contains `:`).
    pub fn parse(header_value: &str) -> Result<Self, VerifyError> {
        let (scheme, credentials) = header_value
            .trim()
            .split_once(' ')
            .ok_or(VerifyError::Malformed("missing scheme"))?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(VerifyError::Malformed("scheme is not Hmac"));
        }
        let fields: Vec<&str> = credentials.trim().split(':').collect();
        let [public_key, nonce, timestamp_text, signature] = fields[..] else {
            return Err(VerifyError::Malformed("expected four ':'-separated fields"));
        };
        if public_key.is_empty() || nonce.is_empty() || signature.is_empty() {
            return Err(VerifyError::Malformed("empty field"));
        }
        Ok(Self {
            public_key: public_key.to_owned(),
            nonce: nonce.to_owned(),
            timestamp: parse_timestamp(timestamp_text)?,
            timestamp_text: timestamp_text.to_owned(),
            signature: signature.into(),
        })
    }

    /// The public key that claims to have signed the request.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The nonce, for replay protection.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The signing time the client claims.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// Checks the signature against `private_key` and the exact body bytes received, in
    /// constant time.
    pub fn verify(&self, private_key: &SecretString, body: &[u8]) -> Result<(), VerifyError> {
        let signature = STANDARD
            .decode(self.signature.expose_secret())
            .map_err(|_| VerifyError::SignatureMismatch)?;
        let mut mac = keyed_mac(private_key).ok_or(VerifyError::InvalidPrivateKey)?;
        mac.update(message(&self.public_key, &self.nonce, &self.timestamp_text, body).as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| VerifyError::SignatureMismatch)
    }
}

/// Parses `seconds[.fraction]` since the Unix epoch.
fn parse_timestamp(text: &str) -> Result<SystemTime, VerifyError> {
    const BAD: VerifyError = VerifyError::Malformed("timestamp is not seconds since the epoch");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(BAD);
    }
    if text.ends_with('.') {
        return Err(BAD);
    }
    let seconds: u64 = whole.parse().map_err(|_| BAD)?;
    // Nanosecond precision is plenty for a freshness check: extra digits are ignored.
    let nanos = format!("{:0<9}", &fraction[..fraction.len().min(9)])
        .parse::<u32>()
        .map_err(|_| BAD)?;
    UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed outside this code with:
    //   KEY=AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=
    //   HEX=$(echo -n $KEY | base64 -d | xxd -p -c 64)
    //   printf '%s' "$BODY" | openssl dgst -sha256 -binary | base64
    //   printf '%s' "$MESSAGE" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$HEX -binary | base64
    const PUBLIC: &str = "a123456b-c12c-123d-1ab4-18bd8c8e88a3";
    const PRIVATE: &str = "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=";
    const NONCE: &str = "randomgenerateduniquenonce";
    const TIMESTAMP: &str = "1535617532";
    const BODY: &str = r#"{"name":"Admin Key","roles":["tenant-admin"]}"#;
    const BODY_HASH: &str = "gJLOn5cSe0DIJ8o046kPIsZmQ8PSZ0vPv6ciSMeX50M=";
    const SIGNATURE_WITH_BODY: &str = "mG5t2vZ0H2aQqxS8L3cWowntU/QS0gZahIB8jek1ong=";
    const SIGNATURE_NO_BODY: &str = "zlty0QLPHCqzMCWYvhjG8oqWmBzN+5o9z1tL9tl/Kps=";

    fn key() -> KeyPair {
        KeyPair::new(PUBLIC, PRIVATE)
    }

    #[test]
    fn body_hash_matches_openssl_and_is_empty_without_body() {
        assert_eq!(body_hash(BODY.as_bytes()), BODY_HASH);
        assert_eq!(body_hash(b""), "");
    }

    #[test]
    fn signature_matches_openssl_vectors() {
        let with_body = sign(&key(), NONCE, TIMESTAMP, BODY.as_bytes()).unwrap();
        assert_eq!(
            with_body.expose_secret(),
            format!("Hmac {PUBLIC}:{NONCE}:{TIMESTAMP}:{SIGNATURE_WITH_BODY}")
        );
        let no_body = sign(&key(), NONCE, TIMESTAMP, b"").unwrap();
        assert_eq!(
            no_body.expose_secret(),
            format!("Hmac {PUBLIC}:{NONCE}:{TIMESTAMP}:{SIGNATURE_NO_BODY}")
        );
    }

    #[test]
    fn verify_accepts_any_scheme_case_and_rejects_tampering() {
        let private: SecretString = PRIVATE.into();
        for scheme in ["Hmac", "HMAC", "hmac"] {
            let header = format!("{scheme} {PUBLIC}:{NONCE}:{TIMESTAMP}:{SIGNATURE_WITH_BODY}");
            let parsed = HmacAuthorization::parse(&header).unwrap();
            parsed.verify(&private, BODY.as_bytes()).unwrap();
            assert_eq!(
                parsed.verify(&private, b"{}"),
                Err(VerifyError::SignatureMismatch)
            );
        }
        let other: SecretString = STANDARD.encode([7u8; 32]).into();
        let header = format!("Hmac {PUBLIC}:{NONCE}:{TIMESTAMP}:{SIGNATURE_NO_BODY}");
        let parsed = HmacAuthorization::parse(&header).unwrap();
        parsed.verify(&private, b"").unwrap();
        assert_eq!(
            parsed.verify(&other, b""),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn parses_fractional_timestamps_and_dotted_nonces() {
        // The Postman sample reuses the fractional timestamp as the nonce.
        let nonce = "1535617532.123";
        let signed = sign(&key(), nonce, "1535617532.123", b"").unwrap();
        let parsed = HmacAuthorization::parse(signed.expose_secret()).unwrap();
        assert_eq!(parsed.nonce(), nonce);
        assert_eq!(
            parsed.timestamp(),
            UNIX_EPOCH + Duration::from_millis(1_535_617_532_123)
        );
        parsed.verify(&key().private_key, b"").unwrap();
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            "",
            "Bearer abc",
            "Hmac",
            "Hmac a:b:1",
            "Hmac a:b:1:sig:extra",
            "Hmac a:b:12x:sig",
            "Hmac a:b:-1:sig",
            "Hmac a:b:1.:sig",
            "Hmac :b:1:sig",
            "Hmac a::1:sig",
            "Hmac a:b:1:",
        ] {
            assert!(HmacAuthorization::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_redacts_the_signature() {
        let header = format!("Hmac {PUBLIC}:{NONCE}:{TIMESTAMP}:{SIGNATURE_NO_BODY}");
        let parsed = HmacAuthorization::parse(&header).unwrap();
        assert!(!format!("{parsed:?}").contains(SIGNATURE_NO_BODY));
    }

    #[test]
    fn fresh_nonces_are_alphanumeric_and_distinct() {
        let a = fresh_nonce();
        assert_eq!(a.len(), NONCE_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, fresh_nonce());
    }

    proptest::proptest! {
        // The header comes from whoever calls the sandbox: any text is refused or read, never
        // a panic.
        #[test]
        fn parse_never_panics_on_arbitrary_headers(header in ".{0,200}") {
            let _ = HmacAuthorization::parse(&header);
        }

        #[test]
        fn parse_never_panics_on_near_miss_headers(
            scheme in "(?i:hmac)|Bearer|",
            fields in proptest::collection::vec("[A-Za-z0-9+/=. :-]{0,24}", 0..6),
        ) {
            let _ = HmacAuthorization::parse(&format!("{scheme} {}", fields.join(":")));
        }

        // Whatever the timestamp text, a parsed header reports the time it states.
        #[test]
        fn parsed_headers_give_back_their_fields(
            public in "[A-Za-z0-9-]{1,40}",
            nonce in "[A-Za-z0-9.]{1,40}",
            seconds in 0u64..=u64::from(u32::MAX),
            millis in proptest::option::of(0u32..1000),
        ) {
            let timestamp = match millis {
                Some(ms) => format!("{seconds}.{ms:03}"),
                None => seconds.to_string(),
            };
            let key = KeyPair::new(public.clone(), PRIVATE);
            let header = sign(&key, &nonce, &timestamp, BODY.as_bytes()).unwrap();
            let parsed = HmacAuthorization::parse(header.expose_secret()).unwrap();
            proptest::prop_assert_eq!(parsed.public_key(), public.as_str());
            proptest::prop_assert_eq!(parsed.nonce(), nonce.as_str());
            let stated = Duration::from_secs(seconds)
                + Duration::from_millis(u64::from(millis.unwrap_or(0)));
            proptest::prop_assert_eq!(parsed.timestamp(), UNIX_EPOCH + stated);
            proptest::prop_assert!(parsed.verify(&key.private_key, BODY.as_bytes()).is_ok());
        }

        #[test]
        fn sign_then_verify_round_trips(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            secret in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64),
            public in "[a-f0-9-]{1,36}",
            nonce in "[A-Za-z0-9.]{1,40}",
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let key = KeyPair::new(public, STANDARD.encode(&secret));
            let header = SigningKey::new(&key).unwrap().authorization(&body);
            let parsed = HmacAuthorization::parse(header.expose_secret()).unwrap();
            proptest::prop_assert!(parsed.verify(&key.private_key, &body).is_ok());

            let header = sign(&key, &nonce, "1700000000.5", &body).unwrap();
            let parsed = HmacAuthorization::parse(header.expose_secret()).unwrap();
            proptest::prop_assert!(parsed.verify(&key.private_key, &body).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 0x01;
                proptest::prop_assert_eq!(
                    parsed.verify(&key.private_key, &tampered),
                    Err(VerifyError::SignatureMismatch)
                );
            }
        }
    }
}
