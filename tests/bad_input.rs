//! Bad input gets a clear answer. Every TenantSecurityKey spec the schema admits but the
//! operator must refuse, every broken account and every misbehaving Imburse answer ends in a
//! Ready condition with a reason and a Warning Event (or, where the operator can cope, in a
//! ready key), without a panic, a hot retry loop, more than one live key, an orphan, or a
//! leaked secret.
//!
//! Each case has a namespace and a tenant of its own; a case about Imburse answers also has a
//! sandbox of its own (sandbox faults are global), so all cases run at once. So do the tests
//! beside the table: the permanent errors of a key, what the schema refuses, and Imburse's
//! rate limits and server errors (each on a sandbox of its own), reported and then recovered
//! from.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use imburse::{ExposeSecret, Operation};
use imburse_sandbox::{Config, Faults, Misbehaviour, Sandbox};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use support::{Env, create_namespace, create_secret, expect_single_key_at, poll, ready, wait_for};
use tenant_key_api::crd::{Condition, ImburseAccount, TenantSecurityKey};

/// How long each case keeps watching once its resources gave their answer. Reconciles, Imburse
/// calls and writes are counted over this window; nothing is asserted about durations.
const OBSERVE: Duration = Duration::from_secs(60);
/// Failed reconciles of one key allowed in [`OBSERVE`]: the per-object backoff (1 s, doubling)
/// allows about six; a hot loop makes hundreds.
const MAX_FAILURES_OBSERVED: u32 = 8;
/// Imburse calls one case may cause in [`OBSERVE`]: a few per failed reconcile (token, list,
/// delete, create and the client's retries of idempotent calls).
const MAX_CALLS_OBSERVED: u64 = 40;
/// The operator's Imburse request timeout, so that a hanging answer ends quickly.
const IMBURSE_TIMEOUT: &str = "3s";
/// A hang well beyond that timeout.
const HANG_MS: u64 = 10_000;
/// A body beyond the client's limit for `operation`.
fn oversized(operation: Operation) -> u64 {
    (operation.max_response_bytes() + imburse::MAX_RESPONSE_BYTES) as u64
}
/// A count no case runs out of.
const ALWAYS: u32 = 100_000;
/// Name of the TenantSecurityKey (and its Secret) in every case's namespace.
const KEY: &str = "key";
/// Name of the ImburseAccount in every case's namespace.
const ACCOUNT: &str = "imburse";
const CREDENTIALS: &str = "imburse-credentials";

/// One row of the matrix.
struct Case {
    /// Also the namespace of the case.
    name: &'static str,
    setup: Setup,
    /// The key's Ready reason; `KeyReady` when the operator copes with the input.
    reason: &'static str,
    /// The account's Ready reason, when the case is about the account.
    account_reason: Option<&'static str>,
    /// The key reports `reason`, then becomes ready once the scripted faults run out.
    recovers: bool,
}

enum Setup {
    /// A working account; the key's spec merged with this.
    Spec(Value),
    /// The account's spec merged with `spec`, and its credentials Secret.
    Account {
        spec: Value,
        credentials: Credentials,
    },
    /// A working account whose own sandbox has these faults; the argument is the base URL of
    /// a second sandbox that must never be called (the target of redirects).
    Imburse(fn(&str) -> Faults),
}

/// The credentials Secret of an account case, built from the sandbox's two accounts.
enum Credentials {
    Missing,
    Entries(fn(&imburse_sandbox::Account, &imburse_sandbox::Account) -> BTreeMap<String, String>),
}

fn spec(name: &'static str, extra: Value, reason: &'static str) -> Case {
    Case {
        name,
        setup: Setup::Spec(extra),
        reason,
        account_reason: None,
        recovers: false,
    }
}

fn account(
    name: &'static str,
    spec: Value,
    credentials: Credentials,
    account_reason: &'static str,
) -> Case {
    Case {
        name,
        setup: Setup::Account { spec, credentials },
        reason: "AccountNotReady",
        account_reason: Some(account_reason),
        recovers: false,
    }
}

