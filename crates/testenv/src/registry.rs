//! A local OCI registry (distribution's `registry`, built from the Go module proxy and cached
//! like the control plane) on a free loopback port, with its storage in a temporary folder: what
//! an install from `oci://` is tested against.

use std::ffi::OsString;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::build;
use crate::process::{Lifetime, Process};
use crate::versions::Component;

/// How long the registry may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running registry; dropping it stops the registry and removes its storage.
pub struct Registry {
    process: Process,
    host: String,
    // Declared last so that it is removed after the process is stopped.
    _dir: TempDir,
}

impl Registry {
    /// Builds the registry if it is not cached, and starts it on plain HTTP on 127.0.0.1.
    pub fn start() -> Result<Registry> {
        build::ensure(Component::Registry, &mut io::stderr())?;
        let dir = tempfile::Builder::new().prefix("tko-registry-").tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free loopback port")?
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.path().join("storage").display()
            ),
        )?;
        let mut process = Process::start_with_env(
            "registry",
            &Component::Registry.binary_path("registry"),
            vec!["serve".into(), config.into_os_string()],
            // Tracing is on by default in distribution 3; nothing here collects it.
            vec![(
                OsString::from("OTEL_TRACES_EXPORTER"),
                OsString::from("none"),
            )],
            dir.path(),
            Lifetime::Owned,
        )?;
        let started = Instant::now();
        while TcpStream::connect(&host).is_err() {
            process.check_running()?;
            if started.elapsed() > START_TIMEOUT {
                bail!("the registry did not listen on {host} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Registry {
            process,
            host,
            _dir: dir,
        })
    }

    /// `127.0.0.1:<port>`: the registry's host in image references and `oci://` URLs.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}
