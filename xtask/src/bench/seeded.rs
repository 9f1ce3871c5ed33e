//! `cargo xtask bench --seed-ready N`: the operator starting on N keys that are Ready already,
//! as after a restart or a failover in a large cluster, with N unrelated Secrets beside them.
//!
//! Creating 100,000 keys through the operator would take hours at its Imburse latency, and
//! would measure creation, not rest. So the operator creates one key per tenant, and every
//! other key is a clone of those: the resource with the same annotations, finalizers and
//! spec, the status the operator wrote with the values that differ per key (uid, attempt,
//! key pair, names) replaced, its Secret built by the operator's own [`secret::build`], and
//! its key at the sandbox under the name the status records. Nothing of the shape is written
//! by hand, so it cannot drift from what the operator writes.
//!
//! The operator is then started on them and measured: resident memory (sampled peak while it
//! lists and reconciles, and at rest), time until it reconciled every key once (its
//! `tenant_key_operator_reconciles_total` for TenantSecurityKeys reaching N), the writes the
//! API server saw (`apiserver_request_total`: none expected), and Imburse calls besides the
//! verifier's listings (none expected).

use std::{path::Path, time::Instant};

use anyhow::{Context, Result, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use imburse::Operation;
use imburse_sandbox::{Config, Sandbox, TenantKey};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tenant_key_api::{
    crd::{TenantSecurityKey, TenantSecurityKeyStatus},
    key_secret,
};
use tenant_key_operator::controller::{
    FIELD_MANAGER, intent,
    secret::{self, KeyContext, KeyMaterial},
};
use testenv::ControlPlane;

use super::{Args, Memory, NAMESPACE};
use crate::workspace::step;

/// Requests the seeding client has in flight at once: enough to keep the API server busy on
/// two cores, few enough not to be throttled.
const SEEDING_CLIENTS: usize = 32;
/// Keys per request to the sandbox's seeding endpoint, well under its body limit.
const SANDBOX_BATCH: usize = 2_000;

/// The key the operator created for one tenant, which the seeded keys of that tenant copy.
struct Template {
    key: TenantSecurityKey,
    status: TenantSecurityKeyStatus,
    context: (String, Option<String>, String),
}

impl Template {
    /// The operator's key `name` and its Secret, checked to be what [`secret::build`] makes of
    /// them: the clones' Secrets are built by it.
    async fn read(client: &Client, name: &str) -> Result<Self> {
        let key = Api::<TenantSecurityKey>::namespaced(client.clone(), NAMESPACE)
            .get(name)
            .await?;
        let status = key.status.clone().context("a Ready key without status")?;
        let stored = Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .get(&key_secret::secret_name(&key))
            .await?;
        let material = secret::material(&key, &stored).context("the key's Secret has no pair")?;
        let entry = |name: &str| {
            stored
                .data
                .as_ref()
                .and_then(|d| d.get(name))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let context = (
            entry("tenantId").context("no tenantId in the key's Secret")?,
            entry("accountId"),
            entry("baseUrl").context("no baseUrl in the key's Secret")?,
        );
        let template = Self {
            key,
            status,
            context,
        };
        let attempt = template.status.attempt.as_deref().unwrap_or_default();
        let built = template.secret(&template.key, &material, attempt);
        ensure!(
            built.data == stored.data
                && built.type_ == stored.type_
                && built.metadata.labels == stored.metadata.labels
                && built.metadata.annotations == stored.metadata.annotations
                && built.metadata.owner_references == stored.metadata.owner_references,
            "the operator's Secret of {name} differs from what secret::build makes: the seeded \
             Secrets would not be the operator's"
        );
        Ok(template)
    }

    fn secret(&self, key: &TenantSecurityKey, material: &KeyMaterial, attempt: &str) -> Secret {
        let (tenant_id, account_id, base_url) = &self.context;
        let context = KeyContext {
            tenant_id,
            account_id: account_id.as_deref(),
            base_url,
        };
        secret::build(key, material, &context, attempt, None)
    }

    /// Creates the key `name` like this one, Ready, with its Secret, and returns the key the
    /// sandbox must hold for it.
    async fn clone_as(&self, client: &Client, name: &str) -> Result<TenantKey> {
        let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
        let fresh = TenantSecurityKey {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(NAMESPACE.to_owned()),
                labels: self.key.metadata.labels.clone(),
                annotations: self.key.metadata.annotations.clone(),
                finalizers: self.key.metadata.finalizers.clone(),
                ..ObjectMeta::default()
            },
            spec: self.key.spec.clone(),
            status: None,
        };
        let mut created = keys.create(&PostParams::default(), &fresh).await?;
        let uid = created.uid().context("a created key without uid")?;
        let attempt = intent::new_attempt();
        let tenant_id = self.status.tenant_id.as_deref().unwrap_or_default();
        let pair = TenantKey::generate(tenant_id, "", self.status.roles.clone());
        let material = KeyMaterial {
            public_key: pair.public_key.clone(),
            private_key: pair.private_key.clone(),
        };
        let status = self.status_for(&created, &uid, &attempt, &material)?;
        let applied = json!({
            "apiVersion": TenantSecurityKey::api_version(&()),
            "kind": TenantSecurityKey::kind(&()),
            "status": status,
        });
        keys.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&applied),
        )
        .await?;
        let key_name = status.key_name.clone().unwrap_or_default();
        created.status = Some(status);
        Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .create(
                &PostParams::default(),
                &self.secret(&created, &material, &attempt),
            )
            .await?;
        Ok(TenantKey {
            name: key_name,
            ..pair
        })
    }

    /// The template's status with every value that names the template's own key replaced by
    /// the clone's: whichever fields carry them, they are carried over.
    fn status_for(
        &self,
        clone: &TenantSecurityKey,
        uid: &str,
        attempt: &str,
        material: &KeyMaterial,
    ) -> Result<TenantSecurityKeyStatus> {
        let own = |value: &Option<String>| value.clone().unwrap_or_default();
        let replacements = [
            (self.key.uid().unwrap_or_default(), uid.to_owned()),
            (own(&self.status.attempt), attempt.to_owned()),
            (own(&self.status.public_key), material.public_key.clone()),
            (own(&self.status.fingerprint), material.fingerprint()),
            (self.key.name_any(), clone.name_any()),
        ];
        let mut text = serde_json::to_string(&self.status)?;
        for (from, to) in &replacements {
            ensure!(!from.is_empty(), "the template's status lacks a value");
            text = text.replace(from.as_str(), to);
        }
        let status: TenantSecurityKeyStatus = serde_json::from_str(&text)?;
        let key_name = own(&status.key_name);
        ensure!(
            intent::names_attempt(&key_name, uid, attempt)
                && status.secret_name.as_deref() == Some(key_secret::secret_name(clone).as_str())
                && status.public_key.as_deref() == Some(material.public_key.as_str()),
            "the cloned status does not name the clone's key"
        );
        Ok(status)
    }
}

