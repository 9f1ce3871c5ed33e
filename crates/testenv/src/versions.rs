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
/// gopher-lua release, the Lua interpreter Argo CD runs resource customizations with.
pub const GOPHER_LUA: &str = "1.1.1";
/// sigs.k8s.io/yaml release the Argo CD Lua runner reads test files with, as Argo CD does.
pub const SIGS_YAML: &str = "1.6.0";
/// Version of the `github.com/prometheus/prometheus` Go module (Prometheus 3.16.0) whose rule
/// parser validates the chart's PrometheusRule.
pub const PROMETHEUS: &str = "0.316.0";

/// distribution (the CNCF registry) release whose `registry` serves the image and the chart
/// over OCI on loopback, for the install-from-a-registry check.
pub const DISTRIBUTION: &str = "3.1.2";

/// krew release whose own code validates the kubectl-tsk plugin manifest and installs it from
/// the release's archive.
pub const KREW: &str = "0.4.3";

/// Environment variable that overrides the cache root.
pub const CACHE_DIR_ENV: &str = "TKO_CACHE_DIR";

/// A separately built and cached piece of the control plane tooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `kube-apiserver` and `kube-controller-manager`, built from one wrapper module.
    Kubernetes,
    Etcd,
    Helm,
    /// `argocd-lua`: runs `argocd/resource_customizations/` with gopher-lua (source in
    /// `go/argocd-lua/`).
    ArgoCdLua,
    /// `rules-check`: validates Prometheus rules with Prometheus' own parser (source in
    /// `go/rules-check/`).
    RulesCheck,
    /// `registry`: a local OCI registry (distribution), built with `go install`.
    Registry,
    /// `krew` and `validate-krew-manifest`, built with `go install`.
    Krew,
}

impl Component {
    /// The control plane (with helm): what `cargo xtask controlplane build` builds and the test
    /// suite builds up front. The test tools are built by the tests that use them.
    pub const ALL: [Component; 3] = [Component::Etcd, Component::Helm, Component::Kubernetes];

    pub fn name(self) -> &'static str {
        match self {
            Component::Kubernetes => "kubernetes",
            Component::Etcd => "etcd",
            Component::Helm => "helm",
            Component::ArgoCdLua => "argocd-lua",
            Component::RulesCheck => "rules-check",
            Component::Registry => "registry",
            Component::Krew => "krew",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Component::Kubernetes => KUBERNETES,
            Component::Etcd => ETCD,
            Component::Helm => HELM,
            Component::ArgoCdLua => GOPHER_LUA,
            Component::RulesCheck => PROMETHEUS,
            Component::Registry => DISTRIBUTION,
            Component::Krew => KREW,
        }
    }

    /// The Go program of a test tool, kept in this repository.
    pub fn go_source(self) -> Option<&'static str> {
        match self {
            Component::ArgoCdLua => Some(include_str!("../go/argocd-lua/main.go")),
            Component::RulesCheck => Some(include_str!("../go/rules-check/main.go")),
            Component::Kubernetes
            | Component::Etcd
            | Component::Helm
            | Component::Registry
            | Component::Krew => None,
        }
    }

    /// The executables this component provides.
    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            Component::Kubernetes => &["kube-apiserver", "kube-controller-manager"],
            Component::Etcd => &["etcd"],
            Component::Helm => &["helm"],
            Component::ArgoCdLua => &["argocd-lua"],
            Component::RulesCheck => &["rules-check"],
            Component::Registry => &["registry"],
            Component::Krew => &["krew", "validate-krew-manifest"],
        }
    }

    /// `<cache root>/<component>/<version>`; for a test tool, the version is followed by a hash
    /// of its program, so that an edited program is built anew rather than found cached.
    pub fn dir(self) -> PathBuf {
        let version = match self.go_source() {
            Some(source) => format!("{}-{:016x}", self.version(), fnv1a(source.as_bytes())),
            None => self.version().to_owned(),
        };
        cache_root().join(self.name()).join(version)
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

/// FNV-1a: stable across Rust releases and platforms, unlike `std`'s hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
