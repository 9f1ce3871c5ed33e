//! The Imburse API endpoints: token issuance (HMAC) and tenant key management (bearer).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use imburse::Operation;
use imburse::signing::HmacAuthorization;
use rand::Rng as _;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::Shared;
use crate::faults::Misbehaviour;
use crate::store::{FRESHNESS, StoredKey, TokenRefusal};

/// The request's correlation id: the client's `X-Correlation-ID`, or one made up here.
#[derive(Clone)]
pub(crate) struct CorrelationId(pub(crate) String);

/// An error answer in the documented shape:
/// `{"timestamp", "correlationId", "errors":[{"errorCode","message","messageTemplate","metadata":{"correlationId"}}]}`.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    correlation_id: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: &'static str,
        correlation: &CorrelationId,
    ) -> Self {
        Self {
            status,
            code,
            message,
            correlation_id: correlation.0.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let body = json!({
            "timestamp": timestamp,
            "correlationId": uuid::Uuid::new_v4().simple().to_string(),
            "errors": [{
                "errorCode": self.code,
                "message": self.message,
                "messageTemplate": self.message,
                "metadata": {"correlationId": self.correlation_id},
            }],
        });
        (self.status, Json(body)).into_response()
    }
}

/// How a token endpoint writes `expires`: a string of epoch milliseconds on the v1 paths, a
/// number on v2, as the two generations of documentation show.
#[derive(Clone, Copy)]
enum ExpiresFormat {
    String,
    Number,
}

/// Which key paths a request came through; only the current (OpenAPI) paths take
/// `x-account-id`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyPaths {
    Legacy,
    Current,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let token = |format: ExpiresFormat| post(issue_token).layer(Extension(format));
    Router::new()
        .route("/identity/v1/hmac/management", token(ExpiresFormat::String))
        .route("/v1/identity/hmac", token(ExpiresFormat::String))
        .route("/v2/identity/hmac", token(ExpiresFormat::Number))
        .merge(key_routes("/management/v1/tenant", KeyPaths::Legacy))
        .merge(key_routes("/v1/tenant", KeyPaths::Legacy))
        .merge(key_routes("/v1/account/tenants", KeyPaths::Current))
        .route_layer(middleware::from_fn_with_state(shared.clone(), observe))
        .with_state(shared)
}

fn key_routes(prefix: &str, paths: KeyPaths) -> Router<Arc<Shared>> {
    Router::new()
        .route(
            &format!("{prefix}/{{tenant_id}}/keys"),
            post(create_key).get(list_keys),
        )
        .route(
            &format!("{prefix}/{{tenant_id}}/keys/{{public_key}}"),
            get(get_key).delete(delete_key),
        )
        .layer(Extension(paths))
}

/// The operation a routed request performs, from its route pattern.
fn operation(method: &Method, route: &str) -> Option<Operation> {
    if route.contains("/identity/") {
        Some(Operation::Token)
    } else if route.ends_with("/keys") {
        match *method {
            Method::POST => Some(Operation::CreateKey),
            Method::GET => Some(Operation::ListKeys),
            _ => None,
        }
    } else if route.ends_with("/keys/{public_key}") {
        match *method {
            Method::GET => Some(Operation::GetKey),
            Method::DELETE => Some(Operation::DeleteKey),
            _ => None,
        }
    } else {
        None
    }
}

/// Around every API call: assigns the correlation id, injects faults, counts the answer and
/// logs it (method, path, status, correlation id; never a header value or body).
async fn observe(
    State(shared): State<Arc<Shared>>,
    route: MatchedPath,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let correlation = CorrelationId(
        request
            .headers()
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
    );
    request.extensions_mut().insert(correlation.clone());

    let operation = operation(&method, route.as_str());
    let response = match inject_faults(&shared, &correlation).await {
        Some(fault) => fault,
        None => call_with_scripts(&shared, operation, request, next).await,
    };
    let status = response.status();
    if let Some(operation) = operation {
        shared.store().record_call(operation, status.as_u16());
    }
    info!(%method, path, status = status.as_u16(), correlation_id = %correlation.0, "api call");
    response
}

/// Runs the call, unless a scripted misbehaviour answers in front of it, and spoils its
/// successful answer when a script says so.
async fn call_with_scripts(
    shared: &Shared,
    operation: Option<Operation>,
    request: Request,
    next: Next,
) -> Response {
    let Some(operation) = operation else {
        return next.run(request).await;
    };
    let in_front = shared.store().faults.take_scripted(operation, true);
    if let Some(misbehaviour) = in_front {
        return gateway_answer(&misbehaviour);
    }
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let after = shared.store().faults.take_scripted(operation, false);
    match after {
        Some(misbehaviour) => spoil(response, &misbehaviour).await,
        None => response,
    }
}

