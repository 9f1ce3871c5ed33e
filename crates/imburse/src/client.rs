//! The HTTP client: one shared connection pool, per-account token caches and rate limiters,
//! retries for idempotent calls and never for creates.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable as _};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::config::{account_headers, endpoint, parse_base_url};
use crate::model::{ErrorBody, KeyList};
use crate::signing::SigningKey;
use crate::token::{TokenCache, UNKNOWN_EXPIRY_REUSE, parse_token_response};
use crate::{
    AccountConfig, ApiErrorDetails, ApiGeneration, CreatedKey, Error, KeyPair, NewKey, TenantKey,
    Token, signing,
};

/// The header carrying a per-request id that Imburse echoes in its error bodies.
const CORRELATION_ID: &str = "x-correlation-id";

/// Largest response body read, but for listings. The API's other answers are a few KiB at
/// most; anything bigger is not the API, and is never buffered whole.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Largest key listing read. A listing grows with the tenant's keys, about 200 bytes each and
/// without paging, so 1 MiB would stop at some 5,000 keys; 32 MiB holds about 160,000.
pub const MAX_LISTING_BYTES: usize = 32 * 1024 * 1024;

/// A callback told about every HTTP request made, e.g. to count calls in metrics.
pub type Observer = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// Which API operation an HTTP request performed. Serialized as its [`Operation::as_str`]
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Exchanging a key pair for a bearer token.
    Token,
    /// Creating a tenant key.
    CreateKey,
    /// Listing a tenant's keys.
    ListKeys,
    /// Reading one tenant key.
    GetKey,
    /// Deleting a tenant key.
    DeleteKey,
}

impl Operation {
    /// A short snake_case label, suitable for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::CreateKey => "create_key",
            Self::ListKeys => "list_keys",
            Self::GetKey => "get_key",
            Self::DeleteKey => "delete_key",
        }
    }

    /// Largest response body read for this operation.
    pub fn max_response_bytes(self) -> usize {
        match self {
            Self::ListKeys => MAX_LISTING_BYTES,
            _ => MAX_RESPONSE_BYTES,
        }
    }

    /// Whether repeating the request cannot change the outcome; only these are retried.
    fn is_idempotent(self) -> bool {
        self != Self::CreateKey
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One HTTP request as seen by an [`Observer`].
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// What the request did.
    pub operation: Operation,
    /// The HTTP status, or `None` when no response arrived.
    pub status: Option<u16>,
    /// Time from sending to the end of the response body (or the failure).
    pub elapsed: Duration,
}

/// Exponential backoff with jitter for idempotent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 disables retries).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each later one.
    pub base: Duration,
    /// Longest delay between attempts. A `Retry-After` longer than this ends the retries and
    /// the error (with its `retry_after`) goes to the caller, which can reschedule.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

