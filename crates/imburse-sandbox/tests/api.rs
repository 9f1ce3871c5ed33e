//! The sandbox's API behaviour, probed with raw HTTP requests signed by `imburse::signing`.

use std::time::{SystemTime, UNIX_EPOCH};

use imburse::signing::{fresh_nonce, sign};
use imburse::{ExposeSecret, KeyPair};
use imburse_sandbox::{Config, Faults, KeyInfo, Options, Sandbox, TenantKey};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Env {
    sandbox: Sandbox,
    config: Config,
    http: reqwest::Client,
}

const SEED_TOKEN: &str = "/identity/v1/hmac/management";

impl Env {
    async fn start() -> Self {
        Self::with(Config::generate(2, 1)).await
    }

    async fn with(config: Config) -> Self {
        Self {
            sandbox: Sandbox::start(config.clone()).await.unwrap(),
            config,
            http: reqwest::Client::new(),
        }
    }

    fn account_key(&self) -> KeyPair {
        self.config.accounts[0].key_pair()
    }

    fn account_id(&self) -> &str {
        &self.config.accounts[0].account_id
    }

    fn tenant(&self) -> &str {
        &self.config.tenants[0].tenant_id
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    /// Sends `body` to a token endpoint with the given `Authorization` header (computed over
    /// the same bytes unless a test tampers).
    async fn token_request(
        &self,
        path: &str,
        authorization: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("authorization", authorization)
            .header("x-correlation-id", "test-correlation")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn token_for(&self, key: &KeyPair) -> String {
        let header = sign(key, &fresh_nonce(), &now(0), b"").unwrap();
        let (status, body) = self
            .token_request(SEED_TOKEN, header.expose_secret(), b"")
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["accessToken"].as_str().unwrap().to_owned()
    }

    async fn bearer(
        &self,
        method: Method,
        path: &str,
        token: &str,
        account_id: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("x-correlation-id", "test-correlation");
        if let Some(account_id) = account_id {
            request = request.header("x-account-id", account_id);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Seconds since the epoch, shifted by `offset`.
fn now(offset: i64) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    secs.checked_add_signed(offset).unwrap().to_string()
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["errorCode"].as_str().unwrap_or_default()
}

/// A 401 in the documented error shape, echoing the request's correlation id.
fn assert_refused(status: StatusCode, body: &Value, code: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(body), code, "{body}");
    assert!(body["timestamp"].is_u64());
    assert!(body["correlationId"].is_string());
    assert_eq!(
        body["errors"][0]["metadata"]["correlationId"],
        "test-correlation"
    );
    assert!(body["errors"][0]["message"].is_string());
    assert!(body["errors"][0]["messageTemplate"].is_string());
}

#[tokio::test]
async fn token_endpoints_of_each_generation() {
    let env = Env::start().await;
    let key = env.account_key();
    for (path, expires_is_string) in [
        (SEED_TOKEN, true),
        ("/v1/identity/hmac", true),
        ("/v2/identity/hmac", false),
    ] {
        let header = sign(&key, &fresh_nonce(), &now(0), b"").unwrap();
        let (status, body) = env.token_request(path, header.expose_secret(), b"").await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
        assert!(body["accessToken"].as_str().is_some_and(|t| !t.is_empty()));
        let expires = &body["expires"];
        let millis = if expires_is_string {
            expires.as_str().unwrap().parse::<u128>().unwrap()
        } else {
            u128::from(expires.as_u64().unwrap())
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert!(
            millis > now_ms + 3_500_000 && millis <= now_ms + 3_600_000,
            "{path}"
        );
    }
}

#[tokio::test]
async fn accepts_any_scheme_case_and_fractional_timestamps() {
    let env = Env::start().await;
    let key = env.account_key();
    for scheme in ["HMAC", "hmac", "Hmac"] {
        let timestamp = format!("{}.123", now(0));
        let header = sign(&key, &fresh_nonce(), &timestamp, b"").unwrap();
        let header = header.expose_secret().replacen("Hmac", scheme, 1);
        let (status, body) = env.token_request(SEED_TOKEN, &header, b"").await;
        assert_eq!(status, StatusCode::CREATED, "{scheme}: {body}");
    }
    // A body, when sent, is part of the signature.
    let body = br#"{"purpose":"test"}"#;
    let header = sign(&key, &fresh_nonce(), &now(0), body).unwrap();
    let (status, _) = env
        .token_request(SEED_TOKEN, header.expose_secret(), body)
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn refuses_bad_signed_requests() {
    let env = Env::start().await;
    let key = env.account_key();
    let other = env.config.accounts[1].key_pair();

    let forged = KeyPair::new(key.public_key.clone(), other.private_key.clone());
    let header = sign(&forged, &fresh_nonce(), &now(0), b"").unwrap();
    let (status, body) = env
        .token_request(SEED_TOKEN, header.expose_secret(), b"")
        .await;
    assert_refused(status, &body, "INVALID_HMAC_SIGNATURE");

    let header = sign(&key, &fresh_nonce(), &now(0), br#"{"a":1}"#).unwrap();
    let (status, body) = env
        .token_request(SEED_TOKEN, header.expose_secret(), br#"{"a":2}"#)
        .await;
    assert_refused(status, &body, "INVALID_HMAC_SIGNATURE");

    let unknown = KeyPair::new(uuid_like(), key.private_key.clone());
    let header = sign(&unknown, &fresh_nonce(), &now(0), b"").unwrap();
    let (status, body) = env
        .token_request(SEED_TOKEN, header.expose_secret(), b"")
        .await;
    assert_refused(status, &body, "UNKNOWN_PUBLIC_KEY");

    for stale in [now(-301), now(301)] {
        let header = sign(&key, &fresh_nonce(), &stale, b"").unwrap();
        let (status, body) = env
            .token_request(SEED_TOKEN, header.expose_secret(), b"")
            .await;
        assert_refused(status, &body, "HMAC_TIMESTAMP_EXPIRED");
    }

    let nonce = fresh_nonce();
    let first = sign(&key, &nonce, &now(0), b"").unwrap();
    let (status, _) = env
        .token_request(SEED_TOKEN, first.expose_secret(), b"")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let replay = sign(&key, &nonce, &now(-1), b"").unwrap();
    let (status, body) = env
        .token_request(SEED_TOKEN, replay.expose_secret(), b"")
        .await;
    assert_refused(status, &body, "NONCE_ALREADY_USED");

    for malformed in ["Bearer abc", "Hmac a:b:c", "Hmac a:b:12:sig:x"] {
        let (status, body) = env.token_request(SEED_TOKEN, malformed, b"").await;
        assert_refused(status, &body, "INVALID_HMAC_HEADER");
    }
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".into()
}

#[tokio::test]
async fn key_endpoints_check_token_role_account_and_tenant() {
    let mut config = Config::generate(2, 1);
    config.accounts[1].roles = vec!["account-tenant-read".into()];
    let env = Env::with(config).await;
    let tenant = env.tenant().to_owned();
    let current = format!("/v1/account/tenants/{tenant}/keys");
    let seed = format!("/management/v1/tenant/{tenant}/keys");
    let token = env.token_for(&env.account_key()).await;

    let (status, body) = env
        .bearer(Method::GET, &seed, "not-a-token", None, None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );

    let (status, body) = env.bearer(Method::GET, &current, &token, None, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "ACCOUNT_ID_IS_REQUIRED")
    );
    let other_account = env.config.accounts[1].account_id.clone();
    let (status, _) = env
        .bearer(Method::GET, &current, &token, Some(&other_account), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = env
        .bearer(Method::GET, &current, &token, Some(env.account_id()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"tenantKeys": []}));

    let foreign = format!(
        "/management/v1/tenant/{}/keys",
        env.config.tenants[1].tenant_id
    );
    let (status, body) = env.bearer(Method::GET, &foreign, &token, None, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "TENANT_NOT_FOUND")
    );

    // A read-only account role may not manage keys.
    let reader = env.token_for(&env.config.accounts[1].key_pair()).await;
    let own = format!(
        "/management/v1/tenant/{}/keys",
        env.config.tenants[1].tenant_id
    );
    let (status, _) = env.bearer(Method::GET, &own, &reader, None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    for bad in [
        r#"{"roles": ["t.sup.a]}"#,
        r#"{"roles": []}"#,
        r#"{"name": "x"}"#,
    ] {
        let (status, _) = env
            .bearer(Method::POST, &seed, &token, None, Some(bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    let (status, created) = env
        .bearer(
            Method::POST,
            &seed,
            &token,
            None,
            Some(r#"{"roles":["tenant-admin"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for field in [
        "identity",
        "tenantId",
        "accountId",
        "name",
        "publicKey",
        "privateKey",
        "roles",
    ] {
        assert!(!created[field].is_null(), "{field}: {created}");
    }
    let public_key = created["publicKey"].as_str().unwrap();
    let (status, read) = env
        .bearer(
            Method::GET,
            &format!("{seed}/{public_key}"),
            &token,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(read.get("privateKey").is_none());

    // The new tenant key gets a tenant token, which cannot manage keys.
    let tenant_key = KeyPair::new(public_key, created["privateKey"].as_str().unwrap());
    let tenant_token = env.token_for(&tenant_key).await;
    let (status, _) = env
        .bearer(Method::GET, &seed, &tenant_token, None, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _) = env
        .bearer(
            Method::DELETE,
            &format!("{seed}/{public_key}"),
            &token,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = env
        .bearer(
            Method::DELETE,
            &format!("{seed}/{public_key}"),
            &token,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn legacy_dotted_roles_may_manage_keys() {
    let mut config = Config::generate(1, 1);
    config.accounts[0].roles = vec!["a.key.a".into()];
    let env = Env::with(config).await;
    let token = env.token_for(&env.account_key()).await;
    let path = format!("/v1/tenant/{}/keys", env.tenant());
    let (status, _) = env.bearer(Method::GET, &path, &token, None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admin_api_lists_keys_counts_calls_and_sets_faults() {
    let env = Env::start().await;
    let admin = env.sandbox.admin();
    let token = env.token_for(&env.account_key()).await;
    let path = format!("/management/v1/tenant/{}/keys", env.tenant());
    let (_, created) = env
        .bearer(
            Method::POST,
            &path,
            &token,
            None,
            Some(r#"{"name":"k","roles":["tenant-admin"]}"#),
        )
        .await;

    let keys = admin.keys(Some(env.tenant())).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].public_key, created["publicKey"].as_str().unwrap());
    assert_eq!(admin.keys(None).await.unwrap(), keys);
    assert!(admin.keys(Some("other")).await.unwrap().is_empty());
    let raw = reqwest::get(env.url("/_sandbox/keys"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains(created["privateKey"].as_str().unwrap()));

    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.count(imburse::Operation::Token, 201), 1);
    assert_eq!(stats.count(imburse::Operation::CreateKey, 201), 1);
    assert_eq!(stats.calls.len(), 5);
    admin.reset_stats().await.unwrap();
    assert_eq!(
        admin
            .stats()
            .await
            .unwrap()
            .total(imburse::Operation::Token),
        0
    );

    let faults = imburse_sandbox::Faults {
        latency_ms: 5,
        rate_limited: Some(imburse_sandbox::RateLimitedFault {
            count: 1,
            retry_after_seconds: 7,
        }),
        ..Default::default()
    };
    admin.set_faults(&faults).await.unwrap();
    assert_eq!(admin.faults().await.unwrap(), faults);
    let response = env
        .http
        .get(env.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(admin.faults().await.unwrap().rate_limited.unwrap().count, 0);

    let invalid = imburse_sandbox::Faults {
        error_rate: 2.0,
        ..Default::default()
    };
    assert!(admin.set_faults(&invalid).await.is_err());
}

#[tokio::test]
async fn stop_returns_despite_idle_client_connections() {
    let env = Env::start().await;
    let token = env.token_for(&env.account_key()).await;
    assert!(!token.is_empty());
    let Env { sandbox, http, .. } = env;
    tokio::time::timeout(std::time::Duration::from_secs(5), sandbox.stop())
        .await
        .unwrap()
        .unwrap();
    drop(http);
}

/// Keys seeded by the configuration behave like created ones: listed, usable for a tenant
/// token, revocable. Once a state file is written it holds them, and the seeds are ignored.
#[tokio::test]
async fn seeded_keys_exist_from_the_start() {
    use base64::Engine as _;
    let mut config = Config::generate(1, 1);
    let seeded = TenantKey {
        tenant_id: config.tenants[0].tenant_id.clone(),
        name: "team-a/payments".into(),
        public_key: uuid::Uuid::new_v4().to_string(),
        private_key: base64::engine::general_purpose::STANDARD
            .encode([7u8; 32])
            .into(),
        roles: vec!["tenant-admin".into()],
    };
    config.keys.push(seeded.clone());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let options = Options {
        state_file: Some(state.clone()),
        ..Options::default()
    };
    let env = Env {
        sandbox: Sandbox::start_with(config.clone(), options.clone())
            .await
            .unwrap(),
        config,
        http: reqwest::Client::new(),
    };
    let admin = env.sandbox.admin();
    assert_eq!(
        admin.keys(None).await.unwrap(),
        [KeyInfo {
            tenant_id: seeded.tenant_id.clone(),
            public_key: seeded.public_key.clone(),
            name: seeded.name.clone(),
            roles: seeded.roles.clone(),
        }]
    );
    let tenant_key = KeyPair::new(seeded.public_key.clone(), seeded.private_key.clone());
    assert!(!env.token_for(&tenant_key).await.is_empty());

    let token = env.token_for(&env.account_key()).await;
    let collection = format!("/management/v1/tenant/{}/keys", env.tenant());
    let (status, listing) = env
        .bearer(Method::GET, &collection, &token, None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listing["tenantKeys"][0]["publicKey"].as_str(),
        Some(seeded.public_key.as_str())
    );

    // A created key writes the state file: the seeded key is in it, private key included.
    let (status, _) = env
        .bearer(
            Method::POST,
            &collection,
            &token,
            None,
            Some(r#"{"name":"k","roles":["tenant-admin"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let persisted = imburse_sandbox::state_keys(&state).unwrap();
    assert_eq!(persisted.len(), 2);
    let again = persisted
        .iter()
        .find(|k| k.public_key == seeded.public_key)
        .unwrap();
    assert_eq!(
        again.private_key.expose_secret(),
        seeded.private_key.expose_secret()
    );

    let one = format!("{collection}/{}", seeded.public_key);
    admin
        .set_faults(&Faults {
            fail_deletes: 1,
            ..Faults::default()
        })
        .await
        .unwrap();
    let (status, _) = env.bearer(Method::DELETE, &one, &token, None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(admin.keys(None).await.unwrap().len(), 2);
    let (status, _) = env.bearer(Method::DELETE, &one, &token, None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let Env {
        sandbox, config, ..
    } = env;
    sandbox.stop().await.unwrap();
    let restarted = Sandbox::start_with(config, options).await.unwrap();
    let keys = restarted.admin().keys(None).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0].public_key, seeded.public_key);
}

/// Keys seeded in bulk through the admin API behave like created ones; a batch naming an
/// unknown tenant is refused whole.
#[tokio::test]
async fn keys_seeded_through_the_admin_api_exist_at_once() {
    let env = Env::start().await;
    let admin = env.sandbox.admin();
    let roles = vec!["tenant-admin".to_owned()];
    let seeded: Vec<TenantKey> = (0..3)
        .map(|i| TenantKey::generate(env.tenant(), &format!("seeded-{i}"), roles.clone()))
        .collect();
    admin.seed_keys(&seeded).await.unwrap();
    let mut listed = admin.keys(Some(env.tenant())).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let expected: Vec<KeyInfo> = seeded
        .iter()
        .map(|k| KeyInfo {
            tenant_id: k.tenant_id.clone(),
            public_key: k.public_key.clone(),
            name: k.name.clone(),
            roles: k.roles.clone(),
        })
        .collect();
    assert_eq!(listed, expected);
    let tenant_key = KeyPair::new(seeded[0].public_key.clone(), seeded[0].private_key.clone());
    assert!(!env.token_for(&tenant_key).await.is_empty());

    let stranger = TenantKey::generate(&uuid_like(), "stranger", roles.clone());
    let batch = [TenantKey::generate(env.tenant(), "fine", roles), stranger];
    assert!(matches!(
        admin.seed_keys(&batch).await,
        Err(imburse_sandbox::AdminError::Status(400))
    ));
    assert_eq!(admin.keys(None).await.unwrap().len(), seeded.len());
}
