//! End-to-end behaviour of the operator against a real kube-apiserver and etcd and the Imburse
//! sandbox. Every test works in its own namespace, so they run in parallel against one
//! environment; a final pass scans everything the operator wrote for secrets.

mod support;

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Context as _, Result, bail, ensure};
use imburse_sandbox::Config;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use libtest_mimic::{Arguments, Trial};
use serde_json::json;
use support::{Env, create_namespace, create_secret, ready, secret_key_pair, wait_for};
use tenant_key_operator::{
    controller::intent,
    crd::{self, ClusterImburseAccount, DEFAULT_BASE_URL, ImburseAccount},
};

type TestFn = fn(&Env) -> Result<()>;

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    // Account 0 may manage keys; account 1 may only read them.
    let mut config = Config::generate(2, 21); // one tenant per test
    config.accounts[1].roles = vec!["account-tenant-read".into()];
    let env = match Env::start(config) {
        Ok(env) => Arc::new(env),
        Err(e) => {
            eprintln!("could not start the test environment: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let tests: Vec<(&str, TestFn)> = crate::named_tests![
        key_becomes_ready_and_authenticates,
        current_api_generation,
        secret_template_is_honoured,
        delete_policy_revokes_the_key,
        retain_policy_keeps_key_and_secret,
        changing_roles_replaces_the_key,
        deleting_the_secret_replaces_the_key,
        editing_the_secret_replaces_the_key,
        renaming_the_secret_moves_the_key,
        permanent_errors_are_reported,
        invalid_credentials_are_reported,
        namespaced_account_serves_only_its_namespace,
        cluster_account_honours_allowed_namespaces,
        account_allow_lists_gate_keys,
        base_url_must_be_an_allowed_host,
        schema_rejects_invalid_objects,
        steady_state_makes_no_calls_and_no_writes,
        both_versions_are_served,
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let env = env.clone();
            Trial::test(name, move || {
                test(&env).map_err(|e| format!("{e:#}").into())
            })
        })
        .collect();
    let functional = libtest_mimic::run(&args, trials);
    // Runs after every other test, over everything they made the operator write.
    let leak_env = env.clone();
    let leaks = libtest_mimic::run(
        &args,
        vec![Trial::test(
            "no_secret_in_logs_events_or_status",
            move || {
                support::no_secret_in_logs_events_or_status(&leak_env)
                    .map_err(|e| format!("{e:#}").into())
            },
        )],
    );
    drop(env);
    if functional.has_failed() || leaks.has_failed() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
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

fn delete_policy_revokes_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "delete-policy";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 3);
        env.create_key(ns, "doomed", &tenant, json!({})).await?;
        env.wait_ready(ns, "doomed").await?;
        ensure!(env.sandbox_keys(&tenant).await?.len() == 1);
        env.delete_key(ns, "doomed").await?;
        env.wait_gone(ns, "doomed").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "key not revoked"
        );
        ensure!(
            env.secrets(ns).get_opt("doomed").await?.is_none(),
            "Secret left behind"
        );
        Ok(())
    })
}

fn retain_policy_keeps_key_and_secret(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "retain-policy";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 4);
        env.create_key(ns, "kept", &tenant, json!({"deletionPolicy": "Retain"}))
            .await?;
        let key = env.wait_ready(ns, "kept").await?;
        let public_key = key.status.and_then(|s| s.public_key).context("publicKey")?;
        env.delete_key(ns, "kept").await?;
        env.wait_gone(ns, "kept").await?;
        let secret = env.secrets(ns).get("kept").await?;
        ensure!(secret.owner_references().is_empty(), "Secret still owned");
        ensure!(secret_key_pair(&secret)?.public_key == public_key);
        ensure!(
            env.sandbox_keys(&tenant).await?.contains(&public_key),
            "key revoked"
        );
        Ok(())
    })
}