/// A client-side request budget per account, so the operator stays polite under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// Settings of a [`Client`].
#[derive(Clone)]
pub struct ClientOptions {
    /// Limit for establishing a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Limit for a whole request, response body included.
    pub request_timeout: Duration,
    /// Retries of idempotent calls.
    pub retry: RetryPolicy,
    /// Client-side rate limit per account; `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    /// Called after every HTTP request.
    pub observer: Option<Observer>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            rate_limit: None,
            observer: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("rate_limit", &self.rate_limit)
            .field("observer", &self.observer.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// The Imburse API client. Cheap to clone: clones share the connection pool and the
/// per-account state.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

struct ClientInner {
    http: reqwest::Client,
    retry: RetryPolicy,
    rate_limit: Option<Quota>,
    observer: Option<Observer>,
    accounts: Mutex<HashMap<AccountSlot, Arc<AccountState>>>,
    /// Rate limiters by host and account, shared by every credential of that account.
    limiters: Mutex<HashMap<(String, String), Arc<DefaultDirectRateLimiter>>>,
}

/// Accounts kept beyond those in use before idle ones are forgotten (with their tokens).
const IDLE_ACCOUNTS: usize = 256;

/// Where one account's state lives: one per endpoint and account key. A new private key for
/// the same public key replaces the state (its tokens were issued to the old pair).
#[derive(PartialEq, Eq, Hash)]
struct AccountSlot {
    base_url: String,
    generation: ApiGeneration,
    account_id: Option<String>,
    public_key: String,
}

impl AccountSlot {
    fn of(cfg: &AccountConfig, base: &Url) -> Self {
        Self {
            base_url: base.as_str().to_owned(),
            generation: cfg.generation,
            account_id: cfg.account_id.clone(),
            public_key: cfg.credentials.public_key.clone(),
        }
    }

    /// The account that rate limits count against: Imburse's account id where the API names
    /// one, else the account key, at the host.
    fn limited_as(&self, base: &Url) -> (String, String) {
        let host = base.host_str().unwrap_or_default().to_owned();
        (
            host,
            self.account_id
                .clone()
                .unwrap_or_else(|| self.public_key.clone()),
        )
    }
}

/// The private key as the map may hold it: its SHA-256, never a second copy of the secret.
fn private_key_digest(cfg: &AccountConfig) -> [u8; 32] {
    Sha256::digest(cfg.credentials.private_key.expose_secret().as_bytes()).into()
}

struct AccountState {
    /// See [`private_key_digest`].
    private_key_digest: [u8; 32],
    base: Url,
    generation: ApiGeneration,
    signer: SigningKey,
    /// See [`AccountClient::credentials_fingerprint`].
    credentials_fingerprint: String,
    /// Headers of every key call (`x-account-id` for the current generation).
    key_headers: HeaderMap,
    tokens: TokenCache,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl Client {
    /// Builds a client; fails only on invalid options.
    pub fn new(opts: ClientOptions) -> Result<Self, Error> {
        if opts.retry.max_attempts == 0 {
            return Err(Error::InvalidConfig(
                "retry.maxAttempts must be at least 1".into(),
            ));
        }
        let rate_limit = opts
            .rate_limit
            .map(|limit| {
                let per_second = NonZeroU32::new(limit.per_second);
                let burst = NonZeroU32::new(limit.burst);
                per_second
                    .zip(burst)
                    .map(|(rate, burst)| Quota::per_second(rate).allow_burst(burst))
                    .ok_or_else(|| {
                        Error::InvalidConfig(
                            "rateLimit.perSecond and burst must be positive".into(),
                        )
                    })
            })
            .transpose()?;
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            // A redirect would carry our Authorization elsewhere; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "tenant-key-operator-imburse/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|_| Error::InvalidConfig("cannot build the HTTP client".into()))?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                retry: opts.retry,
                rate_limit,
                observer: opts.observer,
                accounts: Mutex::default(),
                limiters: Mutex::default(),
            }),
        })
    }

    /// The handle for one account. The same base URL, generation, account id and key pair
    /// always yield handles sharing one token cache; every key pair of one account at one host
    /// shares one rate limiter. The state of accounts no handle uses is forgotten once there
    /// are many: the map is bounded by what is in use.
    pub fn account(&self, cfg: AccountConfig) -> Result<AccountClient, Error> {
        let signer = SigningKey::new(&cfg.credentials)?;
        let base = parse_base_url(&cfg.base_url)?;
        let key_headers = account_headers(&cfg)?;
        let slot = AccountSlot::of(&cfg, &base);
        let digest = private_key_digest(&cfg);
        let mut accounts = self
            .inner
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = accounts
            .get(&slot)
            .filter(|s| s.private_key_digest == digest)
        {
            return Ok(AccountClient {
                client: self.clone(),
                state: state.clone(),
            });
        }
        if accounts.len() >= IDLE_ACCOUNTS {
            accounts.retain(|_, state| Arc::strong_count(state) > 1);
        }
        let limiter = self.limiter(slot.limited_as(&base));
        let state = Arc::new(AccountState {
            private_key_digest: digest,
            base,
            generation: cfg.generation,
            signer,
            credentials_fingerprint: credentials_fingerprint(&cfg.credentials.public_key),
            key_headers,
            tokens: TokenCache::default(),
            limiter,
        });
        accounts.insert(slot, state.clone());
        Ok(AccountClient {
            client: self.clone(),
            state,
        })
    }

    /// The rate limiter of an account at a host, if rate limiting is on.
    fn limiter(&self, key: (String, String)) -> Option<Arc<DefaultDirectRateLimiter>> {
        let quota = self.inner.rate_limit?;
        let mut limiters = self
            .inner
            .limiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if limiters.len() >= IDLE_ACCOUNTS {
            limiters.retain(|_, limiter| Arc::strong_count(limiter) > 1);
        }
        Some(
            limiters
                .entry(key)
                .or_insert_with(|| Arc::new(RateLimiter::direct(quota)))
                .clone(),
        )
    }
}

