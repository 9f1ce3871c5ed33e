//! The client against answers the API should never give, scripted in the sandbox and served
//! over real HTTP on loopback: every one ends in a typed error (or a safe success), never in a
//! panic, an unbounded read, a followed redirect, a stored unusable key or a token asked for
//! on every call.

use std::time::Duration;

use imburse::{
    AccountClient, AccountConfig, ApiGeneration, Client, ClientOptions, Error, ExposeSecret,
    MAX_LISTING_BYTES, MAX_RESPONSE_BYTES, NewKey, Operation, RetryPolicy,
};
use imburse_sandbox::{Config, Faults, Misbehaviour, Sandbox};

const TIMEOUT: Duration = Duration::from_millis(500);

struct Env {
    sandbox: Sandbox,
    config: Config,
    client: Client,
}

impl Env {
    async fn start() -> Self {
        let config = Config::generate(1, 1);
        let sandbox = Sandbox::start(config.clone()).await.unwrap();
        let client = Client::new(ClientOptions {
            request_timeout: TIMEOUT,
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(10),
                cap: Duration::from_secs(1),
            },
            ..ClientOptions::default()
        })
        .unwrap();
        Self {
            sandbox,
            config,
            client,
        }
    }

    fn account(&self, generation: ApiGeneration) -> AccountClient {
        let account = &self.config.accounts[0];
        self.client
            .account(AccountConfig {
                base_url: self.sandbox.base_url(),
                generation,
                account_id: Some(account.account_id.clone()),
                credentials: account.key_pair(),
            })
            .unwrap()
    }

    fn tenant(&self) -> String {
        self.config.tenants[0].tenant_id.clone()
    }

    async fn script(&self, operation: Operation, count: u32, misbehaviour: Misbehaviour) {
        self.sandbox
            .admin()
            .set_faults(&Faults::scripted(operation, count, misbehaviour))
            .await
            .unwrap();
    }

    async fn calls(&self, operation: Operation) -> u64 {
        self.sandbox.admin().stats().await.unwrap().total(operation)
    }

    async fn stored_keys(&self) -> usize {
        self.sandbox
            .admin()
            .keys(Some(&self.tenant()))
            .await
            .unwrap()
            .len()
    }
}

fn new_key() -> NewKey {
    NewKey {
        name: Some("scripted".into()),
        roles: vec!["tenant-admin".into()],
    }
}

/// An error's text is short and carries nothing from the answer.
fn assert_clean(error: &Error) {
    let text = error.to_string();
    assert!(text.len() < 200, "{text}");
    for forbidden in ["<html", "privateKey", "padding", "aaaa", "Bearer", "Hmac"] {
        assert!(!text.contains(forbidden), "{text}");
    }
}

#[tokio::test]
async fn a_create_answer_without_a_usable_key_is_an_unknown_outcome_and_the_key_exists() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Current);
    account.verify_credentials().await.unwrap();
    let spoiled = [
        Misbehaviour::NonJsonBody,
        Misbehaviour::EmptyBody,
        Misbehaviour::MissingPrivateKey,
        Misbehaviour::InvalidPrivateKey,
        Misbehaviour::OversizedBody {
            bytes: 5 * 1024 * 1024,
        },
        Misbehaviour::Hang {
            ms: TIMEOUT.as_millis() as u64 * 4,
        },
    ];
    for (i, misbehaviour) in spoiled.into_iter().enumerate() {
        env.script(Operation::CreateKey, 1, misbehaviour.clone())
            .await;
        let err = account
            .create_key(&env.tenant(), &new_key())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::CreateOutcomeUnknown { .. }),
            "{misbehaviour:?}: {err:?}"
        );
        assert!(err.is_transient());
        assert!(err.correlation_id().is_some());
        assert_clean(&err);
        // The key was stored before the answer was spoiled: listing finds it.
        assert_eq!(env.stored_keys().await, i + 1, "{misbehaviour:?}");
        let listed = account.list_keys(&env.tenant()).await.unwrap();
        assert_eq!(listed.len(), i + 1);
    }
}

#[tokio::test]
async fn oversized_answers_are_refused_and_error_statuses_keep_their_meaning() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Seed);
    account.verify_credentials().await.unwrap();
    let big = MAX_LISTING_BYTES as u64 + MAX_RESPONSE_BYTES as u64;
    env.script(
        Operation::ListKeys,
        1,
        Misbehaviour::OversizedBody { bytes: big },
    )
    .await;
    let err = account.list_keys(&env.tenant()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidResponse(_)), "{err:?}");
    assert!(!err.is_transient());
    assert_clean(&err);
    assert_eq!(env.calls(Operation::ListKeys).await, 1, "retried");

    // Just below the limit is still read.
    env.script(
        Operation::ListKeys,
        1,
        Misbehaviour::OversizedBody {
            bytes: MAX_LISTING_BYTES as u64 - 64,
        },
    )
    .await;
    assert!(account.list_keys(&env.tenant()).await.unwrap().is_empty());

    // A huge error body does not hide the status.
    env.script(
        Operation::ListKeys,
        10,
        Misbehaviour::status(502, "x".repeat(MAX_RESPONSE_BYTES + MAX_RESPONSE_BYTES / 2)),
    )
    .await;
    let err = account.list_keys(&env.tenant()).await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 502, .. }), "{err:?}");
    assert_clean(&err);
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let env = Env::start().await;
    let trap = Sandbox::start(env.config.clone()).await.unwrap();
    let account = env.account(ApiGeneration::Seed);
    for operation in [Operation::Token, Operation::ListKeys, Operation::CreateKey] {
        let location = format!("{}/identity/v1/hmac/management", trap.base_url());
        env.script(operation, 1, Misbehaviour::Redirect { location })
            .await;
        let err = match operation {
            Operation::Token => account.verify_credentials().await.unwrap_err(),
            Operation::ListKeys => account.list_keys(&env.tenant()).await.unwrap_err(),
            _ => account
                .create_key(&env.tenant(), &new_key())
                .await
                .unwrap_err(),
        };
        assert!(
            matches!(err, Error::UnexpectedStatus { status: 302, .. }),
            "{operation}: {err:?}"
        );
        assert!(!err.is_transient(), "{operation}");
    }
    let trapped = trap.admin().stats().await.unwrap();
    assert!(
        trapped.calls.values().all(|by_status| by_status.is_empty()),
        "a redirect was followed: {trapped:?}"
    );
    // Nothing was stored by the redirected create.
    assert_eq!(env.stored_keys().await, 0);
}

