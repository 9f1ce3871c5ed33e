//! Upgrading the operator never touches a key. Every state an earlier operator version left
//! behind (`tests/fixtures/upgrade/v*/*.yaml`, see the README there) is rebuilt on a fresh
//! control plane and sandbox exactly as that version wrote it, stored at `v1alpha1` by the
//! CRDs of that time; then the current CRDs are installed and the current operator starts,
//! and may create, revoke and rewrite only what the state itself calls for, also once the
//! stored-version migration (`kubectl tsk migrate`) has rewritten every object at `v1beta1`.
//!
//! `cargo test --test upgrade -- --ignored capture` writes the fixtures of the current
//! version from a real run.

#[path = "upgrade/capture.rs"]
mod capture;
#[path = "upgrade/fixture.rs"]
mod fixture;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use fixture::{Fixture, ResourceOutcome, SecretOutcome};
use imburse_sandbox::Sandbox;
use k8s_openapi::{
    api::core::v1::Secret,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
};
use libtest_mimic::{Arguments, Trial};
use secrecy::ExposeSecret as _;
use serde_json::json;
use support::{create_namespace, metrics_address, poll, wait_for};
use tenant_key_api::{
    crd::{self, DEFAULT_BASE_URL, ImburseAccount, TenantSecurityKey},
    key_secret, migrate,
};
use tenant_key_operator::controller::intent;

const OPERATOR_NAMESPACE: &str = "tenant-key-operator";
/// Field manager of the objects' user, as `kubectl create` would write them.
const USER_FIELD_MANAGER: &str = "kubectl-create";
/// Metadata in the operator's domain (its finalizer and annotations) is the operator's own.
const OPERATOR_DOMAIN: &str = "imbursepayments.com/";
/// After the resource settled, how long the operator is watched for anything else it might do.
/// Not a performance bound: the operator only has to stay quiet.
const QUIET: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // Each fixture starts a control plane of its own, which mostly waits for the operator to
    // settle: two at a time keep two cores busy without starving either.
    args.test_threads.get_or_insert(2);
    let mut trials = match fixture::discover() {
        Ok(fixtures) => fixtures
            .into_iter()
            .map(|(name, path)| {
                Trial::test(name, move || {
                    replay(&path).map_err(|e| format!("{e:#}").into())
                })
            })
            .collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("could not list the fixtures: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    trials.push(
        Trial::test("capture", || {
            capture::run().map_err(|e| format!("{e:#}").into())
        })
        .with_ignored_flag(true),
    );
    libtest_mimic::run(&args, trials).exit_code()
}

/// Rebuilds the fixture's state, starts the current operator on it, and checks what it did.
fn replay(path: &Path) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut fixture = Fixture::load(path)?;
    fixture.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let control_plane = testenv::ControlPlane::start().await?;
        let client = control_plane.client().await?;
        // Fixtures of versions before v1beta1 are stored as those versions' CRDs stored them.
        let stored_at_v1alpha1 = stored_at_v1alpha1(&fixture)?;
        let crds = if stored_at_v1alpha1 {
            previous_crds()
        } else {
            crd::all()
        };
        testenv::apply_crds(&client, &crds).await?;
        create_namespace(&client, OPERATOR_NAMESPACE, BTreeMap::new()).await?;
        create_namespace(&client, &fixture.namespace()?, BTreeMap::new()).await?;
        // What the operator recorded names the resource by its uid, the keys the sandbox
        // starts with included: the resource comes first, so that its new uid can take the
        // captured one's place everywhere.
        let keys = Api::namespaced_with(
            client.clone(),
            &fixture.namespace()?,
            &api_resource(&fixture.key)?,
        );
        let key = create_user_fields(&keys, &fixture.key).await?;
        fixture.adopt_uid(&key.uid().context("the re-created key has no uid")?)?;
        let sandbox = Sandbox::start(fixture.sandbox.clone()).await?;
        fixture.rebase(&sandbox.base_url())?;
        let restored = restore(&client, &keys, &fixture).await?;
        let seeded = sandbox_keys(&sandbox).await?;
        sandbox.admin().reset_stats().await?;
        if stored_at_v1alpha1 {
            upgrade_crds(&client, &fixture.namespace()?).await?;
        }

        let logs = tempfile::Builder::new().prefix("tko-upgrade-").tempdir()?;
        let operator = support::start_operator(
            "operator",
            &control_plane,
            logs.path(),
            OPERATOR_NAMESPACE,
            &["--log-format", "json"],
        )?;
        let log_path = operator.log_path().to_owned();
        let result = take_over(
            &client,
            &sandbox,
            &fixture,
            restored.as_ref(),
            &seeded,
            &log_path,
        )
        .await;
        drop(operator);
        let log = std::fs::read_to_string(&log_path)?;
        if let Err(e) = result {
            bail!("{e:#}\n\noperator log, last lines:\n{}", tail(&log, 40));
        }
        for key in &fixture.sandbox.keys {
            ensure!(
                !log.contains(key.private_key.expose_secret()),
                "the operator logged the private key of {}",
                key.public_key
            );
        }
        Ok(())
    })
}