/// What a gateway in front of the API answers for a [`Misbehaviour`] that replaces the call.
fn gateway_answer(misbehaviour: &Misbehaviour) -> Response {
    match misbehaviour {
        Misbehaviour::Redirect { location } => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(value) = HeaderValue::from_str(location) {
                response.headers_mut().insert(LOCATION, value);
            }
            response
        }
        Misbehaviour::Status {
            status,
            body,
            retry_after_seconds,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = if serde_json::from_str::<Value>(body).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let mut response =
                (status, [(CONTENT_TYPE, content_type)], body.clone()).into_response();
            if let Some(seconds) = retry_after_seconds {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(*seconds));
            }
            response
        }
        // Validation keeps the other kinds out of this stage.
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Spoils a successful answer the API already produced (the call has taken effect).
async fn spoil(response: Response, misbehaviour: &Misbehaviour) -> Response {
    let status = response.status();
    if let Misbehaviour::Hang { ms } = misbehaviour {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
        return response;
    }
    // The API's own answers are small JSON documents.
    let Ok(body) = axum::body::to_bytes(response.into_body(), 1024 * 1024).await else {
        return lost_response();
    };
    let json = |value: &Value| (status, Json(value.clone())).into_response();
    let mut document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match misbehaviour {
        Misbehaviour::NonJsonBody => (
            status,
            [(CONTENT_TYPE, "text/html; charset=utf-8")],
            "<html><body><h1>Welcome</h1></body></html>",
        )
            .into_response(),
        Misbehaviour::EmptyBody => status.into_response(),
        Misbehaviour::MissingPrivateKey => {
            if let Some(object) = document.as_object_mut() {
                object.remove("privateKey");
            }
            json(&document)
        }
        Misbehaviour::InvalidPrivateKey => {
            // The real key with characters base64 does not allow after its padding.
            if let Some(key) = document.get_mut("privateKey")
                && let Some(text) = key.as_str()
            {
                *key = Value::from(format!("{text}!*"));
            }
            json(&document)
        }
        Misbehaviour::MissingExpiry => {
            if let Some(object) = document.as_object_mut() {
                object.remove("expires");
            }
            json(&document)
        }
        Misbehaviour::ExpiredToken => {
            let past = SystemTime::now()
                .checked_sub(Duration::from_secs(3600))
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default()
                .as_millis();
            if let Some(expires) = document.get_mut("expires") {
                *expires = if expires.is_string() {
                    Value::from(past.to_string())
                } else {
                    Value::from(u64::try_from(past).unwrap_or(u64::MAX))
                };
            }
            json(&document)
        }
        Misbehaviour::OversizedBody { bytes } => oversized(status, document, *bytes),
        Misbehaviour::Hang { .. } | Misbehaviour::Redirect { .. } | Misbehaviour::Status { .. } => {
            json(&document)
        }
    }
}

/// The answer padded with a `padding` field to `bytes` bytes in total, streamed in chunks
/// without `Content-Length`, so a client cannot refuse it from the headers alone.
fn oversized(status: StatusCode, document: Value, bytes: u64) -> Response {
    const CHUNK: usize = 64 * 1024;
    let fields = match document {
        Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    };
    let mut head = serde_json::to_vec(&Value::Object(fields.clone())).unwrap_or_default();
    // Reopen the object: drop its closing brace and add the padding field last.
    head.pop();
    if !fields.is_empty() {
        head.push(b',');
    }
    head.extend_from_slice(br#""padding":""#);
    let tail = br#""}"#;
    let wanted = usize::try_from(bytes).unwrap_or(usize::MAX);
    let padding = wanted.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(head.len() + padding + tail.len());
    body.extend_from_slice(&head);
    body.resize(head.len() + padding, b'a');
    body.extend_from_slice(tail);
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(CHUNK)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

/// Applies latency, then answers with 429 or 503 when a fault says so.
async fn inject_faults(shared: &Shared, correlation: &CorrelationId) -> Option<Response> {
    let (delay, retry_after, fail) = {
        let mut store = shared.store();
        let faults = &store.faults;
        let mut rng = rand::rng();
        let jitter = rng.random_range(0..=faults.jitter_ms);
        let delay = Duration::from_millis(faults.latency_ms.saturating_add(jitter));
        let fail = rng.random_bool(faults.error_rate.clamp(0.0, 1.0));
        (delay, store.take_rate_limited(), fail)
    };
    tokio::time::sleep(delay).await;
    if let Some(seconds) = retry_after {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "Too many requests, retry later",
            correlation,
        )
        .into_response();
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
        return Some(response);
    }
    fail.then(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable",
            correlation,
        )
        .into_response()
    })
}

fn unauthorized(code: &'static str, message: &'static str, c: &CorrelationId) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message, c)
}

