//! Creation: a key becomes Ready, Imburse has it, its Secret holds it and authenticates, an
//! Event reports it; a Secret the API server would refuse, or one that someone else wrote
//! meanwhile, gets no key and is never overwritten.
//!
//! Every test works in a namespace and with a tenant of its own, and the one that slows
//! Imburse down does it on a sandbox of its own, so they all run at once; a final pass, one
//! at a time, scans everything they made the operator write for secrets.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults};
use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use support::{
    Env, TestFn, create_namespace, expect_single_key, no_secret_in_logs_events_or_status, poll,
    recorded_key, tenant_keys, wait_for,
};
use tenant_key_api::crd::TenantSecurityKey;
use tenant_key_operator::controller::intent;
use testenv::keys::secret_key_pair;

fn main() -> std::process::ExitCode {
    // Two accounts, whose private keys the final scan looks for too.
    let start = || Env::start(Config::generate(2, 6));
    let at_once: Vec<(&str, TestFn)> = testenv::named_tests![
        key_becomes_ready_and_authenticates,
        current_api_generation,
        secret_template_is_honoured,
        a_secret_the_api_server_refuses_creates_no_key,
        a_secret_that_appears_meanwhile_is_never_overwritten,
        the_longest_name_gets_its_key_secret_and_events,
    ];
    // Last: scans what every test above made the operator write.
    let last: Vec<(&str, TestFn)> = testenv::named_tests![no_secret_in_logs_events_or_status];
    support::run_suites(start, at_once, last)
}

fn key_becomes_ready_and_authenticates(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "ready";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        env.create_key(ns, "payments", &tenant, json!({})).await?;
        let key = env.wait_ready(ns, "payments").await?;
        let status = key.status.context("status")?;
        let secret = env.secrets(ns).get("payments").await?;
        let pair = secret_key_pair(&secret)?;
        ensure!(status.public_key.as_deref() == Some(pair.public_key.as_str()));
        ensure!(status.secret_name.as_deref() == Some("payments"));
        ensure!(
            status
                .fingerprint
                .as_deref()
                .is_some_and(|f| f.starts_with("sha256:"))
        );
        let entries: Vec<_> = secret
            .data
            .as_ref()
            .context("data")?
            .keys()
            .cloned()
            .collect();
        ensure!(
            entries == ["baseUrl", "privateKey", "publicKey", "tenantId"],
            "unexpected entries {entries:?}"
        );
        ensure!(
            secret
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.name == "payments")
        );
        // The key really authenticates: it gets a tenant token from the sandbox.
        let http = imburse::Client::new(Default::default())?;
        imburse::authenticate(
            &http,
            &env.sandbox.base_url(),
            imburse::ApiGeneration::Seed,
            &pair,
        )
        .await?;
        ensure!(env.sandbox_keys(&tenant).await? == std::slice::from_ref(&pair.public_key));
        env.wait_event(ns, "payments", "KeyCreated").await?;
        Ok(())
    })
}

fn current_api_generation(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "current";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        env.credentials_secret(ns, "creds", 0).await?;
        let account_id = env.account(0).account_id.clone();
        env.apply_account(
            ns,
            "imburse",
            json!({"apiGeneration": "current", "accountId": account_id}),
            "creds",
        )
        .await?;
        let tenant = env.tenant(0, 1);
        env.create_key(ns, "current-key", &tenant, json!({}))
            .await?;
        env.wait_ready(ns, "current-key").await?;
        let secret = env.secrets(ns).get("current-key").await?;
        let data = secret.data.context("data")?;
        ensure!(data.get("accountId").map(|v| v.0.as_slice()) == Some(account_id.as_bytes()));
        let pair_key = String::from_utf8(data["publicKey"].0.clone())?;
        ensure!(env.sandbox_keys(&tenant).await?.contains(&pair_key));
        Ok(())
    })
}

fn secret_template_is_honoured(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "template";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 2);
        let template = json!({
            "name": "Payments Key",
            "secret": {
                "name": "imburse-tenant",
                "labels": {"team": "payments"},
                "annotations": {"reloader": "true"},
                "keys": {"publicKey": "IMBURSE_PUBLIC_KEY", "privateKey": "IMBURSE_PRIVATE_KEY"}
            }
        });
        env.create_key(ns, "templated", &tenant, template).await?;
        let key = env.wait_ready(ns, "templated").await?;
        let secret = env.secrets(ns).get("imburse-tenant").await?;
        ensure!(secret.labels().get("team").map(String::as_str) == Some("payments"));
        ensure!(secret.annotations().get("reloader").map(String::as_str) == Some("true"));
        ensure!(
            secret
                .annotations()
                .get("imbursepayments.com/key-fingerprint")
                == key.status.as_ref().and_then(|s| s.fingerprint.as_ref())
        );
        let data = secret.data.context("data")?;
        ensure!(
            data.contains_key("IMBURSE_PRIVATE_KEY") && data.contains_key("IMBURSE_PUBLIC_KEY")
        );
        // The name at Imburse is the human name, marked with the resource and the attempt.
        let listed = env.sandbox.admin().keys(Some(&tenant)).await?;
        let uid = key.uid().context("uid")?;
        ensure!(
            listed.len() == 1
                && intent::human_name(&listed[0].name) == "Payments Key"
                && intent::made_for(&listed[0].name, &uid),
            "{listed:?}"
        );
        Ok(())
    })
}