/// Applies `change`, then waits for exactly one new key at the sandbox and the old one revoked.
async fn expect_replacement(
    env: &Env,
    ns: &str,
    name: &str,
    tenant: &str,
    change: impl Future<Output = Result<()>>,
) -> Result<()> {
    let before = env.wait_ready(ns, name).await?;
    let old = before
        .status
        .and_then(|s| s.public_key)
        .context("publicKey")?;
    change.await?;
    let after = wait_for(&env.keys(ns), name, |k| {
        let s = k.status.as_ref();
        s.and_then(|s| s.public_key.as_deref())
            .is_some_and(|p| p != old)
            && s.and_then(|s| s.observed_generation) == k.metadata.generation
            && ready(s.map(|s| &s.conditions)) == Some(("True", "KeyReady"))
            && s.is_some_and(|s| s.previous_keys.is_empty())
    })
    .await?;
    let new = after
        .status
        .and_then(|s| s.public_key)
        .context("publicKey")?;
    ensure!(
        env.sandbox_keys(tenant).await? == [new.clone()],
        "old key not revoked or extra keys"
    );
    let secret = env.secrets(ns).get(name).await?;
    ensure!(
        secret_key_pair(&secret)?.public_key == new,
        "Secret not switched"
    );
    env.wait_event(ns, name, "PreviousKeyRevoked").await?;
    Ok(())
}

fn changing_roles_replaces_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "roles-change";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 5);
        env.create_key(ns, "rotating", &tenant, json!({})).await?;
        expect_replacement(env, ns, "rotating", &tenant, async {
            let patch = json!({"spec": {"roles": ["tenant-admin", "tenant-transaction-read"]}});
            env.keys(ns)
                .patch("rotating", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .await
    })
}

fn deleting_the_secret_replaces_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-deleted";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 6);
        env.create_key(ns, "lost", &tenant, json!({})).await?;
        expect_replacement(env, ns, "lost", &tenant, async {
            env.secrets(ns).delete("lost", &Default::default()).await?;
            Ok(())
        })
        .await
    })
}

fn editing_the_secret_replaces_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-edited";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 7);
        env.create_key(ns, "tampered", &tenant, json!({})).await?;
        expect_replacement(env, ns, "tampered", &tenant, async {
            let patch = json!({"data": {"privateKey": "dGFtcGVyZWQ="}});
            env.secrets(ns)
                .patch("tampered", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .await
    })
}

fn renaming_the_secret_moves_the_key(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "secret-renamed";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 16);
        env.create_key(ns, "moving", &tenant, json!({})).await?;
        env.wait_ready(ns, "moving").await?;
        let patch = json!({"spec": {"secret": {"name": "moved"}}});
        env.keys(ns)
            .patch("moving", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let key = env.wait_ready(ns, "moving").await?;
        let status = key.status.context("status")?;
        ensure!(status.secret_name.as_deref() == Some("moved"));
        let public_key = status.public_key.context("publicKey")?;
        ensure!(secret_key_pair(&env.secrets(ns).get("moved").await?)?.public_key == public_key);
        support::poll(
            || async { Ok(env.secrets(ns).get_opt("moving").await?.is_none()) },
            "the old Secret to be deleted",
        )
        .await?;
        ensure!(
            env.sandbox_keys(&tenant).await? == std::slice::from_ref(&public_key),
            "old key not revoked"
        );
        Ok(())
    })
}