/// `POST .../hmac`: checks the HMAC header against the exact body bytes and issues a token.
async fn issue_token(
    State(shared): State<Arc<Shared>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(format): Extension<ExpiresFormat>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c = &correlation;
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized(
                "UNAUTHORIZED",
                "An HMAC Authorization header is required",
                c,
            )
        })?;
    let auth = HmacAuthorization::parse(header).map_err(|_| {
        unauthorized(
            "INVALID_HMAC_HEADER",
            "The HMAC Authorization header is malformed",
            c,
        )
    })?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(auth.timestamp())
        .or_else(|future| auth.timestamp().duration_since(now).map_err(|_| future))
        .unwrap_or(Duration::MAX);
    if skew > FRESHNESS {
        return Err(unauthorized(
            "HMAC_TIMESTAMP_EXPIRED",
            "The HMAC timestamp is more than 5 minutes away from the server time",
            c,
        ));
    }
    let (token, expires_at) = shared
        .store()
        .issue_token(&auth, &body)
        .map_err(|refusal| match refusal {
            TokenRefusal::UnknownKey => {
                unauthorized("UNKNOWN_PUBLIC_KEY", "The public key is not known", c)
            }
            TokenRefusal::BadSignature => {
                unauthorized("INVALID_HMAC_SIGNATURE", "The HMAC signature is invalid", c)
            }
            TokenRefusal::ReusedNonce => {
                unauthorized("NONCE_ALREADY_USED", "The nonce has already been used", c)
            }
        })?;
    let millis = expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let expires = match format {
        ExpiresFormat::String => Value::from(millis.to_string()),
        ExpiresFormat::Number => Value::from(u64::try_from(millis).unwrap_or(u64::MAX)),
    };
    let body = json!({"accessToken": token.expose_secret(), "expires": expires});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Checks the bearer token, role, `x-account-id` and tenant ownership of a key call.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    paths: KeyPaths,
    tenant_id: &str,
    c: &CorrelationId,
) -> Result<String, ApiError> {
    let principal = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| shared.store().principal(token.trim()))
        .ok_or_else(|| unauthorized("UNAUTHORIZED", "A valid bearer token is required", c))?;
    let forbidden = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "The token does not grant access to tenant keys",
            c,
        )
    };
    let account_id = principal.key_manager_of().ok_or_else(forbidden)?.to_owned();
    if paths == KeyPaths::Current {
        let claimed = headers
            .get("x-account-id")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ACCOUNT_ID_IS_REQUIRED",
                    "The x-account-id header is required",
                    c,
                )
            })?;
        if claimed != account_id {
            return Err(forbidden());
        }
    }
    if !shared.store().owns_tenant(&account_id, tenant_id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "TENANT_NOT_FOUND",
            "The tenant was not found",
            c,
        ));
    }
    Ok(account_id)
}

fn key_not_found(c: &CorrelationId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TENANT_KEY_NOT_FOUND",
        "The tenant key was not found",
        c,
    )
}

/// A key as listed or read: no private key.
fn public_view(key: &StoredKey) -> Value {
    json!({
        "identity": key.identity,
        "name": key.name,
        "publicKey": key.public_key,
        "roles": key.roles,
    })
}

#[derive(Deserialize)]
struct NewKeyBody {
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

async fn create_key(
    State(shared): State<Arc<Shared>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(paths): Extension<KeyPaths>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c = &correlation;
    let account_id = authorize(&shared, &headers, paths, &tenant_id, c)?;
    let request: NewKeyBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_BODY",
            "The request body is not valid JSON of the expected shape",
            c,
        )
    })?;
    if request.roles.is_empty() || request.roles.iter().any(String::is_empty) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ROLES_ARE_REQUIRED",
            "At least one role is required",
            c,
        ));
    }
    let key = shared
        .store()
        .create_key(&account_id, &tenant_id, request.name, request.roles);
    shared.persist().await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "The key could not be stored",
            c,
        )
    })?;

    let (delay, lose) = {
        let mut store = shared.store();
        let delay = Duration::from_millis(store.faults.create_response_delay_ms);
        (delay, store.take_lost_create())
    };
    tokio::time::sleep(delay).await;
    if lose {
        return Ok(lost_response());
    }
    let body = json!({
        "identity": key.identity,
        "tenantId": key.tenant_id,
        "accountId": key.account_id,
        "name": key.name,
        "publicKey": key.public_key,
        "privateKey": key.private_key.expose_secret(),
        "roles": key.roles,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A response whose body fails before its first byte: hyper then closes the connection
/// without completing the answer, as when a response is lost on the way back.
fn lost_response() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::other("response dropped by fault injection"))
    });
    (StatusCode::CREATED, Body::from_stream(failing)).into_response()
}

async fn list_keys(
    State(shared): State<Arc<Shared>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(paths): Extension<KeyPaths>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, paths, &tenant_id, &correlation)?;
    let keys: Vec<Value> = shared
        .store()
        .keys(Some(&tenant_id))
        .map(public_view)
        .collect();
    Ok(Json(json!({ "tenantKeys": keys })).into_response())
}

async fn get_key(
    State(shared): State<Arc<Shared>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(paths): Extension<KeyPaths>,
    Path((tenant_id, public_key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, paths, &tenant_id, &correlation)?;
    let store = shared.store();
    let key = store
        .key(&tenant_id, &public_key)
        .ok_or_else(|| key_not_found(&correlation))?;
    Ok(Json(public_view(key)).into_response())
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(paths): Extension<KeyPaths>,
    Path((tenant_id, public_key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, paths, &tenant_id, &correlation)?;
    if shared.store().take_failed_delete() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable",
            &correlation,
        ));
    }
    if !shared.store().delete_key(&tenant_id, &public_key) {
        return Err(key_not_found(&correlation));
    }
    shared.persist().await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "The deletion could not be stored",
            &correlation,
        )
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