/// A Secret the API server refuses (an invalid label value): no key is created, the resource
/// stalls with its own reason, and it stays that way instead of looping.
fn a_secret_the_api_server_refuses_creates_no_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "refused-secret";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 3);
        env.create_key(
            ns,
            "refused",
            &tenant,
            json!({ "secret": { "labels": { "team": "not a valid label value!" } } }),
        )
        .await?;
        let key = env.wait_reason(ns, "refused", "SecretRejected").await?;
        let stalled = key
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
            .map(|c| c.status.clone());
        ensure!(stalled.as_deref() == Some("True"), "not stalled");
        env.wait_event(ns, "refused", "SecretRejected").await?;
        let version = key.metadata.resource_version.clone();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stats = env.sandbox.admin().stats().await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a key was created"
        );
        ensure!(
            env.keys(ns).get("refused").await?.metadata.resource_version == version,
            "the resource keeps being rewritten: {stats:?}"
        );
        // Fixing the spec lets the key through.
        env.keys(ns)
            .patch(
                "refused",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "spec": { "secret": { "labels": { "team": "payments" } } } }),
                ),
            )
            .await?;
        expect_single_key(env, ns, "refused", &tenant).await?;
        Ok(())
    })
}

/// Someone creates a Secret of the target's name while the operator waits for Imburse to
/// create the key: the operator read no Secret, but never writes over one it has not read
/// and found its own. The foreign Secret stays as it was, and the key it cannot deliver is
/// revoked at once.
fn a_secret_that_appears_meanwhile_is_never_overwritten(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "appeared";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 5);
        sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 3_000,
                ..Default::default()
            })
            .await?;
        env.create_key(ns, "raced", &tenant, json!({})).await?;
        poll(
            || async { Ok(!tenant_keys(&sandbox, &tenant).await?.is_empty()) },
            "the key to be created at the sandbox",
        )
        .await?;
        let foreign = BTreeMap::from([("token".to_owned(), "someone else's".to_owned())]);
        support::create_secret(&env.client, ns, "raced", foreign).await?;
        env.wait_reason(ns, "raced", "SecretConflict").await?;
        let secret = env.secrets(ns).get("raced").await?;
        ensure!(secret.owner_references().is_empty());
        let data = secret.data.context("data")?;
        ensure!(
            data.keys().collect::<Vec<_>>() == ["token"] && data["token"].0 == b"someone else's",
            "the foreign Secret was written"
        );
        poll(
            || async { Ok(tenant_keys(&sandbox, &tenant).await?.is_empty()) },
            "the undeliverable key to be revoked",
        )
        .await?;
        Ok(())
    })
}

/// A name of 250 characters, which the API server accepts: the Secret's labels fit, the
/// Events are published, and the key becomes Ready and is revoked on deletion.
fn the_longest_name_gets_its_key_secret_and_events(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "long-names";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 4);
        let name = format!("k{}", "-long".repeat(49).trim_end_matches('-'));
        let name = format!("{name}x");
        ensure!(name.len() >= 240, "name of {} characters", name.len());
        env.create_key(ns, &name, &tenant, json!({})).await?;
        expect_single_key(env, ns, &name, &tenant).await?;
        env.wait_event(ns, &name, "KeyCreated").await?;
        let labelled = env
            .secrets(ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tenant-key-operator"))
            .await?;
        ensure!(
            labelled.items.iter().any(|s| s.name_any() == name),
            "no labelled Secret"
        );
        // A change to the Secret still reaches its resource: deleting it gets a new key.
        let before = recorded_key(env, ns, &name).await?;
        env.secrets(ns)
            .delete(&name, &DeleteParams::default())
            .await?;
        wait_for(&env.keys(ns), &name, |k: &TenantSecurityKey| {
            k.status
                .as_ref()
                .and_then(|s| s.public_key.as_deref())
                .is_some_and(|k| k != before)
        })
        .await?;
        env.delete_key(ns, &name).await?;
        env.wait_gone(ns, &name).await?;
        ensure!(env.sandbox_keys(&tenant).await?.is_empty());
        Ok(())
    })
}
