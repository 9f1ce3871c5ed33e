//! The HTTP surface: `/metrics` for Prometheus on one address; `/livez`, `/readyz` and
//! `/healthz` for the probes on another, so that a NetworkPolicy or a ServiceMonitor can open
//! one without the other. `/metrics` may be served over HTTPS to authorized callers only
//! ([`auth`], [`tls`]).

pub mod auth;
pub mod tls;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use prometheus_client::registry::Registry;

use crate::liveness::Liveness;

/// Where a server listens, in the form of controller-runtime's bind address flags: `host:port`,
/// `:port` for every interface, or `0` for not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindAddress {
    Off,
    At(SocketAddr),
}

impl FromStr for BindAddress {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "0" {
            return Ok(Self::Off);
        }
        let invalid = || format!("{value:?} is not `host:port`, `:port` or `0`");
        match value.strip_prefix(':') {
            Some(port) => port
                .parse()
                .map(|port| Self::At(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
                .map_err(|_| invalid()),
            None => value.parse().map(Self::At).map_err(|_| invalid()),
        }
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("0"),
            Self::At(address) => address.fmt(f),
        }
    }
}

/// Binds `address`, so that a taken port fails start-up with a clear error; `None` when it is
/// off.
pub async fn bind(address: BindAddress) -> std::io::Result<Option<tokio::net::TcpListener>> {
    match address {
        BindAddress::Off => Ok(None),
        BindAddress::At(address) => tokio::net::TcpListener::bind(address).await.map(Some),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `/metrics`, encoding `registry` at each scrape; with an `authorizer`, only for callers it
/// allows.
pub fn metrics(registry: Registry, authorizer: Option<Arc<auth::Authorizer>>) -> Router {
    let app = Router::new()
        .route("/metrics", get(encode_metrics))
        .with_state(Arc::new(registry));
    match authorizer {
        Some(authorizer) => app.layer(axum::middleware::from_fn_with_state(
            authorizer,
            auth::require_metrics_reader,
        )),
        None => app,
    }
}

/// The probes: `/livez` (and `/healthz`, its older name) fails while a reconcile is wedged;
/// `/readyz` fails until the caches are synced.
pub fn probes(ready: Arc<AtomicBool>, liveness: Arc<Liveness>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/healthz", get(livez))
        .with_state(liveness)
        .merge(
            Router::new()
                .route("/readyz", get(readyz))
                .with_state(ready),
        )
}

/// Encodes `registry` for one scrape, sent as it is written: with a gauge per key, the
/// exposition grows with the fleet (about 55 MB at 100,000 keys), and holding it whole would
/// double the operator's memory at every scrape.
async fn encode_metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let (chunks, received) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut body = ChunkedBody {
            buffer: String::with_capacity(CHUNK),
            chunks,
        };
        let encoded = prometheus_client::encoding::text::encode(&mut body, &registry)
            .and_then(|()| body.flush());
        if encoded.is_err() {
            // A scraper that went away gets nothing; one still reading gets a body that ends
            // in an error, not a truncated exposition that looks complete.
            let _ = body
                .chunks
                .blocking_send(Err(std::io::Error::other("encoding the metrics failed")));
        }
    });
    let stream = futures::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        axum::body::Body::from_stream(stream),
    )
}

/// How much of the exposition is sent at a time.
const CHUNK: usize = 64 * 1024;

/// The response body of a scrape, written by the encoder on a blocking thread and sent a chunk
/// at a time; the encoder waits while the scraper reads.
struct ChunkedBody {
    buffer: String,
    chunks: tokio::sync::mpsc::Sender<Result<String, std::io::Error>>,
}

impl ChunkedBody {
    fn flush(&mut self) -> fmt::Result {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, String::with_capacity(CHUNK));
        self.chunks.blocking_send(Ok(chunk)).map_err(|_| fmt::Error)
    }
}

impl fmt::Write for ChunkedBody {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.buffer.push_str(text);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

async fn livez(State(liveness): State<Arc<Liveness>>) -> impl IntoResponse {
    match liveness.stall(Instant::now()) {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(stall) => {
            let message = format!(
                "a reconcile of a {} has run for {}s",
                stall.kind,
                stall.running_for.as_secs()
            );
            tracing::warn!("{message}: /livez fails, so that the process is restarted");
            (StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_take_the_controller_runtime_forms() {
        assert_eq!("0".parse(), Ok(BindAddress::Off));
        assert_eq!(
            ":8080".parse(),
            Ok(BindAddress::At(SocketAddr::from(([0, 0, 0, 0], 8080))))
        );
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(BindAddress::At(SocketAddr::from(([127, 0, 0, 1], 0))))
        );
        assert_eq!(
            "[::1]:9000".parse::<BindAddress>().map(|a| a.to_string()),
            Ok("[::1]:9000".to_owned())
        );
        for invalid in ["", ":", "8080", "localhost:8080", ":http", "0.0.0.0"] {
            assert!(
                invalid.parse::<BindAddress>().is_err(),
                "{invalid:?} parsed"
            );
        }
    }
}
