//! `ImburseAccount` and `ClusterImburseAccount`: how the operator reaches Imburse as one account.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Base URL of a v1alpha1 account that does not name one: the Imburse sandbox of the
/// tutorials. v1beta1 requires the field, so that no account reaches the sandbox by omission.
pub const DEFAULT_BASE_URL: &str = "https://sandbox-api.imbursepayments.com";

/// Imburse API generation an account speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ApiGeneration {
    /// The 2019 paths of the original tutorial (`/identity/v1/hmac/management`,
    /// `/management/v1/tenant/{tenantId}/keys`).
    #[default]
    Seed,
    /// The current paths (`/v1/identity/hmac`, `/v1/account/tenants/{tenantId}/keys` with the
    /// `x-account-id` header); requires `accountId`.
    Current,
}

/// Where the account key pair is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret holding the account key pair. For an `ImburseAccount` the Secret is in
    /// the account's namespace; for a `ClusterImburseAccount` it is in the operator's
    /// namespace.
    pub name: String,
    /// Key inside the Secret holding the account's public key (default `publicKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_key: Option<String>,
    /// Key inside the Secret holding the account's base64 private key (default `privateKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_key: Option<String>,
}

impl CredentialsSecretRef {
    pub fn effective_public_key_key(&self) -> &str {
        self.public_key_key.as_deref().unwrap_or("publicKey")
    }

    pub fn effective_private_key_key(&self) -> &str {
        self.private_key_key.as_deref().unwrap_or("privateKey")
    }
}

/// Connection settings shared by both account kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountSpec {
    /// Base URL of the Imburse API: `https://api.imbursepayments.com` for production,
    /// `https://sandbox-api.imbursepayments.com` for the sandbox; dedicated environments have
    /// their own host. HTTPS is required except for loopback addresses. Required in v1beta1;
    /// v1alpha1 defaults it to the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// API generation: `seed` (default, the 2019 paths) or `current`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_generation: Option<ApiGeneration>,
    /// Imburse account id (a UUID). Required when `apiGeneration` is `current`, which sends it
    /// in the `x-account-id` header; written into key Secrets when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The Secret holding the account key pair (public key and base64 private key).
    pub credentials_secret_ref: CredentialsSecretRef,
    /// Tenants (UUIDs) whose keys this account may create. Absent allows every tenant of the
    /// account; an empty list allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tenant_ids: Option<Vec<String>>,
    /// Roles a key of this account may have; a key asking for any other role is refused.
    /// Absent allows every role; an empty list allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_roles: Option<Vec<String>>,
}

impl AccountSpec {
    /// The base URL. Every account the API server returns names one (v1beta1 requires it,
    /// v1alpha1 defaults it, also on objects stored before the default existed); the fallback
    /// is that same default, so an object from anywhere else behaves as it always did.
    pub fn effective_base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL)
    }

    pub fn effective_api_generation(&self) -> ApiGeneration {
        self.api_generation.unwrap_or_default()
    }

    /// Whether keys for `tenant_id` may be created. Tenant ids are UUIDs, compared without
    /// regard to case.
    pub fn allows_tenant(&self, tenant_id: &str) -> bool {
        self.allowed_tenant_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id.eq_ignore_ascii_case(tenant_id)))
    }

    /// The roles of `roles` that this account does not allow, in the given order.
    pub fn disallowed_roles<'a>(&self, roles: &'a [String]) -> Vec<&'a str> {
        match &self.allowed_roles {
            None => Vec::new(),
            Some(allowed) => roles
                .iter()
                .filter(|r| !allowed.contains(r))
                .map(String::as_str)
                .collect(),
        }
    }
}

/// Observed state of an account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    /// Generation of the spec that the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True once a management token was obtained with these credentials (the token
    /// itself is never stored). `Reconciling` and `Stalled` follow kstatus conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The answer to the last audit request (annotation `imbursepayments.com/audit-requested-at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
}

/// Annotation on an account that requests an audit of its keys at Imburse: each new value
/// (e.g. the current RFC 3339 time) is answered once, in `status.audit`.
pub const AUDIT_REQUESTED_AT_ANNOTATION: &str = "imbursepayments.com/audit-requested-at";

/// Annotation on an account, read with a new audit request: the public keys (comma-separated)
/// to revoke if the audit finds them leaked. Any other key named is refused.
pub const REVOKE_LEAKED_ANNOTATION: &str = "imbursepayments.com/revoke-leaked";

