//! A local stand-in for the Imburse API, faithful to the documented wire contract.
//!
//! It issues bearer tokens for HMAC-signed requests (verified with [`imburse::signing`]),
//! manages Tenant Security Keys on both API generations' paths, injects faults on demand and
//! exposes an admin API under `/_sandbox/` ([`AdminClient`]). Run it in-process with
//! [`Sandbox::start`] or as the `imburse-sandbox` binary.
//!
//! Endpoints:
//! - tokens: `POST /identity/v1/hmac/management` (2019) and `POST /v1/identity/hmac` answer
//!   `expires` as a string of epoch milliseconds; `POST /v2/identity/hmac` as a number. An
//!   account key gets an account token, a created tenant key a tenant token.
//! - keys, on `/management/v1/tenant/{tenantId}/keys` (2019), `/v1/tenant/{tenantId}/keys`
//!   (mid-2019) and `/v1/account/tenants/{tenantId}/keys` (current, needs `x-account-id`):
//!   `POST` and `GET` on the collection, `GET` and `DELETE` on `.../keys/{publicKey}`. All
//!   paths share one store.
//! - admin (loopback peers only): `GET /_sandbox/keys[?tenantId=]`, `GET /_sandbox/stats`,
//!   `GET|PUT /_sandbox/faults`, `POST /_sandbox/reset-stats`, `POST /_sandbox/revoke-tokens`.
//!
//! Tenant keys can exist from the start ([`Config::keys`]), so a client can be tested against
//! the keys an earlier run left behind; [`state_keys`] reads them back from a state file.
//! Faults include scripted misbehaviours of single operations ([`Misbehaviour`]).

mod admin;
mod api;
mod config;
mod faults;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use admin::{AdminClient, AdminError, KeyInfo, Stats};
pub use config::{Account, Config, Tenant, TenantKey};
pub use faults::{
    Faults, MAX_HANG_MS, MAX_OVERSIZED_BYTES, Misbehaviour, RateLimitedFault, ScriptedFault,
};

use store::{Persisted, Store};

/// Why the sandbox could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configuration is invalid.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The state file could not be read or written.
    #[error("sandbox state file {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The listen address could not be bound, or serving failed.
    #[error("sandbox server: {0}")]
    Server(#[from] std::io::Error),
}

/// How to run a [`Sandbox`] beyond its [`Config`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where to persist keys across restarts; `None` keeps them in memory only. An existing
    /// file takes the place of [`Config::keys`].
    pub state_file: Option<PathBuf>,
    /// Faults active from the start.
    pub faults: Faults,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_file: None,
            faults: Faults::default(),
        }
    }
}

/// State shared by all handlers.
pub(crate) struct Shared {
    store: Mutex<Store>,
    state_file: Option<PathBuf>,
    /// Serialises state-file writes so a newer snapshot is never overwritten by an older one.
    persist_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The store, locked. Never held across an await.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the keys to the state file, if there is one: to a temporary file first, then
    /// renamed over the old one, so a crash never leaves a half-written file.
    pub(crate) async fn persist(&self) -> Result<(), SandboxError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let _ordered = self.persist_lock.lock().await;
        let state_error = |source| SandboxError::State {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(&self.store().snapshot())
            .map_err(|e| state_error(std::io::Error::other(e)))?;
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // The file holds private keys.
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&temporary).await.map_err(state_error)?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &json)
            .await
            .map_err(state_error)?;
        file.sync_all().await.map_err(state_error)?;
        tokio::fs::rename(&temporary, path)
            .await
            .map_err(state_error)
    }
}

/// The persisted keys, or `None` when no state file was written yet.
fn load_state(path: &Path) -> Result<Option<Persisted>, SandboxError> {
    let state_error = |source| SandboxError::State {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| state_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(state_error(source)),
    }
}

/// The tenant keys in a state file (see [`Options::state_file`]), private keys included, in
/// the form [`Config::keys`] takes: what a run left behind, to start another sandbox with.
pub fn state_keys(path: &Path) -> Result<Vec<TenantKey>, SandboxError> {
    Ok(load_state(path)?
        .map(|p| p.keys.into_iter().map(TenantKey::from).collect())
        .unwrap_or_default())
}

/// A running sandbox server. Dropping it shuts the server down.
pub struct Sandbox {
    addr: SocketAddr,
    admin: AdminClient,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Sandbox {
    /// Starts a sandbox on `127.0.0.1` with a free port.
    pub async fn start(config: Config) -> Result<Self, SandboxError> {
        Self::start_with(config, Options::default()).await
    }

    /// Starts a sandbox with explicit options.
    pub async fn start_with(config: Config, options: Options) -> Result<Self, SandboxError> {
        config.validate()?;
        options.faults.validate().map_err(SandboxError::Config)?;
        let persisted = match &options.state_file {
            Some(path) => load_state(path)?,
            None => None,
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(&config, persisted, options.faults)),
            state_file: options.state_file,
            persist_lock: tokio::sync::Mutex::new(()),
        });
        let app = api::router(shared.clone()).merge(admin::router(shared));
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let admin = AdminClient::new(&format!("http://{addr}"))
            .map_err(|e| SandboxError::Config(e.to_string()))?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                // Either an explicit stop or the handle being dropped.
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self {
            addr,
            admin,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for API clients, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this sandbox's admin API.
    pub fn admin(&self) -> AdminClient {
        self.admin.clone()
    }

    /// Stops accepting connections and waits for open requests to finish.
    pub async fn stop(mut self) -> Result<(), SandboxError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.server.take() {
            Some(server) => server
                .await
                .map_err(std::io::Error::other)?
                .map_err(SandboxError::Server),
            None => Ok(()),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
