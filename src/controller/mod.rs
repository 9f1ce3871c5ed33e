//! The controllers: TenantSecurityKeys, and the two account kinds they use.

pub mod account;
mod context;
mod credentials;
pub mod decision;
mod echo;
pub mod error;
mod events;
mod finalizer;
pub mod intent;
pub mod inventory;
pub mod key;
mod retry;
mod schedule;
pub mod secret;
pub mod status;
mod verify;

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
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
        controller::Config as ControllerConfig,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};

pub use context::{AccountStores, Context, KeyLimits, Settings};
pub use error::{Error, Result};

use account::AccountResource;
use echo::SecretEvent;
use retry::{error_policy, with_backoff_reset};
use tenant_key_api::{
    crd::{AccountKind, ClusterImburseAccount, ImburseAccount, TenantSecurityKey},
    key_secret,
};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tenant-key-operator";

/// Drops what no reconcile reads from a TenantSecurityKey before it enters the cache, which
/// holds every key for the operator's lifetime: `managedFields` (a field tree per writer, often
/// larger than the rest of the object), labels, owner references and every annotation but the
/// operator's own (GitOps tools, Helm and `kubectl apply` add theirs, each map costing a tree
/// node of several hundred bytes). The operator only reads its own annotations, and every
/// write it makes names its own fields (server-side apply, patches), so nothing is lost by not
/// holding the rest.
fn slim_for_cache(key: &mut TenantSecurityKey) {
    let metadata = &mut key.metadata;
    metadata.managed_fields = None;
    metadata.labels = None;
    metadata.owner_references = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.retain(|name, _| name.starts_with(OWN_ANNOTATION_PREFIX));
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
}

/// The prefix of the annotations the operator reads on a TenantSecurityKey (its intent, a
/// rotation request).
const OWN_ANNOTATION_PREFIX: &str = "imbursepayments.com/";

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
        .get(key_secret::MANAGED_BY_LABEL)
        .map(String::as_str)
        == Some(key_secret::MANAGED_BY_VALUE);
    let owner = managed
        .then(|| key_secret::owner_name(secret.labels(), secret.annotations()))
        .flatten();
    let adopter = secret
        .annotations()
        .get(key_secret::ADOPT_BY_ANNOTATION)
        .map(|name| name.trim().to_owned());
    owner
        .into_iter()
        .chain(adopter)
        .filter(|name| !name.is_empty())
        .map(|name| ObjectRef::new(&name).within(&namespace))
        .collect()
}

/// `keys`, woken for a cause other than their own writes: none of them may be answered as an
/// echo.
fn waking(
    ctx: &Context,
    keys: Vec<ObjectRef<TenantSecurityKey>>,
) -> Vec<ObjectRef<TenantSecurityKey>> {
    for key in &keys {
        ctx.wake(key);
    }
    keys
}

