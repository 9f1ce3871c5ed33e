//! The sandbox's own control API under `/_sandbox/`, and a typed client for it.
//!
//! Only loopback peers may use it: it can change faults and reveals which keys exist (never
//! their private keys).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::config::TenantKey;
use crate::faults::Faults;

/// A tenant key as the admin API shows it (never the private key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// The tenant owning the key.
    pub tenant_id: String,
    /// The key's public key.
    pub public_key: String,
    /// The key's name.
    pub name: String,
    /// The key's roles.
    pub roles: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct KeyListing {
    keys: Vec<KeyInfo>,
}

/// Calls answered per operation (`token`, `create_key`, `list_keys`, `get_key`,
/// `delete_key`) and HTTP status (as a string, e.g. `"201"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Operation → status → count.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Stats {
    /// Calls of `operation` answered with `status`.
    pub fn count(&self, operation: imburse::Operation, status: u16) -> u64 {
        self.calls
            .get(operation.as_str())
            .and_then(|by_status| by_status.get(&status.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Calls of `operation`, whatever the status.
    pub fn total(&self, operation: imburse::Operation) -> u64 {
        self.calls
            .get(operation.as_str())
            .map_or(0, |by_status| by_status.values().sum())
    }
}

const OPERATIONS: [imburse::Operation; 5] = [
    imburse::Operation::Token,
    imburse::Operation::CreateKey,
    imburse::Operation::ListKeys,
    imburse::Operation::GetKey,
    imburse::Operation::DeleteKey,
];

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sandbox/keys", get(keys).post(seed_keys))
        .route("/_sandbox/stats", get(stats))
        .route("/_sandbox/faults", get(faults).put(set_faults))
        .route("/_sandbox/reset-stats", post(reset_stats))
        .route("/_sandbox/revoke-tokens", post(revoke_tokens))
        .route_layer(middleware::from_fn(loopback_only))
        .with_state(shared)
}

async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if peer.ip().to_canonical().is_loopback() {
        next.run(request).await
    } else {
        StatusCode::FORBIDDEN.into_response()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeysQuery {
    tenant_id: Option<String>,
}

async fn keys(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<KeysQuery>,
) -> Json<KeyListing> {
    let keys = shared
        .store()
        .keys(query.tenant_id.as_deref())
        .map(|k| KeyInfo {
            tenant_id: k.tenant_id.clone(),
            public_key: k.public_key.clone(),
            name: k.name.clone(),
            roles: k.roles.clone(),
        })
        .collect();
    Json(KeyListing { keys })
}

/// Adds keys in bulk, private keys included, as if they had been created long ago: a test or
/// benchmark can start from many keys without creating each through the API. The state file,
/// if any, is written as after any other change.
async fn seed_keys(
    State(shared): State<Arc<Shared>>,
    Json(keys): Json<Vec<TenantKey>>,
) -> Response {
    let Some(count) = shared.store().seed_keys(keys) else {
        return (StatusCode::BAD_REQUEST, "a key names an unknown tenant").into_response();
    };
    if let Err(error) = shared.persist().await {
        return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
    }
    (StatusCode::CREATED, Json(count)).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    let store = shared.store();
    // Every operation is listed, so a reader can tell "no calls" from "unknown operation".
    let mut calls: BTreeMap<String, BTreeMap<String, u64>> = OPERATIONS
        .iter()
        .map(|op| (op.as_str().to_owned(), BTreeMap::new()))
        .collect();
    for (operation, by_status) in store.stats() {
        let entry = calls.entry((*operation).to_owned()).or_default();
        for (status, count) in by_status {
            entry.insert(status.to_string(), *count);
        }
    }
    Json(Stats { calls })
}

async fn faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    Json(shared.store().faults.clone())
}

async fn set_faults(State(shared): State<Arc<Shared>>, Json(faults): Json<Faults>) -> Response {
    if let Err(message) = faults.validate() {
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    shared.store().faults = faults;
    StatusCode::NO_CONTENT.into_response()
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.store().reset_stats();
    StatusCode::NO_CONTENT
}

async fn revoke_tokens(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.store().revoke_tokens();
    StatusCode::NO_CONTENT
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The base URL cannot be used.
    #[error("invalid sandbox URL")]
    InvalidUrl,
    /// The sandbox could not be reached or answered garbage.
    #[error("sandbox admin request failed")]
    Http(#[from] reqwest::Error),
    /// The sandbox refused the call.
    #[error("sandbox admin API answered {0}")]
    Status(u16),
}

/// A typed client for `/_sandbox/`, usable against an in-process [`crate::Sandbox`] or a
/// separately started `imburse-sandbox` process.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl AdminClient {
    /// A client for the sandbox at `base_url` (e.g. `http://127.0.0.1:40123`).
    pub fn new(base_url: &str) -> Result<Self, AdminError> {
        let base = reqwest::Url::parse(base_url)
            .and_then(|base| base.join("_sandbox/"))
            .map_err(|_| AdminError::InvalidUrl)?;
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            base,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, AdminError> {
        self.base.join(path).map_err(|_| AdminError::InvalidUrl)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AdminError> {
        let response = request.send().await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(AdminError::Status(response.status().as_u16()))
        }
    }

    /// The keys of one tenant, or of all tenants when `tenant_id` is `None`.
    pub async fn keys(&self, tenant_id: Option<&str>) -> Result<Vec<KeyInfo>, AdminError> {
        let mut url = self.url("keys")?;
        if let Some(tenant_id) = tenant_id {
            url.query_pairs_mut().append_pair("tenantId", tenant_id);
        }
        let listing: KeyListing = self.send(self.http.get(url)).await?.json().await?;
        Ok(listing.keys)
    }

    /// Adds `keys` (private keys included) to the sandbox, as [`crate::Config::keys`] does at
    /// start.
    pub async fn seed_keys(&self, keys: &[TenantKey]) -> Result<(), AdminError> {
        self.send(self.http.post(self.url("keys")?).json(keys))
            .await
            .map(drop)
    }

    /// Calls answered so far, by operation and status.
    pub async fn stats(&self) -> Result<Stats, AdminError> {
        Ok(self
            .send(self.http.get(self.url("stats")?))
            .await?
            .json()
            .await?)
    }

    /// Clears the call statistics.
    pub async fn reset_stats(&self) -> Result<(), AdminError> {
        self.send(self.http.post(self.url("reset-stats")?))
            .await
            .map(drop)
    }

    /// The active faults (burst counters show what is left).
    pub async fn faults(&self) -> Result<Faults, AdminError> {
        Ok(self
            .send(self.http.get(self.url("faults")?))
            .await?
            .json()
            .await?)
    }

    /// Replaces the fault set.
    pub async fn set_faults(&self, faults: &Faults) -> Result<(), AdminError> {
        self.send(self.http.put(self.url("faults")?).json(faults))
            .await
            .map(drop)
    }

    /// Invalidates every bearer token issued so far, so the next bearer call gets 401.
    pub async fn revoke_tokens(&self) -> Result<(), AdminError> {
        self.send(self.http.post(self.url("revoke-tokens")?))
            .await
            .map(drop)
    }
}
