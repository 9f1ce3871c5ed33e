//! Client for the Imburse REST API.
//!
//! The crate speaks the wire contract of `shared/docs/imburse-api.md`: it signs token requests
//! with HMAC ([`signing`]), caches the management token per account ([`Token`]) and creates,
//! lists, reads and deletes Tenant Security Keys ([`AccountClient`]).
//!
//! Secrets (private keys, bearer tokens, HMAC signatures) are held in [`secrecy::SecretString`]
//! and never reach a log line, a `Debug` output or an error message.

mod client;
mod config;
mod error;
mod model;
pub mod signing;
mod token;

pub use client::{
    AccountClient, CallRecord, Client, ClientOptions, MAX_LISTING_BYTES, MAX_RESPONSE_BYTES,
    Observer, Operation, RateLimit, RetryPolicy, authenticate,
};
pub use config::{AccountConfig, ApiGeneration, KeyPair};
pub use error::{ApiErrorDetails, Error};
pub use model::{CreatedKey, NewKey, TenantKey};
pub use token::Token;

/// The secret wrapper used for private keys, tokens and signatures, re-exported so callers need
/// not depend on `secrecy` themselves.
pub use secrecy::{ExposeSecret, SecretString};
