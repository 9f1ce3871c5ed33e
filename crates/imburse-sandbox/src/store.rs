//! The sandbox's in-memory state: accounts, tenants, tenant keys, issued tokens, seen nonces,
//! call statistics and the active faults.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng as _;
use rand::distr::Alphanumeric;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{Config, TenantKey, expose, random_id, random_private_key};
use crate::faults::Faults;

/// How old (or how far in the future) a signed request's timestamp may be.
pub(crate) const FRESHNESS: Duration = Duration::from_secs(5 * 60);

/// A nonce must be remembered as long as some timestamp could still make its request fresh:
/// a request is accepted within ±[`FRESHNESS`] of its timestamp, so a replay can come at most
/// twice that after the first use.
const NONCE_MEMORY: Duration = Duration::from_secs(2 * 5 * 60);

/// Roles that may manage tenant keys: the kebab-case ones of the OpenAPI, and the 2019 dotted
/// ones the seed era used.
const KEY_MANAGEMENT_ROLES: &[&str] = &[
    "account-admin",
    "account-tenant-write",
    "a.key.a",
    "a.sup.a",
];

/// Who a bearer token speaks for.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// An Account Security Key's token.
    Account {
        account_id: String,
        roles: Vec<String>,
    },
    /// A Tenant Security Key's token.
    Tenant,
}

impl Principal {
    /// The account whose tenant keys this principal may create, list, read and delete: an
    /// account token with a key-management role; never a tenant token.
    pub(crate) fn key_manager_of(&self) -> Option<&str> {
        match self {
            Self::Account { account_id, roles }
                if roles
                    .iter()
                    .any(|role| KEY_MANAGEMENT_ROLES.contains(&role.as_str())) =>
            {
                Some(account_id)
            }
            Self::Account { .. } | Self::Tenant => None,
        }
    }
}

struct Grant {
    principal: Principal,
    expires_at: SystemTime,
}

/// A tenant key as the sandbox stores it (and persists it with `--state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredKey {
    pub(crate) identity: String,
    pub(crate) tenant_id: String,
    pub(crate) account_id: String,
    pub(crate) name: String,
    pub(crate) public_key: String,
    #[serde(serialize_with = "expose")]
    pub(crate) private_key: SecretString,
    pub(crate) roles: Vec<String>,
}

impl From<StoredKey> for TenantKey {
    fn from(key: StoredKey) -> Self {
        Self {
            tenant_id: key.tenant_id,
            name: key.name,
            public_key: key.public_key,
            private_key: key.private_key,
            roles: key.roles,
        }
    }
}

/// The state file written with `--state`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) keys: Vec<StoredKey>,
}

/// Why a signed token request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    UnknownKey,
    BadSignature,
    ReusedNonce,
}

pub(crate) struct Store {
    accounts: Vec<crate::config::Account>,
    /// Tenant id → owning account id.
    tenants: HashMap<String, String>,
    /// Tenant keys by public key (sorted, so listings are stable).
    keys: BTreeMap<String, StoredKey>,
    tokens: HashMap<String, Grant>,
    nonces: HashMap<String, Instant>,
    token_lifetime: Duration,
    /// Operation → status → count.
    stats: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    pub(crate) faults: Faults,
}

impl Store {
    /// A store holding the persisted keys, or the configuration's seeded keys when nothing was
    /// persisted yet (a state file, once written, already contains what the seeds became).
    pub(crate) fn new(config: &Config, persisted: Option<Persisted>, faults: Faults) -> Self {
        let tenants: HashMap<String, String> = config
            .tenants
            .iter()
            .map(|t| (t.tenant_id.clone(), t.account_id.clone()))
            .collect();
        let keys = persisted.map_or_else(
            || {
                config
                    .keys
                    .iter()
                    .map(|k| StoredKey {
                        identity: random_id(),
                        tenant_id: k.tenant_id.clone(),
                        // Validation guarantees that the tenant is configured.
                        account_id: tenants.get(&k.tenant_id).cloned().unwrap_or_default(),
                        name: k.name.clone(),
                        public_key: k.public_key.clone(),
                        private_key: k.private_key.clone(),
                        roles: k.roles.clone(),
                    })
                    .collect()
            },
            |p| p.keys,
        );
        Self {
            accounts: config.accounts.clone(),
            tenants,
            keys: keys
                .into_iter()
                .map(|k| (k.public_key.clone(), k))
                .collect(),
            tokens: HashMap::new(),
            nonces: HashMap::new(),
            token_lifetime: Duration::from_secs(config.token_lifetime_seconds),
            stats: BTreeMap::new(),
            faults,
        }
    }

    /// The private key of an account key or tenant key, and whom a token for it speaks for.
    fn signer(&self, public_key: &str) -> Option<(SecretString, Principal)> {
        if let Some(account) = self.accounts.iter().find(|a| a.public_key == public_key) {
            let principal = Principal::Account {
                account_id: account.account_id.clone(),
                roles: account.roles.clone(),
            };
            return Some((account.private_key.clone(), principal));
        }
        self.keys
            .get(public_key)
            .map(|key| (key.private_key.clone(), Principal::Tenant))
    }

