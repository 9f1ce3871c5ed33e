//! `docs/reference/metrics.md`, from the registry the operator serves at `/metrics`.

use std::{collections::BTreeSet, fmt::Write as _, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use serde_json::json;
use tenant_key_api::crd::{KeyClass, TenantSecurityKey};
use tenant_key_operator::{
    controller::inventory::Where,
    metrics::{AccountReadiness, Caches, Metrics, register_cache_metrics},
};

use super::{cell, header};

/// A metric family as the registry describes it.
pub struct Metric {
    pub name: String,
    pub kind: String,
    pub help: String,
    /// The names of its labels, as its samples carry them (histograms' `le` left out).
    pub labels: BTreeSet<String>,
}

impl Metric {
    /// The names its samples carry, which queries use.
    pub fn sample_names(&self) -> Vec<String> {
        let suffixes: &[&str] = match self.kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes
            .iter()
            .map(|suffix| format!("{}{suffix}", self.name))
            .collect()
    }
}

/// Every metric family the operator registers, in the order `/metrics` shows them.
pub fn all() -> Result<Vec<Metric>> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    // A family without samples is left out of the exposition, so each is given one through the
    // calls the operator makes.
    metrics.observe_reconcile("TenantSecurityKey", "ok", Duration::from_millis(1));
    metrics.observe_imburse(&imburse::CallRecord {
        operation: imburse::Operation::CreateKey,
        status: Some(200),
        elapsed: Duration::from_millis(1),
    });
    metrics.kube_write("secrets", "create");
    let key = Arc::new(example_key()?);
    register_cache_metrics(
        &mut registry,
        Caches {
            keys: Box::new(move || vec![key.clone()]),
            accounts: Box::new(|| {
                vec![AccountReadiness {
                    kind: "ImburseAccount",
                    namespace: "payments".to_owned(),
                    name: "imburse".to_owned(),
                    ready: true,
                }]
            }),
            inventory: Box::new(|| {
                let place = Where {
                    kind: "ImburseAccount",
                    namespace: "payments".to_owned(),
                    account: "imburse".to_owned(),
                    tenant: "88fdb12a-14dc-419c-b74c-422e2c25cfe7".to_owned(),
                };
                let tally = KeyClass::ALL.into_iter().map(|class| (class, 0)).collect();
                [(place, tally)].into()
            }),
        },
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let mut metrics: Vec<Metric> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            metrics.push(Metric {
                name: name.to_owned(),
                kind: String::new(),
                help: help.to_owned(),
                labels: BTreeSet::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let metric = metrics
                .last_mut()
                .filter(|metric| metric.name == name)
                .with_context(|| format!("metric {name} has a TYPE but no HELP before it"))?;
            metric.kind = kind.to_owned();
        } else if let (Some(metric), Some((_, labels))) = (metrics.last_mut(), line.split_once('{'))
        {
            metric.labels.extend(
                labels
                    .split(',')
                    .filter_map(|pair| pair.split_once('=').map(|(label, _)| label.to_owned()))
                    .filter(|label| label != "le"),
            );
        }
    }
    Ok(metrics)
}

/// A key with every field a per-key gauge reads, so that each has a sample.
fn example_key() -> Result<TenantSecurityKey> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "imbursepayments.com/v1beta1",
        "kind": "TenantSecurityKey",
        "metadata": { "name": "checkout-api", "namespace": "payments" },
        "spec": {
            "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
            "tenantId": "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
            "roles": ["tenant-admin"],
            "rotation": { "interval": "720h" },
        },
        "status": {
            "createdAt": "2026-01-01T00:00:00Z",
            "nextRotationAt": "2026-01-31T00:00:00Z",
        },
    }))?)
}

pub fn page() -> Result<String> {
    let mut page = header("Metrics", "the metrics registry in src/metrics.rs");
    page.push_str(
        "Served at `/metrics` in the OpenMetrics text format. The per-key gauges are computed \
         from the operator's cache at each scrape, so only the leader reports them.\n\n\
         | Metric | Type | Labels | Description |\n|---|---|---|---|\n",
    );
    for metric in all()? {
        let names = metric.sample_names();
        let shown = match names.as_slice() {
            [one] => format!("`{one}`"),
            _ => {
                let suffixes: Vec<String> = names
                    .iter()
                    .map(|name| name.trim_start_matches(&metric.name).to_owned())
                    .collect();
                format!("`{}` ({})", metric.name, code_list(&suffixes))
            }
        };
        writeln!(
            page,
            "| {shown} | {} | {} | {} |",
            metric.kind,
            code_list(&metric.labels),
            cell(&metric.help)
        )?;
    }
    Ok(page)
}

fn code_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items
        .into_iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