/// Exchanges any key pair for a bearer token: an account key yields a management token, a
/// tenant key a tenant token. Not cached. Used to prove that a created key authenticates.
pub async fn authenticate(
    http: &Client,
    base_url: &str,
    generation: ApiGeneration,
    key: &KeyPair,
) -> Result<Token, Error> {
    let signer = SigningKey::new(key)?;
    let base = parse_base_url(base_url)?;
    http.inner
        .fetch_token(None, &base, generation, &signer)
        .await
}

/// A successful response body and the correlation id it was sent with.
struct Reply {
    body: Vec<u8>,
    correlation_id: String,
}

/// A failed attempt of a key call, remembering whether the token fetch failed (that has its own
/// retries, so the key call must not multiply them) or the key call itself.
enum AttemptError {
    Token(Error),
    Call(Error),
}

/// An error type that [`ClientInner::with_retry`] can judge.
trait RetrySubject {
    /// The error to judge for a retry, or `None` if this failure must never be retried here.
    fn retry_subject(&self) -> Option<&Error>;
}

impl RetrySubject for Error {
    fn retry_subject(&self) -> Option<&Error> {
        Some(self)
    }
}

impl RetrySubject for AttemptError {
    fn retry_subject(&self) -> Option<&Error> {
        match self {
            Self::Call(e) => Some(e),
            Self::Token(_) => None,
        }
    }
}

impl AttemptError {
    fn into_inner(self) -> Error {
        match self {
            Self::Token(e) | Self::Call(e) => e,
        }
    }
}

impl ClientInner {
    /// Runs `attempt` until it succeeds, fails for good, or the policy runs out. Transient
    /// errors are retried after an exponential, jittered delay, or after the API's
    /// `Retry-After` when it sent one.
    async fn with_retry<T, E, F, Fut>(&self, operation: Operation, attempt: F) -> Result<T, E>
    where
        E: RetrySubject,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let policy = self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.base)
            .with_max_delay(policy.cap)
            .with_max_times(usize::try_from(policy.max_attempts - 1).unwrap_or(usize::MAX))
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|e| e.retry_subject().is_some_and(Error::is_transient))
            .adjust(|e, next| {
                let next = next?;
                match e.retry_subject().and_then(Error::retry_after) {
                    Some(wait) if wait > policy.cap => None,
                    Some(wait) => Some(wait),
                    None => Some(next),
                }
            })
            .notify(|e, delay| {
                if let Some(e) = e.retry_subject() {
                    debug!(operation = operation.as_str(), error = %e, ?delay, "retrying Imburse API call");
                }
            })
            .await
    }

    /// Signs and sends a token request (retried), and parses the token.
    async fn fetch_token(
        &self,
        limiter: Option<&DefaultDirectRateLimiter>,
        base: &Url,
        generation: ApiGeneration,
        key: &SigningKey,
    ) -> Result<Token, Error> {
        let url = endpoint(base, generation.token_path());
        let attempt = || async {
            // Each attempt is signed anew: the server refuses a nonce it has seen.
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, sensitive(key.authorization(b""))?);
            let reply = self
                .send(
                    limiter,
                    Operation::Token,
                    Method::POST,
                    &url,
                    headers,
                    Vec::new(),
                )
                .await?;
            let token = parse_token_response(&reply.body)?;
            if token.expires_at.is_none_or(|at| at <= SystemTime::now()) {
                warn!(
                    correlation_id = reply.correlation_id,
                    reuse_seconds = UNKNOWN_EXPIRY_REUSE.as_secs(),
                    "token answer states no future expiry; the token is reused only briefly"
                );
            }
            Ok(token)
        };
        self.with_retry(Operation::Token, attempt).await
    }

    /// Sends one HTTP request and reads the whole response. Non-2xx statuses become errors.
    async fn send(
        &self,
        limiter: Option<&DefaultDirectRateLimiter>,
        operation: Operation,
        method: Method,
        url: &Url,
        mut headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Reply, Error> {
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
        let correlation_id = uuid::Uuid::new_v4().to_string();
        if let Ok(value) = HeaderValue::from_str(&correlation_id) {
            headers.insert(CORRELATION_ID, value);
        }
        if !body.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let started = Instant::now();
        let outcome = self.exchange(operation, method, url, headers, body).await;
        let elapsed = started.elapsed();
        let status = outcome.as_ref().ok().map(|(status, ..)| status.as_u16());
        debug!(
            operation = operation.as_str(),
            status,
            correlation_id,
            elapsed_ms = elapsed.as_millis(),
            "Imburse API call"
        );
        if let Some(observer) = &self.observer {
            observer(&CallRecord {
                operation,
                status,
                elapsed,
            });
        }
        let (status, retry_after, body) =
            outcome.map_err(|e| exchange_error(operation, e, &correlation_id))?;
        if status.is_success() {
            Ok(Reply {
                body,
                correlation_id,
            })
        } else {
            Err(status_error(
                operation,
                status,
                retry_after,
                &body,
                &correlation_id,
            ))
        }
    }

    /// The network part of [`Self::send`]: status, `Retry-After` and body, or what failed.
    async fn exchange(
        &self,
        operation: Operation,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Option<Duration>, Vec<u8>), ExchangeError> {
        let request = self.http.request(method, url.clone()).headers(headers);
        let request = if body.is_empty() {
            request
        } else {
            request.body(body)
        };
        let response = request.send().await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match read_bounded(response, operation.max_response_bytes()).await? {
            Some(body) => Ok((status, retry_after, body)),
            // An error status means the same with or without its body, which is only read
            // for identifiers.
            None if !status.is_success() => Ok((status, retry_after, Vec::new())),
            None => Err(ExchangeError::TooLarge),
        }
    }
}

