//! What the chaos scenarios share, the small ones of `tests/chaos.rs` and the large ones of
//! `cargo xtask chaos` alike: the start of a storm at the sandbox, and the check of the end
//! state once it has settled.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use imburse::Operation;
use imburse_sandbox::{Faults, Sandbox};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, api::ListParams};
use tenant_key_api::crd::TenantSecurityKey;

/// The leader election settings of the leader loss scenario: short enough that the takeovers
/// do not dominate the run, long enough for a renewal on a busy machine: a leader that cannot
/// renew for the deadline steps down (and is restarted).
pub const SHORT_LEASE_ARGS: [&str; 6] = [
    "--leader-election-lease-duration",
    "4s",
    "--leader-election-renew-deadline",
    "3s",
    "--leader-election-retry-period",
    "1s",
];

/// Whether the deletion storm deletes the `i`th key: every other one, so that as many are
/// kept as are deleted.
pub fn is_deleted(i: usize) -> bool {
    i % 2 == 1
}

/// Counts the sandbox's calls from zero and turns `faults` on.
pub async fn start_storm(sandbox: &Sandbox, faults: &Faults) -> Result<()> {
    let admin = sandbox.admin();
    admin.reset_stats().await?;
    admin.set_faults(faults).await?;
    Ok(())
}

/// The keys of one storm, and what is expected of them at the end.
pub struct Expected<'a> {
    /// The namespace of the keys; it holds no others.
    pub namespace: &'a str,
    /// How many keys were created, the deleted ones included.
    pub created: usize,
    /// The tenants of the keys that were deleted.
    pub gone: &'a [&'a str],
    /// How long the live keys at Imburse may take to come down to the ones the statuses
    /// name: an interrupted create may leave a key the operator revokes after the key is
    /// Ready.
    pub wait: Duration,
}

/// What the end check found, and the sandbox's count of the calls since [`start_storm`].
pub struct EndState {
    /// Keys created, the deleted ones included.
    pub keys: usize,
    /// Live keys at Imburse.
    pub live: usize,
    /// Resources whose Secret's key authenticated.
    pub authenticated: usize,
    /// Keys Imburse created.
    pub creates: u64,
    /// Keys Imburse revoked.
    pub revoked: u64,
    /// Operation → status → count.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
}

impl EndState {
    /// No more creates than 5 % over one per key beyond the interrupted ones that were found
    /// and revoked: what an interrupted creation left behind was revoked, not multiplied.
    pub fn creates_within_bound(&self) -> bool {
        self.creates as f64 <= self.keys as f64 * 1.05 + self.revoked as f64
    }

    pub fn summary(&self) -> String {
        format!(
            "{} keys created and {} revoked for {} resources",
            self.creates, self.revoked, self.keys
        )
    }
}

/// Checks the end state of a storm that has settled (the remaining keys Ready, the deleted
/// ones gone), with the sandbox's faults turned off: the namespace holds the remaining
/// resources and none is Terminating; each has exactly the one live key at Imburse its status
/// names, and its Secret holds that key, which authenticates; the `gone` tenants have no live
/// key. Whether the creates are within bound is the caller's to judge from the result.
pub async fn check_end(
    client: &Client,
    sandbox: &Sandbox,
    expected: &Expected<'_>,
) -> Result<EndState> {
    let admin = sandbox.admin();
    admin.set_faults(&Faults::default()).await?;
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), expected.namespace);
    let remaining = expected.created - expected.gone.len();
    let deadline = Instant::now() + expected.wait;
    let (resources, live) = loop {
        let live = live_keys(sandbox).await?;
        let leaked: Vec<_> = expected
            .gone
            .iter()
            .filter_map(|&t| live.get_key_value(t))
            .collect();
        ensure!(
            leaked.is_empty(),
            "deleted resources' tenants still have live keys: {leaked:?}"
        );
        let resources = keys.list(&ListParams::default()).await?.items;
        ensure!(
            resources.len() == remaining,
            "{} resources, expected {remaining}",
            resources.len()
        );
        match resources
            .iter()
            .try_for_each(|resource| single_live_key(resource, &live))
        {
            Ok(()) => break (resources, live),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), expected.namespace);
    let http = imburse::Client::new(Default::default())?;
    let authenticated = stream::iter(resources)
        .map(|resource| authenticates(resource, &secrets, &http, sandbox))
        .buffer_unordered(16)
        .try_fold(0, |n, ()| async move { Ok(n + 1) })
        .await?;
    let stats = admin.stats().await?;
    Ok(EndState {
        keys: expected.created,
        live: live.values().map(Vec::len).sum(),
        authenticated,
        creates: stats.count(Operation::CreateKey, 201),
        revoked: stats.count(Operation::DeleteKey, 204),
        calls: stats.calls,
    })
}

/// Public keys of the live keys at the sandbox, by tenant.
async fn live_keys(sandbox: &Sandbox) -> Result<BTreeMap<String, Vec<String>>> {
    let mut live: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in sandbox.admin().keys(None).await? {
        live.entry(key.tenant_id).or_default().push(key.public_key);
    }
    Ok(live)
}

/// The resource is not Terminating and its tenant's only live key is the one its status names.
fn single_live_key(
    resource: &TenantSecurityKey,
    live: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    let name = resource.metadata.name.as_deref().unwrap_or_default();
    ensure!(
        resource.metadata.deletion_timestamp.is_none(),
        "{name} is Terminating"
    );
    let public_key = resource
        .status
        .as_ref()
        .and_then(|s| s.public_key.as_ref())
        .with_context(|| format!("{name} has no publicKey"))?;
    let tenant_keys = live.get(&resource.spec.tenant_id);
    ensure!(
        tenant_keys.is_some_and(|k| k == std::slice::from_ref(public_key)),
        "{name}: Imburse holds {tenant_keys:?}, the status names {public_key}"
    );
    Ok(())
}

/// The resource's Secret holds the key its status names, and that key authenticates.
async fn authenticates(
    resource: TenantSecurityKey,
    secrets: &Api<Secret>,
    http: &imburse::Client,
    sandbox: &Sandbox,
) -> Result<()> {
    let name = resource.metadata.name.unwrap_or_default();
    let status = resource.status.context("status")?;
    let public_key = status.public_key.context("publicKey")?;
    let secret = secrets
        .get(&status.secret_name.context("secretName")?)
        .await?;
    crate::keys::holds_working_key(&secret, &public_key, http, sandbox)
        .await
        .with_context(|| name)
}
