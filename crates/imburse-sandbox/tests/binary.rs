//! The `imburse-sandbox` binary: the startup line launchers read, and `--state` persistence.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use imburse::{AccountConfig, ApiGeneration, Client, ClientOptions, NewKey, authenticate};
use imburse_sandbox::{AdminClient, Config};

/// A sandbox process, killed on drop.
struct Process {
    child: Child,
    base_url: String,
}

impl Process {
    fn spawn(config: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imburse-sandbox"))
            .arg("--config")
            .arg(config)
            .arg("--state")
            .arg(state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base_url = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, base_url }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn created_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::generate(1, 1);
    let config_path = dir.path().join("sandbox.yaml");
    std::fs::write(&config_path, config.to_yaml().unwrap()).unwrap();
    let state_path = dir.path().join("state.json");
    let tenant = config.tenants[0].tenant_id.clone();
    let account = &config.accounts[0];
    let client = Client::new(ClientOptions::default()).unwrap();

    let first = Process::spawn(&config_path, &state_path, &["--latency-ms", "1"]);
    assert!(first.base_url.starts_with("http://127.0.0.1:"));
    let created = client
        .account(AccountConfig {
            base_url: first.base_url.clone(),
            generation: ApiGeneration::Current,
            account_id: Some(account.account_id.clone()),
            credentials: account.key_pair(),
        })
        .unwrap()
        .create_key(
            &tenant,
            &NewKey {
                name: Some("persisted".into()),
                roles: vec!["tenant-admin".into()],
            },
        )
        .await
        .unwrap();
    drop(first);
    assert!(state_path.exists());
    assert!(!dir.path().join("state.json.tmp").exists());

    let second = Process::spawn(&config_path, &state_path, &[]);
    let keys = AdminClient::new(&second.base_url)
        .unwrap()
        .keys(Some(&tenant))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].public_key, created.public_key);
    let tenant_key = imburse::KeyPair::new(created.public_key, created.private_key);
    authenticate(&client, &second.base_url, ApiGeneration::Seed, &tenant_key)
        .await
        .unwrap();
}

#[test]
fn a_bad_config_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("bad.yaml");
    std::fs::write(&config_path, "accounts: 3\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_imburse-sandbox"))
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid sandbox configuration"));
}