/// Each permanent error: the key stalls with the reason in its conditions and an Event.
fn permanent_errors_are_reported(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "errors";
        env.namespace_with_account(ns, 0).await?;
        // Account 1 can read keys but not create them.
        env.credentials_secret(ns, "reader-credentials", 1).await?;
        env.apply_account(ns, "reader", json!({}), "reader-credentials")
            .await?;
        let tenant = env.tenant(0, 8);
        let reader_tenant = env.tenant(1, 0);
        create_secret(
            &env.client,
            ns,
            "taken",
            BTreeMap::from([("x".into(), "y".into())]),
        )
        .await?;
        let cases = [
            (
                "invalid-spec",
                tenant.clone(),
                json!({"secret": {"name": "Not_A_Valid_Name"}}),
                "InvalidSpec",
            ),
            (
                "no-account",
                tenant.clone(),
                json!({"accountRef": {"name": "missing"}}),
                "AccountNotFound",
            ),
            (
                "unknown-tenant",
                "00000000-0000-4000-8000-000000000000".to_owned(),
                json!({}),
                "TenantNotFound",
            ),
            (
                "forbidden",
                reader_tenant,
                json!({"accountRef": {"name": "reader"}}),
                "Forbidden",
            ),
            (
                "conflict",
                tenant.clone(),
                json!({"secret": {"name": "taken"}}),
                "SecretConflict",
            ),
        ];
        for (name, tenant, extra, _) in &cases {
            env.create_key(ns, name, tenant, extra.clone()).await?;
        }
        for (name, _, _, reason) in &cases {
            let key = env.wait_reason(ns, name, reason).await?;
            let conditions = &key.status.context("status")?.conditions;
            let stalled = conditions
                .iter()
                .find(|c| c.type_ == "Stalled")
                .context("Stalled")?;
            ensure!(stalled.status == "True", "{name}: not stalled");
            env.wait_event(ns, name, reason).await?;
        }
        // The foreign Secret was not touched.
        let taken = env.secrets(ns).get("taken").await?;
        ensure!(taken.owner_references().is_empty() && taken.data.is_some_and(|d| d.len() == 1));
        Ok(())
    })
}

fn invalid_credentials_are_reported(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "bad-credentials";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let wrong = BTreeMap::from([
            ("publicKey".to_owned(), env.account(0).public_key.clone()),
            (
                "privateKey".to_owned(),
                "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=".to_owned(),
            ),
        ]);
        create_secret(&env.client, ns, "wrong", wrong).await?;
        create_secret(
            &env.client,
            ns,
            "malformed",
            BTreeMap::from([("publicKey".into(), "x".into())]),
        )
        .await?;
        env.apply_account(ns, "imburse", json!({}), "wrong").await?;
        env.apply_account(ns, "malformed", json!({}), "malformed")
            .await?;
        env.apply_account(ns, "secretless", json!({}), "absent")
            .await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        for (name, reason) in [
            ("imburse", "CredentialsInvalid"),
            ("malformed", "CredentialsInvalid"),
            ("secretless", "CredentialsSecretNotFound"),
        ] {
            wait_for(&accounts, name, |a| {
                ready(a.status.as_ref().map(|s| &s.conditions)) == Some(("False", reason))
            })
            .await?;
            env.wait_event(ns, name, reason).await?;
        }
        env.create_key(ns, "waiting", &env.tenant(0, 9), json!({}))
            .await?;
        env.wait_reason(ns, "waiting", "AccountNotReady").await?;
        env.wait_event(ns, "waiting", "AccountNotReady").await?;
        // Fixing the credentials Secret re-triggers the account and then the key.
        let private_key =
            secrecy::ExposeSecret::expose_secret(&env.account(0).private_key).to_owned();
        let patch = json!({"stringData": {"privateKey": private_key}});
        env.secrets(ns)
            .patch("wrong", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        env.wait_ready(ns, "waiting").await?;
        Ok(())
    })
}

fn namespaced_account_serves_only_its_namespace(env: &Env) -> Result<()> {
    env.block_on(async {
        env.namespace_with_account("owner-ns", 0).await?;
        create_namespace(&env.client, "other-ns", BTreeMap::new()).await?;
        // "imburse" exists only in owner-ns: a key elsewhere cannot reach it.
        env.create_key("other-ns", "borrower", &env.tenant(0, 10), json!({}))
            .await?;
        let key = env
            .wait_reason("other-ns", "borrower", "AccountNotFound")
            .await?;
        let message = key
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message.clone());
        ensure!(
            message.is_some_and(|m| m.contains("other-ns")),
            "message does not name the namespace"
        );
        Ok(())
    })
}