#[tokio::test]
async fn arbitrary_statuses_map_to_typed_errors_without_their_bodies() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Current);
    account.verify_credentials().await.unwrap();
    let body = r#"{"errors":[{"errorCode":"SOMETHING","message":"privateKey=AAAA Bearer abc"}]}"#;
    for (status, check) in [
        (
            400,
            (|e: &Error| matches!(e, Error::BadRequest(_))) as fn(&Error) -> bool,
        ),
        (403, |e| matches!(e, Error::Forbidden(_))),
        (404, |e| matches!(e, Error::TenantNotFound(_))),
        (409, |e| matches!(e, Error::Conflict(_))),
        (418, |e| {
            matches!(e, Error::UnexpectedStatus { status: 418, .. })
        }),
        (500, |e| matches!(e, Error::Server { status: 500, .. })),
        (200, |e| matches!(e, Error::CreateOutcomeUnknown { .. })),
    ] {
        env.script(Operation::CreateKey, 1, Misbehaviour::status(status, body))
            .await;
        let err = account
            .create_key(&env.tenant(), &new_key())
            .await
            .unwrap_err();
        assert!(check(&err), "{status}: {err:?}");
        assert_clean(&err);
        if status != 200 {
            assert_eq!(err.error_code(), Some("SOMETHING"));
        }
    }
    // 401 twice: the token is replaced once, then the refusal is reported.
    let tokens = env.calls(Operation::Token).await;
    env.script(
        Operation::CreateKey,
        2,
        Misbehaviour::status(401, "<html>denied</html>"),
    )
    .await;
    let err = account
        .create_key(&env.tenant(), &new_key())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_clean(&err);
    assert_eq!(env.calls(Operation::Token).await, tokens + 1);
    assert_eq!(env.stored_keys().await, 0);
}

#[tokio::test]
async fn token_answers_without_usable_expiry_are_reused_briefly() {
    for misbehaviour in [Misbehaviour::MissingExpiry, Misbehaviour::ExpiredToken] {
        let env = Env::start().await;
        env.script(Operation::Token, 100, misbehaviour.clone())
            .await;
        let account = env.account(ApiGeneration::Seed);
        for _ in 0..5 {
            account.list_keys(&env.tenant()).await.unwrap();
        }
        // One token for all five calls: no token per call, no spinning.
        assert_eq!(env.calls(Operation::Token).await, 1, "{misbehaviour:?}");
        assert_eq!(env.calls(Operation::ListKeys).await, 5);
        // A token that the API then refuses is replaced once, not kept.
        env.sandbox.admin().revoke_tokens().await.unwrap();
        account.list_keys(&env.tenant()).await.unwrap();
        assert_eq!(env.calls(Operation::Token).await, 2, "{misbehaviour:?}");
    }
}

#[tokio::test]
async fn broken_token_answers_are_typed_errors() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Current);
    for misbehaviour in [
        Misbehaviour::NonJsonBody,
        Misbehaviour::EmptyBody,
        Misbehaviour::OversizedBody {
            bytes: 2 * MAX_RESPONSE_BYTES as u64,
        },
    ] {
        let before = env.calls(Operation::Token).await;
        env.script(Operation::Token, 1, misbehaviour.clone()).await;
        let err = account.verify_credentials().await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidResponse(_)),
            "{misbehaviour:?}: {err:?}"
        );
        assert_clean(&err);
        assert_eq!(env.calls(Operation::Token).await, before + 1, "retried");
    }
    // A hang is a timeout, retried like any other: the next attempt gets the token.
    env.script(
        Operation::Token,
        1,
        Misbehaviour::Hang {
            ms: TIMEOUT.as_millis() as u64 * 4,
        },
    )
    .await;
    account.verify_credentials().await.unwrap();
    // Hanging past every attempt ends in a timeout.
    let fresh = Env::start().await;
    fresh
        .script(
            Operation::Token,
            10,
            Misbehaviour::Hang {
                ms: TIMEOUT.as_millis() as u64 * 4,
            },
        )
        .await;
    let err = fresh
        .account(ApiGeneration::Seed)
        .verify_credentials()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
}

#[tokio::test]
async fn a_private_key_never_reaches_an_error_or_debug_output() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Seed);
    let created = account.create_key(&env.tenant(), &new_key()).await.unwrap();
    let private_key = created.private_key.expose_secret().to_owned();
    assert!(!format!("{created:?}").contains(&private_key));
    env.script(Operation::CreateKey, 1, Misbehaviour::InvalidPrivateKey)
        .await;
    let err = account
        .create_key(&env.tenant(), &new_key())
        .await
        .unwrap_err();
    assert!(!format!("{err:?}").contains("!*"));
    assert!(!err.to_string().contains("!*"));
}
