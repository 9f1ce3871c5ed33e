//! Real local test infrastructure: builds, caches and runs a Kubernetes control plane (etcd,
//! kube-apiserver, kube-controller-manager) as local processes, for the tests and the demo.
//!
//! - [`versions`]: the pinned versions and the cache layout.
//! - [`cluster`]: where every end-to-end run starts: a control plane with the CRDs, namespaces,
//!   sandbox accounts, operator processes.
//! - [`build`]: builds missing binaries into the cache.
//! - [`ControlPlane`]: runs an isolated control plane; [`detached`] manages one that outlives
//!   the command that started it (`cargo xtask controlplane up`).
//! - [`install_crds`], [`apply_crds`], [`Operator`] and [`Replicas`]: the operator's CRDs and binary on that
//!   control plane, one process or several contesting the leader election Lease.
//! - [`Registry`]: a local OCI registry for installs from `oci://`.
//! - [`chaos`]: what the chaos scenarios of the tests and of `cargo xtask chaos` share.
//! - [`keys`]: the checks of a delivered key both use.
//! - [`suite`]: how an end-to-end test binary runs its tests in the world it started.

pub mod build;
pub mod chaos;
pub mod cluster;
mod controlplane;
pub mod detached;
pub mod keys;
mod operator;
mod pki;
mod process;
mod registry;
pub mod suite;
pub mod versions;

use std::path::Path;

pub use controlplane::{ControlPlane, client_from_kubeconfig, service_account_token};
pub use operator::{Operator, Replicas, apply_crds, install_crds};
pub use pki::ADMIN_USER;
pub use registry::Registry;

/// Copies the folder `from` with everything below it to `to`, for a chart edited or packaged
/// from a copy.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("component.log");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(super::log_tail(&log, 2), "two\nthree");
        assert_eq!(super::log_tail(&log, 10), "one\ntwo\nthree");
        assert!(super::log_tail(&dir.path().join("missing.log"), 2).starts_with("(cannot read"));
    }
}
