//! What the operator is measured against: a plain Kubernetes client making the operator's
//! requests with no logic and no Imburse (the floor the API server sets), and the tutorial's
//! flow by hand, scripted key after key (what a user would do without the operator).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt, future, stream};
use imburse::{AccountConfig, ApiGeneration, ClientOptions, KeyPair, NewKey};
use imburse_sandbox::Config;
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{ObjectReference, Secret},
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tenant_key_api::crd::{ImburseAccount, TenantSecurityKey};
use tenant_key_operator::controller::key::FINALIZER;

use testenv::cluster::{imburse_account, key_pair_secret};

use super::{CREATING_CLIENTS, NAMESPACE, create_key};

const FIELD_MANAGER: &str = "bench-floor";

/// The mirror floor: makes, for `keys` keys, the Kubernetes requests the operator makes to
/// bring a new key to Ready, in its order, and returns how long that took. It measures the
/// operator's logic against its own requests, not its protocol: see [`protocol_floor`]. As in
/// the operator's run, the keys are created by 16 clients at once, and each created key is
/// taken up by one of `concurrency` workers, which makes: the read of the target Secret; the
/// finalizer apply (conditional on the cached version, which confirms it current); the intent's
/// status apply; the Secret's create; the status apply; the KeyCreated Event.
pub(crate) async fn kube_floor(
    client: &Client,
    keys: usize,
    concurrency: usize,
    tenants: &[&str],
) -> Result<Duration> {
    create_unverified_account(client).await?;
    pipeline(client, "mirror", keys, concurrency, tenants, mirror_key).await
}

/// The protocol's own floor: a plain client making only the writes the crash-safe create
/// protocol needs per key after the user's create (the intent in the status, the Secret, the
/// status with the key), with `workers` workers. No operator can do with fewer.
pub(crate) async fn protocol_floor(
    client: &Client,
    keys: usize,
    workers: usize,
    tenants: &[&str],
) -> Result<Duration> {
    let prefix = format!("protocol{workers}");
    pipeline(client, &prefix, keys, workers, tenants, protocol_key).await
}

/// Creates `keys` resources named `<prefix>-<i>` with 16 clients at once, and hands each
/// created one to `per_key`, run by `workers` workers; returns how long all of it took.
async fn pipeline<F, Fut>(
    client: &Client,
    prefix: &str,
    keys: usize,
    workers: usize,
    tenants: &[&str],
    per_key: F,
) -> Result<Duration>
where
    F: Fn(Client, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let (created, to_process) = futures::channel::mpsc::unbounded();
    let started = Instant::now();
    let creating = stream::iter(0..keys)
        .map(|i| {
            let api = api.clone();
            let name = format!("{prefix}-{i:05}");
            async move {
                create_key(&api, &name, tenants[i % tenants.len()])
                    .await
                    .map(|()| name)
            }
        })
        .buffer_unordered(CREATING_CLIENTS)
        .try_for_each(move |name| future::ready(created.unbounded_send(name).map_err(Into::into)));
    let processing = to_process
        .map(|name| per_key(client.clone(), name))
        .buffer_unordered(workers)
        .try_for_each(|()| future::ready(Ok(())));
    futures::try_join!(creating, processing)?;
    Ok(started.elapsed())
}

/// The account resource the floor's reads find; no operator ever makes it Ready.
async fn create_unverified_account(client: &Client) -> Result<()> {
    let account = imburse_account(
        NAMESPACE,
        "imburse",
        "http://127.0.0.1:1",
        "imburse-credentials",
        json!({}),
    )?;
    Api::<ImburseAccount>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &account)
        .await?;
    Ok(())
}

async fn mirror_key(client: Client, name: String) -> Result<()> {
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let events: Api<Event> = Api::namespaced(client, NAMESPACE);
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    secrets.get_opt(&name).await?;
    let finalizer = json!({
        "apiVersion": "imbursepayments.com/v1beta1",
        "kind": "TenantSecurityKey",
        "metadata": {"name": name, "finalizers": [FINALIZER]},
    });
    keys.patch(&name, &apply, &Patch::Apply(&finalizer)).await?;
    write_intent(&keys, &name).await?;
    write_secret(&secrets, &name).await?;
    write_status(&keys, &name).await?;
    event(&events, &name, "KeyCreated").await
}