/// What an audit of an account's keys found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// The value of the request annotation this answers.
    pub request: String,
    /// When the keys were listed.
    pub completed_at: Time,
    /// Every key listed at the tenants of the account's TenantSecurityKeys, classified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<AuditedKey>,
    /// Public keys revoked at this request, as leaked keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// Revocations asked for and refused, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Tenants that could not be listed, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One key listed at Imburse (never its private key, which Imburse does not list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditedKey {
    pub tenant_id: String,
    pub public_key: String,
    /// The key's name at Imburse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub class: KeyClass,
    /// For managed keys, what holds them: a TenantSecurityKey, or the Secret a deleted one
    /// retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Whose a key at Imburse is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum KeyClass {
    /// A resource of this cluster records it (current, replaced or being created), or a Secret
    /// that a deleted one retained holds it.
    Managed,
    /// Made by this cluster, and nothing of this cluster holds it: a key that outlived the
    /// creation or the resource it was made for.
    Leaked,
    /// Marked by another cluster, or by a version that did not mark the cluster and for a
    /// resource this cluster does not have.
    Foreign,
    /// Not marked by the operator: made by hand or by another tool.
    Unmanaged,
}

impl KeyClass {
    pub const ALL: [Self; 4] = [Self::Managed, Self::Leaked, Self::Foreign, Self::Unmanaged];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Managed => "managed",
            Self::Leaked => "leaked",
            Self::Foreign => "foreign",
            Self::Unmanaged => "unmanaged",
        }
    }
}

/// An Imburse account usable by the TenantSecurityKeys of its own namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "imbursepayments.com",
    version = "v1beta1",
    kind = "ImburseAccount",
    namespaced,
    status = "AccountStatus",
    shortname = "imba",
    category = "imburse",
    doc = "An Imburse account whose key pair is stored in a Secret of the same namespace; usable only by TenantSecurityKeys of that namespace.",
    printcolumn = r#"{"name":"Base URL","type":"string","jsonPath":".spec.baseUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImburseAccountSpec {
    #[serde(flatten)]
    pub account: AccountSpec,
}

/// Namespaces allowed to use a cluster account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespaces allowed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Namespaces allowed by label. A namespace is allowed when it is named in `names` or
    /// matches this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

impl AllowedNamespaces {
    /// Whether a namespace with these labels may use the account. An empty rule allows none.
    pub fn allows(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.names.iter().any(|n| n == namespace)
            || self
                .selector
                .as_ref()
                .is_some_and(|s| crate::labels::selector_matches(s, labels))
    }
}

/// An Imburse account shared across namespaces.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "imbursepayments.com",
    version = "v1beta1",
    kind = "ClusterImburseAccount",
    status = "AccountStatus",
    shortname = "cimba",
    category = "imburse",
    doc = "An Imburse account whose key pair is stored in a Secret of the operator's namespace; usable by TenantSecurityKeys of the namespaces it allows.",
    printcolumn = r#"{"name":"Base URL","type":"string","jsonPath":".spec.baseUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterImburseAccountSpec {
    #[serde(flatten)]
    pub account: AccountSpec,
    /// Namespaces whose TenantSecurityKeys may use this account. Empty allows none.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tenants: Option<&[&str]>, roles: Option<&[&str]>) -> AccountSpec {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        AccountSpec {
            allowed_tenant_ids: tenants.map(owned),
            allowed_roles: roles.map(owned),
            ..Default::default()
        }
    }

    const TENANT: &str = "88fdb12a-14dc-419c-b74c-422e2c25cfe7";

    #[test]
    fn absent_lists_allow_everything() {
        let open = spec(None, None);
        assert!(open.allows_tenant(TENANT));
        assert!(open.disallowed_roles(&["tenant-admin".into()]).is_empty());
    }

    #[test]
    fn empty_lists_allow_nothing() {
        let closed = spec(Some(&[]), Some(&[]));
        assert!(!closed.allows_tenant(TENANT));
        assert_eq!(
            closed.disallowed_roles(&["tenant-app-read".into()]),
            ["tenant-app-read"]
        );
    }

    #[test]
    fn lists_allow_only_their_entries() {
        let narrow = spec(
            Some(&["88FDB12A-14DC-419C-B74C-422E2C25CFE7"]),
            Some(&["tenant-app-read"]),
        );
        assert!(narrow.allows_tenant(TENANT));
        assert!(!narrow.allows_tenant("00000000-0000-4000-8000-000000000000"));
        let roles = ["tenant-app-read".to_owned(), "tenant-admin".to_owned()];
        assert_eq!(narrow.disallowed_roles(&roles), ["tenant-admin"]);
        assert!(narrow.disallowed_roles(&roles[..1]).is_empty());
    }
}