/// Writes the rest of the fixture's objects as their writers did (the key's user fields exist
/// already): the user's fields by create, the operator's own metadata and status by
/// server-side apply with the operator's field manager, the Secret (entirely the operator's)
/// likewise. Returns the Secret as the API server holds it.
async fn restore(
    client: &Client,
    keys: &Api<DynamicObject>,
    fixture: &Fixture,
) -> Result<Option<Secret>> {
    let namespace = fixture.namespace()?;
    // The credentials carry the operator's finalizer while keys use the account.
    let credentials = Api::namespaced_with(
        client.clone(),
        &namespace,
        &ApiResource::erase::<Secret>(&()),
    );
    let credentials_object = serde_json::from_value(serde_json::to_value(&fixture.credentials)?)?;
    create_user_fields(&credentials, &credentials_object).await?;
    restore_operator_fields(&credentials, &credentials_object, &fixture.field_manager).await?;
    let accounts =
        Api::namespaced_with(client.clone(), &namespace, &api_resource(&fixture.account)?);
    create_user_fields(&accounts, &fixture.account).await?;
    restore_operator_fields(&accounts, &fixture.account, &fixture.field_manager).await?;
    restore_operator_fields(keys, &fixture.key, &fixture.field_manager).await?;
    let mut restored = None;
    if let Some(secret) = &fixture.secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let written = secrets
            .patch(
                &secret.name_any(),
                &PatchParams::apply(&fixture.field_manager),
                &Patch::Apply(secret),
            )
            .await
            .context("restoring the key's Secret")?;
        restored = Some(written);
    }
    if fixture.delete_before_start {
        keys.delete(&fixture.key_name()?, &DeleteParams::default())
            .await?;
    }
    Ok(restored)
}

/// The API resource of an object at the version it names.
fn api_resource(object: &DynamicObject) -> Result<ApiResource> {
    let types = object
        .types
        .as_ref()
        .context("the object has no apiVersion and kind")?;
    Ok(ApiResource::from_gvk(&GroupVersionKind::try_from(types)?))
}

/// Whether the fixture's objects are of a version before v1beta1.
fn stored_at_v1alpha1(fixture: &Fixture) -> Result<bool> {
    Ok(api_resource(&fixture.key)?.version == crd::DEPRECATED_VERSION)
}

/// The CRDs as the versions before v1beta1 installed them: v1alpha1 alone, stored, without a
/// `baseUrl` default (those versions applied it in code).
fn previous_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = crd::all();
    for crd in &mut crds {
        crd.spec
            .versions
            .retain(|v| v.name == crd::DEPRECATED_VERSION);
        for version in &mut crd.spec.versions {
            version.storage = true;
            version.deprecated = None;
            version.deprecation_warning = None;
            if let Some(base_url) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut()?.get_mut("spec"))
                .and_then(|s| s.properties.as_mut()?.get_mut("baseUrl"))
            {
                base_url.default = None;
            }
        }
    }
    crds
}

