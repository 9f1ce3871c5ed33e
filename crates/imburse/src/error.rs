//! The one error type of the crate.

use std::fmt;
use std::time::Duration;

/// What the API said about a refused request, taken from the documented error body
/// (`{"correlationId", "errors":[{"errorCode", "metadata":{"correlationId"}}]}`).
///
/// Only identifiers are kept: the remote `message` text is never carried, so an error can be
/// shown or logged without repeating whatever the server put in its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiErrorDetails {
    /// The first `errors[].errorCode`, e.g. `TENANT_NOT_FOUND`.
    pub error_code: Option<String>,
    /// The server's correlation id for the request (top-level `correlationId`, else the one
    /// echoed in `errors[].metadata`, else the `X-Correlation-ID` this client sent).
    pub correlation_id: Option<String>,
}

/// Shows the error code only: the correlation id differs on every request, and an error's
/// text must stay the same across retries of the same failure (it ends up in status
/// conditions). Callers log [`Error::correlation_id`] beside it.
impl fmt::Display for ApiErrorDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.error_code {
            write!(f, " [{code}]")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong talking to the Imburse API.
///
/// `Display` messages are short, the same for every occurrence of the same failure, and contain
/// no key, token, signature, remote body or correlation id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 400: the API refused the request as malformed (e.g. an unknown role name).
    #[error("request rejected by the Imburse API as invalid{0}")]
    BadRequest(ApiErrorDetails),
    /// 401: the key pair or bearer token was not accepted.
    #[error("credentials rejected by the Imburse API{0}")]
    Unauthorized(ApiErrorDetails),
    /// 403: the credentials are valid but lack the role (or account) for this call.
    #[error("access forbidden by the Imburse API{0}")]
    Forbidden(ApiErrorDetails),
    /// 404 on a tenant path: the tenant does not exist or belongs to another account.
    #[error("tenant not found{0}")]
    TenantNotFound(ApiErrorDetails),
    /// 404 for a key: no key with that public key exists for the tenant.
    #[error("tenant key not found{0}")]
    NotFound(ApiErrorDetails),
    /// 409: the request conflicts with the current state.
    #[error("conflict reported by the Imburse API{0}")]
    Conflict(ApiErrorDetails),
    /// 429: the API asked the client to slow down.
    #[error("rate limited by the Imburse API{details}")]
    RateLimited {
        /// The `Retry-After` the API sent, if any.
        retry_after: Option<Duration>,
        /// Identifiers from the error body.
        details: ApiErrorDetails,
    },
    /// 5xx: the API failed.
    #[error("Imburse API server error {status}{details}")]
    Server {
        /// The HTTP status code.
        status: u16,
        /// Identifiers from the error body.
        details: ApiErrorDetails,
    },
    /// Any other unexpected status code.
    #[error("unexpected HTTP status {status} from the Imburse API{details}")]
    UnexpectedStatus {
        /// The HTTP status code.
        status: u16,
        /// Identifiers from the error body.
        details: ApiErrorDetails,
    },
    /// The request timed out (connect or overall request timeout).
    #[error("request to the Imburse API timed out")]
    Timeout,
    /// The connection failed before a response arrived.
    #[error("transport error talking to the Imburse API")]
    Transport(#[source] reqwest::Error),
    /// A success response whose body did not have the documented shape.
    #[error("invalid response from the Imburse API: {0}")]
    InvalidResponse(&'static str),
    /// A create request may have reached the server, but its response was lost (connection
    /// reset or closed after sending, timeout, a success body that is unreadable, too large, or
    /// lacks a usable key pair). The key may or may not exist, and if it does its private key
    /// is lost: the caller must reconcile by listing the tenant's keys and revoking it. Never
    /// retried automatically, because a blind retry could create a second key.
    #[error(
        "the answer to a key creation was lost or unusable, so a key may exist without its private key; list the tenant's keys to reconcile"
    )]
    CreateOutcomeUnknown {
        /// The `X-Correlation-ID` this client sent with the create request.
        correlation_id: String,
    },
    /// The client or account configuration is invalid; the message names the field, never a
    /// secret value.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl Error {
    /// Whether trying the same call again later may succeed (rate limits, server errors,
    /// timeouts, transport failures and unknown create outcomes).
    ///
    /// For [`Error::CreateOutcomeUnknown`] "again" means: reconcile by listing first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout
                | Self::Transport(_)
                | Self::CreateOutcomeUnknown { .. }
        )
    }

    /// The delay the API asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The API's error details, when the error came from an API response.
    pub fn details(&self) -> Option<&ApiErrorDetails> {
        match self {
            Self::BadRequest(d)
            | Self::Unauthorized(d)
            | Self::Forbidden(d)
            | Self::TenantNotFound(d)
            | Self::NotFound(d)
            | Self::Conflict(d)
            | Self::RateLimited { details: d, .. }
            | Self::Server { details: d, .. }
            | Self::UnexpectedStatus { details: d, .. } => Some(d),
            _ => None,
        }
    }

    /// The API's `errorCode`, when it sent one.
    pub fn error_code(&self) -> Option<&str> {
        self.details()?.error_code.as_deref()
    }

    /// The correlation id of the failed request, when known.
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            Self::CreateOutcomeUnknown { correlation_id } => Some(correlation_id),
            _ => self.details()?.correlation_id.as_deref(),
        }
    }
}
