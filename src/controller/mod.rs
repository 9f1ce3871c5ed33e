//! The controllers: TenantSecurityKeys, and the two account kinds they use.

pub mod account;
pub mod decision;
pub mod error;
mod events;
mod finalizer;
pub mod intent;
pub mod key;
mod schedule;
pub mod secret;
pub mod status;
mod verify;

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future};
use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};

pub use error::{Error, Result};

use crate::{
    allowed_hosts::AllowedHosts,
    crd::{AccountKind, ClusterImburseAccount, ImburseAccount, TenantSecurityKey},
    metrics::Metrics,
};
use account::AccountResource;
use events::Recorder;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tenant-key-operator";

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
}

/// A create Imburse refused outright.
struct Refusal {
    generation: Option<i64>,
    until: std::time::Instant,
    /// Consecutive refusals, for the backoff.
    count: u32,
    reason: error::Reason,
    message: String,
}

/// Consecutive transient failures of one object.
struct Failures {
    count: u32,
    /// End of the current backoff.
    not_before: std::time::Instant,
    /// What the user asked when it failed: a new spec or a deletion is worth trying at once.
    asked: (Option<i64>, bool),
}

fn asked<K: Resource>(obj: &K) -> (Option<i64>, bool) {
    (
        obj.meta().generation,
        obj.meta().deletion_timestamp.is_some(),
    )
}

/// Identifies an object across kinds: kind, namespace, name.
type ObjectKey = (String, Option<String>, String);

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub imburse: imburse::Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Set once the TenantSecurityKey caches (one per watched namespace) are synced; served by
    /// `/readyz`.
    ready: Arc<AtomicBool>,
    /// Consecutive transient failures per object, and when the object may call Imburse again.
    failures: Mutex<HashMap<ObjectKey, Failures>>,
    /// Creates Imburse refused outright, by resource uid: no new attempt before `until` unless
    /// the spec changes, so a refusal costs no loop of intents and creates.
    refusals: Mutex<HashMap<String, Refusal>>,
    /// The TenantSecurityKey caches (one per watched scope), set once the controllers run.
    key_stores: OnceLock<Vec<Store<TenantSecurityKey>>>,
    /// The account caches, set once the controllers run.
    account_stores: OnceLock<AccountStores>,
    /// Public keys that verification found missing at Imburse, by resource uid.
    revoked_remotely: Mutex<HashMap<String, String>>,
}

impl Context {
    pub fn new(
        client: Client,
        imburse: imburse::Client,
        metrics: Metrics,
        settings: Settings,
        ready: Arc<AtomicBool>,
    ) -> Self {
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
            failures: Mutex::default(),
            key_stores: OnceLock::new(),
            account_stores: OnceLock::new(),
            refusals: Mutex::default(),
            revoked_remotely: Mutex::default(),
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
    fn mark_revoked_remotely(&self, uid: &str, public_key: &str) {
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

    /// Every TenantSecurityKey in the caches; none before the controllers run (a replica
    /// standing by for the leader has no cache).
    pub fn cached_keys(&self) -> Vec<Arc<TenantSecurityKey>> {
        self.key_stores
            .get()
            .map(|stores| stores.iter().flat_map(Store::state).collect())
            .unwrap_or_default()
    }

    fn failure_key<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectKey {
        (K::kind(&()).into_owned(), obj.namespace(), obj.name_any())
    }

    /// Delay before retrying `obj` after a transient error: exponential per object, capped,
    /// with jitter so that objects failing together do not retry together.
    fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Duration {
        let jittered = self.exponential(obj, self.settings.backoff_base, self.settings.backoff_cap);
        let delay = error
            .retry_after()
            .map_or(jittered, |after| after.max(jittered));
        if let Some(entry) = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&Self::failure_key(obj))
        {
            entry.not_before = std::time::Instant::now() + delay;
            entry.asked = asked(obj);
        }
        delay
    }

    /// Time left in the object's backoff after a transient failure. A reconcile triggered
    /// meanwhile by the operator's own writes must not call Imburse before it ends, or each
    /// failed attempt's writes would start the next at once; a new spec or a deletion is
    /// tried at once.
    pub fn backing_off<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let failures = map
            .get(&Self::failure_key(obj))
            .filter(|f| f.asked == asked(obj))?;
        failures
            .not_before
            .checked_duration_since(std::time::Instant::now())
    }

