//! Prometheus metrics, all prefixed `tenant_key_operator_`.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImburseLabels {
    pub operation: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub resource: String,
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The operator's metrics. Cheap to clone: the families share their storage.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by kind and result (`ok` or an error reason).
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// Imburse API requests by operation and HTTP status (`none` when no response arrived).
    pub imburse_requests: Family<ImburseLabels, Counter>,
    /// Writes to the Kubernetes API by resource and verb, to keep writes per key countable.
    pub kube_writes: Family<WriteLabels, Counter>,
    /// Keys created at Imburse, and keys revoked.
    pub keys_created: Counter,
    pub keys_revoked: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under the operator's prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
            imburse_requests: Family::default(),
            kube_writes: Family::default(),
            keys_created: Counter::default(),
            keys_revoked: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("tenant_key_operator");
        r.register(
            "reconciles",
            "Reconciles by kind and result",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles by kind",
            metrics.reconcile_duration.clone(),
        );
        r.register(
            "imburse_requests",
            "Imburse API requests by operation and HTTP status",
            metrics.imburse_requests.clone(),
        );
        r.register(
            "kube_writes",
            "Writes to the Kubernetes API by resource and verb",
            metrics.kube_writes.clone(),
        );
        r.register(
            "keys_created",
            "Tenant keys created at Imburse",
            metrics.keys_created.clone(),
        );
        r.register(
            "keys_revoked",
            "Tenant keys revoked at Imburse",
            metrics.keys_revoked.clone(),
        );
        metrics
    }

    pub fn observe_reconcile(&self, kind: &'static str, result: &'static str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_imburse(&self, call: &imburse::CallRecord) {
        let status = call
            .status
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.imburse_requests
            .get_or_create(&ImburseLabels {
                operation: call.operation.as_str(),
                status,
            })
            .inc();
    }

    pub fn kube_write(&self, resource: &str, verb: &'static str) {
        self.kube_writes
            .get_or_create(&WriteLabels {
                resource: resource.to_owned(),
                verb,
            })
            .inc();
    }
}