/// Why an exchange produced no usable response.
enum ExchangeError {
    /// Sending or receiving failed.
    Transport(reqwest::Error),
    /// A success body longer than [`Operation::max_response_bytes`].
    TooLarge,
}

impl From<reqwest::Error> for ExchangeError {
    fn from(e: reqwest::Error) -> Self {
        Self::Transport(e)
    }
}

/// Reads a body of at most `limit` bytes chunk by chunk; `None` (having read no more than
/// the limit) if it is longer.
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A failed exchange as an [`Error`]. For a create, any failure after the connection was made
/// may have left a key behind, so it becomes [`Error::CreateOutcomeUnknown`].
fn exchange_error(operation: Operation, e: ExchangeError, correlation_id: &str) -> Error {
    let sent = match &e {
        ExchangeError::Transport(e) => !(e.is_connect() || e.is_builder()),
        ExchangeError::TooLarge => true,
    };
    if operation == Operation::CreateKey && sent {
        return Error::CreateOutcomeUnknown {
            correlation_id: correlation_id.to_owned(),
        };
    }
    match e {
        ExchangeError::TooLarge if operation == Operation::ListKeys => {
            Error::InvalidResponse("key listing is larger than 32 MiB")
        }
        ExchangeError::TooLarge => Error::InvalidResponse("response body is larger than 1 MiB"),
        ExchangeError::Transport(e) if e.is_timeout() => Error::Timeout,
        ExchangeError::Transport(e) => Error::Transport(e),
    }
}

/// Maps an error status to an [`Error`], keeping only identifiers from the body.
fn status_error(
    operation: Operation,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_correlation_id: &str,
) -> Error {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    // Imburse's own refusals carry its error body; a 404 without one comes from something
    // else on the way (a proxy, a wrong base URL or API generation), which proves nothing
    // about the tenant or the key.
    let documented = parsed.as_ref().is_some_and(|b| !b.errors.is_empty());
    let parsed = parsed.unwrap_or_default();
    let first = parsed.errors.into_iter().next();
    let echoed = first
        .as_ref()
        .and_then(|e| e.metadata.as_ref())
        .and_then(|m| m.correlation_id.clone());
    let details = ApiErrorDetails {
        error_code: first.and_then(|e| e.error_code),
        correlation_id: Some(
            parsed
                .correlation_id
                .or(echoed)
                .unwrap_or_else(|| sent_correlation_id.to_owned()),
        ),
    };
    let tenant_missing = details
        .error_code
        .as_deref()
        .is_some_and(|code| code.eq_ignore_ascii_case("TENANT_NOT_FOUND"));
    match status.as_u16() {
        400 => Error::BadRequest(details),
        401 => Error::Unauthorized(details),
        403 => Error::Forbidden(details),
        // A 404 from the token endpoint means a wrong base URL or API generation.
        404 if operation == Operation::Token || !documented => Error::UnexpectedStatus {
            status: 404,
            details,
        },
        404 if matches!(operation, Operation::GetKey | Operation::DeleteKey) && !tenant_missing => {
            Error::NotFound(details)
        }
        404 => Error::TenantNotFound(details),
        409 => Error::Conflict(details),
        429 => Error::RateLimited {
            retry_after,
            details,
        },
        status @ 500..=599 => Error::Server { status, details },
        status => Error::UnexpectedStatus { status, details },
    }
}