/// One seeded run of `keys` Ready keys: seeding, then the operator started on them.
pub(super) async fn measure(binary: &Path, keys: usize, args: &Args) -> Result<Value> {
    let config = Config::generate(1, args.tenants.max(1));
    let sandbox = Sandbox::start_with(config.clone(), super::with_latency(args.latency_ms)).await?;
    let (plane, client) = super::start_plane().await?;
    let (mut operator, _, _) = super::start_operator(binary, &plane, args)?;
    super::setup_account(&client, &config, &sandbox).await?;

    step("the operator creates one key per tenant, which the seeded keys copy");
    let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let tenants: Vec<&str> = config
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    ensure!(
        keys >= tenants.len(),
        "--seed-ready needs at least one key per tenant ({})",
        tenants.len()
    );
    for (i, tenant) in tenants.iter().enumerate() {
        super::create_key(&api, &super::key_name(i), tenant).await?;
    }
    super::wait_all_ready(&api, tenants.len()).await?;
    operator.stop(std::time::Duration::from_secs(30));
    let mut templates = Vec::new();
    for i in 0..tenants.len() {
        templates.push(Template::read(&client, &super::key_name(i)).await?);
    }

    step(&format!("seeding {} Ready keys", keys - templates.len()));
    let started = Instant::now();
    let seeded: Vec<TenantKey> = stream::iter(templates.len()..keys)
        .map(|i| {
            let (client, template) = (&client, &templates[i % templates.len()]);
            async move { template.clone_as(client, &super::key_name(i)).await }
        })
        .buffer_unordered(SEEDING_CLIENTS)
        .try_collect()
        .await?;
    let admin = sandbox.admin();
    for batch in seeded.chunks(SANDBOX_BATCH) {
        admin.seed_keys(batch).await?;
    }
    drop(seeded);
    let seeding_keys = started.elapsed();
    step(&format!("creating {keys} unrelated Secrets"));
    let started = Instant::now();
    super::create_unrelated_secrets(&client, keys, SEEDING_CLIENTS).await?;
    let seeding_unrelated = started.elapsed();
    let plane_seeded = plane_memory(&plane);

    let mut started_on = start_on_seeded(binary, &plane, &client, &sandbox, keys, args).await?;
    if let Some(other) = &args.compare_with {
        // The first binary's figures are kept whatever becomes of the second.
        let compared = start_on_seeded(other, &plane, &client, &sandbox, keys, args)
            .await
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        started_on["comparedWith"] = json!({"binary": other, "run": compared});
    }
    let mut run = json!({
        "keys": keys,
        "unrelatedSecrets": keys,
        "seedingSeconds": {
            "keys": seeding_keys.as_secs_f64(),
            "unrelatedSecrets": seeding_unrelated.as_secs_f64(),
        },
        "controlPlaneMiBSeeded": plane_seeded,
    });
    if let (Some(run), Some(figures)) = (run.as_object_mut(), started_on.as_object()) {
        run.extend(figures.clone());
    }
    Ok(run)
}