/// Whether a key refers to the account of `kind` named `name`, in its spec or for a key it
/// still has to revoke.
fn uses_account(key: &TenantSecurityKey, kind: AccountKind, name: &str) -> bool {
    key.account_refs().any(|r| r.kind == kind && r.name == name)
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
    let scopes = ctx.settings.scopes();
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
    let verifier = verify::run(
        ctx.clone(),
        namespace.map(str::to_owned),
        key_store.clone(),
        verified,
    );
    let (ns_store, cluster_store, namespace_store) =
        (key_store.clone(), key_store.clone(), key_store.clone());
    let (by_secret, by_account, by_cluster_account, by_namespace, by_verifier) = (
        ctx.clone(),
        ctx.clone(),
        ctx.clone(),
        ctx.clone(),
        ctx.clone(),
    );
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
            move |s| {
                match by_secret.secret_event(&s) {
                    SecretEvent::Echo => Vec::new(),
                    // The write, when it returns, tells whether this was its echo; the key is
                    // looked at either way, and in full if it was not.
                    SecretEvent::DuringWrite => secret_triggers(&s),
                    SecretEvent::Other => waking(&by_secret, secret_triggers(&s)),
                }
            },
        )
        .watches_shared_stream(accounts.namespaced, move |a| {
            let keys = keys_where(&ns_store, |k| {
                uses_account(k, AccountKind::ImburseAccount, &a.name_any())
                    && k.namespace() == a.namespace()
            });
            waking(&by_account, keys)
        })
        .watches_shared_stream(accounts.cluster, move |a| {
            let keys = keys_where(&cluster_store, |k| {
                uses_account(k, AccountKind::ClusterImburseAccount, &a.name_any())
            });
            waking(&by_cluster_account, keys)
        })
        // A namespace's labels decide whether a ClusterImburseAccount's selector allows it.
        .watches(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            namespaces,
            move |ns| {
                let keys = keys_where(&namespace_store, |k| {
                    k.spec.account_ref.kind == AccountKind::ClusterImburseAccount
                        && k.namespace().as_deref() == Some(ns.name_any().as_str())
                });
                waking(&by_namespace, keys)
            },
        )
        .reconcile_on(gone_keys.inspect(move |key| by_verifier.wake(key)))
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
                // Whatever changed, the pairs read from it are read again.
                mapper_ctx
                    .credentials
                    .forget(namespace.as_deref().unwrap_or_default(), &secret.name_any());
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

    /// The cache keeps every annotation a reconcile reads and drops what others wrote.
    #[test]
    fn the_cache_keeps_only_what_reconciles_read() {
        let read = [
            intent::ANNOTATION,
            tenant_key_api::crd::ROTATE_REQUESTED_AT_ANNOTATION,
        ];
        let mut annotations: BTreeMap<String, String> = read
            .iter()
            .map(|a| ((*a).to_owned(), "v".to_owned()))
            .collect();
        annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{}".to_owned(),
        );
        annotations.insert(
            "argocd.argoproj.io/tracking-id".to_owned(),
            "app".to_owned(),
        );
        let mut key: TenantSecurityKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": {
                "name": "pay", "namespace": "team-a", "annotations": annotations,
                "labels": { "app.kubernetes.io/instance": "pay" },
                "finalizers": [key::FINALIZER],
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
            },
            "spec": {
                "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
                "tenantId": "t",
                "roles": ["r"],
            },
        }))
        .unwrap_or_else(|e| panic!("a key: {e}"));
        slim_for_cache(&mut key);
        let kept: Vec<&str> = key.annotations().keys().map(String::as_str).collect();
        let mut expected = read.to_vec();
        expected.sort_unstable();
        assert_eq!(kept, expected);
        assert!(key.labels().is_empty());
        assert!(key.metadata.managed_fields.is_none());
        assert_eq!(key.finalizers(), [key::FINALIZER]);
        annotations_of_nobody_else_leave_none(key);
    }

    fn annotations_of_nobody_else_leave_none(mut key: TenantSecurityKey) {
        key.metadata.annotations = Some([("example.com/a".to_owned(), "b".to_owned())].into());
        slim_for_cache(&mut key);
        assert!(key.metadata.annotations.is_none());
    }

    /// A Secret wakes the key that owns it and the key its owner consented to be adopted by;
    /// an unrelated Secret wakes nobody.
    #[test]
    fn secrets_wake_their_owner_and_the_key_they_consent_to() {
        let key = |name: &str| ObjectRef::<TenantSecurityKey>::new(name).within("team-a");
        let owned = secret(
            &[
                (key_secret::MANAGED_BY_LABEL, key_secret::MANAGED_BY_VALUE),
                (key_secret::OWNER_LABEL, "pay"),
            ],
            &[],
        );
        assert_eq!(secret_triggers(&owned), [key("pay")]);
        let consenting = secret(&[], &[(key_secret::ADOPT_BY_ANNOTATION, " pay ")]);
        assert_eq!(secret_triggers(&consenting), [key("pay")]);
        assert!(secret_triggers(&secret(&[], &[])).is_empty());
        // The owner label alone, without the operator's mark, is no Secret of the operator's.
        let unmanaged = secret(&[(key_secret::OWNER_LABEL, "pay")], &[]);
        assert!(secret_triggers(&unmanaged).is_empty());
    }
}
