//! The sandbox's configuration: accounts (with their Account Security Keys), tenants, and the
//! tenant keys that exist from the start.

use std::collections::HashSet;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::SandboxError;

/// The YAML configuration (camelCase keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Lifetime of issued bearer tokens.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_seconds: u64,
    /// Accounts and their Account Security Keys.
    pub accounts: Vec<Account>,
    /// Tenants, each owned by one account.
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// Tenant keys that exist when the sandbox starts, e.g. the keys an earlier run of a client
    /// left behind. Ignored when a state file already exists: it holds the keys instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<TenantKey>,
}

fn default_token_lifetime() -> u64 {
    3600
}

/// An Imburse account with one Account Security Key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Account {
    /// The account id (a UUID).
    pub account_id: String,
    /// The Account Security Key's public key (a UUID).
    pub public_key: String,
    /// The Account Security Key's private key (base64 of 32 bytes).
    #[serde(serialize_with = "expose")]
    pub private_key: SecretString,
    /// Account roles, e.g. `account-admin`.
    pub roles: Vec<String>,
}

impl Account {
    /// The account's key pair, as the client takes it.
    pub fn key_pair(&self) -> imburse::KeyPair {
        imburse::KeyPair::new(self.public_key.clone(), self.private_key.clone())
    }
}

/// A tenant and the account that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenant {
    /// The tenant id (a UUID).
    pub tenant_id: String,
    /// The owning account's id.
    pub account_id: String,
}

/// A Tenant Security Key that exists from the start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantKey {
    /// The tenant the key belongs to; one of the configured tenants.
    pub tenant_id: String,
    /// The key's name.
    pub name: String,
    /// The key's public key (a UUID).
    pub public_key: String,
    /// The key's private key (base64 of 32 bytes).
    #[serde(serialize_with = "expose")]
    pub private_key: SecretString,
    /// The key's roles.
    pub roles: Vec<String>,
}

impl TenantKey {
    /// A key with a fresh key pair, as the sandbox makes one when asked to create it.
    pub fn generate(tenant_id: &str, name: &str, roles: Vec<String>) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            public_key: random_id(),
            private_key: random_private_key(),
            roles,
        }
    }

    fn key_pair(&self) -> imburse::KeyPair {
        imburse::KeyPair::new(self.public_key.clone(), self.private_key.clone())
    }
}

/// Writes a secret in clear: only for files this sandbox owns (its config and state).
pub(crate) fn expose<S: Serializer>(
    secret: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// A fresh random private key: base64 of 32 random bytes, like the ones Imburse issues.
pub(crate) fn random_private_key() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    STANDARD.encode(bytes).into()
}

