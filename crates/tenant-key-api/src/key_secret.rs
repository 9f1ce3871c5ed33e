//! The contract of the Secret that delivers a key: the labels and annotations on it, the names
//! of its entries, how it names the TenantSecurityKey it belongs to, and how its key pair is
//! fingerprinted. The operator writes such Secrets; tools read them with what is here, and so
//! read them as the operator means them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::crd::{SecretKeyNames, TenantSecurityKey};

/// Label on every Secret the operator writes; the operator watches only Secrets carrying it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tenant-key-operator";
/// Label naming the TenantSecurityKey a Secret belongs to.
pub const OWNER_LABEL: &str = "imbursepayments.com/tenant-security-key";
/// Annotation naming the TenantSecurityKey a Secret belongs to when the name is too long for a
/// label value (63 characters; a resource name may have 253).
pub const OWNER_NAME_ANNOTATION: &str = "imbursepayments.com/tenant-security-key";
/// Longest label value the API server takes.
pub const MAX_LABEL_VALUE: usize = 63;
/// Annotation with the fingerprint of the key material, for reloaders.
pub const FINGERPRINT_ANNOTATION: &str = "imbursepayments.com/key-fingerprint";
/// Annotation with the creation attempt that wrote the key, to recover after a crash.
pub const ATTEMPT_ANNOTATION: &str = "imbursepayments.com/create-attempt";
/// Annotation naming (by uid) the TenantSecurityKey that owns a Secret kept with `Retain`, or
/// one that holds entries the operator did not write. Such a Secret has no owner reference:
/// the garbage collector must never race the operator for it (a foreground deletion of the
/// resource deletes every dependent at once), nor delete what others keep in it.
pub const OWNER_UID_ANNOTATION: &str = "imbursepayments.com/owner-uid";
/// Annotation listing (comma-separated) the entries the operator wrote into the Secret: the
/// entries of others are told apart by it, also after the spec renamed its entries.
pub const ENTRIES_ANNOTATION: &str = "imbursepayments.com/entries";
/// Annotation by which whoever may write a Secret consents to its adoption (`spec.adopt`) by
/// the TenantSecurityKey it names. Set by people, never by the operator.
pub const ADOPT_BY_ANNOTATION: &str = "imbursepayments.com/adopt-by";

/// `sha256:<hex>` over both halves of a key pair: identifies the material without revealing
/// it.
pub fn fingerprint(public_key: &str, private_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(public_key.as_bytes());
    hasher.update(b"\n");
    hasher.update(private_key.as_bytes());
    format!("sha256:{}", hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Effective entry names inside the Secret: a spec's `secret.keys`, each defaulted.
pub struct EntryNames<'a> {
    pub public_key: &'a str,
    pub private_key: &'a str,
    pub tenant_id: &'a str,
    pub account_id: &'a str,
    pub base_url: &'a str,
}

impl<'a> EntryNames<'a> {
    /// The names of `secret.keys`, or the defaults when `names` is absent.
    pub fn of(names: Option<&'a SecretKeyNames>) -> Self {
        let get = |f: fn(&'a SecretKeyNames) -> &'a Option<String>, default: &'a str| {
            names.and_then(|n| f(n).as_deref()).unwrap_or(default)
        };
        Self {
            public_key: get(|n| &n.public_key, "publicKey"),
            private_key: get(|n| &n.private_key, "privateKey"),
            tenant_id: get(|n| &n.tenant_id, "tenantId"),
            account_id: get(|n| &n.account_id, "accountId"),
            base_url: get(|n| &n.base_url, "baseUrl"),
        }
    }

    /// The names of a TenantSecurityKey's Secret.
    pub fn of_key(tsk: &'a TenantSecurityKey) -> Self {
        Self::of(tsk.spec.secret.as_ref().and_then(|s| s.keys.as_ref()))
    }

    /// Every name, for the checks that span them (valid, distinct, which entries are whose).
    pub fn all(&self) -> [&'a str; 5] {
        [
            self.public_key,
            self.private_key,
            self.tenant_id,
            self.account_id,
            self.base_url,
        ]
    }
}

/// An entry of the Secret as text; absent when missing, empty or not UTF-8.
pub fn entry<'s>(secret: &'s Secret, name: &str) -> Option<&'s str> {
    secret
        .data
        .as_ref()?
        .get(name)
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .filter(|v| !v.is_empty())
}

/// Name of the Secret of a TenantSecurityKey: `secret.name`, else the resource's own.
pub fn secret_name(tsk: &TenantSecurityKey) -> String {
    tsk.spec
        .secret
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| tsk.name_any())
}

/// The owner label's value: the resource's name where it fits a label value, else a prefix of
/// it and a hash of the whole, joined by `_`, which no resource name contains (such a Secret
/// also names its owner in [`OWNER_NAME_ANNOTATION`]).
pub fn owner_label_value(name: &str) -> String {
    if name.len() <= MAX_LABEL_VALUE {
        return name.to_owned();
    }
    let hash = hex(&Sha256::digest(name.as_bytes())[..8]);
    let prefix: String = name
        .chars()
        .take(MAX_LABEL_VALUE - hash.len() - 1)
        .collect();
    format!("{}_{hash}", prefix.trim_end_matches(['-', '.']))
}

