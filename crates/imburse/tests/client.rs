//! The client against the in-process sandbox, over real HTTP on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imburse::{
    AccountClient, AccountConfig, ApiGeneration, CallRecord, Client, ClientOptions, Error, NewKey,
    Operation, RateLimit, RetryPolicy, authenticate,
};
use imburse_sandbox::{Config, Faults, Sandbox};

const GENERATIONS: [ApiGeneration; 2] = [ApiGeneration::Seed, ApiGeneration::Current];

/// Retries fast enough for tests.
fn quick_options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(10),
            cap: Duration::from_secs(3),
        },
        ..ClientOptions::default()
    }
}

struct Env {
    sandbox: Sandbox,
    config: Config,
    client: Client,
}

impl Env {
    async fn start() -> Self {
        Self::with(Config::generate(2, 2), quick_options()).await
    }

    async fn with(config: Config, options: ClientOptions) -> Self {
        let sandbox = Sandbox::start(config.clone()).await.unwrap();
        let client = Client::new(options).unwrap();
        Self {
            sandbox,
            config,
            client,
        }
    }

    fn account_config(&self, generation: ApiGeneration) -> AccountConfig {
        let account = &self.config.accounts[0];
        AccountConfig {
            base_url: self.sandbox.base_url(),
            generation,
            account_id: Some(account.account_id.clone()),
            credentials: account.key_pair(),
        }
    }

    fn account(&self, generation: ApiGeneration) -> AccountClient {
        self.client
            .account(self.account_config(generation))
            .unwrap()
    }

    /// A tenant of the first account.
    fn tenant(&self) -> String {
        self.config.tenants[0].tenant_id.clone()
    }

    /// A tenant of the second account.
    fn foreign_tenant(&self) -> String {
        self.config.tenants.last().unwrap().tenant_id.clone()
    }

    async fn count(&self, operation: Operation, status: u16) -> u64 {
        self.sandbox
            .admin()
            .stats()
            .await
            .unwrap()
            .count(operation, status)
    }
}

fn new_key(name: Option<&str>) -> NewKey {
    NewKey {
        name: name.map(str::to_owned),
        roles: vec!["tenant-admin".into()],
    }
}

#[tokio::test]
async fn every_endpoint_of_both_generations() {
    let env = Env::start().await;
    let tenant = env.tenant();
    for generation in GENERATIONS {
        let account = env.account(generation);
        assert!(account.supports_listing());
        account.verify_credentials().await.unwrap();

        let named = account
            .create_key(&tenant, &new_key(Some("Admin Key")))
            .await
            .unwrap();
        assert_eq!(named.name.as_deref(), Some("Admin Key"));
        assert_eq!(named.roles, ["tenant-admin"]);
        assert!(named.identity.is_some());
        let unnamed = account.create_key(&tenant, &new_key(None)).await.unwrap();
        assert!(unnamed.name.as_deref().is_some_and(|n| !n.is_empty()));

        let listed = account.list_keys(&tenant).await.unwrap();
        for created in [&named, &unnamed] {
            assert!(listed.iter().any(|k| k.public_key == created.public_key));
        }
        let read = account.get_key(&tenant, &named.public_key).await.unwrap();
        assert_eq!(read.name.as_deref(), Some("Admin Key"));
        assert_eq!(read.roles, ["tenant-admin"]);

        // The created key really authenticates, as a tenant key.
        let token = authenticate(
            &env.client,
            &env.sandbox.base_url(),
            generation,
            &tenant_key(&named),
        )
        .await
        .unwrap();
        assert!(
            token
                .expires_at
                .is_some_and(|at| at > std::time::SystemTime::now())
        );

        account
            .delete_key(&tenant, &named.public_key)
            .await
            .unwrap();
        assert!(matches!(
            account.get_key(&tenant, &named.public_key).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            account.delete_key(&tenant, &named.public_key).await,
            Err(Error::NotFound(_))
        ));
        // A deleted key authenticates nothing.
        assert!(matches!(
            authenticate(
                &env.client,
                &env.sandbox.base_url(),
                generation,
                &tenant_key(&named)
            )
            .await,
            Err(Error::Unauthorized(_))
        ));
        let tenant_missing = account.list_keys(&env.foreign_tenant()).await.unwrap_err();
        assert!(
            matches!(tenant_missing, Error::TenantNotFound(_)),
            "{tenant_missing:?}"
        );
        assert_eq!(tenant_missing.error_code(), Some("TENANT_NOT_FOUND"));
        assert!(matches!(
            account.get_key("no-such-tenant", &unnamed.public_key).await,
            Err(Error::TenantNotFound(_))
        ));
        account
            .delete_key(&tenant, &unnamed.public_key)
            .await
            .unwrap();
    }
    assert!(
        env.sandbox
            .admin()
            .keys(Some(&tenant))
            .await
            .unwrap()
            .is_empty()
    );
}