pub(crate) fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Config {
    /// Parses and validates YAML.
    pub fn from_yaml(yaml: &str) -> Result<Self, SandboxError> {
        let config: Self = serde_yaml::from_str(yaml)
            .map_err(|e| SandboxError::Config(format!("not valid sandbox YAML: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a YAML file.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        let yaml = std::fs::read_to_string(path)
            .map_err(|e| SandboxError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_yaml(&yaml)
    }

    /// The configuration as YAML, private keys included (for handing to a sandbox process).
    pub fn to_yaml(&self) -> Result<String, SandboxError> {
        serde_yaml::to_string(self).map_err(|e| SandboxError::Config(e.to_string()))
    }

    /// `accounts` random accounts (role `account-admin`), each owning `tenants_per_account`
    /// tenants, with random UUIDs and private keys.
    pub fn generate(accounts: usize, tenants_per_account: usize) -> Self {
        let accounts: Vec<Account> = (0..accounts)
            .map(|_| Account {
                account_id: random_id(),
                public_key: random_id(),
                private_key: random_private_key(),
                roles: vec!["account-admin".into()],
            })
            .collect();
        let tenants = accounts
            .iter()
            .flat_map(|account| {
                (0..tenants_per_account).map(|_| Tenant {
                    tenant_id: random_id(),
                    account_id: account.account_id.clone(),
                })
            })
            .collect();
        Self {
            token_lifetime_seconds: default_token_lifetime(),
            accounts,
            tenants,
            keys: Vec::new(),
        }
    }

    /// The tenants owned by `account_id`.
    pub fn tenants_of<'a>(&'a self, account_id: &'a str) -> impl Iterator<Item = &'a Tenant> {
        self.tenants
            .iter()
            .filter(move |t| t.account_id == account_id)
    }

    /// Checks ids are unique, keys are valid, every tenant's account and every key's tenant
    /// exists. Messages name the offending id, never a private key.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |msg: String| Err(SandboxError::Config(msg));
        let mut account_ids = HashSet::new();
        let mut public_keys = HashSet::new();
        for account in &self.accounts {
            if !account_ids.insert(account.account_id.as_str()) {
                return invalid(format!("duplicate accountId {}", account.account_id));
            }
            if !public_keys.insert(account.public_key.as_str()) {
                return invalid(format!("duplicate publicKey {}", account.public_key));
            }
            if account.key_pair().validate().is_err() {
                return invalid(format!(
                    "account {}: publicKey or privateKey is invalid",
                    account.account_id
                ));
            }
        }
        let mut tenant_ids = HashSet::new();
        for tenant in &self.tenants {
            if !tenant_ids.insert(tenant.tenant_id.as_str()) {
                return invalid(format!("duplicate tenantId {}", tenant.tenant_id));
            }
            if !account_ids.contains(tenant.account_id.as_str()) {
                return invalid(format!(
                    "tenant {} names unknown account {}",
                    tenant.tenant_id, tenant.account_id
                ));
            }
        }
        for key in &self.keys {
            if !public_keys.insert(key.public_key.as_str()) {
                return invalid(format!("duplicate publicKey {}", key.public_key));
            }
            if !tenant_ids.contains(key.tenant_id.as_str()) {
                return invalid(format!(
                    "key {} names unknown tenant {}",
                    key.public_key, key.tenant_id
                ));
            }
            if key.key_pair().validate().is_err() {
                return invalid(format!(
                    "key {}: publicKey or privateKey is invalid",
                    key.public_key
                ));
            }
            if key.roles.is_empty() || key.roles.iter().any(String::is_empty) {
                return invalid(format!("key {} needs at least one role", key.public_key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_yaml() {
        let config = Config::from_yaml(
            r#"
accounts:
  - accountId: 53ca62f5-b124-447d-b593-2f7ea4fecdcc
    publicKey: 9c8e3f0e-0000-4000-8000-000000000001
    privateKey: AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=
    roles: [account-admin]
tenants:
  - tenantId: 88fdb12a-14dc-419c-b74c-422e2c25cfe7
    accountId: 53ca62f5-b124-447d-b593-2f7ea4fecdcc
"#,
        )
        .unwrap();
        assert_eq!(config.token_lifetime_seconds, 3600);
        assert_eq!(
            config
                .tenants_of("53ca62f5-b124-447d-b593-2f7ea4fecdcc")
                .count(),
            1
        );
        assert!(!format!("{config:?}").contains("AGHYR1a"));
    }

    #[test]
    fn generated_config_round_trips_through_yaml() {
        let config = Config::generate(2, 3);
        assert_eq!(config.tenants.len(), 6);
        let again = Config::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again.tenants, config.tenants);
        assert_eq!(
            again.accounts[1].private_key.expose_secret(),
            config.accounts[1].private_key.expose_secret()
        );
    }

    #[test]
    fn rejects_inconsistent_configs_without_echoing_keys() {
        let mut config = Config::generate(1, 1);
        config.tenants[0].account_id = "nobody".into();
        assert!(config.validate().is_err());
        let mut config = Config::generate(1, 0);
        config.accounts[0].private_key = "%%%secret%%%".into();
        let message = config.validate().unwrap_err().to_string();
        assert!(!message.contains("secret"));
    }

    fn seeded_key(config: &Config) -> TenantKey {
        TenantKey {
            tenant_id: config.tenants[0].tenant_id.clone(),
            name: "team-a/payments".into(),
            public_key: random_id(),
            private_key: random_private_key(),
            roles: vec!["tenant-admin".into()],
        }
    }

    #[test]
    fn seeded_keys_round_trip_and_hide_their_private_keys() {
        let mut config = Config::generate(1, 1);
        let key = seeded_key(&config);
        let private_key = key.private_key.expose_secret().to_owned();
        config.keys.push(key);
        assert!(!format!("{config:?}").contains(&private_key));
        let again = Config::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again.keys[0].private_key.expose_secret(), private_key);
        assert_eq!(again.keys[0].tenant_id, config.tenants[0].tenant_id);
        assert!(!Config::generate(1, 1).to_yaml().unwrap().contains("keys:"));
    }

    #[test]
    fn rejects_inconsistent_seeded_keys_without_echoing_them() {
        let base = Config::generate(1, 1);
        let cases: [fn(&mut TenantKey, &Config); 4] = [
            |k, _| k.tenant_id = random_id(),
            |k, c| k.public_key = c.accounts[0].public_key.clone(),
            |k, _| k.private_key = "%%%secret%%%".into(),
            |k, _| k.roles.clear(),
        ];
        for case in cases {
            let mut config = base.clone();
            let mut key = seeded_key(&config);
            case(&mut key, &config);
            config.keys.push(key);
            let message = config.validate().unwrap_err().to_string();
            assert!(!message.contains("secret"), "{message}");
        }
        let mut config = base.clone();
        let key = seeded_key(&config);
        config.keys.extend([key.clone(), key]);
        assert!(config.validate().is_err());
    }
}
