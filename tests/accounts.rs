//! Accounts: `ImburseAccount` and `ClusterImburseAccount`, their credentials, who may use them,
//! which tenants, roles and hosts they allow, and how long they stay while a key lives there.
//!
//! Every test works in a namespace and with tenants of its own, and the one that makes Imburse
//! refuse credentials does it on a sandbox of its own, so they all run at once; a final pass
//! scans everything they made the operator write (account statuses too) for secrets.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults, Misbehaviour};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::{
    Env, FINALIZER, TestFn, create_namespace, create_secret, expect_single_key,
    no_secret_in_logs_events_or_status, poll, ready, wait_for,
};
use tenant_key_api::crd::{ClusterImburseAccount, ImburseAccount};

fn main() -> std::process::ExitCode {
    // Two Imburse accounts, so credentials can be swapped for another account's; live keys
    // are verified every two seconds, and what Imburse refused is asked again after two.
    let start = || {
        Env::start_with(
            Config::generate(2, 10),
            imburse_sandbox::Options::default(),
            &[
                "--verify-interval",
                "2s",
                "--credentials-retry-interval",
                "2s",
            ],
        )
    };
    let at_once: Vec<(&str, TestFn)> = testenv::named_tests![
        invalid_credentials_are_reported,
        namespaced_account_serves_only_its_namespace,
        cluster_account_honours_allowed_namespaces,
        account_allow_lists_gate_keys,
        base_url_must_be_an_allowed_host,
        a_refusal_of_the_moment_does_not_stall_an_account,
        an_account_a_replaced_key_lives_at_is_kept_until_it_is_revoked,
        swapped_credentials_never_count_a_live_key_as_revoked,
    ];
    // Last: scans what every test above made the operator write.
    let last: Vec<(&str, TestFn)> = testenv::named_tests![no_secret_in_logs_events_or_status];
    support::run_suites(start, at_once, last)
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
        env.create_key(ns, "waiting", &env.tenant(0, 0), json!({}))
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
        env.create_key("other-ns", "borrower", &env.tenant(0, 1), json!({}))
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
            env.create_key(ns, "shared-key", &env.tenant(0, 2 + i), cluster_ref.clone()).await?;
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
        let (allowed_tenant, other_tenant) = (env.tenant(0, 5), env.tenant(0, 6));
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
        let tenant = env.tenant(0, 7);
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

/// Imburse refuses the account's credentials once (a clock skew, a refusal of the moment):
/// the account is verified again by itself, without anyone editing it.
fn a_refusal_of_the_moment_does_not_stall_an_account(env: &Env) -> Result<()> {
    env.block_on(async {
        let sandbox = env.own_sandbox().await?;
        let ns = "refused-once";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        env.credentials_secret(ns, "creds", 0).await?;
        sandbox
            .admin()
            // Twice: the first refusal's status write triggers one more verification at once.
            .set_faults(&Faults::scripted(
                imburse::Operation::Token,
                2,
                Misbehaviour::status(401, r#"{"errors":[{"errorCode":"INVALID_SIGNATURE"}]}"#),
            ))
            .await?;
        // The sandbox is the test's own, so no token cached for the account's other uses
        // answers for it.
        env.apply_account(
            ns,
            "imburse",
            json!({ "baseUrl": sandbox.base_url() }),
            "creds",
        )
        .await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        wait_for(&accounts, "imburse", |a| {
            support::ready(a.status.as_ref().map(|s| &s.conditions))
                == Some(("False", "CredentialsInvalid"))
        })
        .await?;
        wait_for(&accounts, "imburse", |a| {
            support::ready(a.status.as_ref().map(|s| &s.conditions))
                == Some(("True", "CredentialsVerified"))
        })
        .await?;
        Ok(())
    })
}

/// The key moves from account `sa` to account `sb` with a grace period; `sa` is deleted while
/// the replaced key still lives there. `sa` and its credentials stay until that key is revoked,
/// so deleting the resource revokes both keys and nothing hangs.
fn an_account_a_replaced_key_lives_at_is_kept_until_it_is_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "moved-account";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let accounts: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        for name in ["sa", "sb"] {
            let secret = format!("{name}-credentials");
            env.credentials_secret(ns, &secret, 0).await?;
            env.apply_account(ns, name, json!({}), &secret).await?;
            wait_for(&accounts, name, |a| {
                support::ready(a.status.as_ref().map(|s| &s.conditions))
                    == Some(("True", "CredentialsVerified"))
            })
            .await?;
        }
        let tenant = env.tenant(0, 8);
        env.create_key(
            ns,
            "moving",
            &tenant,
            json!({ "accountRef": { "name": "sa" }, "rotation": { "gracePeriod": "10m" } }),
        )
        .await?;
        let first = expect_single_key(env, ns, "moving", &tenant).await?;
        env.keys(ns)
            .patch(
                "moving",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "accountRef": { "name": "sb" } } })),
            )
            .await?;
        wait_for(&env.keys(ns), "moving", |k| {
            k.status.as_ref().is_some_and(|s| {
                s.account_ref.as_ref().is_some_and(|a| a.name == "sb")
                    && s.previous_keys.iter().any(|p| p.public_key == first)
            })
        })
        .await?;
        accounts.delete("sa", &DeleteParams::default()).await?;
        // The operator looks at a deleting account again every two seconds until no key uses
        // it; an account it let go would be gone within this wait.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        let sa = accounts.get("sa").await?;
        ensure!(
            sa.finalizers()
                .iter()
                .any(|f| f == "imbursepayments.com/in-use"),
            "the account of a replaced key can be deleted"
        );
        env.delete_key(ns, "moving").await?;
        env.wait_gone(ns, "moving").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "a key outlived its resource"
        );
        poll(
            || async { Ok(accounts.get_opt("sa").await?.is_none()) },
            "the account no key uses any more to go",
        )
        .await?;
        Ok(())
    })
}

/// The account's credentials Secret is repointed at another Imburse account's key pair, which
/// does not know the key's tenant: deleting the key does not count it as revoked. The resource
/// holds with `KeyNotRevoked`, the key stays recorded, and once the right credentials are back
/// it is revoked and the resource goes.
fn swapped_credentials_never_count_a_live_key_as_revoked(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "swapped";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 9);
        env.create_key(ns, "kept", &tenant, json!({})).await?;
        let live = expect_single_key(env, ns, "kept", &tenant).await?;
        let pair = |account: usize| {
            let account = env.account(account);
            json!({ "stringData": {
                "publicKey": account.public_key,
                "privateKey": secrecy::ExposeSecret::expose_secret(&account.private_key),
            } })
        };
        let secrets = env.secrets(ns);
        secrets
            .patch(
                "imburse-credentials",
                &PatchParams::default(),
                &Patch::Merge(pair(1)),
            )
            .await?;
        env.delete_key(ns, "kept").await?;
        env.wait_reason(ns, "kept", "KeyNotRevoked").await?;
        ensure!(
            env.sandbox_keys(&tenant).await? == [live.clone()],
            "the key is gone"
        );
        let held = env.keys(ns).get("kept").await?;
        ensure!(
            held.finalizers().iter().any(|f| f == FINALIZER),
            "the resource let go of a live key"
        );
        secrets
            .patch(
                "imburse-credentials",
                &PatchParams::default(),
                &Patch::Merge(pair(0)),
            )
            .await?;
        env.wait_gone(ns, "kept").await?;
        ensure!(
            env.sandbox_keys(&tenant).await?.is_empty(),
            "the key outlived its resource"
        );
        Ok(())
    })
}
