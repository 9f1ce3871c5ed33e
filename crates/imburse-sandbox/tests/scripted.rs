//! Scripted misbehaviours, set through the admin API and observed with raw HTTP requests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use imburse::signing::{fresh_nonce, sign};
use imburse::{ExposeSecret, Operation};
use imburse_sandbox::{AdminError, Config, Faults, Misbehaviour, Sandbox};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use serde_json::Value;

const TOKEN: &str = "/identity/v1/hmac/management";

struct Env {
    sandbox: Sandbox,
    config: Config,
    http: reqwest::Client,
}

impl Env {
    async fn start() -> Self {
        let config = Config::generate(1, 1);
        Self {
            sandbox: Sandbox::start(config.clone()).await.unwrap(),
            config,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    fn keys_url(&self) -> String {
        format!(
            "{}/management/v1/tenant/{}/keys",
            self.sandbox.base_url(),
            self.config.tenants[0].tenant_id
        )
    }

    async fn script(&self, operation: Operation, count: u32, misbehaviour: Misbehaviour) {
        self.sandbox
            .admin()
            .set_faults(&Faults::scripted(operation, count, misbehaviour))
            .await
            .unwrap();
    }

    async fn token_response(&self) -> reqwest::Response {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let header = sign(
            &self.config.accounts[0].key_pair(),
            &fresh_nonce(),
            &seconds,
            b"",
        )
        .unwrap();
        self.http
            .post(format!("{}{TOKEN}", self.sandbox.base_url()))
            .header("authorization", header.expose_secret())
            .send()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let body: Value = self.token_response().await.json().await.unwrap();
        body["accessToken"].as_str().unwrap().to_owned()
    }

    async fn create(&self, token: &str) -> reqwest::Response {
        self.http
            .post(self.keys_url())
            .bearer_auth(token)
            .json(&serde_json::json!({"name": "k", "roles": ["tenant-admin"]}))
            .send()
            .await
            .unwrap()
    }

    async fn stored(&self) -> usize {
        self.sandbox.admin().keys(None).await.unwrap().len()
    }
}

#[tokio::test]
async fn invalid_scripts_are_refused_and_counts_show_what_is_left() {
    let env = Env::start().await;
    let admin = env.sandbox.admin();
    let invalid = Faults::scripted(Operation::ListKeys, 1, Misbehaviour::MissingPrivateKey);
    assert!(matches!(
        admin.set_faults(&invalid).await,
        Err(AdminError::Status(400))
    ));
    let faults = Faults::scripted(Operation::CreateKey, 2, Misbehaviour::EmptyBody).and_scripted(
        Operation::Token,
        1,
        Misbehaviour::MissingExpiry,
    );
    admin.set_faults(&faults).await.unwrap();
    assert_eq!(admin.faults().await.unwrap(), faults);
    let token = env.token().await;
    let left = admin.faults().await.unwrap().scripted;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].operation, Operation::CreateKey);
    assert_eq!(left[0].count, 2);
    // A refused call does not use up the count.
    let refused = env.create("not-a-token").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(admin.faults().await.unwrap().scripted[0].count, 2);
    env.create(&token).await;
    assert_eq!(admin.faults().await.unwrap().scripted[0].count, 1);
}

#[tokio::test]
async fn spoiled_creates_store_their_key() {
    let env = Env::start().await;
    let token = env.token().await;

    env.script(Operation::CreateKey, 1, Misbehaviour::NonJsonBody)
        .await;
    let response = env.create(&token).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());

    env.script(Operation::CreateKey, 1, Misbehaviour::EmptyBody)
        .await;
    let response = env.create(&token).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.bytes().await.unwrap().is_empty());

    env.script(Operation::CreateKey, 1, Misbehaviour::MissingPrivateKey)
        .await;
    let body: Value = env.create(&token).await.json().await.unwrap();
    assert!(body["publicKey"].is_string());
    assert!(body.get("privateKey").is_none());

    env.script(Operation::CreateKey, 1, Misbehaviour::InvalidPrivateKey)
        .await;
    let body: Value = env.create(&token).await.json().await.unwrap();
    let private_key = body["privateKey"].as_str().unwrap();
    assert!(
        base64::engine::general_purpose::STANDARD
            .decode(private_key)
            .is_err()
    );

    assert_eq!(env.stored().await, 4);
    // The scripts are used up: the next create answers normally.
    let body: Value = env.create(&token).await.json().await.unwrap();
    assert!(body["privateKey"].is_string());
}

#[tokio::test]
async fn oversized_answers_are_chunked_valid_json() {
    let env = Env::start().await;
    let token = env.token().await;
    let bytes = 3 * 1024 * 1024;
    env.script(
        Operation::CreateKey,
        1,
        Misbehaviour::OversizedBody { bytes },
    )
    .await;
    let response = env.create(&token).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get(CONTENT_LENGTH).is_none());
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len() as u64, bytes);
    let document: Value = serde_json::from_slice(&body).unwrap();
    assert!(document["privateKey"].is_string());
    assert_eq!(env.stored().await, 1);
}

#[tokio::test]
async fn token_answers_can_lose_or_backdate_their_expiry() {
    let env = Env::start().await;
    env.script(Operation::Token, 1, Misbehaviour::MissingExpiry)
        .await;
    let body: Value = env.token_response().await.json().await.unwrap();
    assert!(body["accessToken"].is_string() && body.get("expires").is_none());

    env.script(Operation::Token, 1, Misbehaviour::ExpiredToken)
        .await;
    let body: Value = env.token_response().await.json().await.unwrap();
    let expires: u128 = body["expires"].as_str().unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(expires < now);
    // The token itself works.
    let token = body["accessToken"].as_str().unwrap();
    assert_eq!(env.create(token).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn gateway_answers_replace_the_call() {
    let env = Env::start().await;
    let token = env.token().await;
    env.script(
        Operation::CreateKey,
        1,
        Misbehaviour::Redirect {
            location: "http://127.0.0.1:9/elsewhere".into(),
        },
    )
    .await;
    let response = env.create(&token).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "http://127.0.0.1:9/elsewhere");

    env.script(
        Operation::CreateKey,
        1,
        Misbehaviour::Status {
            status: 429,
            body: "slow down".into(),
            retry_after_seconds: Some(7),
        },
    )
    .await;
    let response = env.create(&token).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "7");
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(response.text().await.unwrap(), "slow down");
    // Neither call reached the API.
    assert_eq!(env.stored().await, 0);
    let stats = env.sandbox.admin().stats().await.unwrap();
    assert_eq!(stats.count(Operation::CreateKey, 302), 1);
    assert_eq!(stats.count(Operation::CreateKey, 429), 1);
}

#[tokio::test]
async fn a_hang_delays_the_answer_after_the_call_took_effect() {
    let env = Env::start().await;
    let token = env.token().await;
    env.script(Operation::CreateKey, 1, Misbehaviour::Hang { ms: 5_000 })
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(env.keys_url())
        .bearer_auth(&token)
        .json(&serde_json::json!({"roles": ["tenant-admin"]}))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    assert_eq!(env.stored().await, 1);
}