/// Installs the current CRDs over the previous ones, as `helm upgrade` does before the new
/// operator starts. An account stored at v1alpha1 without `baseUrl` (which those versions
/// read as the sandbox) reads as the sandbox at v1beta1: the API server applies v1alpha1's
/// default to it on the way out of etcd.
async fn upgrade_crds(client: &Client, namespace: &str) -> Result<()> {
    const UNNAMED: &str = "stored-without-base-url";
    let old = ApiResource::from_gvk(&GroupVersionKind::gvk(
        crd::GROUP,
        crd::DEPRECATED_VERSION,
        "ImburseAccount",
    ));
    let stored: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &old);
    let unnamed: DynamicObject = serde_json::from_value(json!({
        "apiVersion": old.api_version,
        "kind": old.kind,
        "metadata": { "name": UNNAMED },
        "spec": { "credentialsSecretRef": { "name": "absent" } },
    }))?;
    stored.create(&user_params(), &unnamed).await?;

    testenv::apply_crds(client, &crd::all()).await?;
    let accounts: Api<ImburseAccount> = Api::namespaced(client.clone(), namespace);
    // An Established CRD serves a version it gained a moment later.
    poll(
        || async { Ok(accounts.list(&ListParams::default().limit(1)).await.is_ok()) },
        "v1beta1 to be served",
    )
    .await?;
    let read = accounts.get(UNNAMED).await?;
    ensure!(
        read.spec.account.base_url.as_deref() == Some(DEFAULT_BASE_URL),
        "an account stored without baseUrl reads at v1beta1 with {:?}",
        read.spec.account.base_url
    );
    // Gone before the operator starts, which would try to reach the sandbox with it.
    accounts.delete(UNNAMED, &DeleteParams::default()).await?;
    Ok(())
}