/// Whether a created key has what the API documents: a public key that fits a key pair and a
/// private key of [`signing::PRIVATE_KEY_BYTES`] bytes in standard base64.
fn is_usable(created: &CreatedKey) -> bool {
    KeyPair::new(created.public_key.clone(), created.private_key.clone())
        .validate()
        .is_ok()
        && signing::decode_private_key(&created.private_key)
            .is_some_and(|key| key.expose_secret().len() == signing::PRIVATE_KEY_BYTES)
}

/// The key a create response holds, if it is one that can authenticate.
fn created_key(body: &[u8]) -> Option<CreatedKey> {
    serde_json::from_slice::<CreatedKey>(body)
        .ok()
        .filter(is_usable)
}

/// The keys a list response holds, wrapped or bare.
fn key_list(body: &[u8]) -> Result<Vec<TenantKey>, Error> {
    serde_json::from_slice::<KeyList>(body)
        .map(KeyList::into_keys)
        .map_err(|_| Error::InvalidResponse("key list is not {tenantKeys: [...]}"))
}

/// A header value that hyper and reqwest will not print in their own debug output.
fn sensitive(value: SecretString) -> Result<HeaderValue, Error> {
    let mut header = HeaderValue::from_str(value.expose_secret())
        .map_err(|_| Error::InvalidConfig("credential is not a valid header value".into()))?;
    header.set_sensitive(true);
    Ok(header)
}

/// The handle for one account. Cheap to clone; clones share the token cache and rate limiter.
#[derive(Clone)]
pub struct AccountClient {
    client: Client,
    state: Arc<AccountState>,
}

impl fmt::Debug for AccountClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountClient")
            .field("base_url", &self.state.base.as_str())
            .field("generation", &self.state.generation)
            .field("signer", &self.state.signer)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of an account's public key: names the credentials without revealing them.
