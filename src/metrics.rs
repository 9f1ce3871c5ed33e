//! Prometheus metrics, all prefixed `tenant_key_operator_`: counters the reconcilers update,
//! and per-key and per-account gauges computed from the caches at each scrape
//! ([`register_cache_metrics`]), among them the keys at Imburse per class as the verifier last
//! counted them.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram,
    },
    registry::Registry,
};

use tenant_key_api::crd::{PreviousKey, TenantSecurityKey};

use crate::controller::inventory::{Tally, Where};

/// Prefix of every metric name.
const PREFIX: &str = "tenant_key_operator";

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
pub struct OperationLabels {
    pub operation: &'static str,
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
    /// How long Imburse API requests took, by operation.
    pub imburse_request_duration: Family<OperationLabels, Histogram>,
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
            // Imburse answers in tens of milliseconds; its timeout is 30 s by default.
            imburse_request_duration: Family::new_with_constructor(|| {
                Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
            kube_writes: Family::default(),
            keys_created: Counter::default(),
            keys_revoked: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix(PREFIX);
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
            "imburse_request_duration_seconds",
            "Duration of Imburse API requests by operation, to the end of the response body or \
             the failure",
            metrics.imburse_request_duration.clone(),
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
        self.imburse_request_duration
            .get_or_create(&OperationLabels {
                operation: call.operation.as_str(),
            })
            .observe(call.elapsed.as_secs_f64());
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

/// An account as the readiness gauge reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountReadiness {
    pub kind: &'static str,
    /// Empty for a ClusterImburseAccount.
    pub namespace: String,
    pub name: String,
    /// Whether its Ready condition is True.
    pub ready: bool,
}

/// What the gauges are computed from at each scrape: the controllers' caches. Computed then,
/// they never go stale and cost nothing between scrapes.
pub struct Caches {
    pub keys: Box<dyn Fn() -> Vec<Arc<TenantSecurityKey>> + Send + Sync>,
    pub accounts: Box<dyn Fn() -> Vec<AccountReadiness> + Send + Sync>,
    /// The keys at Imburse per account, tenant and class.
    pub inventory: Box<dyn Fn() -> BTreeMap<Where, Tally> + Send + Sync>,
}

/// Registers the per-key and per-account gauges, read from `caches` at each scrape.
pub fn register_cache_metrics(registry: &mut Registry, caches: Caches) {
    registry
        .sub_registry_with_prefix(PREFIX)
        .register_collector(Box::new(caches));
}

impl fmt::Debug for Caches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Caches")
    }
}

