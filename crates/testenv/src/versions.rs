//! The one place where the control plane's versions and its cache layout are pinned.
//!
//! Binaries live at `<cache root>/<component>/<version>/<binary>`, outside the repository, so
//! every checkout and every test run on the machine share one build.

use std::path::PathBuf;

/// Kubernetes release whose `kube-apiserver` and `kube-controller-manager` the tests run against.
pub const KUBERNETES: &str = "1.36.3";
/// etcd release backing the API server.
pub const ETCD: &str = "3.6.16";
/// Helm release used to install and validate the chart.
pub const HELM: &str = "3.22.0";

/// Environment variable that overrides the cache root.
pub const CACHE_DIR_ENV: &str = "TKO_CACHE_DIR";

/// A separately built and cached piece of the control plane tooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `kube-apiserver` and `kube-controller-manager`, built from one wrapper module.
    Kubernetes,
    Etcd,
    Helm,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::Etcd, Component::Helm, Component::Kubernetes];

    pub fn name(self) -> &'static str {
        match self {
            Component::Kubernetes => "kubernetes",
            Component::Etcd => "etcd",
            Component::Helm => "helm",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Component::Kubernetes => KUBERNETES,
            Component::Etcd => ETCD,
            Component::Helm => HELM,
        }
    }

    /// The executables this component provides.
    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            Component::Kubernetes => &["kube-apiserver", "kube-controller-manager"],
            Component::Etcd => &["etcd"],
            Component::Helm => &["helm"],
        }
    }

    /// `<cache root>/<component>/<version>`.
    pub fn dir(self) -> PathBuf {
        cache_root().join(self.name()).join(self.version())
    }

    pub fn binary_path(self, binary: &str) -> PathBuf {
        self.dir().join(binary)
    }
}

impl std::str::FromStr for Component {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Component::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown component {s:?} (expected kubernetes, etcd or helm)"))
    }
}

/// `$TKO_CACHE_DIR`, else `${XDG_CACHE_HOME:-$HOME/.cache}/tenant-key-operator`, made absolute
/// because the paths end up in the arguments of processes with other working directories.
pub fn cache_root() -> PathBuf {
    let root = match non_empty_env(CACHE_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => non_empty_env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| non_empty_env("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("tenant-key-operator"),
    };
    std::path::absolute(&root).unwrap_or(root)
}

/// One line naming every pinned version, for progress output.
pub fn summary() -> String {
    format!("Kubernetes v{KUBERNETES}, etcd v{ETCD}, Helm v{HELM}")
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