/// Runs the stored-version migration twice: the first run rewrites every object (of a fixture
/// stored at v1alpha1) and leaves only v1beta1 in each CRD's `storedVersions`, the second finds
/// nothing left to do.
async fn migrate_stored_versions(client: &Client, from_v1alpha1: bool) -> Result<()> {
    let reports = migrate::run(client).await?;
    for report in &reports {
        ensure!(
            report.failed.is_empty() && report.stored_versions_updated == from_v1alpha1,
            "migration of {}: {report:?}",
            report.crd
        );
    }
    let rewritten: usize = reports.iter().map(|r| r.rewritten).sum();
    // The account is there in every state.
    ensure!(
        rewritten > 0 || !from_v1alpha1,
        "the migration rewrote nothing"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for report in &reports {
        let stored = crds
            .get_status(&report.crd)
            .await?
            .status
            .and_then(|s| s.stored_versions);
        ensure!(
            stored == Some(vec![crd::VERSION.to_owned()]),
            "{} still lists {stored:?}",
            report.crd
        );
    }
    let again = migrate::run(client).await?;
    ensure!(
        again
            .iter()
            .all(|r| r.rewritten == 0 && !r.stored_versions_updated),
        "a second migration did something: {again:?}"
    );
    Ok(())
}

fn user_params() -> PostParams {
    PostParams {
        field_manager: Some(USER_FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Creates the object without what the operator wrote (its finalizers, annotations and
/// status), as its user did.
async fn create_user_fields(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
) -> Result<DynamicObject> {
    let mut user = object.clone();
    user.metadata.uid = None;
    user.finalizers_mut()
        .retain(|f| !f.starts_with(OPERATOR_DOMAIN));
    user.annotations_mut()
        .retain(|k, _| !k.starts_with(OPERATOR_DOMAIN));
    if let Some(fields) = user.data.as_object_mut() {
        fields.remove("status");
    }
    api.create(&user_params(), &user).await.with_context(|| {
        format!(
            "creating {} {}",
            object.types.as_ref().map_or("", |t| &t.kind),
            object.name_any()
        )
    })
}

/// Writes the operator's finalizers, annotations and status of the object as the operator did.
async fn restore_operator_fields(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
    field_manager: &str,
) -> Result<()> {
    let name = object.name_any();
    let types = object
        .types
        .clone()
        .context("the object has no apiVersion and kind")?;
    let operator_annotations: BTreeMap<String, String> = object
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(OPERATOR_DOMAIN))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| f.starts_with(OPERATOR_DOMAIN))
        .cloned()
        .collect();

    let apply = PatchParams::apply(field_manager);
    if !finalizers.is_empty() || !operator_annotations.is_empty() {
        let metadata = json!({
            "apiVersion": types.api_version,
            "kind": types.kind,
            "metadata": {
                "name": name,
                "finalizers": finalizers,
                "annotations": operator_annotations,
            },
        });
        api.patch(&name, &apply, &Patch::Apply(&metadata))
            .await
            .with_context(|| format!("restoring the operator's metadata of {name}"))?;
    }
    if let Some(status) = object.data.get("status") {
        let status = json!({
            "apiVersion": types.api_version,
            "kind": types.kind,
            "status": status,
        });
        api.patch_status(&name, &apply, &Patch::Apply(&status))
            .await
            .with_context(|| format!("restoring the status of {name}"))?;
    }
    Ok(())
}

/// Waits until the operator has taken the state over and gone quiet, then checks everything
/// it did against the fixture's expectations.
async fn take_over(
    client: &Client,
    sandbox: &Sandbox,
    fixture: &Fixture,
    restored: Option<&Secret>,
    seeded: &BTreeSet<String>,
    log: &Path,
) -> Result<()> {
    let namespace = fixture.namespace()?;
    let name = fixture.key_name()?;
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let expect = &fixture.expect;

    match expect.resource {
        ResourceOutcome::Ready => {
            wait_for(&keys, &name, settled).await?;
        }
        ResourceOutcome::Gone => {
            poll(
                || async { Ok(keys.get_opt(&name).await?.is_none()) },
                &format!("{namespace}/{name} to be deleted"),
            )
            .await?;
        }
    }
    // A state that is already final needs proof that the operator looked at it at all.
    let metrics = metrics_address(log).await?;
    poll(
        || async { Ok(reconciled_keys(&metrics).await? > 0) },
        "the operator to reconcile the key",
    )
    .await?;
    // The upgrade is rolled out: what follows is `kubectl tsk migrate`.
    let version = |key: Option<TenantSecurityKey>| key.and_then(|k| k.metadata.resource_version);
    let before_migration = (
        reconciled_keys(&metrics).await?,
        version(keys.get_opt(&name).await?),
    );
    migrate_stored_versions(client, stored_at_v1alpha1(fixture)?).await?;
    if expect.resource == ResourceOutcome::Ready {
        // A key the migration wrote anew (one the operator had not written since the upgrade)
        // is a change like any other: the checks below only count once the operator has looked
        // at it as rewritten.
        if version(keys.get_opt(&name).await?) != before_migration.1 {
            poll(
                || async { Ok(reconciled_keys(&metrics).await? > before_migration.0) },
                "the operator to reconcile the rewritten key",
            )
            .await?;
        }
        wait_for(&keys, &name, settled).await?;
    }
    tokio::time::sleep(QUIET).await;

    let after = sandbox_keys(sandbox).await?;
    let revoked: BTreeSet<String> = seeded.difference(&after).cloned().collect();
    let created: BTreeSet<String> = after.difference(seeded).cloned().collect();
    // A replacement the new version finished gives the replaced key its grace period: such a
    // key is due for revocation, only later.
    let in_grace: BTreeSet<String> = keys
        .get_opt(&name)
        .await?
        .and_then(|k| k.status)
        .map(|s| s.previous_keys)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.revoke_after.is_some())
        .map(|p| p.public_key)
        .collect();
    let due: BTreeSet<String> = revoked.union(&in_grace).cloned().collect();
    ensure!(
        revoked.is_subset(&expect.keys_revoked) && due == expect.keys_revoked,
        "revoked {revoked:?} (in grace {in_grace:?}), the state calls for {:?}",
        expect.keys_revoked
    );
    let stats = sandbox.admin().stats().await?;
    ensure!(
        created.len() as u64 == expect.keys_created
            && stats.total(imburse::Operation::CreateKey) == expect.keys_created,
        "created {} keys in {} calls, the state calls for {}",
        created.len(),
        stats.total(imburse::Operation::CreateKey),
        expect.keys_created
    );
    ensure!(
        stats.total(imburse::Operation::DeleteKey) == revoked.len() as u64,
        "{} revocation calls for {} revoked keys",
        stats.total(imburse::Operation::DeleteKey),
        revoked.len()
    );

    let terminating: Vec<String> = keys
        .list(&Default::default())
        .await?
        .into_iter()
        .filter(|k| k.meta().deletion_timestamp.is_some())
        .map(|k| k.name_any())
        .collect();
    ensure!(terminating.is_empty(), "left Terminating: {terminating:?}");

    let current = match expect.resource {
        ResourceOutcome::Ready => {
            let key = keys.get(&name).await?;
            ensure!(settled(&key), "the key did not stay settled");
            let status = key.status.context("status")?;
            let public_key = status.public_key.context("status.publicKey")?;
            let secret_name = status.secret_name.context("status.secretName")?;
            let secret = secrets.get(&secret_name).await?;
            ensure!(
                fixture::secret_values(Some(&secret)).contains(&public_key),
                "Secret {secret_name} does not hold the recorded key {public_key}"
            );
            ensure!(
                after.contains(&public_key),
                "the recorded key {public_key} does not exist at Imburse"
            );
            Some(secret)
        }
        ResourceOutcome::Gone => None,
    };

    match (expect.secret, restored) {
        (SecretOutcome::Written, _) => {
            ensure!(current.is_some(), "no Secret was written");
        }
        (SecretOutcome::Unchanged | SecretOutcome::Released, Some(restored)) => {
            let live = secrets.get(&restored.name_any()).await?;
            if expect.secret == SecretOutcome::Unchanged {
                compare_content(restored, &live)?;
                ensure!(
                    live.metadata.owner_references == restored.metadata.owner_references,
                    "the Secret's owner references changed"
                );
                ensure!(
                    live.resource_version() == restored.resource_version(),
                    "the Secret was rewritten"
                );
            } else {
                // Releasing drops every mark of ownership, the annotation of a `Retain` Secret
                // included, and nothing else.
                let mut released = restored.clone();
                released
                    .annotations_mut()
                    .remove(key_secret::OWNER_UID_ANNOTATION);
                compare_content(&released, &live)?;
                ensure!(
                    live.owner_references().is_empty(),
                    "the released Secret still has owners"
                );
            }
            let delivered = fixture.delivered_keys();
            ensure!(
                delivered.is_subset(&after),
                "a key the Secret delivers was revoked"
            );
        }
        (outcome, None) => bail!("expect.secret is {outcome:?} but the fixture has no Secret"),
    }
    Ok(())
}

/// Ready for its generation, with no open intent and no replaced key left to revoke but those
/// in their grace period (an attempt that replaced a key, finished by the new version, gives
/// the old key the new version's grace period).
fn settled(key: &TenantSecurityKey) -> bool {
    let Some(status) = key.status.as_ref() else {
        return false;
    };
    let intent_open = status.pending_create.is_some()
        || key
            .annotations()
            .get(intent::ANNOTATION)
            .and_then(|v| intent::Recorded::parse(v))
            .is_some_and(|r| status.attempt.as_deref() != Some(r.attempt()));
    key.meta().deletion_timestamp.is_none()
        && status.observed_generation == key.meta().generation
        && support::ready(Some(&status.conditions)) == Some(("True", "KeyReady"))
        && status.previous_keys.iter().all(|p| {
            p.revoke_after
                .as_ref()
                .is_some_and(|t| t.0 > k8s_openapi::jiff::Timestamp::now())
        })
        && !intent_open
}

/// Data, type, labels and annotations are byte for byte the restored ones. Differences are
/// reported by entry name: the values hold key material.
fn compare_content(restored: &Secret, live: &Secret) -> Result<()> {
    ensure!(live.type_ == restored.type_, "the Secret's type changed");
    ensure!(
        live.labels() == restored.labels(),
        "the Secret's labels changed"
    );
    ensure!(
        live.annotations() == restored.annotations(),
        "the Secret's annotations changed"
    );
    let empty = BTreeMap::new();
    let (before, now) = (
        restored.data.as_ref().unwrap_or(&empty),
        live.data.as_ref().unwrap_or(&empty),
    );
    let changed: Vec<&String> = before
        .keys()
        .chain(now.keys())
        .filter(|k| before.get(*k) != now.get(*k))
        .collect();
    ensure!(changed.is_empty(), "Secret entries changed: {changed:?}");
    Ok(())
}

async fn sandbox_keys(sandbox: &Sandbox) -> Result<BTreeSet<String>> {
    Ok(sandbox
        .admin()
        .keys(None)
        .await?
        .into_iter()
        .map(|k| k.public_key)
        .collect())
}

/// Successful TenantSecurityKey reconciles so far.
async fn reconciled_keys(address: &str) -> Result<u64> {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("tenant_key_operator_reconciles_total{")
                && l.contains(r#"kind="TenantSecurityKey""#)
                && l.contains(r#"result="ok""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
