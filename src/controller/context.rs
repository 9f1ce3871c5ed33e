//! What every reconcile shares: the clients, the settings, the caches and what is remembered
//! between reconciles.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, atomic::AtomicBool},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};
use tenant_key_api::crd::{self, ClusterImburseAccount, ImburseAccount, TenantSecurityKey};

use super::{
    FIELD_MANAGER,
    account::AccountResource,
    credentials::Credentials,
    echo::{KeyWrites, SecretEvent, SecretWrites},
    events::Recorder,
    retry::Retries,
};

use crate::{
    allowed_hosts::AllowedHosts,
    liveness::Liveness,
    metrics::{AccountReadiness, Metrics},
};

/// Settings that shape reconciliation.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace holding the credentials Secrets of ClusterImburseAccounts.
    pub cluster_account_secret_namespace: String,
    /// Namespaces whose TenantSecurityKeys, ImburseAccounts and Secrets are watched; empty
    /// watches all namespaces.
    pub watch_namespaces: Vec<String>,
    /// Hosts an account's base URL may name.
    pub allowed_imburse_hosts: AllowedHosts,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
    /// First delay after a transient failure; doubled per consecutive failure.
    pub backoff_base: Duration,
    /// Longest delay after a transient failure.
    pub backoff_cap: Duration,
    /// First delay before an account whose credentials Imburse refused is verified again;
    /// doubled per consecutive refusal up to an hour.
    pub stalled_retry: Duration,
    /// How often live keys are checked at Imburse (one listing per account and tenant);
    /// `None` never checks.
    pub verify_interval: Option<Duration>,
    /// Floors and caps on what a key may ask for.
    pub key_limits: KeyLimits,
    /// This cluster's id in the markers of key names (see [`super::intent::cluster_id`]).
    pub cluster_id: String,
}

impl Settings {
    /// The namespaces the operator watches: all (`None`) or each one.
    pub fn scopes(&self) -> Vec<Option<String>> {
        if self.watch_namespaces.is_empty() {
            vec![None]
        } else {
            self.watch_namespaces.iter().cloned().map(Some).collect()
        }
    }
}

/// Floors and caps on what a TenantSecurityKey may ask for: each rotation mints a key at
/// Imburse, and whoever can edit a key must not be able to mint them without bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    /// Shortest `rotation.interval`.
    pub min_rotation_interval: Duration,
    /// Longest `rotation.gracePeriod`.
    pub max_grace_period: Duration,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self {
            min_rotation_interval: Duration::from_secs(3600),
            max_grace_period: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub imburse: imburse::Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Set once the TenantSecurityKey caches (one per watched namespace) are synced; served by
    /// `/readyz`.
    pub(super) ready: Arc<AtomicBool>,
    /// Failures and refusals per object, and the delays they call for.
    pub retries: Retries,
    /// The reconciles in flight, which `/livez` watches for one that never ends.
    pub liveness: Arc<Liveness>,
    /// The TenantSecurityKey caches (one per watched scope), set once the controllers run.
    pub(super) key_stores: OnceLock<Vec<Store<TenantSecurityKey>>>,
    /// The account caches, set once the controllers run.
    pub(super) account_stores: OnceLock<AccountStores>,
    /// Public keys that verification found missing at Imburse, by resource uid.
    revoked_remotely: Mutex<HashMap<String, String>>,
    /// The Secret writes whose echoes need not wake their keys.
    pub(super) secret_writes: SecretWrites,
    /// Account key pairs read a moment ago.
    pub(super) credentials: Credentials,
    /// This process's writes to keys, whose echoes need no request.
    pub(super) key_writes: KeyWrites,
    /// The keys at Imburse per account, tenant and class, as the verifiers last counted them.
    pub inventory: super::inventory::Counts,
}