fn tenant_key(created: &imburse::CreatedKey) -> imburse::KeyPair {
    imburse::KeyPair::new(created.public_key.clone(), created.private_key.clone())
}

#[tokio::test]
async fn both_generations_share_one_store() {
    let env = Env::start().await;
    let tenant = env.tenant();
    let created = env
        .account(ApiGeneration::Seed)
        .create_key(&tenant, &new_key(None))
        .await
        .unwrap();
    let read = env
        .account(ApiGeneration::Current)
        .get_key(&tenant, &created.public_key)
        .await
        .unwrap();
    assert_eq!(read.public_key, created.public_key);
}

#[tokio::test]
async fn concurrent_calls_share_one_token_request() {
    let env = Env::start().await;
    let tenant = env.tenant();
    let calls = (0..20).map(|i| {
        // Separate handles for the same account share the cache too.
        let account = env.account(GENERATIONS[i % 2]);
        let tenant = tenant.clone();
        async move { account.list_keys(&tenant).await }
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    env.account(ApiGeneration::Seed)
        .verify_credentials()
        .await
        .unwrap();
    // Seed and Current are different handles (different paths), so at most one token each.
    assert_eq!(env.count(Operation::Token, 201).await, 2);
    assert_eq!(env.count(Operation::ListKeys, 200).await, 20);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Current);
    account.verify_credentials().await.unwrap();
    env.sandbox.admin().revoke_tokens().await.unwrap();
    account.list_keys(&env.tenant()).await.unwrap();
    assert_eq!(env.count(Operation::Token, 201).await, 2);
    assert_eq!(env.count(Operation::ListKeys, 401).await, 1);
    assert_eq!(env.count(Operation::ListKeys, 200).await, 1);
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let mut config = Config::generate(1, 1);
    config.token_lifetime_seconds = 1;
    let env = Env::with(config, quick_options()).await;
    let account = env.account(ApiGeneration::Seed);
    account.list_keys(&env.tenant()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    account.list_keys(&env.tenant()).await.unwrap();
    assert_eq!(env.count(Operation::Token, 201).await, 2);
    assert_eq!(env.count(Operation::ListKeys, 401).await, 0);
}

#[tokio::test]
async fn retry_after_is_honoured_for_idempotent_calls() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Current);
    account.verify_credentials().await.unwrap();
    let admin = env.sandbox.admin();
    admin.set_faults(&Faults::rate_limited(2, 1)).await.unwrap();
    let started = Instant::now();
    account.list_keys(&env.tenant()).await.unwrap();
    // A lower bound the protocol imposes (two Retry-After: 1 answers), not a speed claim.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.count(Operation::ListKeys, 429).await, 2);

    // A Retry-After beyond the policy's cap goes back to the caller at once.
    admin
        .set_faults(&Faults::rate_limited(1, 60))
        .await
        .unwrap();
    let err = account.list_keys(&env.tenant()).await.unwrap_err();
    assert_eq!(
        env.count(Operation::ListKeys, 429).await,
        3,
        "retried despite the cap"
    );
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_create_is_never_retried() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Seed);
    account.verify_credentials().await.unwrap();
    let admin = env.sandbox.admin();
    admin.set_faults(&Faults::rate_limited(1, 0)).await.unwrap();
    let err = account
        .create_key(&env.tenant(), &new_key(None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");

    admin
        .set_faults(&Faults {
            error_rate: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let err = account
        .create_key(&env.tenant(), &new_key(None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err:?}");
    assert_eq!(env.count(Operation::CreateKey, 429).await, 1);
    assert_eq!(env.count(Operation::CreateKey, 503).await, 1);
    assert_eq!(env.count(Operation::CreateKey, 201).await, 0);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let env = Env::start().await;
    let account = env.account(ApiGeneration::Current);
    account.verify_credentials().await.unwrap();
    let admin = env.sandbox.admin();
    admin
        .set_faults(&Faults {
            error_rate: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let err = account.list_keys(&env.tenant()).await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err:?}");
    assert!(err.correlation_id().is_some());
    // Exactly the policy's attempts, no more.
    assert_eq!(env.count(Operation::ListKeys, 503).await, 4);

    // With half the calls failing, enough attempts get through.
    admin
        .set_faults(&Faults {
            error_rate: 0.5,
            ..Faults::default()
        })
        .await
        .unwrap();
    let patient = Client::new(ClientOptions {
        retry: RetryPolicy {
            max_attempts: 40,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
        ..ClientOptions::default()
    })
    .unwrap()
    .account(env.account_config(ApiGeneration::Current))
    .unwrap();
    for _ in 0..5 {
        patient.list_keys(&env.tenant()).await.unwrap();
    }
}

#[tokio::test]
async fn a_lost_create_response_is_an_unknown_outcome() {
    let env = Env::start().await;
    let tenant = env.tenant();
    let account = env.account(ApiGeneration::Current);
    account.verify_credentials().await.unwrap();
    env.sandbox
        .admin()
        .set_faults(&Faults {
            lose_create_responses: 1,
            ..Faults::default()
        })
        .await
        .unwrap();
    let err = account
        .create_key(&tenant, &new_key(Some("lost")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CreateOutcomeUnknown { .. }), "{err:?}");
    assert!(err.is_transient());
    // The key exists: listing reconciles.
    let keys = account.list_keys(&tenant).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name.as_deref(), Some("lost"));
    assert_eq!(env.count(Operation::CreateKey, 201).await, 1);
}

#[tokio::test]
async fn a_create_timeout_is_an_unknown_outcome() {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..quick_options()
    };
    let env = Env::with(Config::generate(1, 1), options).await;
    let account = env.account(ApiGeneration::Seed);
    account.verify_credentials().await.unwrap();
    env.sandbox
        .admin()
        .set_faults(&Faults {
            create_response_delay_ms: 1000,
            ..Faults::default()
        })
        .await
        .unwrap();
    let err = account
        .create_key(&env.tenant(), &new_key(None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CreateOutcomeUnknown { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_credentials_are_refused_without_retries() {
    let env = Env::start().await;
    let mut config = env.account_config(ApiGeneration::Seed);
    config.credentials.private_key = env.config.accounts[1].private_key.clone();
    let err = env
        .client
        .account(config)
        .unwrap()
        .verify_credentials()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(env.count(Operation::Token, 401).await, 1);
}

#[tokio::test]
async fn configuration_is_checked() {
    let env = Env::start().await;
    let mut no_account = env.account_config(ApiGeneration::Current);
    no_account.account_id = None;
    assert!(matches!(
        env.client.account(no_account),
        Err(Error::InvalidConfig(_))
    ));
    let mut plain_http = env.account_config(ApiGeneration::Seed);
    plain_http.base_url = "http://api.imbursepayments.com".into();
    assert!(matches!(
        env.client.account(plain_http),
        Err(Error::InvalidConfig(_))
    ));
    let mut bad_key = env.account_config(ApiGeneration::Seed);
    bad_key.credentials.private_key = "not base64".into();
    assert!(matches!(
        env.client.account(bad_key),
        Err(Error::InvalidConfig(_))
    ));
    assert!(
        Client::new(ClientOptions {
            rate_limit: Some(RateLimit {
                per_second: 0,
                burst: 1
            }),
            ..ClientOptions::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn the_observer_sees_every_request_and_the_rate_limit_holds() {
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let options = ClientOptions {
        rate_limit: Some(RateLimit {
            per_second: 10,
            burst: 1,
        }),
        observer: Some(Arc::new(move |record: &CallRecord| {
            sink.lock().unwrap().push(record.clone());
        })),
        ..quick_options()
    };
    let env = Env::with(Config::generate(1, 1), options).await;
    let account = env.account(ApiGeneration::Current);
    let started = Instant::now();
    for _ in 0..5 {
        account.list_keys(&env.tenant()).await.unwrap();
    }
    // Six requests at 10/s with a burst of one take at least half a second.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    let records = records.lock().unwrap();
    let operations: Vec<_> = records.iter().map(|r| (r.operation, r.status)).collect();
    assert_eq!(operations[0], (Operation::Token, Some(201)));
    assert_eq!(operations[1..], [(Operation::ListKeys, Some(200)); 5]);
}