async fn protocol_key(client: Client, name: String) -> Result<()> {
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    write_intent(&keys, &name).await?;
    write_secret(&secrets, &name).await?;
    write_status(&keys, &name).await
}

/// The intent goes into the status, where only the operator writes.
async fn write_intent(keys: &Api<TenantSecurityKey>, name: &str) -> Result<()> {
    let intent = json!({
        "apiVersion": "imbursepayments.com/v1beta1",
        "kind": "TenantSecurityKey",
        "metadata": {"name": name},
        "status": {"pendingCreate": {
            "attempt": "0123456789abcdef",
            "name": "x".repeat(80),
            "tenantId": "x".repeat(36),
            "roles": ["tenant-admin"],
            "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
            "endpoint": {"baseUrl": "http://127.0.0.1:1", "apiGeneration": "seed"},
        }},
    });
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    keys.patch_status(name, &apply, &Patch::Apply(&intent))
        .await?;
    Ok(())
}

async fn write_secret(secrets: &Api<Secret>, name: &str) -> Result<()> {
    let material = BTreeMap::from([
        ("publicKey".to_owned(), ByteString(vec![b'p'; 36])),
        ("privateKey".to_owned(), ByteString(vec![b'k'; 44])),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(material),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

async fn write_status(keys: &Api<TenantSecurityKey>, name: &str) -> Result<()> {
    let status = json!({
        "apiVersion": "imbursepayments.com/v1beta1",
        "kind": "TenantSecurityKey",
        "metadata": {"name": name},
        "status": {
            "publicKey": "p",
            "secretName": name,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KeyReady",
                "message": "key is in its Secret",
                "lastTransitionTime": Timestamp::now().to_string(),
            }],
        },
    });
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    keys.patch_status(name, &apply, &Patch::Apply(&status))
        .await?;
    Ok(())
}

async fn event(events: &Api<Event>, key: &str, reason: &str) -> Result<()> {
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{key}.{:x}", now.as_nanosecond())),
            ..ObjectMeta::default()
        },
        action: Some("Reconcile".into()),
        reason: Some(reason.into()),
        type_: Some("Normal".into()),
        event_time: Some(MicroTime(now)),
        regarding: Some(ObjectReference {
            api_version: Some("imbursepayments.com/v1beta1".into()),
            kind: Some("TenantSecurityKey".into()),
            namespace: Some(NAMESPACE.into()),
            name: Some(key.into()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(FIELD_MANAGER.into()),
        reporting_instance: Some(FIELD_MANAGER.into()),
        ..Event::default()
    };
    events.create(&PostParams::default(), &event).await?;
    Ok(())
}

/// The tutorial's flow, scripted: for each key in turn, sign a token request, get a management
/// token, create the key, and store it with the equivalent of `kubectl create secret generic`.
/// A fresh client per key, as a script of separate commands has: nothing is cached between
/// keys. Returns how long `keys` keys took.
pub(crate) async fn manual(
    client: &Client,
    config: &Config,
    base_url: &str,
    keys: usize,
) -> Result<Duration> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let account = &config.accounts[0];
    let started = Instant::now();
    for i in 0..keys {
        let tenant = &config.tenants[i % config.tenants.len()].tenant_id;
        let imburse = imburse::Client::new(ClientOptions::default())?.account(AccountConfig {
            base_url: base_url.to_owned(),
            generation: ApiGeneration::Seed,
            account_id: None,
            credentials: KeyPair::new(account.public_key.clone(), account.private_key.clone()),
        })?;
        let created = imburse
            .create_key(
                tenant,
                &NewKey {
                    name: None,
                    roles: vec!["tenant-admin".into()],
                },
            )
            .await?;
        let secret = key_pair_secret(
            &format!("manual-{i:05}"),
            &created.public_key,
            &created.private_key,
        );
        secrets.create(&PostParams::default(), &secret).await?;
    }
    Ok(started.elapsed())
}
