//! HTTPS for the secure metrics endpoint: a certificate from a directory (`tls.crt` and
//! `tls.key`, as a `kubernetes.io/tls` Secret mounts them), or a self-signed one made at start,
//! as controller-runtime does when it is given none (scrapers then skip verification or pin
//! nothing; the bearer token is what protects the endpoint).

use std::{path::Path, sync::Arc};

use axum::Router;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Pem {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("making a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The server configuration: the certificate in `cert_dir`, or a self-signed one for
/// `names`.
pub fn server_config(
    cert_dir: Option<&Path>,
    names: Vec<String>,
) -> Result<Arc<ServerConfig>, Error> {
    let (chain, key) = match cert_dir {
        Some(dir) => {
            let pem = |file: &str| (dir.join(file), dir.join(file).display().to_string());
            let (cert_path, cert_name) = pem("tls.crt");
            let (key_path, key_name) = pem("tls.key");
            let chain = CertificateDer::pem_file_iter(&cert_path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|source| Error::Pem {
                    path: cert_name,
                    source,
                })?;
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| Error::Pem {
                path: key_name,
                source,
            })?;
            (chain, key)
        }
        None => {
            let certified = rcgen::generate_simple_self_signed(names)?;
            let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
            (vec![certified.cert.der().clone()], key)
        }
    };
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // Scrapers speak HTTP/1.1; no second protocol stack for a metrics page.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves; connections in flight then
/// end with the process.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // A failed handshake or a dropped connection concerns that caller only.
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