fn cluster_account_honours_allowed_namespaces(env: &Env) -> Result<()> {
    env.block_on(async {
        let selector = json!({"allowedNamespaces": {"names": ["by-name"], "selector": {"matchLabels": {"imburse": "yes"}}}});
        env.apply_cluster_account("shared", 0, selector).await?;
        let accounts: Api<ClusterImburseAccount> = Api::all(env.client.clone());
        wait_for(&accounts, "shared", |a| {
            ready(a.status.as_ref().map(|s| &s.conditions)) == Some(("True", "CredentialsVerified"))
        })
        .await?;
        create_namespace(&env.client, "by-name", BTreeMap::new()).await?;
        create_namespace(&env.client, "by-label", BTreeMap::from([("imburse".into(), "yes".into())])).await?;
        create_namespace(&env.client, "not-allowed", BTreeMap::new()).await?;
        let cluster_ref = json!({"accountRef": {"kind": "ClusterImburseAccount", "name": "shared"}});
        for (i, ns) in ["by-name", "by-label", "not-allowed"].into_iter().enumerate() {
            env.create_key(ns, "shared-key", &env.tenant(0, 11 + i), cluster_ref.clone()).await?;
        }
        env.wait_ready("by-name", "shared-key").await?;
        env.wait_ready("by-label", "shared-key").await?;
        env.wait_reason("not-allowed", "shared-key", "NamespaceNotAllowed").await?;
        env.wait_event("not-allowed", "shared-key", "NamespaceNotAllowed").await?;
        // Labelling the namespace lets it in: the key is re-evaluated without being touched.
        let label = json!({"metadata": {"labels": {"imburse": "yes"}}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
            .patch("not-allowed", &PatchParams::default(), &Patch::Merge(&label))
            .await?;
        env.wait_ready("not-allowed", "shared-key").await?;
        Ok(())
    })
}

/// Waits until a key stalls with `reason` in its conditions and an Event.
async fn expect_stalled(env: &Env, ns: &str, name: &str, reason: &str) -> Result<()> {
    let key = env.wait_reason(ns, name, reason).await?;
    let stalled = key
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .is_some_and(|c| c.status == "True");
    ensure!(stalled, "{ns}/{name}: not stalled");
    env.wait_event(ns, name, reason).await
}

/// `allowedTenantIds` and `allowedRoles` refuse keys before any Imburse call, on both account
/// kinds; a key its account stops allowing stalls, keeps its key, and can still be revoked.
fn account_allow_lists_gate_keys(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "allow-lists";
        let (allowed_tenant, other_tenant) = (env.tenant(0, 17), env.tenant(0, 18));
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        env.credentials_secret(ns, "imburse-credentials", 0).await?;
        let narrow = json!({
            "allowedTenantIds": [allowed_tenant.to_uppercase()],
            "allowedRoles": ["tenant-transaction-read"],
        });
        env.apply_account(ns, "imburse", narrow.clone(), "imburse-credentials")
            .await?;
        let mut cluster = narrow;
        cluster["allowedNamespaces"] = json!({"names": [ns]});
        env.apply_cluster_account("narrow", 0, cluster).await?;
        let read_only = json!({"roles": ["tenant-transaction-read"]});
        env.create_key(ns, "allowed", &allowed_tenant, read_only.clone())
            .await?;
        env.create_key(ns, "refused-tenant", &other_tenant, read_only.clone())
            .await?;
        env.create_key(ns, "refused-role", &allowed_tenant, json!({}))
            .await?;
        let mut via_cluster = read_only;
        via_cluster["accountRef"] = json!({"kind": "ClusterImburseAccount", "name": "narrow"});
        env.create_key(ns, "cluster-refused-tenant", &other_tenant, via_cluster)
            .await?;

        let key = env.wait_ready(ns, "allowed").await?;
        let public_key = key.status.and_then(|s| s.public_key).context("publicKey")?;
        for (name, reason) in [
            ("refused-tenant", "TenantNotAllowed"),
            ("refused-role", "RolesNotAllowed"),
            ("cluster-refused-tenant", "TenantNotAllowed"),
        ] {
            expect_stalled(env, ns, name, reason).await?;
        }
        let message = env
            .keys(ns)
            .get("refused-role")
            .await?
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            message.contains("tenant-admin"),
            "the refusal does not name the role: {message}"
        );
        for name in ["refused-tenant", "refused-role", "cluster-refused-tenant"] {
            let key = env.keys(ns).get(name).await?;
            ensure!(
                key.status.and_then(|s| s.pending_create).is_none(),
                "{name}: an intent was recorded"
            );
        }
        ensure!(
            env.sandbox_keys(&other_tenant).await?.is_empty(),
            "a key was created for a tenant the account does not allow"
        );
        ensure!(
            env.sandbox_keys(&allowed_tenant).await? == std::slice::from_ref(&public_key),
            "a key was created with a role the account does not allow"
        );

        // More changes than the shared account watch buffers, none of them for any key: the
        // watch keeps flowing to every subscriber, so the change that matters still arrives.
        let accounts = Api::<ImburseAccount>::namespaced(env.client.clone(), ns);
        for i in 0..300 {
            let noise =
                json!({"metadata": {"annotations": {"example.com/touched": i.to_string()}}});
            accounts
                .patch("imburse", &PatchParams::default(), &Patch::Merge(&noise))
                .await?;
        }
        // The account stops allowing the role: the key stalls and is not replaced.
        let patch = json!({"spec": {"allowedRoles": []}});
        Api::<ImburseAccount>::namespaced(env.client.clone(), ns)
            .patch("imburse", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        expect_stalled(env, ns, "allowed", "RolesNotAllowed").await?;
        ensure!(env.sandbox_keys(&allowed_tenant).await? == [public_key]);
        // Deleting it still revokes its key.
        env.delete_key(ns, "allowed").await?;
        env.wait_gone(ns, "allowed").await?;
        ensure!(
            env.sandbox_keys(&allowed_tenant).await?.is_empty(),
            "the key of a refused resource was not revoked"
        );
        Ok(())
    })
}

