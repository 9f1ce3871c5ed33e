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
use tenant_key_operator::{
    controller::key::FINALIZER,
    crd::{ImburseAccount, TenantSecurityKey},
};

use super::{CREATING_CLIENTS, NAMESPACE, create_key, key_pair_secret};

const FIELD_MANAGER: &str = "bench-floor";

/// Makes, for `keys` keys, the Kubernetes requests the operator makes to bring a new key to
/// Ready, in its order, and returns how long that took. As in the operator's run, the keys are
/// created by 16 clients at once, and each created key is taken up by one of `concurrency`
/// workers, which makes: the reads of the first reconcile (the account, the target Secret, the
/// resource's latest version); the apply of the intent and finalizer; the Secret's dry run; the
/// read that guards the Secret write; the Secret's create; the status apply; the two Events
/// (creating, created).
pub(crate) async fn kube_floor(
    client: &Client,
    keys: usize,
    concurrency: usize,
    tenants: &[&str],
) -> Result<Duration> {
    create_account(client).await?;
    let api: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let (created, to_process) = futures::channel::mpsc::unbounded();
    let started = Instant::now();
    let creating = stream::iter(0..keys)
        .map(|i| {
            let api = api.clone();
            async move {
                create_key(&api, i, tenants[i % tenants.len()])
                    .await
                    .map(|()| i)
            }
        })
        .buffer_unordered(CREATING_CLIENTS)
        .try_for_each(move |i| future::ready(created.unbounded_send(i).map_err(Into::into)));
    let processing = to_process
        .map(|i| one_key(client, i))
        .buffer_unordered(concurrency)
        .try_for_each(|()| future::ready(Ok(())));
    futures::try_join!(creating, processing)?;
    Ok(started.elapsed())
}

/// The account resource the floor's reads find; no operator ever makes it Ready.
async fn create_account(client: &Client) -> Result<()> {
    let account: ImburseAccount = serde_json::from_value(json!({
        "apiVersion": "imbursepayments.com/v1alpha1",
        "kind": "ImburseAccount",
        "metadata": {"name": "imburse", "namespace": NAMESPACE},
        "spec": {"baseUrl": "http://127.0.0.1:1", "credentialsSecretRef": {"name": "imburse-account"}},
    }))?;
    Api::<ImburseAccount>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &account)
        .await?;
    Ok(())
}

async fn one_key(client: &Client, i: usize) -> Result<()> {
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let accounts: Api<ImburseAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let name = format!("key-{i:05}");
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    accounts.get("imburse").await?;
    secrets.get_opt(&name).await?;
    keys.get(&name).await?;
    let finalizer = json!({
        "apiVersion": "imbursepayments.com/v1alpha1",
        "kind": "TenantSecurityKey",
        "metadata": {"name": name, "finalizers": [FINALIZER]},
    });
    keys.patch(&name, &apply, &Patch::Apply(&finalizer)).await?;
    // The intent goes into the status, where only the operator writes.
    let intent = json!({
        "apiVersion": "imbursepayments.com/v1alpha1",
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
    keys.patch_status(&name, &apply, &Patch::Apply(&intent))
        .await?;
    event(&events, &name, "CreatingKey").await?;
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {"publicKey": "", "privateKey": ""},
    });
    secrets
        .patch(&name, &apply.clone().dry_run(), &Patch::Apply(&secret))
        .await?;
    keys.get(&name).await?;
    let material = BTreeMap::from([
        ("publicKey".to_owned(), ByteString(vec![b'p'; 36])),
        ("privateKey".to_owned(), ByteString(vec![b'k'; 44])),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        data: Some(material),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    let status = json!({
        "apiVersion": "imbursepayments.com/v1alpha1",
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
    keys.patch_status(&name, &apply, &Patch::Apply(&status))
        .await?;
    event(&events, &name, "KeyCreated").await?;
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
            api_version: Some("imbursepayments.com/v1alpha1".into()),
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