/// The name of the TenantSecurityKey a Secret's labels and annotations name as its owner.
pub fn owner_name(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<String> {
    let label = labels.get(OWNER_LABEL)?;
    if !label.contains('_') {
        return Some(label.clone());
    }
    annotations
        .get(OWNER_NAME_ANNOTATION)
        .filter(|name| owner_label_value(name) == *label)
        .cloned()
}

/// Whether the TenantSecurityKey is the Secret's controller (its owner by owner reference).
pub fn controlled_by(secret: &Secret, tsk: &TenantSecurityKey) -> bool {
    let uid = tsk.uid();
    secret
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref())
}

/// Whether the Secret belongs to the TenantSecurityKey: it is the Secret's controller, or (for
/// `Retain`, or a Secret shared with others) the Secret names its uid.
pub fn is_owned_by(secret: &Secret, tsk: &TenantSecurityKey) -> bool {
    controlled_by(secret, tsk)
        || tsk
            .uid()
            .is_some_and(|uid| secret.annotations().get(OWNER_UID_ANNOTATION) == Some(&uid))
}

/// What a key Secret holds, without the private key, which enters only the fingerprint: for
/// tools that show a Secret to people.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredKey {
    pub public_key: Option<String>,
    /// Fingerprint of the stored pair, as [`fingerprint`] computes it; absent unless both
    /// halves are present.
    pub fingerprint: Option<String>,
    pub tenant_id: Option<String>,
    pub account_id: Option<String>,
    pub base_url: Option<String>,
}

/// Reads a key Secret with the entry names of a spec's `secret.keys` (the defaults when
/// `names` is absent, e.g. for a Secret whose resource is unknown).
pub fn stored_key(names: Option<&SecretKeyNames>, secret: &Secret) -> StoredKey {
    let names = EntryNames::of(names);
    let get = |name: &str| entry(secret, name).map(str::to_owned);
    StoredKey {
        public_key: get(names.public_key),
        fingerprint: entry(secret, names.public_key)
            .zip(entry(secret, names.private_key))
            .map(|(public_key, private_key)| fingerprint(public_key, private_key)),
        tenant_id: get(names.tenant_id),
        account_id: get(names.account_id),
        base_url: get(names.base_url),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{ByteString, apimachinery::pkg::apis::meta::v1::OwnerReference};

    use super::*;

    const PRIVATE_KEY: &str = "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=";

    /// A TenantSecurityKey that only its uid tells apart.
    fn tsk(uid: &str) -> TenantSecurityKey {
        let spec = serde_json::from_value(serde_json::json!({
            "accountRef": {"kind": "ImburseAccount", "name": "acc"},
            "tenantId": "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
            "roles": ["tenant-admin"],
        }))
        .unwrap();
        let mut tsk = TenantSecurityKey::new("payments", spec);
        tsk.metadata.uid = Some(uid.into());
        tsk
    }

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).into(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn owner_labels_fit_any_resource_name() {
        let long = "a".repeat(250);
        let value = owner_label_value(&long);
        assert!(value.len() <= MAX_LABEL_VALUE, "{value}");
        assert_ne!(value, owner_label_value(&format!("{}b", "a".repeat(249))));
        let labels = BTreeMap::from([(OWNER_LABEL.to_owned(), value)]);
        let annotations = BTreeMap::from([(OWNER_NAME_ANNOTATION.to_owned(), long.clone())]);
        assert_eq!(owner_name(&labels, &annotations), Some(long));
        // An annotation that does not hash to the label names nobody.
        let forged = BTreeMap::from([(OWNER_NAME_ANNOTATION.to_owned(), "other".to_owned())]);
        assert_eq!(owner_name(&labels, &forged), None);
        assert_eq!(owner_label_value("pay"), "pay");
        let short = BTreeMap::from([(OWNER_LABEL.to_owned(), "pay".to_owned())]);
        assert_eq!(owner_name(&short, &BTreeMap::new()), Some("pay".into()));
    }

    #[test]
    fn fingerprint_hides_the_private_key() {
        let fp = fingerprint("a123456b-c12c-123d-1ab4-18bd8c8e88a3", PRIVATE_KEY);
        assert!(fp.starts_with("sha256:"));
        assert_eq!(fp.len(), "sha256:".len() + 64);
        assert!(!fp.contains("AGHYR1"));
    }

    #[test]
    fn stored_key_needs_both_halves_for_a_fingerprint() {
        let full = secret(&[("publicKey", "pub"), ("privateKey", PRIVATE_KEY)]);
        assert_eq!(
            stored_key(None, &full).fingerprint,
            Some(fingerprint("pub", PRIVATE_KEY))
        );
        let half = secret(&[("publicKey", "pub"), ("privateKey", "")]);
        let stored = stored_key(None, &half);
        assert_eq!(stored.public_key.as_deref(), Some("pub"));
        assert_eq!(stored.fingerprint, None);
    }

    #[test]
    fn ownership_is_by_controller_reference_or_uid_annotation() {
        let key = tsk("uid-1");
        let mut s = secret(&[]);
        assert!(!is_owned_by(&s, &key));
        s.metadata.owner_references = Some(vec![OwnerReference {
            uid: "uid-1".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert!(controlled_by(&s, &key) && is_owned_by(&s, &key));
        assert!(!is_owned_by(&s, &tsk("uid-2")));
        s.metadata.owner_references = None;
        s.annotations_mut()
            .insert(OWNER_UID_ANNOTATION.into(), "uid-1".into());
        assert!(!controlled_by(&s, &key) && is_owned_by(&s, &key));
    }
}