/// An account whose baseUrl names a host outside `--allowed-imburse-hosts` is refused before
/// its credentials are even read, and so are the keys using it.
fn base_url_must_be_an_allowed_host(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "hosts";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 19);
        env.create_key(ns, "kept", &tenant, json!({})).await?;
        let key = env.wait_ready(ns, "kept").await?;
        let public_key = key.status.and_then(|s| s.public_key).context("publicKey")?;

        // The Secret named does not exist: refusing before reading it shows as
        // BaseUrlNotAllowed rather than CredentialsSecretNotFound.
        let smuggled = format!(
            "{}@evil.example",
            env.sandbox.base_url().replace("http://", "https://")
        );
        for (name, base_url) in [
            ("elsewhere", "https://evil.example".to_owned()),
            ("smuggled", smuggled),
        ] {
            env.apply_account(ns, name, json!({"baseUrl": base_url}), "absent")
                .await?;
        }
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        for name in ["elsewhere", "smuggled"] {
            wait_for(&accounts, name, |a| {
                ready(a.status.as_ref().map(|s| &s.conditions))
                    == Some(("False", "BaseUrlNotAllowed"))
            })
            .await?;
            env.wait_event(ns, name, "BaseUrlNotAllowed").await?;
        }
        env.create_key(
            ns,
            "refused",
            &tenant,
            json!({"accountRef": {"name": "elsewhere"}}),
        )
        .await?;
        expect_stalled(env, ns, "refused", "BaseUrlNotAllowed").await?;

        // Repointing a working account stalls its keys too, without touching their key.
        let patch = json!({"spec": {"baseUrl": "https://api.imbursepayments.com.evil.example"}});
        accounts
            .patch("imburse", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        expect_stalled(env, ns, "kept", "BaseUrlNotAllowed").await?;
        ensure!(
            env.sandbox_keys(&tenant).await? == [public_key],
            "a key was created or revoked through a host not allowed"
        );
        Ok(())
    })
}