impl Collector for Caches {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode_keys(&(self.keys)(), Timestamp::now(), &mut encoder)?;
        encode_accounts((self.accounts)(), &mut encoder)?;
        encode_inventory((self.inventory)(), &mut encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InventoryLabels {
    kind: &'static str,
    namespace: String,
    account: String,
    tenant: String,
    class: &'static str,
}

/// Encodes the keys listed per account, tenant and class: one series per class for each
/// account and tenant the last round listed, so the series are bounded by the tenants in use.
fn encode_inventory(
    inventory: BTreeMap<Where, Tally>,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    gauge(
        encoder,
        "imburse_keys",
        "Keys listed at Imburse per account and tenant, by class (managed, leaked, foreign, unmanaged), as of the last verification",
        inventory.into_iter().flat_map(|(place, tally)| {
            tally.into_iter().map(move |(class, count)| {
                let labels = InventoryLabels {
                    kind: place.kind,
                    namespace: place.namespace.clone(),
                    account: place.account.clone(),
                    tenant: place.tenant.clone(),
                    class: class.as_str(),
                };
                (labels, count as i64)
            })
        }),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    kind: &'static str,
    namespace: String,
    name: String,
}

/// Encodes the readiness of `accounts`, in the order of kind, namespace and name.
fn encode_accounts(
    mut accounts: Vec<AccountReadiness>,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    accounts.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    gauge(
        encoder,
        "account_ready",
        "Whether the account's credentials were verified (its Ready condition is True): 1 or 0",
        accounts.into_iter().map(|account| {
            let labels = AccountLabels {
                kind: account.kind,
                namespace: account.namespace,
                name: account.name,
            };
            (labels, i64::from(account.ready))
        }),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// One gauge family: a sample per label set.
fn gauge<L: EncodeLabelSet, N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The replaced keys the operator still has to revoke: entries with a revocation error wait
/// for a person, not for the operator.
fn pending(key: &TenantSecurityKey) -> impl Iterator<Item = &PreviousKey> {
    key.status
        .iter()
        .flat_map(|s| &s.previous_keys)
        .filter(|previous| previous.revocation_error.is_none())
}

fn seconds(time: &Time) -> f64 {
    time.0.as_millisecond() as f64 / 1000.0
}

/// A key's labels, borrowed from the cache: a scrape allocates nothing per key.
type KeyLabels<'a> = [(&'static str, &'a str); 2];

/// Encodes the gauges of `keys` as of `now`, in the order of namespace and name.
fn encode_keys(
    keys: &[Arc<TenantSecurityKey>],
    now: Timestamp,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    let mut keys: Vec<(KeyLabels<'_>, &TenantSecurityKey)> = keys
        .iter()
        .map(|key| {
            let namespace = key.metadata.namespace.as_deref().unwrap_or_default();
            let name = key.metadata.name.as_deref().unwrap_or_default();
            ([("namespace", namespace), ("name", name)], key.as_ref())
        })
        .collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let statuses = || {
        keys.iter()
            .filter_map(|(labels, key)| Some((*labels, key.status.as_ref()?)))
    };

    gauge(
        encoder,
        "build_info",
        "The operator's version; always 1",
        [(
            BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            },
            1i64,
        )],
    )?;
    // As kube-state-metrics reports conditions: one sample per possible status, 1 for the
    // current one, so that a missing condition reads as `unknown` rather than as no data.
    gauge(
        encoder,
        "key_ready_status",
        "Status of the key's Ready condition (true, false or unknown): 1 for the current one",
        keys.iter().flat_map(|([namespace, name], key)| {
            let conditions = key.status.as_ref().map(|s| s.conditions.as_slice());
            let current = match tenant_key_api::crd::find_condition(
                conditions.unwrap_or_default(),
                tenant_key_api::crd::READY,
            )
            .map(|c| c.status.as_str())
            {
                Some("True") => "true",
                Some("False") => "false",
                _ => "unknown",
            };
            ["true", "false", "unknown"].map(|condition| {
                (
                    [*namespace, *name, ("condition", condition)],
                    i64::from(condition == current),
                )
            })
        }),
    )?;
    gauge(
        encoder,
        "key_created_timestamp_seconds",
        "When the key's current Imburse key was created (status.createdAt), as a Unix time",
        statuses()
            .filter_map(|(labels, status)| Some((labels, seconds(status.created_at.as_ref()?)))),
    )?;
    gauge(
        encoder,
        "key_next_rotation_timestamp_seconds",
        "When the key is due for scheduled rotation (status.nextRotationAt), as a Unix time",
        statuses().filter_map(|(labels, status)| {
            Some((labels, seconds(status.next_rotation_at.as_ref()?)))
        }),
    )?;
    gauge(
        encoder,
        "key_rotation_interval_seconds",
        "The key's rotation interval (spec.rotation.interval)",
        keys.iter().filter_map(|(labels, key)| {
            let interval = key.spec.rotation_interval()?;
            Some((*labels, interval.as_secs_f64()))
        }),
    )?;
    gauge(
        encoder,
        "previous_keys_pending",
        "Replaced keys the operator still has to revoke",
        keys.iter()
            .map(|(labels, key)| (*labels, pending(key).count() as i64)),
    )?;
    gauge(
        encoder,
        "previous_keys_overdue",
        "Replaced keys still to revoke whose revocation time has passed",
        keys.iter().map(|(labels, key)| {
            let overdue = pending(key)
                .filter(|previous| previous.revoke_after.as_ref().is_none_or(|t| t.0 <= now))
                .count();
            (*labels, overdue as i64)
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(value: serde_json::Value) -> Arc<TenantSecurityKey> {
        Arc::new(serde_json::from_value(value).unwrap_or_else(|e| panic!("a key: {e}")))
    }

    fn scrape(keys: Vec<Arc<TenantSecurityKey>>) -> String {
        scrape_with(keys, Vec::new())
    }

    fn scrape_with(keys: Vec<Arc<TenantSecurityKey>>, accounts: Vec<AccountReadiness>) -> String {
        scrape_caches(Caches {
            keys: Box::new(move || keys.clone()),
            accounts: Box::new(move || accounts.clone()),
            inventory: Box::new(BTreeMap::new),
        })
    }

    fn scrape_caches(caches: Caches) -> String {
        let mut registry = Registry::default();
        register_cache_metrics(&mut registry, caches);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("encoding: {e}"));
        text
    }

    fn spec() -> serde_json::Value {
        json!({
            "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
            "tenantId": "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
            "roles": ["tenant-admin"],
        })
    }

    fn previous(public_key: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut entry = json!({
            "publicKey": public_key,
            "tenantId": "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
            "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
        });
        if let (Some(entry), serde_json::Value::Object(extra)) = (entry.as_object_mut(), extra) {
            entry.extend(extra);
        }
        entry
    }

    #[test]
    fn every_cached_key_is_reported_at_scrape_time() {
        let mut rotating = spec();
        rotating["rotation"] = json!({ "interval": "720h" });
        let keys = vec![
            key(json!({
                "apiVersion": "imbursepayments.com/v1beta1",
                "kind": "TenantSecurityKey",
                "metadata": { "name": "checkout", "namespace": "payments" },
                "spec": rotating,
                "status": {
                    "conditions": [{
                        "type": "Ready", "status": "True", "reason": "KeyReady", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }],
                    "createdAt": "2026-01-01T00:00:00Z",
                    "nextRotationAt": "2026-01-31T00:00:00.500Z",
                    "previousKeys": [
                        previous("a", json!({ "revokeAfter": "2026-01-01T00:05:00Z" })),
                        previous("b", json!({ "revokeAfter": "2999-01-01T00:00:00Z" })),
                        previous("c", json!({})),
                        previous("d", json!({ "revocationError": "refused" })),
                    ],
                },
            })),
            key(json!({
                "apiVersion": "imbursepayments.com/v1beta1",
                "kind": "TenantSecurityKey",
                "metadata": { "name": "new", "namespace": "orders" },
                "spec": spec(),
            })),
        ];
        let text = scrape(keys);
        let expected = [
            "# TYPE tenant_key_operator_build_info gauge",
            &format!(
                "tenant_key_operator_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "# TYPE tenant_key_operator_key_ready_status gauge",
            r#"tenant_key_operator_key_ready_status{namespace="orders",name="new",condition="true"} 0"#,
            r#"tenant_key_operator_key_ready_status{namespace="orders",name="new",condition="false"} 0"#,
            r#"tenant_key_operator_key_ready_status{namespace="orders",name="new",condition="unknown"} 1"#,
            r#"tenant_key_operator_key_ready_status{namespace="payments",name="checkout",condition="true"} 1"#,
            r#"tenant_key_operator_key_ready_status{namespace="payments",name="checkout",condition="false"} 0"#,
            r#"tenant_key_operator_key_ready_status{namespace="payments",name="checkout",condition="unknown"} 0"#,
            "# TYPE tenant_key_operator_key_created_timestamp_seconds gauge",
            r#"tenant_key_operator_key_created_timestamp_seconds{namespace="payments",name="checkout"} 1767225600.0"#,
            "# TYPE tenant_key_operator_key_next_rotation_timestamp_seconds gauge",
            r#"tenant_key_operator_key_next_rotation_timestamp_seconds{namespace="payments",name="checkout"} 1769817600.5"#,
            "# TYPE tenant_key_operator_key_rotation_interval_seconds gauge",
            r#"tenant_key_operator_key_rotation_interval_seconds{namespace="payments",name="checkout"} 2592000.0"#,
            "# TYPE tenant_key_operator_previous_keys_pending gauge",
            r#"tenant_key_operator_previous_keys_pending{namespace="orders",name="new"} 0"#,
            r#"tenant_key_operator_previous_keys_pending{namespace="payments",name="checkout"} 3"#,
            "# TYPE tenant_key_operator_previous_keys_overdue gauge",
            r#"tenant_key_operator_previous_keys_overdue{namespace="orders",name="new"} 0"#,
            r#"tenant_key_operator_previous_keys_overdue{namespace="payments",name="checkout"} 2"#,
        ];
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("# HELP")).collect();
        assert_eq!(lines[..expected.len()], expected, "{text}");
        assert_eq!(
            lines[expected.len()..],
            [
                "# TYPE tenant_key_operator_account_ready gauge",
                "# TYPE tenant_key_operator_imburse_keys gauge",
                "# EOF"
            ],
            "{text}"
        );
        // Keys without the optional fields have no sample, not a zero.
        assert!(!text.contains(r#"key_created_timestamp_seconds{namespace="orders""#));
        assert!(!text.contains(r#"key_rotation_interval_seconds{namespace="orders""#));
    }

    #[test]
    fn the_inventory_reports_every_class_of_each_account_and_tenant() {
        use tenant_key_api::crd::KeyClass;
        let place = Where {
            kind: "ImburseAccount",
            namespace: "payments".into(),
            account: "imburse".into(),
            tenant: "t1".into(),
        };
        let tally: crate::controller::inventory::Tally =
            KeyClass::ALL.into_iter().zip([2, 1, 0, 3]).collect();
        let text = scrape_caches(Caches {
            keys: Box::new(Vec::new),
            accounts: Box::new(Vec::new),
            inventory: Box::new(move || [(place.clone(), tally.clone())].into()),
        });
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tenant_key_operator_imburse_keys{"))
            .collect();
        let labels = r#"kind="ImburseAccount",namespace="payments",account="imburse",tenant="t1""#;
        assert_eq!(
            samples,
            [
                format!("tenant_key_operator_imburse_keys{{{labels},class=\"managed\"}} 2"),
                format!("tenant_key_operator_imburse_keys{{{labels},class=\"leaked\"}} 1"),
                format!("tenant_key_operator_imburse_keys{{{labels},class=\"foreign\"}} 0"),
                format!("tenant_key_operator_imburse_keys{{{labels},class=\"unmanaged\"}} 3"),
            ],
            "{text}"
        );
    }

    #[test]
    fn an_empty_cache_reports_only_the_build() {
        let text = scrape(Vec::new());
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 1, "{text}");
        assert!(samples[0].starts_with("tenant_key_operator_build_info{"));
    }

    #[test]
    fn every_cached_account_reports_its_readiness() {
        let account = |kind, namespace: &str, name: &str, ready| AccountReadiness {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ready,
        };
        let text = scrape_with(
            Vec::new(),
            vec![
                account("ImburseAccount", "payments", "refused", false),
                account("ClusterImburseAccount", "", "shared", true),
            ],
        );
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tenant_key_operator_account_ready{"))
            .collect();
        assert_eq!(
            samples,
            [
                r#"tenant_key_operator_account_ready{kind="ClusterImburseAccount",namespace="",name="shared"} 1"#,
                r#"tenant_key_operator_account_ready{kind="ImburseAccount",namespace="payments",name="refused"} 0"#,
            ],
            "{text}"
        );
    }
}
