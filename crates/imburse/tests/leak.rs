//! No private key, bearer token or HMAC signature may reach a log line, a `Debug` output or an
//! error message. This runs the client through its paths (success, refusals, faults) with
//! every tracing event captured at TRACE level, then searches everything for secrets.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imburse::signing::{HmacAuthorization, SigningKey};
use imburse::{
    AccountConfig, ApiGeneration, Client, ClientOptions, Error, ExposeSecret, KeyPair, NewKey,
    RetryPolicy, authenticate,
};
use imburse_sandbox::{Config, Faults, RateLimitedFault, Sandbox};

/// A tracing writer that appends to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn secrets_never_reach_logs_debug_or_errors() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    // The test runs on one thread (current-thread runtime), so the sandbox's and the client's
    // tasks all log into this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = Config::generate(2, 1);
    let sandbox = Sandbox::start(config.clone()).await.unwrap();
    let base_url = sandbox.base_url();
    let account = &config.accounts[0];
    let tenant = &config.tenants[0].tenant_id;
    let client = Client::new(ClientOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(5),
            cap: Duration::from_secs(2),
        },
        ..ClientOptions::default()
    })
    .unwrap();
    let handle = client
        .account(AccountConfig {
            base_url: base_url.clone(),
            generation: ApiGeneration::Current,
            account_id: Some(account.account_id.clone()),
            credentials: account.key_pair(),
        })
        .unwrap();

    let mut secrets: Vec<String> = config
        .accounts
        .iter()
        .map(|a| a.private_key.expose_secret().to_owned())
        .collect();
    let mut shown: Vec<String> = vec![
        format!("{config:?}"),
        format!("{handle:?}"),
        format!("{client:?}"),
        format!("{:?}", account.key_pair()),
    ];
    let mut errors: Vec<Error> = Vec::new();

    let request = NewKey {
        name: Some("leak-check".into()),
        roles: vec!["tenant-admin".into()],
    };
    let created = handle.create_key(tenant, &request).await.unwrap();
    secrets.push(created.private_key.expose_secret().to_owned());
    handle.list_keys(tenant).await.unwrap();
    handle.get_key(tenant, &created.public_key).await.unwrap();

    let tenant_key = KeyPair::new(created.public_key.clone(), created.private_key.clone());
    for key in [&tenant_key, &account.key_pair()] {
        let token = authenticate(&client, &base_url, ApiGeneration::Seed, key)
            .await
            .unwrap();
        secrets.push(token.access_token.expose_secret().to_owned());
        shown.push(format!("{token:?}"));
    }
    let header = SigningKey::new(&account.key_pair())
        .unwrap()
        .authorization(b"");
    let signature = header
        .expose_secret()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    secrets.push(signature);
    shown.push(format!(
        "{:?}",
        HmacAuthorization::parse(header.expose_secret()).unwrap()
    ));
    shown.push(format!("{created:?}"));

    // Failures: wrong key, forbidden tenant, faults, lost create, deleted key.
    let mut forged = account.key_pair();
    forged.private_key = config.accounts[1].private_key.clone();
    errors.extend([
        authenticate(&client, &base_url, ApiGeneration::Current, &forged)
            .await
            .unwrap_err(),
        handle
            .list_keys(&config.tenants[1].tenant_id)
            .await
            .unwrap_err(),
        handle.get_key(tenant, "missing").await.unwrap_err(),
    ]);
    let admin = sandbox.admin();
    admin.revoke_tokens().await.unwrap();
    for faults in [
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        Faults {
            rate_limited: Some(RateLimitedFault {
                count: 1,
                retry_after_seconds: 30,
            }),
            ..Faults::default()
        },
        Faults {
            lose_create_responses: 1,
            ..Faults::default()
        },
    ] {
        admin.set_faults(&faults).await.unwrap();
        errors.push(handle.create_key(tenant, &request).await.unwrap_err());
        errors.extend(handle.list_keys(tenant).await.err());
    }
    handle
        .delete_key(tenant, &created.public_key)
        .await
        .unwrap();
    errors.push(
        authenticate(&client, &base_url, ApiGeneration::Seed, &tenant_key)
            .await
            .unwrap_err(),
    );
    drop(sandbox);
    assert!(errors.len() >= 8);
    shown.extend(
        errors
            .iter()
            .flat_map(|e| [e.to_string(), format!("{e:?}")]),
    );

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Imburse API call"),
        "the client logged nothing"
    );
    assert!(logs.contains("api call"), "the sandbox logged nothing");
    for text in shown.iter().chain([&logs]) {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into: {text}"
            );
        }
        for marker in ["Bearer ", "Hmac ", "privateKey\"", "accessToken\""] {
            assert!(!text.contains(marker), "{marker:?} leaked into: {text}");
        }
    }
}