fn schema_rejects_invalid_objects(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "schema";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let tenant = env.tenant(0, 14);
        for (extra, what) in [
            (json!({"roles": []}), "empty roles"),
            (json!({"tenantId": "not-a-uuid"}), "tenantId pattern"),
            (
                json!({"deletionPolicy": "Sometimes"}),
                "deletionPolicy enum",
            ),
            (
                json!({"accountRef": {"kind": "Elsewhere"}}),
                "account kind enum",
            ),
        ] {
            let result = env.create_key(ns, "invalid", &tenant, extra).await;
            ensure!(result.is_err(), "apiserver accepted an object with {what}");
        }
        env.create_key(
            ns,
            "fixed-tenant",
            &tenant,
            json!({"accountRef": {"name": "none"}}),
        )
        .await?;
        let patch = json!({"spec": {"tenantId": env.tenant(0, 1)}});
        let changed = env
            .keys(ns)
            .patch(
                "fixed-tenant",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        ensure!(changed.is_err(), "tenantId was changed");
        Ok(())
    })
}

/// A Ready key causes no Imburse call and no write while nothing changes.
fn steady_state_makes_no_calls_and_no_writes(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "steady";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 15);
        env.create_key(ns, "calm", &tenant, json!({})).await?;
        let key = env.wait_ready(ns, "calm").await?;
        let secret = env.secrets(ns).get("calm").await?;
        // Touching an unrelated annotation triggers a reconcile that must change nothing.
        let touched = env.operator_now()?;
        let patch = json!({"metadata": {"annotations": {"touched": "yes"}}});
        env.keys(ns)
            .patch("calm", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        env.wait_reconciled_since_restart(&touched, ns, "calm")
            .await?;
        let after = env.keys(ns).get("calm").await?;
        ensure!(after.status == key.status, "status was rewritten");
        let secret_after = env.secrets(ns).get("calm").await?;
        ensure!(
            secret_after.resource_version() == secret.resource_version(),
            "Secret was rewritten"
        );
        ensure!(env.sandbox_keys(&tenant).await?.len() == 1);
        Ok(())
    })
}