    /// Records that Imburse refused a create of the resource `uid` at `generation`; returns
    /// the delay before it may be asked again.
    pub fn refused(&self, uid: &str, generation: Option<i64>, error: &Error) -> Duration {
        let mut map = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let count = map
            .get(uid)
            .filter(|r| r.generation == generation)
            .map_or(1, |r| r.count.saturating_add(1));
        let delay = doubled(self.settings.stalled_retry, count, self.stalled_cap());
        map.insert(
            uid.to_owned(),
            Refusal {
                generation,
                until: std::time::Instant::now() + delay,
                count,
                reason: error.reason(),
                message: error.to_string(),
            },
        );
        delay
    }

    /// The refusal still standing for the resource `uid` at `generation`, as the error to
    /// report, with the time left.
    pub fn refusal(&self, uid: &str, generation: Option<i64>) -> Option<(Error, Duration)> {
        let map = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let refusal = map.get(uid).filter(|r| r.generation == generation)?;
        let left = refusal
            .until
            .checked_duration_since(std::time::Instant::now())?;
        Some((
            Error::Refused {
                reason: refusal.reason,
                message: refusal.message.clone(),
            },
            left,
        ))
    }

    /// Forgets the refusals of a resource that got its key (or is gone).
    pub fn forget_refusal(&self, uid: &str) {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Delay before verifying again an account whose credentials Imburse refused.
    fn stalled_retry<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        self.exponential(obj, self.settings.stalled_retry, self.stalled_cap())
    }

    /// Longest wait before asking again what Imburse refused: an hour.
    fn stalled_cap(&self) -> Duration {
        Duration::from_secs(3600).max(self.settings.stalled_retry)
    }

    /// `base` doubled per consecutive failure of `obj`, capped, with jitter so that objects
    /// failing together do not retry together.
    fn exponential<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        base: Duration,
        cap: Duration,
    ) -> Duration {
        let failures = {
            let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(Self::failure_key(obj)).or_insert(Failures {
                count: 0,
                not_before: std::time::Instant::now(),
                asked: asked(obj),
            });
            entry.count = entry.count.saturating_add(1);
            entry.count
        };
        doubled(base, failures, cap).mul_f64(rand::random_range(0.5..=1.0))
    }

    fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Self::failure_key(obj));
    }
}

/// `base` doubled for each of `count` consecutive failures after the first, capped.
fn doubled(base: Duration, count: u32, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
        .min(cap)
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(ctx.backoff(obj.as_ref(), error))
}

/// Wraps a reconciler so that a success resets the object's backoff.
async fn with_backoff_reset<K, F, Fut>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    let result = reconcile(obj.clone(), ctx.clone()).await;
    // A reconcile that only waited out the backoff (see `Context::backing_off`) is no success.
    if result.is_ok() && ctx.backing_off(obj.as_ref()).is_none() {
        ctx.succeeded(obj.as_ref());
    }
    result
}

