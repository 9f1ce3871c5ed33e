//! What the caller configures per account: the API generation, the base URL and the key pair.

use std::net::IpAddr;

use reqwest::Url;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::{Error, signing};

/// Which generation of Imburse paths to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiGeneration {
    /// The 2019 paths of the seed tutorial: `/identity/v1/hmac/management` and
    /// `/management/v1/tenant/{tenantId}/keys`.
    Seed,
    /// The OpenAPI paths: `/v1/identity/hmac` and `/v1/account/tenants/{tenantId}/keys`, with the
    /// `x-account-id` header on key calls.
    Current,
}

impl ApiGeneration {
    /// Path segments of the token endpoint.
    pub(crate) fn token_path(self) -> &'static [&'static str] {
        match self {
            Self::Seed => &["identity", "v1", "hmac", "management"],
            Self::Current => &["v1", "identity", "hmac"],
        }
    }

    /// Path segments of a tenant's key collection.
    pub(crate) fn keys_path(self, tenant_id: &str) -> Vec<&str> {
        match self {
            Self::Seed => vec!["management", "v1", "tenant", tenant_id, "keys"],
            Self::Current => vec!["v1", "account", "tenants", tenant_id, "keys"],
        }
    }
}

/// A public/private key pair: an Account Security Key or a Tenant Security Key.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The public key (a UUID), sent in clear in the `Authorization` header.
    pub public_key: String,
    /// The base64 private key, used only as the HMAC key.
    pub private_key: SecretString,
}

impl KeyPair {
    /// Builds a key pair; see [`KeyPair::validate`] for the checks made before use.
    pub fn new(public_key: impl Into<String>, private_key: impl Into<SecretString>) -> Self {
        Self {
            public_key: public_key.into(),
            private_key: private_key.into(),
        }
    }

    /// Checks that the public key is non-empty and fits in the `Authorization` header (no `:`
    /// or whitespace), and that the private key is non-empty standard padded base64.
    ///
    /// The error names the faulty field, never its value.
    pub fn validate(&self) -> Result<(), Error> {
        let public = self.public_key.as_str();
        if public.is_empty() {
            return Err(Error::InvalidConfig("publicKey is empty".into()));
        }
        if public.contains(':') || public.chars().any(char::is_whitespace) {
            return Err(Error::InvalidConfig(
                "publicKey must not contain ':' or whitespace".into(),
            ));
        }
        signing::decode_private_key(&self.private_key)
            .map(drop)
            .ok_or_else(signing::invalid_private_key)
    }
}

/// Everything needed to act for one Imburse account.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// API base URL, e.g. `https://sandbox-api.imbursepayments.com`. Must be https unless the
    /// host is a loopback address.
    pub base_url: String,
    /// Which generation of paths the server speaks.
    pub generation: ApiGeneration,
    /// The account id, sent as `x-account-id`; required for [`ApiGeneration::Current`].
    pub account_id: Option<String>,
    /// The Account Security Key.
    pub credentials: KeyPair,
}

/// Parses and checks a base URL: https, or plain http to a loopback host (local sandboxes).
/// A path prefix is kept; a query or fragment is refused because paths are appended.
pub(crate) fn parse_base_url(base_url: &str) -> Result<Url, Error> {
    let url = Url::parse(base_url)
        .map_err(|_| Error::InvalidConfig("baseUrl is not a valid URL".into()))?;
    if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
        return Err(Error::InvalidConfig(
            "baseUrl must not carry a query or fragment".into(),
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(Error::InvalidConfig(
            "baseUrl must use https unless the host is a loopback address".into(),
        )),
        _ => Err(Error::InvalidConfig(
            "baseUrl must be an http(s) URL".into(),
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts come bracketed, e.g. `[::1]`.
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Builds `base` + `segments`, percent-encoding each segment so that an id can never change
/// the path's structure.
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    // `cannot_be_a_base` was refused in `parse_base_url`, so the segments are always editable.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Headers added to every key call of an account (`x-account-id` for the current generation).
pub(crate) fn account_headers(cfg: &AccountConfig) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    if cfg.generation == ApiGeneration::Current {
        let id = cfg.account_id.as_deref().ok_or_else(|| {
            Error::InvalidConfig("accountId is required for the current API generation".into())
        })?;
        let value = id
            .parse()
            .map_err(|_| Error::InvalidConfig("accountId is not a valid header value".into()))?;
        headers.insert("x-account-id", value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_requires_https_except_loopback() {
        for ok in [
            "https://api.imbursepayments.com",
            "http://127.0.0.1:8080",
            "http://127.3.4.5",
            "http://[::1]:9000/",
            "http://LOCALHOST:1",
            "https://gw.example.com/imburse/",
        ] {
            assert!(parse_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.imbursepayments.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "not a url",
            "https://x.example.com/?a=b",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_keeps_prefix_and_encodes_segments() {
        let base = parse_base_url("https://gw.example.com/imburse/").unwrap();
        let url = endpoint(&base, &["v1", "account", "tenants", "a/b?c", "keys"]);
        assert_eq!(
            url.as_str(),
            "https://gw.example.com/imburse/v1/account/tenants/a%2Fb%3Fc/keys"
        );
    }

    #[test]
    fn key_pair_validation_names_the_field_not_the_value() {
        let secret = "not base64!";
        let err = KeyPair::new("9c8e3f0e", secret).validate().unwrap_err();
        assert!(err.to_string().contains("privateKey"));
        assert!(!err.to_string().contains(secret));
        assert!(KeyPair::new("9c8e3f0e", "").validate().is_err());
        assert!(KeyPair::new("a:b", "AAAA").validate().is_err());
        assert!(
            KeyPair::new("9c8e3f0e", "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=")
                .validate()
                .is_ok()
        );
        // Unpadded base64 is not what Imburse issues.
        assert!(
            KeyPair::new("k", "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn generation_serde_names() {
        assert_eq!(
            serde_json::to_string(&ApiGeneration::Seed).unwrap(),
            "\"seed\""
        );
        let g: ApiGeneration = serde_json::from_str("\"current\"").unwrap();
        assert_eq!(g, ApiGeneration::Current);
    }
}
