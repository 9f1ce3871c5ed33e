//! Verification of live keys: a key revoked at Imburse behind the operator's back is found
//! and replaced.
//!
//! Every interval (less up to a tenth, so replicas and restarts drift apart) the keys in the
//! cache are grouped by where they live (account, endpoint, tenant), and each group costs one
//! listing, however many keys it has. A key missing from its listing, and confirmed gone by a
//! read of that key alone, is remembered for its resource, whose reconcile is then triggered:
//! the decision replaces it
//! ([`crate::controller::decision::Rotation::RevokedExternally`]).
//!
//! The same listings feed the inventory ([`super::inventory::count`]): no listing is added.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use tenant_key_api::crd::{AccountKind, AccountRef, Endpoint, TenantSecurityKey};

use super::{Context, account, inventory, status};

/// Keys that live in the same place: one listing answers for all of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Place {
    /// Namespace of the account for `ImburseAccount`s (the key's own), none for cluster ones.
    namespace: Option<String>,
    account: AccountRef,
    endpoint: Option<Endpoint>,
    tenant_id: String,
}

/// Runs until dropped: every `interval`, checks the keys in `store` (of the watched namespace
/// `scope`, or all) at Imburse, sends the resources whose key is gone to `trigger`, and counts
/// the keys listed.
pub async fn run(
    ctx: Arc<Context>,
    scope: Option<String>,
    store: Store<TenantSecurityKey>,
    trigger: UnboundedSender<ObjectRef<TenantSecurityKey>>,
) {
    let Some(interval) = ctx.settings.verify_interval else {
        return futures::future::pending().await;
    };
    if store.wait_until_ready().await.is_err() {
        return futures::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval.mul_f64(rand::random_range(0.9..=1.0))).await;
        verify(&ctx, scope.as_deref(), &store, &trigger).await;
    }
}

async fn verify(
    ctx: &Context,
    scope: Option<&str>,
    store: &Store<TenantSecurityKey>,
    trigger: &UnboundedSender<ObjectRef<TenantSecurityKey>>,
) {
    let started = Timestamp::now();
    let mut places: HashMap<Place, Vec<(Arc<TenantSecurityKey>, Recorded)>> = HashMap::new();
    for key in store.state() {
        if let Some((place, public_key)) = place_of(&key, started) {
            places.entry(place).or_default().push((key, public_key));
        }
    }
    let mut listings = Vec::new();
    for (place, keys) in places {
        let listed = inventory::list(
            ctx,
            place.namespace.as_deref(),
            &place.account,
            &place.endpoint,
            &place.tenant_id,
        );
        let (client, listed) = match listed.await {
            Ok(Some(listed)) => listed,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(tenant_id = %place.tenant_id, error = %e, "could not verify keys");
                continue;
            }
        };
        let live: HashSet<&str> = listed.iter().map(|k| k.public_key.as_str()).collect();
        for (key, recorded) in keys {
            let public_key = recorded.public_key;
            if live.contains(public_key.as_str()) {
                continue;
            }
            // A listing may be partial or of the moment: only the key's own "not found",
            // asked with the credentials it was made with, proves it gone.
            if !confirmed_gone(
                &client,
                &place.tenant_id,
                &public_key,
                recorded.credentials.as_deref(),
            )
            .await
            {
                continue;
            }
            tracing::warn!(
                namespace = key.namespace().unwrap_or_default(),
                name = %key.name_any(),
                %public_key,
                "key no longer exists at Imburse"
            );
            ctx.mark_revoked_remotely(&key.uid().unwrap_or_default(), &public_key);
            // The receiver lives as long as the controller; a send after it stopped is moot.
            let _ = trigger.unbounded_send(ObjectRef::from_obj(key.as_ref()));
        }
        listings.push(inventory::Listing {
            namespace: place.namespace,
            account: place.account,
            tenant: place.tenant_id,
            keys: listed,
        });
    }
    inventory::count(ctx, scope, &listings).await;
}

/// What the status records of a live key.
struct Recorded {
    public_key: String,
    /// Fingerprint of the credentials it was made with, when recorded.
    credentials: Option<String>,
}

/// Whether Imburse says the key is gone when asked for it alone, with the credentials it was
/// made with (another account does not know it either).
async fn confirmed_gone(
    client: &imburse::AccountClient,
    tenant_id: &str,
    public_key: &str,
    credentials: Option<&str>,
) -> bool {
    if !account::same_credentials(credentials, client) {
        tracing::warn!(%public_key, "key not listed, but the account's credentials changed since it was made; not replaced");
        return false;
    }
    match client.get_key(tenant_id, public_key).await {
        Err(imburse::Error::NotFound(_)) => true,
        Ok(_) => {
            tracing::info!(%public_key, "key missing from the listing exists; kept");
            false
        }
        Err(e) => {
            tracing::warn!(%public_key, error = %e, "could not confirm a key missing from the listing");
            false
        }
    }
}

/// Where a Ready key lives and what is recorded of it. Keys created after the listing began,
/// deleting or not Ready are left to their reconcile: a listing could miss them for good
/// reason.
fn place_of(key: &TenantSecurityKey, listed_from: Timestamp) -> Option<(Place, Recorded)> {
    let s = key.status.as_ref()?;
    let ready = tenant_key_api::crd::is_true(&s.conditions, status::READY);
    if !ready
        || key.metadata.deletion_timestamp.is_some()
        || s.created_at.as_ref()?.0 >= listed_from
    {
        return None;
    }
    let account = s.account_ref.clone()?;
    let place = Place {
        namespace: (account.kind == AccountKind::ImburseAccount)
            .then(|| key.namespace())
            .flatten(),
        account,
        endpoint: s.endpoint.clone(),
        tenant_id: s.tenant_id.clone()?,
    };
    let recorded = Recorded {
        public_key: s.public_key.clone()?,
        credentials: s.credentials_fingerprint.clone(),
    };
    Some((place, recorded))
}