/// A key whose account's sandbox misbehaves.
fn imburse(name: &'static str, faults: fn(&str) -> Faults, reason: &'static str) -> Case {
    Case {
        name,
        setup: Setup::Imburse(faults),
        reason,
        account_reason: None,
        recovers: false,
    }
}

impl Case {
    fn recovering(mut self) -> Self {
        self.recovers = true;
        self
    }

    fn with_account_reason(mut self, reason: &'static str) -> Self {
        self.account_reason = Some(reason);
        self
    }
}

fn pair(public_key: &str, private_key: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("publicKey".to_owned(), public_key.to_owned()),
        ("privateKey".to_owned(), private_key.to_owned()),
    ])
}

fn status(status: u16) -> Misbehaviour {
    Misbehaviour::status(
        status,
        format!(r#"{{"errors":[{{"errorCode":"SCRIPTED_{status}","message":"scripted"}}]}}"#),
    )
}

fn create_once(misbehaviour: Misbehaviour) -> Faults {
    Faults::scripted(Operation::CreateKey, 1, misbehaviour)
}

fn token_always(misbehaviour: Misbehaviour) -> Faults {
    Faults::scripted(Operation::Token, ALWAYS, misbehaviour)
}

fn cases() -> Vec<Case> {
    use Misbehaviour::*;
    use Operation::{CreateKey, DeleteKey, ListKeys};
    vec![
        // The spec: admitted by the schema, refused by the operator before any Imburse call.
        spec("spec-blank-role", json!({"roles": ["  "]}), "InvalidSpec"),
        spec("spec-empty-name", json!({"name": ""}), "InvalidSpec"),
        spec("spec-blank-name", json!({"name": "   "}), "InvalidSpec"),
        spec(
            "spec-secret-name-invalid",
            json!({"secret": {"name": "Not_A_Valid_Name"}}),
            "InvalidSpec",
        ),
        spec(
            "spec-secret-name-dash",
            json!({"secret": {"name": "-payments"}}),
            "InvalidSpec",
        ),
        spec(
            "spec-secret-name-too-long",
            json!({"secret": {"name": "a".repeat(254)}}),
            "InvalidSpec",
        ),
        spec(
            "spec-entry-name-invalid",
            json!({"secret": {"keys": {"privateKey": "private key"}}}),
            "InvalidSpec",
        ),
        spec(
            "spec-entry-name-empty",
            json!({"secret": {"keys": {"publicKey": ""}}}),
            "InvalidSpec",
        ),
        spec(
            "spec-entry-name-duplicate",
            json!({"secret": {"keys": {"publicKey": "key", "privateKey": "key"}}}),
            "InvalidSpec",
        ),
        spec(
            "spec-reserved-label",
            json!({"secret": {"labels": {"app.kubernetes.io/managed-by": "someone"}}}),
            "InvalidSpec",
        ),
        spec(
            "spec-reserved-owner-label",
            json!({"secret": {"labels": {"imbursepayments.com/tenant-security-key": "other"}}}),
            "InvalidSpec",
        ),
        spec(
            "spec-reserved-annotation",
            json!({"secret": {"annotations": {"imbursepayments.com/key-fingerprint": "x"}}}),
            "InvalidSpec",
        ),
        spec(
            "spec-account-missing",
            json!({"accountRef": {"name": "missing"}}),
            "AccountNotFound",
        ),
        // Secrets the API server refuses, found by a dry run before any key is created.
        spec(
            "spec-label-value-invalid",
            json!({"secret": {"labels": {"team": "not a valid value!"}}}),
            "SecretRejected",
        ),
        spec(
            "spec-annotations-too-large",
            json!({"secret": {"annotations": {"note": "x".repeat(300 * 1024)}}}),
            "SecretRejected",
        ),
        // The account: refused locally, or by Imburse with a 401.
        // Found when the key resolves its account, before the account is used.
        Case {
            reason: "InvalidSpec",
            ..account(
                "account-url-unparseable",
                json!({"baseUrl": "not a url"}),
                Credentials::Entries(valid),
                "InvalidSpec",
            )
        },
        account(
            "account-url-plain-http-remote",
            json!({"baseUrl": "http://api.imbursepayments.com"}),
            Credentials::Entries(valid),
            "InvalidSpec",
        ),
        account(
            "account-url-wrong-scheme",
            json!({"baseUrl": "ftp://127.0.0.1:21"}),
            Credentials::Entries(valid),
            "InvalidSpec",
        ),
        account(
            "account-url-with-query",
            json!({"baseUrl": "https://api.imbursepayments.com/?a=b"}),
            Credentials::Entries(valid),
            "InvalidSpec",
        ),
        account(
            "account-url-unreachable",
            json!({"baseUrl": "http://127.0.0.1:9"}),
            Credentials::Entries(valid),
            "ImburseUnavailable",
        ),
        account(
            "account-current-without-id",
            json!({"apiGeneration": "current"}),
            Credentials::Entries(valid),
            "InvalidSpec",
        ),
        account(
            "account-secret-missing",
            json!({}),
            Credentials::Missing,
            "CredentialsSecretNotFound",
        ),
        account(
            "account-entry-missing",
            json!({}),
            Credentials::Entries(|own, _| {
                BTreeMap::from([("publicKey".to_owned(), own.public_key.clone())])
            }),
            "CredentialsInvalid",
        ),
        account(
            "account-entry-empty",
            json!({}),
            Credentials::Entries(|own, _| pair(&own.public_key, "")),
            "CredentialsInvalid",
        ),
        account(
            "account-entry-renamed-missing",
            json!({"credentialsSecretRef": {"privateKeyKey": "secret"}}),
            Credentials::Entries(valid),
            "CredentialsInvalid",
        ),
        account(
            "account-private-key-not-base64",
            json!({}),
            Credentials::Entries(|own, _| pair(&own.public_key, "not base64!")),
            "CredentialsInvalid",
        ),
        account(
            "account-private-key-wrong-length",
            json!({}),
            Credentials::Entries(|own, _| pair(&own.public_key, "AAECAwQFBgcICQoLDA0ODw==")),
            "CredentialsInvalid",
        ),
        account(
            "account-public-key-not-uuid",
            json!({}),
            Credentials::Entries(|own, _| pair("not-a-uuid", own.private_key.expose_secret())),
            "CredentialsInvalid",
        ),
        account(
            "account-public-key-with-colon",
            json!({}),
            Credentials::Entries(|own, _| {
                pair(
                    &format!("{}:x", own.public_key),
                    own.private_key.expose_secret(),
                )
            }),
            "CredentialsInvalid",
        ),
        account(
            "account-keys-do-not-match",
            json!({}),
            Credentials::Entries(|own, other| {
                pair(&own.public_key, other.private_key.expose_secret())
            }),
            "CredentialsInvalid",
        ),
        // Create answers spoiled after the key was stored: the key exists at Imburse without a
        // usable private key, so it is revoked as an orphan and a new one created.
        imburse(
            "create-non-json",
            |_| create_once(NonJsonBody),
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-empty-body",
            |_| create_once(EmptyBody),
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-no-private-key",
            |_| create_once(MissingPrivateKey),
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-private-key-not-base64",
            |_| create_once(InvalidPrivateKey),
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-oversized",
            |_| {
                create_once(OversizedBody {
                    bytes: oversized(CreateKey),
                })
            },
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-hang",
            |_| create_once(Hang { ms: HANG_MS }),
            "ImburseUnavailable",
        )
        .recovering(),
        // Create answers from in front of the API: nothing was stored.
        imburse(
            "create-redirect",
            |trap| {
                create_once(Redirect {
                    location: format!("{trap}/management/v1/tenant/x/keys"),
                })
            },
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-400",
            |_| Faults::scripted(CreateKey, ALWAYS, status(400)),
            "ImburseRejected",
        ),
        imburse(
            "create-401",
            |_| Faults::scripted(CreateKey, ALWAYS, status(401)),
            "CredentialsInvalid",
        ),
        imburse(
            "create-403",
            |_| Faults::scripted(CreateKey, ALWAYS, status(403)),
            "Forbidden",
        ),
        imburse(
            "create-404",
            |_| Faults::scripted(CreateKey, ALWAYS, status(404)),
            "TenantNotFound",
        ),
        imburse(
            "create-418",
            |_| Faults::scripted(CreateKey, ALWAYS, status(418)),
            "ImburseUnavailable",
        ),
        imburse(
            "create-500-burst",
            |_| Faults::scripted(CreateKey, 2, status(500)),
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-502-html",
            |_| {
                Faults::scripted(
                    CreateKey,
                    1,
                    Status {
                        status: 502,
                        body: "<html><body>Bad Gateway</body></html>".into(),
                        retry_after_seconds: None,
                    },
                )
            },
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "create-429-burst",
            |_| {
                Faults::scripted(
                    CreateKey,
                    2,
                    Status {
                        status: 429,
                        body: String::new(),
                        retry_after_seconds: Some(2),
                    },
                )
            },
            "RateLimited",
        )
        .recovering(),
        imburse(
            "create-5xx-always",
            |_| Faults::scripted(CreateKey, ALWAYS, status(503)),
            "ImburseUnavailable",
        ),
        // Token answers: the account reports them, the key waits for the account.
        imburse(
            "token-non-json",
            |_| token_always(NonJsonBody),
            "AccountNotReady",
        )
        .with_account_reason("ImburseUnavailable"),
        imburse(
            "token-empty-body",
            |_| token_always(EmptyBody),
            "AccountNotReady",
        )
        .with_account_reason("ImburseUnavailable"),
        imburse(
            "token-oversized",
            |_| {
                token_always(OversizedBody {
                    bytes: oversized(Operation::Token),
                })
            },
            "AccountNotReady",
        )
        .with_account_reason("ImburseUnavailable"),
        imburse(
            "token-hang",
            |_| token_always(Hang { ms: HANG_MS }),
            "AccountNotReady",
        )
        .with_account_reason("ImburseUnavailable"),
        imburse(
            "token-redirect",
            |trap| {
                token_always(Redirect {
                    location: format!("{trap}/identity/v1/hmac/management"),
                })
            },
            "AccountNotReady",
        )
        .with_account_reason("ImburseUnavailable"),
        imburse(
            "token-401",
            |_| token_always(status(401)),
            "AccountNotReady",
        )
        .with_account_reason("CredentialsInvalid"),
        imburse(
            "token-503",
            |_| token_always(status(503)),
            "AccountNotReady",
        )
        .with_account_reason("ImburseUnavailable"),
        // A token without a usable expiry works, and is not asked for on every call.
        imburse(
            "token-no-expiry",
            |_| token_always(MissingExpiry),
            "KeyReady",
        ),
        imburse("token-expired", |_| token_always(ExpiredToken), "KeyReady"),
        // Listing and deleting during the cleanup of an orphan.
        imburse(
            "list-non-json",
            |_| create_once(EmptyBody).and_scripted(ListKeys, 1, NonJsonBody),
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "list-oversized",
            |_| {
                create_once(EmptyBody).and_scripted(
                    ListKeys,
                    1,
                    OversizedBody {
                        bytes: oversized(ListKeys),
                    },
                )
            },
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "delete-redirect",
            |trap| {
                create_once(EmptyBody).and_scripted(
                    DeleteKey,
                    1,
                    Redirect {
                        location: format!("{trap}/management/v1/tenant/x/keys/y"),
                    },
                )
            },
            "ImburseUnavailable",
        )
        .recovering(),
        imburse(
            "delete-500-burst",
            |_| create_once(EmptyBody).and_scripted(DeleteKey, 4, status(500)),
            "ImburseUnavailable",
        )
        .recovering(),
    ]
}

fn valid(own: &imburse_sandbox::Account, _: &imburse_sandbox::Account) -> BTreeMap<String, String> {
    pair(&own.public_key, own.private_key.expose_secret())
}

/// Everything the cases saw that must never be written anywhere: private keys.
type Seen = Mutex<Vec<String>>;

/// The environment, and what the cases saw there.
struct BadInput {
    env: Env,
    seen: Seen,
}

impl std::ops::Deref for BadInput {
    type Target = Env;

    fn deref(&self) -> &Env {
        &self.env
    }
}

impl testenv::suite::World for BadInput {}

/// Every case and test at once (they mostly wait, so the suite stays short), then the scan
/// over everything they made the operator write.
fn main() -> std::process::ExitCode {
    let cases = cases();
    // One tenant per case, and a spare one (see `spare_tenant`). Account 1 may only read keys:
    // a key made with it is refused as Forbidden.
    let mut config = Config::generate(2, cases.len() + 1);
    config.accounts[1].roles = vec!["account-tenant-read".into()];
    let start = || {
        let env = Env::start_with(
            config,
            imburse_sandbox::Options::default(),
            &["--imburse-timeout", IMBURSE_TIMEOUT],
        )?;
        let seen = env
            .config
            .accounts
            .iter()
            .map(|a| a.private_key.expose_secret().to_owned())
            .collect();
        Ok(BadInput {
            env,
            seen: Mutex::new(seen),
        })
    };
    let trials = |world: &Arc<BadInput>| {
        cases
            .into_iter()
            .enumerate()
            .map(|(index, case)| {
                let world = world.clone();
                Trial::test(case.name, move || {
                    world
                        .block_on(run(&world, &case, index, &world.seen))
                        .map_err(|e| format!("{e:#}").into())
                })
            })
            .collect()
    };
    testenv::suite::run_with_cases(
        start,
        trials,
        testenv::named_tests![
            permanent_errors_are_reported,
            schema_rejects_invalid_objects,
            schema_refuses_empty_and_built_in_secret_types,
            rate_limiting_is_reported_then_recovered,
            server_errors_are_reported_then_recovered,
        ],
        testenv::named_tests![no_secret_in_logs_or_events],
    )
}

/// The tenant after the cases' own: the tests beside the table make their keys at the
/// environment's sandbox for it, each in a namespace of its own.
fn spare_tenant(env: &Env) -> String {
    env.tenant(0, cases().len())
}

/// Each permanent error: the key stalls with the reason in its conditions and an Event.
fn permanent_errors_are_reported(env: &BadInput) -> Result<()> {
    env.block_on(async {
        let ns = "errors";
        env.namespace_with_account(ns, 0).await?;
        // Account 1 can read keys but not create them.
        env.credentials_secret(ns, "reader-credentials", 1).await?;
        env.apply_account(ns, "reader", json!({}), "reader-credentials")
            .await?;
        let tenant = spare_tenant(env);
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

fn schema_rejects_invalid_objects(env: &BadInput) -> Result<()> {
    env.block_on(async {
        let ns = "schema";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let tenant = spare_tenant(env);
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

fn schema_refuses_empty_and_built_in_secret_types(env: &BadInput) -> Result<()> {
    env.block_on(async {
        let ns = "secret-types";
        create_namespace(&env.client, ns, BTreeMap::new()).await?;
        let tenant = spare_tenant(env);
        for refused in [
            "",
            "kubernetes.io/service-account-token",
            "bootstrap.kubernetes.io/token",
            "no-domain",
        ] {
            let created = env
                .create_key(
                    ns,
                    "typed",
                    &tenant,
                    json!({ "secret": { "type": refused } }),
                )
                .await;
            ensure!(created.is_err(), "type {refused:?} was accepted");
        }
        env.create_key(
            ns,
            "typed",
            &tenant,
            json!({ "secret": { "type": "example.com/imburse-key" } }),
        )
        .await?;
        Ok(())
    })
}

fn rate_limiting_is_reported_then_recovered(env: &BadInput) -> Result<()> {
    env.block_on(async {
        let ns = "throttled";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 0);
        let faults = Faults::rate_limited(10_000, 1);
        sandbox.admin().set_faults(&faults).await?;
        env.create_key(ns, "throttled", &tenant, json!({})).await?;
        env.wait_reason(ns, "throttled", "RateLimited").await?;
        env.wait_event(ns, "throttled", "RateLimited").await?;
        sandbox.admin().set_faults(&Faults::default()).await?;
        expect_single_key_at(env, &sandbox, ns, "throttled", &tenant).await?;
        Ok(())
    })
}

fn server_errors_are_reported_then_recovered(env: &BadInput) -> Result<()> {
    env.block_on(async {
        let ns = "unavailable";
        let sandbox = env.own_sandbox().await?;
        env.namespace_with_account_at(ns, 0, &sandbox).await?;
        let tenant = env.tenant(0, 0);
        sandbox
            .admin()
            .set_faults(&Faults {
                error_rate: 1.0,
                ..Default::default()
            })
            .await?;
        env.create_key(ns, "unavailable", &tenant, json!({}))
            .await?;
        let key = env
            .wait_reason(ns, "unavailable", "ImburseUnavailable")
            .await?;
        let reconciling = key
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Reconciling"))
            .map(|c| c.status.clone());
        ensure!(
            reconciling.as_deref() == Some("True"),
            "a transient error must keep the key reconciling"
        );
        sandbox.admin().set_faults(&Faults::default()).await?;
        expect_single_key_at(env, &sandbox, ns, "unavailable", &tenant).await?;
        Ok(())
    })
}

/// A sandbox of a case's own, with a second one standing for wherever a redirect points.
struct OwnSandbox {
    sandbox: Sandbox,
    config: Config,
    trap: Sandbox,
    spoiled_creates: u64,
}

async fn run(env: &Env, case: &Case, index: usize, seen: &Seen) -> Result<()> {
    let ns = case.name;
    create_namespace(&env.client, ns, BTreeMap::new()).await?;
    let own = match &case.setup {
        Setup::Imburse(faults) => {
            let config = Config::generate(1, 1);
            let sandbox = Sandbox::start(config.clone()).await?;
            let trap = Sandbox::start(config.clone()).await?;
            let faults = faults(&trap.base_url());
            sandbox.admin().set_faults(&faults).await?;
            let spoiled_creates = faults
                .scripted
                .iter()
                .filter(|s| s.operation == Operation::CreateKey && !s.misbehaviour.replaces_call())
                .map(|s| u64::from(s.count))
                .sum();
            seen.lock().unwrap_or_else(|e| e.into_inner()).extend(
                config
                    .accounts
                    .iter()
                    .map(|a| a.private_key.expose_secret().to_owned()),
            );
            Some(OwnSandbox {
                sandbox,
                config,
                trap,
                spoiled_creates,
            })
        }
        _ => None,
    };
    let (sandbox, accounts, tenant) = match &own {
        Some(own) => (
            &own.sandbox,
            &own.config.accounts,
            own.config.tenants[0].tenant_id.clone(),
        ),
        None => (&env.sandbox, &env.config.accounts, env.tenant(0, index)),
    };

    // The account and its credentials.
    let mut account_spec = json!({"baseUrl": sandbox.base_url()});
    let working = Credentials::Entries(valid);
    let credentials = match &case.setup {
        Setup::Account { spec, credentials } => {
            support::merge(&mut account_spec, spec.clone());
            credentials
        }
        _ => &working,
    };
    if let Credentials::Entries(entries) = credentials {
        create_secret(
            &env.client,
            ns,
            CREDENTIALS,
            entries(&accounts[0], &accounts[1 % accounts.len()]),
        )
        .await?;
    }
    env.apply_account(ns, ACCOUNT, account_spec, CREDENTIALS)
        .await?;

    // The key.
    let key_spec = match &case.setup {
        Setup::Spec(extra) => extra.clone(),
        _ => json!({}),
    };
    env.create_key(ns, KEY, &tenant, key_spec).await?;

    // Its answer.
    let mut seen_reason = false;
    if case.reason == "KeyReady" {
        env.wait_ready(ns, KEY).await?;
    } else if case.recovers {
        seen_reason = watch_until_ready(env, ns, case.reason).await?;
    } else {
        env.wait_reason(ns, KEY, case.reason).await?;
        seen_reason = true;
    }
    ensure!(
        case.reason == "KeyReady" || seen_reason,
        "the key became ready without reporting {}",
        case.reason
    );
    if case.reason != "KeyReady" {
        wait_warning(env, ns, "TenantSecurityKey", KEY, case.reason).await?;
    }
    if let Some(reason) = case.account_reason {
        let accounts_api: Api<ImburseAccount> = Api::namespaced(env.client.clone(), ns);
        wait_for(&accounts_api, ACCOUNT, |a| {
            ready(a.status.as_ref().map(|s| &s.conditions)) == Some(("False", reason))
        })
        .await?;
        wait_warning(env, ns, "ImburseAccount", ACCOUNT, reason).await?;
    }

    // No hot loop: few failed reconciles, few Imburse calls, and no writes at rest.
    let before = env.keys(ns).get(KEY).await?;
    let failures_before = warnings(env, ns, "TenantSecurityKey", KEY).await?;
    let calls_before = calls(sandbox).await?;
    tokio::time::sleep(OBSERVE).await;
    let after = env.keys(ns).get(KEY).await?;
    let failures = warnings(env, ns, "TenantSecurityKey", KEY).await? - failures_before;
    ensure!(
        failures <= MAX_FAILURES_OBSERVED,
        "{failures} failed reconciles in {OBSERVE:?}"
    );
    if own.is_some() {
        let made = calls(sandbox).await? - calls_before;
        ensure!(
            made <= MAX_CALLS_OBSERVED,
            "{made} Imburse calls in {OBSERVE:?}"
        );
    }
    let conditions = before.status.as_ref().map(|s| &s.conditions);
    if is_true(conditions, "Stalled") || is_true(conditions, "Ready") {
        ensure!(
            after.resource_version() == before.resource_version(),
            "a settled key was written again: {:?}",
            after.status
        );
    }

    // Keys: the recorded one at most, no orphan, and one create beyond the spoiled ones.
    let live = support::tenant_keys(sandbox, &tenant).await?;
    let recorded = after.status.as_ref().and_then(|s| s.public_key.clone());
    if ready(after.status.as_ref().map(|s| &s.conditions)) == Some(("True", "KeyReady")) {
        ensure!(
            recorded.as_ref().is_some_and(|r| live == [r.clone()]),
            "live keys {live:?}, recorded {recorded:?}"
        );
    } else {
        ensure!(live.is_empty(), "keys without a ready key: {live:?}");
    }
    if let Some(own) = &own {
        let stats = own.sandbox.admin().stats().await?;
        let created = stats.count(Operation::CreateKey, 201);
        ensure!(
            created <= own.spoiled_creates + 1,
            "{created} keys created for {} spoiled answers",
            own.spoiled_creates
        );
        if own.spoiled_creates > 0 && case.recovers {
            env.wait_event(ns, KEY, "OrphanKeyDeleted").await?;
        }
        if case.reason == "KeyReady" {
            let tokens = stats.total(Operation::Token);
            ensure!(
                tokens <= 3,
                "{tokens} token requests: the token is not reused"
            );
        }
        let trapped = own.trap.admin().stats().await?;
        ensure!(
            trapped.calls.values().all(BTreeMap::is_empty),
            "a redirect was followed: {trapped:?}"
        );
    }

    // Nothing secret in what the operator wrote about this case.
    if let Some(secret) = env.secrets(ns).get_opt(KEY).await? {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(private_entries(&secret));
    }
    let account = Api::<ImburseAccount>::namespaced(env.client.clone(), ns)
        .get(ACCOUNT)
        .await?;
    let written = serde_json::to_string(&(&after.status, &account.status))?;
    let secrets = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    scan("status", &written, &secrets)?;
    ensure!(
        !env.operator_log()?.contains("panicked"),
        "the operator panicked"
    );

    // Deleting the key is never blocked by what went wrong.
    if let Some(own) = &own {
        own.sandbox.admin().set_faults(&Faults::default()).await?;
    }
    env.delete_key(ns, KEY).await?;
    env.wait_gone(ns, KEY).await?;
    let left = support::tenant_keys(sandbox, &tenant).await?;
    ensure!(left.is_empty(), "keys left after deletion: {left:?}");
    Ok(())
}

/// Waits until the key is ready, telling whether its Ready condition showed `reason` on the
/// way (polled often: a transient reason lasts at least one backoff delay).
async fn watch_until_ready(env: &Env, ns: &str, reason: &str) -> Result<bool> {
    let api = env.keys(ns);
    let mut seen = false;
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let key = api.get(KEY).await?;
        let status = key.status.as_ref();
        match ready(status.map(|s| &s.conditions)) {
            Some(("False", r)) if r == reason => seen = true,
            Some(("True", "KeyReady"))
                if status.and_then(|s| s.observed_generation) == key.metadata.generation =>
            {
                return Ok(seen);
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "gave up waiting for the key to recover; last status {:?}",
                key.status
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_true(conditions: Option<&Vec<Condition>>, type_: &str) -> bool {
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Warning Events about an object, counting repeats (the recorder aggregates them).
async fn warnings(env: &Env, ns: &str, kind: &str, name: &str) -> Result<u32> {
    Ok(warning_events(env, ns, kind, name)
        .await?
        .iter()
        .map(|e| {
            e.series
                .as_ref()
                .map_or(1, |s| u32::try_from(s.count).unwrap_or(u32::MAX))
        })
        .sum())
}

async fn warning_events(env: &Env, ns: &str, kind: &str, name: &str) -> Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    Ok(events
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .collect())
}

async fn wait_warning(env: &Env, ns: &str, kind: &str, name: &str, reason: &str) -> Result<()> {
    poll(
        || async {
            Ok(warning_events(env, ns, kind, name)
                .await?
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason)))
        },
        &format!("a Warning Event {reason} about {kind} {ns}/{name}"),
    )
    .await
}

async fn calls(sandbox: &Sandbox) -> Result<u64> {
    let stats = sandbox.admin().stats().await?;
    Ok(stats.calls.values().flat_map(BTreeMap::values).sum())
}

fn private_entries(secret: &Secret) -> Vec<String> {
    secret
        .data
        .iter()
        .flatten()
        .filter(|(name, _)| name.to_lowercase().contains("private"))
        .map(|(_, value)| String::from_utf8_lossy(&value.0).into_owned())
        .collect()
}

/// Fails if `text` holds a known private key, a header marker, or anything shaped like a
/// private key or HMAC signature (base64 of 32 bytes) or a sandbox bearer token (48
/// alphanumerics).
fn scan(what: &str, text: &str, secrets: &[String]) -> Result<()> {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        ensure!(
            !text.contains(secret.as_str()),
            "a private key appears in the {what}"
        );
    }
    // A token answer's field as JSON, raw or escaped; the bare field name may name what an
    // answer lacked.
    for marker in [
        "Bearer ",
        "Hmac ",
        r#"accessToken":"#,
        r#"accessToken":"#,
        "authorization:",
    ] {
        ensure!(!text.contains(marker), "{marker:?} appears in the {what}");
    }
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')));
    for word in words {
        let base64_key = word.len() == 44
            && word.ends_with('=')
            && !word.ends_with("==")
            && word[..43]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
        let token = word.len() == 48
            && word.chars().all(|c| c.is_ascii_alphanumeric())
            && word.chars().any(|c| !c.is_ascii_hexdigit());
        ensure!(
            !base64_key && !token,
            "something shaped like a key, signature or token appears in the {what}"
        );
    }
    Ok(())
}

/// No private key, bearer token or signature in the operator's log or in any Event.
fn no_secret_in_logs_or_events(env: &BadInput) -> Result<()> {
    env.block_on(async {
        let secrets = env.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ensure!(
            secrets.len() > 10,
            "too few keys to make the scan meaningful"
        );
        let log = env.operator_log()?;
        ensure!(
            log.contains("reconcile failed"),
            "the log scan read no reconcile output"
        );
        ensure!(!log.contains("panicked"), "the operator panicked");
        scan("log", &log, &secrets)?;
        let events: Vec<Event> = Api::all(env.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        scan("events", &serde_json::to_string(&events)?, &secrets)?;
        let keys: Vec<TenantSecurityKey> = Api::all(env.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let statuses: Vec<_> = keys.iter().map(|k| &k.status).collect();
        scan("statuses", &serde_json::to_string(&statuses)?, &secrets).context("keys still present")
    })
}