fn credentials_fingerprint(public_key: &str) -> String {
    let digest = Sha256::digest(public_key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl AccountClient {
    /// Which account key pair this handle signs with, as [`credentials_fingerprint`]: a key made
    /// with one pair can only be proven revoked by asking with the same pair, since another
    /// account answers "not found" for keys it never had.
    pub fn credentials_fingerprint(&self) -> &str {
        &self.state.credentials_fingerprint
    }

    /// Proves the account key works by obtaining (or reusing the cached) management token.
    pub async fn verify_credentials(&self) -> Result<(), Error> {
        self.token().await.map(drop)
    }

    /// Creates a key for the tenant. Never retried automatically: on
    /// [`Error::CreateOutcomeUnknown`] (and, to be safe, on [`Error::Server`]) the key may exist,
    /// and the caller must reconcile with [`AccountClient::list_keys`].
    pub async fn create_key(&self, tenant_id: &str, req: &NewKey) -> Result<CreatedKey, Error> {
        let body = serde_json::to_vec(req)
            .map_err(|_| Error::InvalidConfig("key request cannot be encoded".into()))?;
        let reply = self
            .call(
                Operation::CreateKey,
                Method::POST,
                &self.keys_path(tenant_id, None)?,
                body,
            )
            .await?;
        // The key was created, but without a readable body, or with a private key that cannot
        // be the documented one, its private key is lost to us: storing a key that cannot
        // authenticate would report success for a broken key, and failing for good would
        // leave the created key alive forever. Only listing (and revoking) reconciles.
        created_key(&reply.body).ok_or(Error::CreateOutcomeUnknown {
            correlation_id: reply.correlation_id,
        })
    }

    /// Lists the tenant's keys (without private keys).
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<TenantKey>, Error> {
        let path = self.keys_path(tenant_id, None)?;
        let reply = self
            .call(Operation::ListKeys, Method::GET, &path, Vec::new())
            .await?;
        key_list(&reply.body)
    }

    /// Reads one key; [`Error::NotFound`] if the tenant has no such key.
    pub async fn get_key(&self, tenant_id: &str, public_key: &str) -> Result<TenantKey, Error> {
        let path = self.keys_path(tenant_id, Some(public_key))?;
        let reply = self
            .call(Operation::GetKey, Method::GET, &path, Vec::new())
            .await?;
        serde_json::from_slice(&reply.body)
            .map_err(|_| Error::InvalidResponse("key is not {publicKey, name, roles}"))
    }

    /// Deletes one key; [`Error::NotFound`] if the tenant has no such key.
    pub async fn delete_key(&self, tenant_id: &str, public_key: &str) -> Result<(), Error> {
        let path = self.keys_path(tenant_id, Some(public_key))?;
        self.call(Operation::DeleteKey, Method::DELETE, &path, Vec::new())
            .await
            .map(drop)
    }

    /// Whether this account's API generation can list keys (both specified generations can);
    /// lets a caller refuse to guess when it cannot.
    pub fn supports_listing(&self) -> bool {
        match self.state.generation {
            ApiGeneration::Seed | ApiGeneration::Current => true,
        }
    }

    /// The URL of a tenant's key collection, or of one key in it.
    fn keys_path(&self, tenant_id: &str, public_key: Option<&str>) -> Result<Url, Error> {
        if tenant_id.is_empty() {
            return Err(Error::InvalidConfig("tenantId is empty".into()));
        }
        let mut segments = self.state.generation.keys_path(tenant_id);
        if let Some(public_key) = public_key {
            if public_key.is_empty() {
                return Err(Error::InvalidConfig("publicKey is empty".into()));
            }
            segments.push(public_key);
        }
        Ok(endpoint(&self.state.base, &segments))
    }

    async fn token(&self) -> Result<Token, Error> {
        let state = &self.state;
        state
            .tokens
            .get_or_fetch(|| {
                self.client.inner.fetch_token(
                    state.limiter.as_deref(),
                    &state.base,
                    state.generation,
                    &state.signer,
                )
            })
            .await
    }

    /// A key call with the management token. A 401 means the cached token died early
    /// (revoked, clock skew): it is dropped, a new one fetched and the call made once more.
    /// Idempotent operations are retried on transient failures.
    async fn call(
        &self,
        operation: Operation,
        method: Method,
        url: &Url,
        body: Vec<u8>,
    ) -> Result<Reply, Error> {
        let attempt = || async {
            let token = self.token().await.map_err(AttemptError::Token)?;
            match self
                .send_bearer(operation, &method, url, &token, &body)
                .await
            {
                Err(Error::Unauthorized(_)) => {
                    self.state.tokens.invalidate(&token).await;
                    let token = self.token().await.map_err(AttemptError::Token)?;
                    self.send_bearer(operation, &method, url, &token, &body)
                        .await
                        .map_err(AttemptError::Call)
                }
                other => other.map_err(AttemptError::Call),
            }
        };
        let outcome = if operation.is_idempotent() {
            self.client.inner.with_retry(operation, attempt).await
        } else {
            attempt().await
        };
        outcome.map_err(AttemptError::into_inner)
    }

    async fn send_bearer(
        &self,
        operation: Operation,
        method: &Method,
        url: &Url,
        token: &Token,
        body: &[u8],
    ) -> Result<Reply, Error> {
        let mut headers = self.state.key_headers.clone();
        let bearer = format!("Bearer {}", token.access_token.expose_secret());
        headers.insert(AUTHORIZATION, sensitive(bearer.into())?);
        self.client
            .inner
            .send(
                self.state.limiter.as_deref(),
                operation,
                method.clone(),
                url,
                headers,
                body.to_vec(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public_key: &str, private_key: &str) -> AccountConfig {
        AccountConfig {
            base_url: "https://api.imbursepayments.com".into(),
            generation: ApiGeneration::Seed,
            account_id: None,
            credentials: KeyPair::new(public_key, SecretString::from(private_key)),
        }
    }

    /// One state per account key; a new private key for it replaces the state (its tokens
    /// belong to the old pair) but keeps the account's rate limiter; accounts nobody uses are
    /// forgotten once there are many.
    #[test]
    fn account_states_are_bounded_and_follow_credentials() {
        let client = Client::new(ClientOptions {
            rate_limit: Some(RateLimit {
                per_second: 10,
                burst: 10,
            }),
            ..ClientOptions::default()
        })
        .unwrap();
        let first = client.account(config("pk", "c2VjcmV0LW9uZQ==")).unwrap();
        let again = client.account(config("pk", "c2VjcmV0LW9uZQ==")).unwrap();
        assert!(Arc::ptr_eq(&first.state, &again.state));
        let rotated = client.account(config("pk", "c2VjcmV0LXR3bw==")).unwrap();
        assert!(!Arc::ptr_eq(&first.state, &rotated.state));
        let (Some(a), Some(b)) = (&first.state.limiter, &rotated.state.limiter) else {
            panic!("rate limiting is on");
        };
        assert!(Arc::ptr_eq(a, b));
        drop((first, again, rotated));
        for i in 0..IDLE_ACCOUNTS * 2 {
            drop(
                client
                    .account(config(&format!("pk{i}"), "c2VjcmV0LW9uZQ=="))
                    .unwrap(),
            );
        }
        let held = client.inner.accounts.lock().unwrap().len();
        assert!(held <= IDLE_ACCOUNTS, "{held} account states held");
    }

    fn error_for(operation: Operation, status: u16, body: &str) -> Error {
        status_error(
            operation,
            StatusCode::from_u16(status).unwrap(),
            None,
            body.as_bytes(),
            "sent",
        )
    }

    /// Only Imburse's documented error body makes a 404 say something about a key or tenant:
    /// a revocation must not count as done because some route does not exist.
    #[test]
    fn a_404_needs_the_documented_body() {
        let documented =
            |code: &str| format!(r#"{{"correlationId":"c","errors":[{{"errorCode":"{code}"}}]}}"#);
        assert!(matches!(
            error_for(
                Operation::DeleteKey,
                404,
                &documented("TENANT_KEY_NOT_FOUND")
            ),
            Error::NotFound(_)
        ));
        assert!(matches!(
            error_for(Operation::DeleteKey, 404, &documented("TENANT_NOT_FOUND")),
            Error::TenantNotFound(_)
        ));
        assert!(matches!(
            error_for(Operation::ListKeys, 404, &documented("TENANT_NOT_FOUND")),
            Error::TenantNotFound(_)
        ));
        for body in [
            "",
            "Not Found",
            "<html>404</html>",
            "{}",
            r#"{"errors":[]}"#,
        ] {
            for operation in [
                Operation::DeleteKey,
                Operation::ListKeys,
                Operation::CreateKey,
            ] {
                assert!(
                    matches!(
                        error_for(operation, 404, body),
                        Error::UnexpectedStatus { status: 404, .. }
                    ),
                    "{operation} with body {body:?}"
                );
            }
        }
    }

    /// A key as the API lists it, with the optional fields present or not.
    fn listed_key() -> impl proptest::strategy::Strategy<Value = TenantKey> {
        use proptest::prelude::*;
        (
            proptest::option::of(".{0,20}"),
            ".{0,40}",
            proptest::option::of(".{0,20}"),
            proptest::collection::vec(".{0,12}", 0..3),
        )
            .prop_map(|(identity, public_key, name, roles)| TenantKey {
                identity,
                public_key,
                name,
                roles,
            })
    }

    fn listed_json(key: &TenantKey) -> serde_json::Value {
        let mut json = serde_json::json!({"publicKey": key.public_key, "roles": key.roles});
        if let Some(identity) = &key.identity {
            json["identity"] = identity.as_str().into();
        }
        if let Some(name) = &key.name {
            json["name"] = name.as_str().into();
        }
        json
    }

    proptest::proptest! {
        // Response bodies are untrusted: any bytes are read or refused, never a panic.
        #[test]
        fn responses_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            status in 400u16..600,
        ) {
            let _ = created_key(&body);
            let _ = key_list(&body);
            let _ = status_error(
                Operation::DeleteKey,
                StatusCode::from_u16(status).unwrap(),
                None,
                &body,
                "sent",
            );
        }

        // Near misses of the documented shapes exercise the decoder beyond its first byte.
        #[test]
        fn near_miss_responses_never_panic(
            keys in proptest::collection::vec(".{0,12}", 0..5),
            values in proptest::collection::vec(".{0,12}", 0..5),
        ) {
            let fields: serde_json::Map<String, serde_json::Value> =
                keys.into_iter().zip(values.into_iter().map(serde_json::Value::from)).collect();
            let object = serde_json::Value::Object(fields);
            for body in [
                object.clone(),
                serde_json::json!({"tenantKeys": [object.clone()]}),
                serde_json::json!([object.clone()]),
                serde_json::json!({"errors": [object]}),
            ] {
                let body = body.to_string();
                let _ = created_key(body.as_bytes());
                let _ = key_list(body.as_bytes());
                let _ = error_for(Operation::GetKey, 404, &body);
            }
        }

        #[test]
        fn key_lists_round_trip_wrapped_and_bare(keys in proptest::collection::vec(listed_key(), 0..5)) {
            let listed: Vec<_> = keys.iter().map(listed_json).collect();
            for body in [serde_json::json!({"tenantKeys": listed}), serde_json::json!(listed)] {
                proptest::prop_assert_eq!(&key_list(body.to_string().as_bytes()).unwrap(), &keys);
            }
        }

        // A created key with a documented key pair is read back as sent, extra fields ignored.
        #[test]
        fn created_keys_round_trip(
            key in listed_key(),
            public_key in "[a-f0-9-]{1,36}",
            private in proptest::array::uniform32(proptest::prelude::any::<u8>()),
        ) {
            use base64::Engine as _;
            let private_key = base64::engine::general_purpose::STANDARD.encode(private);
            let mut body = listed_json(&TenantKey { public_key: public_key.clone(), ..key.clone() });
            body["privateKey"] = private_key.as_str().into();
            body["tenantId"] = "t".into();
            let created = created_key(body.to_string().as_bytes()).unwrap();
            proptest::prop_assert_eq!(created.public_key, public_key);
            proptest::prop_assert_eq!(created.private_key.expose_secret(), private_key.as_str());
            proptest::prop_assert_eq!(created.identity, key.identity);
            proptest::prop_assert_eq!(created.name, key.name);
            proptest::prop_assert_eq!(created.roles, key.roles);
        }
    }

    #[test]
    fn only_a_documented_key_pair_is_usable() {
        let created = |public_key: &str, private_key: &str| CreatedKey {
            identity: None,
            public_key: public_key.into(),
            private_key: private_key.into(),
            name: None,
            roles: Vec::new(),
        };
        let public = "88fdb12a-14dc-419c-b74c-422e2c25cfe7";
        let documented = "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=";
        assert!(is_usable(&created(public, documented)));
        for (public_key, private_key) in [
            (public, ""),
            (public, "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=!*"),
            (public, "not base64"),
            // 16 and 33 bytes: base64, but not the documented size.
            (public, "AAECAwQFBgcICQoLDA0ODw=="),
            (public, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"),
            ("", documented),
            ("a:b", documented),
        ] {
            assert!(
                !is_usable(&created(public_key, private_key)),
                "{public_key:?} {private_key:?}"
            );
        }
    }

    proptest::proptest! {
        // Create, list and error bodies come from the network: any bytes are read or refused,
        // never a panic, whatever the status.
        #[test]
        fn response_bodies_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            status in 100u16..600,
        ) {
            let _ = created_key(&body);
            let _ = key_list(&body);
            for operation in [Operation::Token, Operation::CreateKey, Operation::GetKey] {
                let status = StatusCode::from_u16(status).unwrap();
                let _ = status_error(operation, status, None, &body, "sent");
            }
        }

        // Create responses shaped as documented, with any field values: a key is taken only
        // when it can authenticate, and an error body never repeats a private key.
        #[test]
        fn created_keys_are_taken_only_when_usable(
            public_key in ".{0,40}",
            private_key in "[A-Za-z0-9+/=!]{0,48}",
            status in 400u16..600,
        ) {
            let body = serde_json::json!({"publicKey": public_key, "privateKey": private_key})
                .to_string();
            if let Some(key) = created_key(body.as_bytes()) {
                proptest::prop_assert!(is_usable(&key));
            }
            let error = status_error(
                Operation::CreateKey,
                StatusCode::from_u16(status).unwrap(),
                None,
                body.as_bytes(),
                "sent",
            );
            if private_key.len() >= 8 {
                proptest::prop_assert!(!error.to_string().contains(&private_key));
                let debug = format!("{error:?}");
                proptest::prop_assert!(!debug.contains(&private_key));
            }
        }
    }
}