    /// Verifies a signed token request and issues a token. The nonce is only remembered once
    /// the signature holds, so nobody can burn another client's nonces.
    pub(crate) fn issue_token(
        &mut self,
        auth: &imburse::signing::HmacAuthorization,
        body: &[u8],
    ) -> Result<(SecretString, SystemTime), TokenRefusal> {
        let (private_key, principal) = self
            .signer(auth.public_key())
            .ok_or(TokenRefusal::UnknownKey)?;
        auth.verify(&private_key, body)
            .map_err(|_| TokenRefusal::BadSignature)?;
        let now = Instant::now();
        self.nonces
            .retain(|_, seen| now.duration_since(*seen) < NONCE_MEMORY);
        if self.nonces.insert(auth.nonce().to_owned(), now).is_some() {
            return Err(TokenRefusal::ReusedNonce);
        }

        let issued_at = SystemTime::now();
        self.tokens.retain(|_, grant| grant.expires_at > issued_at);
        let token: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(48)
            .map(char::from)
            .collect();
        let expires_at = issued_at + self.token_lifetime;
        self.tokens.insert(
            token.clone(),
            Grant {
                principal,
                expires_at,
            },
        );
        Ok((token.into(), expires_at))
    }

    /// Whom a live bearer token speaks for.
    pub(crate) fn principal(&self, bearer: &str) -> Option<Principal> {
        self.tokens
            .get(bearer)
            .filter(|grant| grant.expires_at > SystemTime::now())
            .map(|grant| grant.principal.clone())
    }

    /// Forgets every issued token, as if they had all expired.
    pub(crate) fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Whether the tenant exists and belongs to the account.
    pub(crate) fn owns_tenant(&self, account_id: &str, tenant_id: &str) -> bool {
        self.tenants
            .get(tenant_id)
            .is_some_and(|owner| owner == account_id)
    }

    pub(crate) fn create_key(
        &mut self,
        account_id: &str,
        tenant_id: &str,
        name: Option<String>,
        roles: Vec<String>,
    ) -> StoredKey {
        let public_key = random_id();
        let key = StoredKey {
            identity: random_id(),
            tenant_id: tenant_id.to_owned(),
            account_id: account_id.to_owned(),
            name: name.unwrap_or_else(|| format!("Tenant key {}", &public_key[..8])),
            public_key: public_key.clone(),
            private_key: random_private_key(),
            roles,
        };
        self.keys.insert(public_key, key.clone());
        key
    }

    /// Adds keys that exist from now on, as [`Config::keys`] does at start; `None` (and
    /// nothing added) when one names a tenant that is not configured.
    pub(crate) fn seed_keys(&mut self, keys: Vec<TenantKey>) -> Option<usize> {
        let owners: Vec<String> = keys
            .iter()
            .map(|k| self.tenants.get(&k.tenant_id).cloned())
            .collect::<Option<_>>()?;
        let count = keys.len();
        for (key, account_id) in keys.into_iter().zip(owners) {
            let stored = StoredKey {
                identity: random_id(),
                tenant_id: key.tenant_id,
                account_id,
                name: key.name,
                public_key: key.public_key,
                private_key: key.private_key,
                roles: key.roles,
            };
            self.keys.insert(stored.public_key.clone(), stored);
        }
        Some(count)
    }

    /// The keys of one tenant, or of all tenants.
    pub(crate) fn keys<'a>(
        &'a self,
        tenant_id: Option<&'a str>,
    ) -> impl Iterator<Item = &'a StoredKey> {
        self.keys
            .values()
            .filter(move |k| tenant_id.is_none_or(|t| k.tenant_id == t))
    }

    pub(crate) fn key(&self, tenant_id: &str, public_key: &str) -> Option<&StoredKey> {
        self.keys
            .get(public_key)
            .filter(|k| k.tenant_id == tenant_id)
    }

    pub(crate) fn delete_key(&mut self, tenant_id: &str, public_key: &str) -> bool {
        let present = self.key(tenant_id, public_key).is_some();
        if present {
            self.keys.remove(public_key);
        }
        present
    }

    /// Everything `--state` persists.
    pub(crate) fn snapshot(&self) -> Persisted {
        Persisted {
            keys: self.keys.values().cloned().collect(),
        }
    }

    pub(crate) fn record_call(&mut self, operation: imburse::Operation, status: u16) {
        *self
            .stats
            .entry(operation.as_str())
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    pub(crate) fn reset_stats(&mut self) {
        self.stats.clear();
    }

    pub(crate) fn stats(&self) -> &BTreeMap<&'static str, BTreeMap<u16, u64>> {
        &self.stats
    }

    /// Whether the next create response should be lost (counting it down).
    pub(crate) fn take_lost_create(&mut self) -> bool {
        let lose = self.faults.lose_create_responses > 0;
        self.faults.lose_create_responses = self.faults.lose_create_responses.saturating_sub(1);
        lose
    }

    /// Whether the next delete should fail (counting it down).
    pub(crate) fn take_failed_delete(&mut self) -> bool {
        let fail = self.faults.fail_deletes > 0;
        self.faults.fail_deletes = self.faults.fail_deletes.saturating_sub(1);
        fail
    }

    /// The `Retry-After` to answer this call with, if a 429 burst is active (counting it down).
    pub(crate) fn take_rate_limited(&mut self) -> Option<u64> {
        let burst = self.faults.rate_limited.as_mut().filter(|b| b.count > 0)?;
        burst.count -= 1;
        Some(burst.retry_after_seconds)
    }
}