/// The operator `binary` started on the seeded keys, until it reconciled each and then for
/// `--rest-seconds` at rest.
async fn start_on_seeded(
    binary: &Path,
    plane: &ControlPlane,
    client: &Client,
    sandbox: &Sandbox,
    keys: usize,
    args: &Args,
) -> Result<Value> {
    step(&format!(
        "starting {} on {keys} Ready keys",
        binary.display()
    ));
    let admin = sandbox.admin();
    admin.reset_stats().await?;
    let requests_before = super::apiserver_requests(client).await?;
    let watch_lists_before = super::apiserver_watch_lists(client).await?;
    let started = Instant::now();
    let (mut operator, listen, probes) = super::start_operator(binary, plane, args)?;
    let pid = operator.pid().context("the operator did not start")?;
    let sampled = super::sample_peak_rss(pid);
    // An operator that exits (one that loses its Lease does) never reconciles the rest: that
    // ends the run at once, with the end of its log.
    let exited = async {
        while operator.exit_status()?.is_none() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        anyhow::Ok(testenv::log_tail(operator.log_path(), 5))
    };
    tokio::select! {
        reconciled = super::wait_reconciled(&listen, keys) => reconciled?,
        log = exited => anyhow::bail!("the operator exited before it reconciled every key:\n{}", log?),
    }
    let reconciled = started.elapsed();
    let after_sync = Memory::of(pid)?;
    ensure!(
        super::answers_ready(&probes, std::time::Duration::from_secs(10)).await,
        "/readyz does not answer 200 though every key was reconciled"
    );
    step(&format!(
        "watching the operator at rest for {} s",
        args.rest_seconds
    ));
    tokio::time::sleep(std::time::Duration::from_secs(args.rest_seconds)).await;
    let at_rest = Memory::of(pid)?;
    let stats = admin.stats().await?;
    let requests = super::since(&requests_before, super::apiserver_requests(client).await?);
    let watch_lists = super::since(
        &watch_lists_before,
        super::apiserver_watch_lists(client).await?,
    );
    let exposition = super::scrape(&listen).await?;
    let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let cached_key = cached_key_bytes(&api, &super::key_name(keys - 1)).await?;
    let operator_writes: u64 = super::kube_writes(&listen).await?.values().sum();
    let plane_after = plane_memory(plane);
    operator.stop(std::time::Duration::from_secs(30));

    let imburse_calls = super::calls(&stats);
    Ok(json!({
        "secondsToEveryKeyReconciled": reconciled.as_secs_f64(),
        "memoryMiB": {
            "sampledPeakDuringSync": sampled.peak_mib(),
            "peakDuringSync": after_sync.peak_mib(),
            "afterSync": after_sync.rss_mib(),
            "atRest": at_rest.rss_mib(),
        },
        "controlPlaneMiB": plane_after,
        // What the at-rest memory holds per key: the key as the cache keeps it (JSON is
        // smaller than the parsed object, so a floor), and the metrics exposition.
        "profile": {
            "cachedKeyJsonBytes": cached_key,
            "metricsExpositionBytes": exposition.len(),
            "metricsSamples": exposition.lines().filter(|l| !l.starts_with('#')).count(),
        },
        "apiserverWrites": super::writes(&requests),
        "apiserverRequests": requests,
        "apiserverStreamingLists": watch_lists,
        "operatorKubeWrites": operator_writes,
        "imburseCalls": imburse_calls,
        "imburseCallsBesidesListing": imburse_calls
            - stats.total(Operation::ListKeys)
            - stats.total(Operation::Token),
        "verifySeconds": args.verify_seconds,
        "restSeconds": args.rest_seconds,
    }))
}

/// The size of a seeded key as JSON without what the operator's cache drops
/// (`managedFields`), a floor of what the cache holds per key.
async fn cached_key_bytes(api: &Api<TenantSecurityKey>, name: &str) -> Result<usize> {
    let mut key = api.get(name).await?;
    key.metadata.managed_fields = None;
    Ok(serde_json::to_vec(&key)?.len())
}

/// Resident memory of each control plane process, in MiB, and the size of etcd's database.
fn plane_memory(plane: &ControlPlane) -> Value {
    let mut memory: serde_json::Map<String, Value> = plane
        .pids()
        .into_iter()
        .filter_map(|(name, pid)| Some((name.to_owned(), json!(Memory::of(pid).ok()?.rss_mib()))))
        .collect();
    let db = plane.data_dir().join("etcd/member/snap/db");
    if let Ok(meta) = std::fs::metadata(db) {
        memory.insert(
            "etcdDatabase".to_owned(),
            json!(meta.len() as f64 / 1024.0 / 1024.0),
        );
    }
    Value::Object(memory)
}