/// Drops what no reconcile reads from a TenantSecurityKey before it enters the cache, which
/// holds every key for the operator's lifetime: `managedFields` (a field tree per writer, often
/// larger than the rest of the object) and the copy of the object `kubectl apply` keeps in an
/// annotation. Every write the operator makes names its own fields (server-side apply, patches),
/// so nothing is lost by not holding them.
fn slim_for_cache(key: &mut TenantSecurityKey) {
    key.metadata.managed_fields = None;
    if let Some(annotations) = key.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// Where `kubectl apply` (client-side) keeps the whole object it last applied.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The TenantSecurityKeys in the cache that `select` picks, as controller triggers.
fn keys_where(
    store: &Store<TenantSecurityKey>,
    select: impl Fn(&TenantSecurityKey) -> bool,
) -> Vec<ObjectRef<TenantSecurityKey>> {
    store
        .state()
        .iter()
        .filter(|k| select(k))
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

/// The TenantSecurityKeys a change of the Secret concerns: the one its owner label names
/// (rather than owner references: a Secret kept with `Retain` has none), and the one its
/// adoption consent names.
fn secret_triggers(secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<TenantSecurityKey>> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let managed = secret
        .labels()
        .get(secret::MANAGED_BY_LABEL)
        .map(String::as_str)
        == Some(secret::MANAGED_BY_VALUE);
    let owner = secret.labels().get(secret::OWNER_LABEL).filter(|_| managed);
    let adopter = secret
        .annotations()
        .get(secret::ADOPT_BY_ANNOTATION)
        .map(|name| name.trim());
    owner
        .map(String::as_str)
        .into_iter()
        .chain(adopter)
        .filter(|name| !name.is_empty())
        .map(|name| ObjectRef::new(name).within(&namespace))
        .collect()
}

/// Whether a key refers to the account of `kind` named `name`.
fn uses_account(key: &TenantSecurityKey, kind: AccountKind, name: &str) -> bool {
    key.spec.account_ref.kind == kind && key.spec.account_ref.name == name
}

fn controller_config(settings: &Settings) -> ControllerConfig {
    ControllerConfig::default().concurrency(settings.concurrency)
}

/// An `Api` over one namespace, or over all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs all controllers until `shutdown` resolves; reconciles in flight finish first, so a
/// created key always reaches its Secret.
///
/// With `watch_namespaces` set, each namespace gets controllers of its own: a watch covers
/// one namespace or all of them, and one cache fed by several watches would be emptied by each
/// watch's relist, so namespaced RBAC means one watch, cache and controller per namespace.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let scopes: Vec<Option<String>> = if ctx.settings.watch_namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings
            .watch_namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let namespaced: Vec<SharedWatch<ImburseAccount>> = scopes
        .iter()
        .map(|scope| SharedWatch::new(scoped(&ctx.client, scope.as_deref())))
        .collect();
    let cluster = SharedWatch::new(Api::<ClusterImburseAccount>::all(ctx.client.clone()));
    let _ = ctx.account_stores.set(AccountStores {
        namespaced: namespaced.iter().map(|w| w.store.clone()).collect(),
        cluster: cluster.store.clone(),
    });
    let (key_stores, key_controllers): (Vec<_>, Vec<_>) = scopes
        .iter()
        .zip(&namespaced)
        .map(|(scope, accounts)| {
            let triggers = AccountTriggers {
                namespaced: accounts.subscribe(),
                cluster: cluster.subscribe(),
            };
            run_keys(ctx.clone(), scope.as_deref(), triggers, shutdown.clone())
        })
        .unzip();
    // Set once per process: which keys use an account, for the accounts' in-use finalizer.
    let _ = ctx.key_stores.set(key_stores.clone());
    let ready = ctx.ready.clone();
    tokio::spawn(async move {
        for store in &key_stores {
            // A store wakes only the last of the tasks waiting for it, and its controller waits
            // too: a wait that was not woken is asked again, and answers at once once synced.
            loop {
                match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
        ready.store(true, Ordering::Relaxed);
    });
    let namespaced_accounts = scopes.iter().zip(&namespaced).map(|(scope, accounts)| {
        run_accounts(
            ctx.clone(),
            accounts.store.clone(),
            accounts.subscribe(),
            scope.as_deref(),
            shutdown.clone(),
        )
    });
    // Cluster accounts' credentials are only ever read from one namespace: watch only it.
    let secret_namespace = ctx.settings.cluster_account_secret_namespace.clone();
    let controllers = future::join3(
        future::join_all(key_controllers),
        future::join_all(namespaced_accounts),
        run_accounts(
            ctx.clone(),
            cluster.store.clone(),
            cluster.subscribe(),
            Some(&secret_namespace),
            shutdown,
        ),
    );
    // The watches never end on their own: the controllers' end (shutdown) ends them.
    let watches = future::join(
        future::join_all(namespaced.into_iter().map(SharedWatch::run)),
        cluster.run(),
    );
    futures::pin_mut!(controllers, watches);
    future::select(controllers, watches).await;
}

/// The account caches, which keys read their account from.
pub struct AccountStores {
    pub(super) namespaced: Vec<Store<ImburseAccount>>,
    pub(super) cluster: Store<ClusterImburseAccount>,
}

impl Context {
    /// The account `reference` names, from the caches. A miss is no proof of absence: the
    /// caches may not have caught up with an account created a moment ago.
    fn cached_account<A: AccountResource>(&self, reference: &ObjectRef<A>) -> Option<Arc<A>> {
        let stores = self.account_stores.get()?;
        A::stores(stores).into_iter().find_map(|s| s.get(reference))
    }
}

/// How many changes a shared watch holds for a subscriber that is behind.
const SHARED_BUFFER: usize = 256;

/// One watch of an account kind, shared by its controller and by the key controllers that an
/// account change wakes. A subscriber hears of a change only once the cache holds it, so a
/// key woken by its account's change reads the changed account.
struct SharedWatch<A: AccountResource> {
    api: Api<A>,
    store: Store<A>,
    writer: reflector::store::Writer<A>,
}

impl<A: AccountResource> SharedWatch<A> {
    fn new(api: Api<A>) -> Self {
        let (store, writer) = reflector::store_shared(SHARED_BUFFER);
        Self { api, store, writer }
    }

    /// A subscription for one consumer, which must keep reading it: the watch waits for the
    /// slowest subscriber once its buffer is full.
    fn subscribe(&self) -> reflector::ReflectHandle<A> {
        self.writer
            .subscribe()
            .expect("a store made by store_shared hands out subscriptions")
    }

    /// Drives the watch, after every subscription was taken: subscribers hear nothing unless
    /// it runs.
    fn run(self) -> impl Future<Output = ()> {
        watcher(self.api, watcher::Config::default())
            .default_backoff()
            .reflect_shared(self.writer)
            .for_each(|_| future::ready(()))
    }
}

/// The shared account watches a key controller is woken by.
struct AccountTriggers {
    namespaced: reflector::ReflectHandle<ImburseAccount>,
    cluster: reflector::ReflectHandle<ClusterImburseAccount>,
}

/// The TenantSecurityKey controller of one namespace (or all), and its cache.
fn run_keys(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    accounts: AccountTriggers,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> (Store<TenantSecurityKey>, impl Future<Output = ()>) {
    let client = ctx.client.clone();
    let watch = watcher::Config::default();

    let (key_store, writer) = reflector::store();
    let key_events = watcher(
        scoped::<TenantSecurityKey>(&client, namespace),
        watch.clone(),
    )
    .modify(slim_for_cache)
    .reflect(writer)
    .applied_objects();
    let keys = Controller::for_stream(key_events, key_store.clone());
    let (verified, gone_keys) = futures::channel::mpsc::unbounded();
    let verifier = verify::run(ctx.clone(), key_store.clone(), verified);
    let (ns_store, cluster_store, namespace_store) =
        (key_store.clone(), key_store.clone(), key_store.clone());
    // Only the labels of the watched namespace matter to its keys.
    let namespaces = match namespace {
        Some(ns) => watch.clone().fields(&format!("metadata.name={ns}")),
        None => watch.clone(),
    };
    // Only the Secrets' metadata, and no cache: the data is read with a GET when a reconcile
    // needs it, so the operator never holds key material it does not use. Every Secret, not only
    // those the operator labelled: consent to an adoption is given on a Secret that is not the
    // operator's yet, and must wake the resource it names.
    let controller = keys
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, namespace),
            watch.clone(),
            |s| secret_triggers(&s),
        )
        .watches_shared_stream(accounts.namespaced, move |a| {
            keys_where(&ns_store, |k| {
                uses_account(k, AccountKind::ImburseAccount, &a.name_any())
                    && k.namespace() == a.namespace()
            })
        })
        .watches_shared_stream(accounts.cluster, move |a| {
            keys_where(&cluster_store, |k| {
                uses_account(k, AccountKind::ClusterImburseAccount, &a.name_any())
            })
        })
        // A namespace's labels decide whether a ClusterImburseAccount's selector allows it.
        .watches(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            namespaces,
            move |ns| {
                keys_where(&namespace_store, |k| {
                    k.spec.account_ref.kind == AccountKind::ClusterImburseAccount
                        && k.namespace().as_deref() == Some(ns.name_any().as_str())
                })
            },
        )
        .reconcile_on(gone_keys)
        .with_config(controller_config(&ctx.settings))
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| with_backoff_reset(obj, ctx, key::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));
    // The verifier never ends on its own: the controller's end (shutdown) ends both.
    let controller = async move {
        futures::pin_mut!(controller, verifier);
        future::select(controller, verifier).await;
    };
    (key_store, controller)
}

/// Runs the controller of one account kind, on its shared watch, with the credentials Secrets
/// of `secret_namespace` (or all). Account Secrets are watched metadata-only and without a
/// cache: an event only maps the Secret to the accounts that name it.
async fn run_accounts<A: AccountResource>(
    ctx: Arc<Context>,
    store: Store<A>,
    accounts: reflector::ReflectHandle<A>,
    secret_namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::for_shared_stream(accounts, store.clone());
    let mapper_ctx = ctx.clone();
    controller
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, secret_namespace),
            watcher::Config::default(),
            move |secret| {
                let namespace = secret.namespace();
                store
                    .state()
                    .iter()
                    .filter(|a| a.account_spec().credentials_secret_ref.name == secret.name_any())
                    .filter(|a| Some(a.secret_namespace(&mapper_ctx)) == namespace)
                    .map(|a| ObjectRef::from_obj(a.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(controller_config(&ctx.settings))
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| with_backoff_reset(obj, ctx, account::reconcile::<A>),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::*;

    fn secret(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PartialObjectMeta<Secret> {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some("s".into()),
                namespace: Some("team-a".into()),
                labels: Some(map(labels)),
                annotations: Some(map(annotations)),
                ..Default::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    /// A Secret wakes the key that owns it and the key its owner consented to be adopted by;
    /// an unrelated Secret wakes nobody.
    #[test]
    fn secrets_wake_their_owner_and_the_key_they_consent_to() {
        let key = |name: &str| ObjectRef::<TenantSecurityKey>::new(name).within("team-a");
        let owned = secret(
            &[
                (secret::MANAGED_BY_LABEL, secret::MANAGED_BY_VALUE),
                (secret::OWNER_LABEL, "pay"),
            ],
            &[],
        );
        assert_eq!(secret_triggers(&owned), [key("pay")]);
        let consenting = secret(&[], &[(secret::ADOPT_BY_ANNOTATION, " pay ")]);
        assert_eq!(secret_triggers(&consenting), [key("pay")]);
        assert!(secret_triggers(&secret(&[], &[])).is_empty());
        // The owner label alone, without the operator's mark, is no Secret of the operator's.
        let unmanaged = secret(&[(secret::OWNER_LABEL, "pay")], &[]);
        assert!(secret_triggers(&unmanaged).is_empty());
    }
}