/// Both versions are served with the same fields (conversion `None`): a key created at
/// v1alpha1 is made by the operator, which reads and writes v1beta1, and what either version
/// writes the other reads. v1alpha1 answers with its deprecation warning. A v1beta1 account
/// without `baseUrl` is refused with the hosts to choose from; v1alpha1 defaults it.
fn both_versions_are_served(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "versions";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 20);
        let at_v1alpha1 = |kind: &str| {
            ApiResource::from_gvk(&GroupVersionKind::gvk(
                crd::GROUP,
                crd::DEPRECATED_VERSION,
                kind,
            ))
        };
        let old = at_v1alpha1("TenantSecurityKey");
        let old_keys: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), ns, &old);
        let alpha: DynamicObject = serde_json::from_value(json!({
            "apiVersion": old.api_version,
            "kind": old.kind,
            "metadata": { "name": "from-alpha" },
            "spec": {
                "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
                "tenantId": tenant,
                "roles": ["tenant-admin"],
            },
        }))?;
        old_keys.create(&PostParams::default(), &alpha).await?;
        let ready = env.wait_ready(ns, "from-alpha").await?;
        let interval = json!({"spec": {"rotation": {"interval": "720h"}}});
        env.keys(ns)
            .patch("from-alpha", &PatchParams::default(), &Patch::Merge(&interval))
            .await?;
        let read = old_keys.get("from-alpha").await?;
        ensure!(
            read.data["spec"]["rotation"]["interval"] == "720h"
                && read.data["status"]["publicKey"].as_str()
                    == ready.status.as_ref().and_then(|s| s.public_key.as_deref()),
            "v1alpha1 reads {read:?}"
        );

        // The other way round, for a key no account serves (the operator only reports it).
        env.create_key(ns, "from-beta", &tenant, json!({"accountRef": {"name": "none"}}))
            .await?;
        old_keys
            .patch("from-beta", &PatchParams::default(), &Patch::Merge(&interval))
            .await?;
        let read = env.keys(ns).get("from-beta").await?;
        ensure!(
            read.spec
                .rotation
                .as_ref()
                .and_then(|r| r.interval.as_deref())
                == Some("720h"),
            "v1beta1 reads {:?}",
            read.spec
        );

        let warnings = |version: &str| {
            let path = format!(
                "/apis/{}/{version}/namespaces/{ns}/tenantsecuritykeys/from-alpha",
                crd::GROUP
            );
            async move {
                let request = http::Request::get(path).body(kube::client::Body::empty())?;
                let response = env.client.send(request).await?;
                ensure!(response.status().is_success(), "GET answered {}", response.status());
                anyhow::Ok(
                    response
                        .headers()
                        .get_all("warning")
                        .iter()
                        .filter_map(|v| v.to_str().ok().map(str::to_owned))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let deprecated = warnings(crd::DEPRECATED_VERSION).await?;
        ensure!(
            deprecated.iter().any(|w| w.contains(
                "imbursepayments.com/v1alpha1 TenantSecurityKey is deprecated; use imbursepayments.com/v1beta1 TenantSecurityKey"
            )),
            "v1alpha1 warned {deprecated:?}"
        );
        let current = warnings(crd::VERSION).await?;
        ensure!(current.is_empty(), "v1beta1 warned {current:?}");

        let without_base_url = |api_version: &str, spec: serde_json::Value| {
            serde_json::from_value::<DynamicObject>(json!({
                "apiVersion": api_version,
                "kind": "ImburseAccount",
                "metadata": { "name": "no-base-url" },
                "spec": spec,
            }))
        };
        let credentials = json!({ "credentialsSecretRef": { "name": "absent" } });
        let accounts: Api<DynamicObject> = Api::namespaced_with(
            env.client.clone(),
            ns,
            &ApiResource::erase::<ImburseAccount>(&()),
        );
        let current = format!("{}/{}", crd::GROUP, crd::VERSION);
        for spec in [
            credentials.clone(),
            json!({ "baseUrl": null, "credentialsSecretRef": { "name": "absent" } }),
        ] {
            match accounts
                .create(&PostParams::default(), &without_base_url(&current, spec.clone())?)
                .await
            {
                Err(kube::Error::Api(status)) => ensure!(
                    status.code == 422
                        && status.message.contains("spec.baseUrl")
                        && status.message.contains("https://api.imbursepayments.com")
                        && status.message.contains(DEFAULT_BASE_URL),
                    "{spec} refused with {status:?}"
                ),
                other => bail!("a v1beta1 account {spec} was not refused: {other:?}"),
            }
        }
        let old = at_v1alpha1("ImburseAccount");
        // A dry run: the operator is not to reach the real sandbox with it.
        let defaulted = Api::<DynamicObject>::namespaced_with(env.client.clone(), ns, &old)
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &without_base_url(&old.api_version, credentials)?,
            )
            .await?;
        ensure!(
            defaulted.data["spec"]["baseUrl"] == DEFAULT_BASE_URL,
            "v1alpha1 defaulted to {}",
            defaulted.data["spec"]
        );
        Ok(())
    })
}