impl Context {
    pub fn new(
        client: Client,
        imburse: imburse::Client,
        metrics: Metrics,
        settings: Settings,
        ready: Arc<AtomicBool>,
        liveness: Arc<Liveness>,
    ) -> Self {
        let retries = Retries::new(
            settings.backoff_base,
            settings.backoff_cap,
            settings.stalled_retry,
        );
        Self {
            recorder: Recorder::new(
                client.clone(),
                FIELD_MANAGER,
                std::env::var("POD_NAME").ok(),
            ),
            client,
            imburse,
            metrics,
            settings,
            ready,
            retries,
            liveness,
            key_stores: OnceLock::new(),
            account_stores: OnceLock::new(),
            revoked_remotely: Mutex::default(),
            secret_writes: SecretWrites::default(),
            key_writes: KeyWrites::default(),
            credentials: Credentials::default(),
            inventory: Default::default(),
        }
    }

    /// The public key of the resource `uid` that Imburse no longer knows, if any.
    pub fn revoked_remotely(&self, uid: &str) -> Option<String> {
        self.revoked_remotely
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// Records that Imburse no longer knows the key `public_key` of the resource `uid`.
    pub(super) fn mark_revoked_remotely(&self, uid: &str, public_key: &str) {
        self.revoked_remotely
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), public_key.to_owned());
    }

    /// Forgets a remotely revoked key once it was replaced (or its resource is gone).
    pub fn forget_revoked_remotely(&self, uid: &str) {
        self.revoked_remotely
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Forgets this process's writes to `key`, which is woken for another reason (its Secret
    /// changed, its account or namespace did, Imburse lost its key): it is reconciled in full.
    pub(super) fn wake(&self, key: &ObjectRef<TenantSecurityKey>) {
        self.key_writes
            .forget(key.namespace.as_deref().unwrap_or_default(), &key.name);
    }

    /// What a watch event of `secret` is to the key that owns it.
    pub(super) fn secret_event(&self, secret: &PartialObjectMeta<Secret>) -> SecretEvent {
        match (secret.namespace(), secret.resource_version()) {
            (Some(namespace), Some(version)) => {
                self.secret_writes
                    .event(&namespace, &secret.name_any(), &version)
            }
            _ => SecretEvent::Other,
        }
    }

    /// Every TenantSecurityKey in the caches; none before the controllers run (a replica
    /// standing by for the leader has no cache).
    pub fn cached_keys(&self) -> Vec<Arc<TenantSecurityKey>> {
        self.key_stores
            .get()
            .map(|stores| stores.iter().flat_map(Store::state).collect())
            .unwrap_or_default()
    }
}

/// The account caches, which keys read their account from.
pub struct AccountStores {
    pub(super) namespaced: Vec<Store<ImburseAccount>>,
    pub(super) cluster: Store<ClusterImburseAccount>,
}

impl Context {
    /// Every account in the caches and whether it is Ready; none before the controllers run.
    pub fn cached_accounts(&self) -> Vec<AccountReadiness> {
        fn readiness<A: AccountResource>(store: &Store<A>) -> Vec<AccountReadiness> {
            store
                .state()
                .iter()
                .map(|account| AccountReadiness {
                    kind: A::KIND,
                    namespace: account.meta().namespace.clone().unwrap_or_default(),
                    name: account.meta().name.clone().unwrap_or_default(),
                    ready: account
                        .account_status()
                        .is_some_and(|s| crd::is_true(&s.conditions, crd::READY)),
                })
                .collect()
        }
        let Some(stores) = self.account_stores.get() else {
            return Vec::new();
        };
        let mut accounts = readiness(&stores.cluster);
        accounts.extend(stores.namespaced.iter().flat_map(readiness));
        accounts
    }

    /// The account `reference` names, from the caches. A miss is no proof of absence: the
    /// caches may not have caught up with an account created a moment ago.
    pub(super) fn cached_account<A: AccountResource>(
        &self,
        reference: &ObjectRef<A>,
    ) -> Option<Arc<A>> {
        let stores = self.account_stores.get()?;
        A::stores(stores).into_iter().find_map(|s| s.get(reference))
    }
}
