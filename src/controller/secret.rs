//! The Secret that delivers a key: how it is built from the spec and how an existing one is read.
//! Pure functions; the reconciler does the API calls. What the Secret promises its readers (its
//! labels, annotations, entry names and fingerprint) is in [`tenant_key_api::key_secret`].

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use secrecy::{ExposeSecret, SecretString};
use tenant_key_api::{
    crd::{DeletionPolicy, TenantSecurityKey, is_allowed_secret_type},
    key_secret::{
        ADOPT_BY_ANNOTATION, ATTEMPT_ANNOTATION, ENTRIES_ANNOTATION, EntryNames,
        FINGERPRINT_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, MAX_LABEL_VALUE, OWNER_LABEL,
        OWNER_NAME_ANNOTATION, OWNER_UID_ANNOTATION, controlled_by, entry, is_owned_by,
        owner_label_value, secret_name,
    },
};

use super::decision::SecretState;

/// A key pair in memory. The private key is never logged or printed.
pub struct KeyMaterial {
    pub public_key: String,
    pub private_key: SecretString,
}

impl KeyMaterial {
    /// See [`tenant_key_api::key_secret::fingerprint`].
    pub fn fingerprint(&self) -> String {
        tenant_key_api::key_secret::fingerprint(&self.public_key, self.private_key.expose_secret())
    }
}

/// Non-secret values written beside the key.
pub struct KeyContext<'a> {
    pub tenant_id: &'a str,
    pub account_id: Option<&'a str>,
    pub base_url: &'a str,
}

/// Problems with the Secret part of a spec, found before anything is written.
pub fn validate(tsk: &TenantSecurityKey) -> Result<(), String> {
    let names = EntryNames::of_key(tsk).all();
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!(
                "secret key name {name:?} is not a valid Secret data key"
            ));
        }
    }
    for (i, a) in names.iter().enumerate() {
        if names[i + 1..].contains(a) {
            return Err(format!("secret key name {a:?} is used twice"));
        }
    }
    if let Some(template) = &tsk.spec.secret {
        let reserved = |k: &String| k == MANAGED_BY_LABEL || k == OWNER_LABEL;
        if template.labels.keys().any(reserved) {
            return Err("secret.labels may not set the operator's own labels".into());
        }
        if template.annotations.keys().any(|k| {
            [
                FINGERPRINT_ANNOTATION,
                ATTEMPT_ANNOTATION,
                OWNER_UID_ANNOTATION,
                OWNER_NAME_ANNOTATION,
                ENTRIES_ANNOTATION,
            ]
            .contains(&k.as_str())
        }) {
            return Err("secret.annotations may not set the operator's own annotations".into());
        }
        if let Some(type_) = template.type_.as_deref()
            && !type_.is_empty()
            && !is_allowed_secret_type(type_)
        {
            return Err(format!(
                "secret.type {type_:?} is not allowed: use Opaque or a custom type with a domain prefix outside kubernetes.io and k8s.io"
            ));
        }
    }
    Ok(())
}

/// Whether the Secret carries anything the operator did not check itself: labels and
/// annotations from the spec, whose values only the API server validates. Everything else (the
/// name, the type, the entry names) is checked by [`validate`] and the CRD schema, so the
/// API server takes such a Secret without a dry run.
pub fn has_unchecked_metadata(tsk: &TenantSecurityKey) -> bool {
    tsk.spec
        .secret
        .as_ref()
        .is_some_and(|t| !t.labels.is_empty() || !t.annotations.is_empty())
}

/// The Secret type; an empty value (an unset Helm value) means the default, as the API server
/// itself stores an empty type as `Opaque`.
fn secret_type(tsk: &TenantSecurityKey) -> String {
    tsk.spec
        .secret
        .as_ref()
        .and_then(|s| s.type_.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Opaque".into())
}

fn retained(tsk: &TenantSecurityKey) -> bool {
    tsk.spec.deletion_policy == Some(DeletionPolicy::Retain)
}

/// Whether the Secret is owned by annotation rather than by an owner reference.
fn by_annotation(tsk: &TenantSecurityKey, shared: bool) -> bool {
    retained(tsk) || shared
}

fn desired_labels(tsk: &TenantSecurityKey) -> BTreeMap<String, String> {
    let mut labels = tsk
        .spec
        .secret
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(OWNER_LABEL.into(), owner_label_value(&tsk.name_any()));
    labels
}

fn template_annotations(tsk: &TenantSecurityKey) -> BTreeMap<String, String> {
    tsk.spec
        .secret
        .as_ref()
        .map(|s| s.annotations.clone())
        .unwrap_or_default()
}

fn context_entries(names: &EntryNames<'_>, ctx: &KeyContext<'_>) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::from([
        (names.tenant_id.to_owned(), ctx.tenant_id.to_owned()),
        (names.base_url.to_owned(), ctx.base_url.to_owned()),
    ]);
    if let Some(account_id) = ctx.account_id {
        entries.insert(names.account_id.to_owned(), account_id.to_owned());
    }
    entries
}

/// The complete Secret for a key, to be written over `over` (the Secret as read, if any).
/// It is owned (as controller) by the TenantSecurityKey, or by annotation only when it is
/// kept with `Retain` or `over` holds entries of others.
pub fn build(
    tsk: &TenantSecurityKey,
    key: &KeyMaterial,
    ctx: &KeyContext<'_>,
    attempt: &str,
    over: Option<&Secret>,
) -> Secret {
    let names = EntryNames::of_key(tsk);
    let mut data: BTreeMap<String, ByteString> = context_entries(&names, ctx)
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect();
    data.insert(
        names.public_key.into(),
        ByteString(key.public_key.clone().into_bytes()),
    );
    data.insert(
        names.private_key.into(),
        ByteString(key.private_key.expose_secret().as_bytes().to_vec()),
    );
    let mut annotations = template_annotations(tsk);
    if tsk.name_any().len() > MAX_LABEL_VALUE {
        annotations.insert(OWNER_NAME_ANNOTATION.into(), tsk.name_any());
    }
    annotations.insert(FINGERPRINT_ANNOTATION.into(), key.fingerprint());
    annotations.insert(ATTEMPT_ANNOTATION.into(), attempt.into());
    let entries: Vec<&str> = data.keys().map(String::as_str).collect();
    annotations.insert(ENTRIES_ANNOTATION.into(), entries.join(","));
    // `Delete` lets the garbage collector clean up after a force-removed finalizer; `Retain`
    // and a Secret shared with others must never be collected, so they are owned by
    // annotation only.
    let shared = over.is_some_and(|s| !foreign_entries(tsk, s).is_empty());
    let owner_references = if by_annotation(tsk, shared) {
        if let Some(uid) = tsk.uid() {
            annotations.insert(OWNER_UID_ANNOTATION.into(), uid);
        }
        None
    } else {
        tsk.controller_owner_ref(&()).map(|r| vec![r])
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(tsk)),
            namespace: tsk.namespace(),
            labels: Some(desired_labels(tsk)),
            annotations: Some(annotations),
            owner_references,
            ..Default::default()
        },
        type_: Some(secret_type(tsk)),
        data: Some(data),
        ..Default::default()
    }
}

/// The key pair stored in a Secret, if both entries are present.
pub fn material(tsk: &TenantSecurityKey, secret: &Secret) -> Option<KeyMaterial> {
    let names = EntryNames::of_key(tsk);
    Some(KeyMaterial {
        public_key: entry(secret, names.public_key)?.to_owned(),
        private_key: SecretString::from(entry(secret, names.private_key)?),
    })
}

/// Key material that satisfies every check the API server makes, for a dry run of the write
/// before a real key is created.
pub fn placeholder() -> KeyMaterial {
    KeyMaterial {
        public_key: "00000000-0000-0000-0000-000000000000".into(),
        private_key: SecretString::from("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    }
}

/// Reads what the reconciler needs to know about the target Secret. Without a context (while
/// deleting, when the account may be gone) the entries beside the key are not compared.
pub fn observe(
    tsk: &TenantSecurityKey,
    secret: Option<&Secret>,
    ctx: Option<&KeyContext<'_>>,
) -> SecretState {
    let Some(secret) = secret else {
        return SecretState::Missing;
    };
    if !is_owned_by(secret, tsk) {
        return SecretState::NotOwned;
    }
    let names = EntryNames::of_key(tsk);
    let contains_all = |have: &BTreeMap<String, String>, want: BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    let context_matches = ctx.is_none_or(|ctx| {
        context_entries(&names, ctx)
            .iter()
            .all(|(k, v)| entry(secret, k) == Some(v.as_str()))
    });
    let shared = !foreign_entries(tsk, secret).is_empty();
    // The ownership form follows the deletion policy and the entries of others (see `build`).
    let ownership_matches = controlled_by(secret, tsk) != by_annotation(tsk, shared);
    let layout_matches = ownership_matches
        && secret.type_.clone().unwrap_or_else(|| "Opaque".into()) == secret_type(tsk)
        && contains_all(secret.labels(), desired_labels(tsk))
        && contains_all(secret.annotations(), template_annotations(tsk))
        && context_matches;
    SecretState::Owned {
        fingerprint: material(tsk, secret).map(|m| m.fingerprint()),
        attempt: secret.annotations().get(ATTEMPT_ANNOTATION).cloned(),
        layout_matches,
    }
}

/// Entries of the Secret that the operator did not write (such as a database password kept
/// beside an adopted key): those [`ENTRIES_ANNOTATION`] does not list or, on a Secret the
/// operator has not written yet (or wrote before it kept that list), those the spec does not
/// name. The operator never changes or removes them, and never deletes a Secret that holds any.
pub fn foreign_entries<'s>(tsk: &TenantSecurityKey, secret: &'s Secret) -> Vec<&'s str> {
    let names = EntryNames::of_key(tsk).all();
    let written: Option<Vec<&str>> = secret
        .annotations()
        .get(ENTRIES_ANNOTATION)
        .map(|list| list.split(',').map(str::trim).collect());
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .filter(|k| match &written {
            Some(written) => !written.contains(k),
            None => !names.contains(k),
        })
        .collect()
}

/// The first entry a write of `desired` over `existing` would change although the operator
/// did not write it: a spec that renames an entry onto someone else's entry must not overwrite
/// it.
pub fn overwritten_entry<'d>(
    tsk: &TenantSecurityKey,
    existing: &Secret,
    desired: &'d Secret,
) -> Option<&'d str> {
    let foreign = foreign_entries(tsk, existing);
    let live = existing.data.as_ref();
    desired
        .data
        .iter()
        .flatten()
        .find(|(k, v)| foreign.contains(&k.as_str()) && live.and_then(|d| d.get(*k)) != Some(*v))
        .map(|(k, _)| k.as_str())
}

/// Why `tsk` may not adopt the Secret (`spec.adopt`), if it may not. Whoever may write the
/// Secret must have consented with [`ADOPT_BY_ANNOTATION`] naming `tsk`; a Secret that carries
/// another owner's marks is never taken; and adoption changes no entry but the key's own:
/// an entry the spec names for the tenant, account or base URL that already holds another
/// value is someone else's.
pub fn adoption_refusal(
    tsk: &TenantSecurityKey,
    secret: &Secret,
    ctx: &KeyContext<'_>,
) -> Option<String> {
    let name = tsk.name_any();
    let uid = tsk.uid();
    if let Some(owner) = secret
        .owner_references()
        .iter()
        .find(|r| Some(&r.uid) != uid.as_ref())
    {
        return Some(format!(
            "it belongs to {} {:?} (owner reference)",
            owner.kind, owner.name
        ));
    }
    if let Some(other) = secret
        .annotations()
        .get(OWNER_UID_ANNOTATION)
        .filter(|v| Some(*v) != uid.as_ref())
    {
        return Some(format!(
            "its annotation {OWNER_UID_ANNOTATION} names another TenantSecurityKey (uid {other})"
        ));
    }
    if let Some(other) = secret
        .labels()
        .get(OWNER_LABEL)
        .filter(|v| **v != owner_label_value(&name))
    {
        return Some(format!(
            "its label {OWNER_LABEL} names TenantSecurityKey {other:?}; remove the label if that resource no longer uses it"
        ));
    }
    if secret
        .annotations()
        .get(ADOPT_BY_ANNOTATION)
        .map(|v| v.trim())
        != Some(name.as_str())
    {
        return Some(format!(
            "its owner has not consented; whoever may write the Secret consents by annotating it with {ADOPT_BY_ANNOTATION}={name}"
        ));
    }
    let names = EntryNames::of_key(tsk);
    if let Some(entry) = context_entries(&names, ctx).into_iter().find_map(|(k, v)| {
        entry(secret, &k)
            .filter(|have| *have != v)
            .map(|_| k.clone())
    }) {
        return Some(format!(
            "its entry {entry:?} holds another value than the key's, and adoption would overwrite it"
        ));
    }
    None
}

/// For a Secret that holds entries of others, the merge patch that removes everything the
/// operator put there (the key's entries, its labels and annotations, its owner reference)
/// and keeps the rest, on the version that was read; `None` for a Secret that is the key's
/// alone, which is deleted instead.
pub fn strip_patch(tsk: &TenantSecurityKey, secret: &Secret) -> Option<serde_json::Value> {
    let foreign = foreign_entries(tsk, secret);
    if foreign.is_empty() {
        return None;
    }
    let uid = tsk.uid();
    let owners: Vec<_> = secret
        .owner_references()
        .iter()
        .filter(|r| Some(&r.uid) != uid.as_ref())
        .collect();
    let own: serde_json::Map<_, _> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| !foreign.contains(&k.as_str()))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    let removed = |keys: &[&str]| -> serde_json::Map<String, serde_json::Value> {
        keys.iter()
            .map(|k| ((*k).to_owned(), serde_json::Value::Null))
            .collect()
    };
    Some(serde_json::json!({
        "metadata": {
            "resourceVersion": secret.resource_version(),
            "ownerReferences": owners,
            "labels": removed(&[MANAGED_BY_LABEL, OWNER_LABEL]),
            "annotations": removed(&[
                FINGERPRINT_ANNOTATION,
                ATTEMPT_ANNOTATION,
                OWNER_UID_ANNOTATION,
                OWNER_NAME_ANNOTATION,
                ENTRIES_ANNOTATION,
            ]),
        },
        "data": own,
    }))
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use tenant_key_api::{
        crd::{AccountKind, AccountRef, SecretKeyNames, SecretTemplate, TenantSecurityKeySpec},
        key_secret::{StoredKey, stored_key},
    };

    use super::*;

    fn tsk(template: Option<SecretTemplate>) -> TenantSecurityKey {
        let mut tsk = TenantSecurityKey::new(
            "payments",
            TenantSecurityKeySpec {
                account_ref: AccountRef {
                    kind: AccountKind::ImburseAccount,
                    name: "acc".into(),
                },
                tenant_id: "88fdb12a-14dc-419c-b74c-422e2c25cfe7".into(),
                roles: vec!["tenant-admin".into()],
                name: None,
                secret: template.map(Box::new),
                deletion_policy: None,
                rotation: None,
                rollout_restart_targets: Vec::new(),
                adopt: None,
            },
        );
        tsk.metadata = ObjectMeta {
            name: Some("payments".into()),
            namespace: Some("team-a".into()),
            uid: Some("uid-1".into()),
            ..Default::default()
        };
        tsk
    }

    fn key() -> KeyMaterial {
        KeyMaterial {
            public_key: "a123456b-c12c-123d-1ab4-18bd8c8e88a3".into(),
            private_key: SecretString::from("AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y="),
        }
    }

    const CTX: KeyContext<'static> = KeyContext {
        tenant_id: "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
        account_id: Some("53ca62f5-b124-447d-b593-2f7ea4fecdcc"),
        base_url: "https://sandbox-api.imbursepayments.com",
    };

    #[test]
    fn built_secret_is_owned_labelled_and_complete() {
        let t = tsk(None);
        let s = build(&t, &key(), &CTX, "a1", None);
        assert_eq!(s.metadata.name.as_deref(), Some("payments"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert!(is_owned_by(&s, &t));
        assert_eq!(s.labels()[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(s.annotations()[FINGERPRINT_ANNOTATION], key().fingerprint());
        assert_eq!(
            s.annotations()[ENTRIES_ANNOTATION],
            "accountId,baseUrl,privateKey,publicKey,tenantId"
        );
        let data = s.data.as_ref().unwrap();
        let keys: Vec<_> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "accountId",
                "baseUrl",
                "privateKey",
                "publicKey",
                "tenantId"
            ]
        );
        assert_eq!(
            observe(&t, Some(&s), Some(&CTX)),
            SecretState::Owned {
                fingerprint: Some(key().fingerprint()),
                attempt: Some("a1".into()),
                layout_matches: true
            }
        );
    }

    #[test]
    fn template_controls_name_type_metadata_and_entries() {
        let template = SecretTemplate {
            name: Some("imburse-creds".into()),
            type_: Some("imbursepayments.com/tenant-key".into()),
            labels: BTreeMap::from([("team".into(), "pay".into())]),
            annotations: BTreeMap::from([("note".into(), "x".into())]),
            keys: Some(SecretKeyNames {
                private_key: Some("IMBURSE_PRIVATE_KEY".into()),
                ..Default::default()
            }),
        };
        let t = tsk(Some(template));
        let s = build(&t, &key(), &CTX, "a1", None);
        assert_eq!(s.metadata.name.as_deref(), Some("imburse-creds"));
        assert_eq!(s.type_.as_deref(), Some("imbursepayments.com/tenant-key"));
        assert_eq!(s.labels()["team"], "pay");
        assert_eq!(s.annotations()["note"], "x");
        assert!(s.data.as_ref().unwrap().contains_key("IMBURSE_PRIVATE_KEY"));
        assert_eq!(material(&t, &s).unwrap().fingerprint(), key().fingerprint());
    }

    #[test]
    fn foreign_and_damaged_secrets_are_recognised() {
        let t = tsk(None);
        let mut s = build(&t, &key(), &CTX, "a1", None);
        s.data.as_mut().unwrap().remove("privateKey");
        assert!(matches!(
            observe(&t, Some(&s), Some(&CTX)),
            SecretState::Owned {
                fingerprint: None,
                ..
            }
        ));
        s.metadata.owner_references = None;
        assert_eq!(observe(&t, Some(&s), Some(&CTX)), SecretState::NotOwned);
        assert_eq!(observe(&t, None, Some(&CTX)), SecretState::Missing);
    }

    #[test]
    fn metadata_drift_is_detected() {
        let t = tsk(Some(SecretTemplate {
            labels: BTreeMap::from([("team".into(), "pay".into())]),
            ..Default::default()
        }));
        let mut s = build(&t, &key(), &CTX, "a1", None);
        s.metadata.labels.as_mut().unwrap().remove("team");
        assert!(matches!(
            observe(&t, Some(&s), Some(&CTX)),
            SecretState::Owned {
                layout_matches: false,
                ..
            }
        ));
    }

    #[test]
    fn invalid_entry_names_are_rejected() {
        let bad = |keys: SecretKeyNames| {
            validate(&tsk(Some(SecretTemplate {
                keys: Some(keys),
                ..Default::default()
            })))
        };
        assert!(
            bad(SecretKeyNames {
                public_key: Some("a b".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            bad(SecretKeyNames {
                tenant_id: Some("publicKey".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(validate(&tsk(None)).is_ok());
    }

    #[test]
    fn stored_key_reads_everything_but_the_private_key() {
        let names = SecretKeyNames {
            public_key: Some("PUB".into()),
            base_url: Some("URL".into()),
            ..Default::default()
        };
        let t = tsk(Some(SecretTemplate {
            keys: Some(names.clone()),
            ..Default::default()
        }));
        let s = build(&t, &key(), &CTX, "a1", None);
        let stored = stored_key(Some(&names), &s);
        assert_eq!(
            stored,
            StoredKey {
                public_key: Some(key().public_key),
                fingerprint: Some(key().fingerprint()),
                tenant_id: Some(CTX.tenant_id.into()),
                account_id: CTX.account_id.map(Into::into),
                base_url: Some(CTX.base_url.into()),
            }
        );
        // Read with the default names, the renamed entries are not found.
        let defaults = stored_key(None, &s);
        assert_eq!(defaults.public_key, None);
        assert_eq!(defaults.fingerprint, None);
        assert_eq!(defaults.tenant_id.as_deref(), Some(CTX.tenant_id));
    }

    /// An admin's Secret holding a hand-made pair beside an entry of its own.
    fn admins_secret(annotations: &[(&str, &str)]) -> Secret {
        let mut s = build(&tsk(None), &key(), &CTX, "", None);
        s.metadata = ObjectMeta {
            name: Some("payments".into()),
            namespace: Some("team-a".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..Default::default()
        };
        let data = s.data.as_mut().unwrap();
        data.retain(|k, _| k == "publicKey" || k == "privateKey");
        data.insert("DB_PASSWORD".into(), ByteString(b"hunter2".to_vec()));
        s
    }

    #[test]
    fn adoption_needs_the_owners_consent() {
        let t = tsk(None);
        let refusal = adoption_refusal(&t, &admins_secret(&[]), &CTX).unwrap();
        assert!(
            refusal.contains("imbursepayments.com/adopt-by=payments"),
            "{refusal}"
        );
        let other = admins_secret(&[(ADOPT_BY_ANNOTATION, "reporting")]);
        assert!(adoption_refusal(&t, &other, &CTX).is_some());
        let consented = admins_secret(&[(ADOPT_BY_ANNOTATION, " payments ")]);
        assert_eq!(adoption_refusal(&t, &consented, &CTX), None);
    }

    #[test]
    fn adoption_refuses_another_owners_marks() {
        let t = tsk(None);
        let consented = || admins_secret(&[(ADOPT_BY_ANNOTATION, "payments")]);
        let mut owned = consented();
        owned.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "bitnami.com/v1alpha1".into(),
                kind: "SealedSecret".into(),
                name: "payments".into(),
                uid: "uid-9".into(),
                ..Default::default()
            },
        ]);
        assert!(
            adoption_refusal(&t, &owned, &CTX)
                .unwrap()
                .contains("SealedSecret")
        );
        let mut marked = consented();
        marked
            .annotations_mut()
            .insert(OWNER_UID_ANNOTATION.into(), "uid-9".into());
        assert!(adoption_refusal(&t, &marked, &CTX).is_some());
        let mut labelled = consented();
        labelled
            .labels_mut()
            .insert(OWNER_LABEL.into(), "reporting".into());
        assert!(adoption_refusal(&t, &labelled, &CTX).is_some());
        // Its own marks (a Secret it kept with `Retain` before) are no obstacle.
        let mut own = consented();
        own.labels_mut()
            .insert(OWNER_LABEL.into(), "payments".into());
        own.annotations_mut()
            .insert(OWNER_UID_ANNOTATION.into(), "uid-1".into());
        assert_eq!(adoption_refusal(&t, &own, &CTX), None);
        // Also under a name too long for a label value, whose label is the hashed form.
        let mut long = tsk(None);
        long.metadata.name = Some("p".repeat(200));
        let mut own_long = admins_secret(&[(ADOPT_BY_ANNOTATION, &"p".repeat(200))]);
        own_long
            .labels_mut()
            .insert(OWNER_LABEL.into(), owner_label_value(&"p".repeat(200)));
        assert_eq!(adoption_refusal(&long, &own_long, &CTX), None);
    }

    #[test]
    fn adoption_never_overwrites_an_entry() {
        let t = tsk(None);
        let mut s = admins_secret(&[(ADOPT_BY_ANNOTATION, "payments")]);
        let data = s.data.as_mut().unwrap();
        data.insert(
            "tenantId".into(),
            ByteString(CTX.tenant_id.as_bytes().to_vec()),
        );
        assert_eq!(adoption_refusal(&t, &s, &CTX), None);
        let data = s.data.as_mut().unwrap();
        data.insert(
            "baseUrl".into(),
            ByteString(b"https://db.internal".to_vec()),
        );
        assert!(adoption_refusal(&t, &s, &CTX).unwrap().contains("baseUrl"));
    }

    /// Written over a Secret that holds entries of others, the Secret keeps them, is owned by
    /// annotation only (the garbage collector must not delete them), and then matches: a
    /// rewrite does not loop.
    #[test]
    fn a_shared_secret_is_owned_by_annotation_and_settles() {
        for policy in [None, Some(DeletionPolicy::Retain)] {
            let mut t = tsk(None);
            t.spec.deletion_policy = policy;
            let admins = admins_secret(&[]);
            assert_eq!(foreign_entries(&t, &admins), ["DB_PASSWORD"]);
            let mut written = build(&t, &key(), &CTX, "a1", Some(&admins));
            assert_eq!(written.metadata.owner_references, None);
            assert_eq!(written.annotations()[OWNER_UID_ANNOTATION], "uid-1");
            assert!(!written.data.as_ref().unwrap().contains_key("DB_PASSWORD"));
            // What the API server holds after the apply: the entries of both.
            written
                .data
                .as_mut()
                .unwrap()
                .insert("DB_PASSWORD".into(), ByteString(b"hunter2".to_vec()));
            assert_eq!(foreign_entries(&t, &written), ["DB_PASSWORD"]);
            assert_eq!(
                observe(&t, Some(&written), Some(&CTX)),
                SecretState::Owned {
                    fingerprint: Some(key().fingerprint()),
                    attempt: Some("a1".into()),
                    layout_matches: true,
                }
            );
            let again = build(&t, &key(), &CTX, "a1", Some(&written));
            assert_eq!(again.metadata.owner_references, None);
        }
        // The Secret of the key alone keeps its owner reference.
        let t = tsk(None);
        let alone = build(&t, &key(), &CTX, "a1", None);
        assert!(foreign_entries(&t, &alone).is_empty());
        let again = build(&t, &key(), &CTX, "a1", Some(&alone));
        assert!(again.metadata.owner_references.is_some());
    }

    /// A spec that renames an entry onto someone else's entry does not overwrite it.
    #[test]
    fn renaming_an_entry_onto_anothers_is_refused() {
        let t = tsk(None);
        let mut live = build(&t, &key(), &CTX, "a1", None);
        live.data
            .as_mut()
            .unwrap()
            .insert("DB_PASSWORD".into(), ByteString(b"hunter2".to_vec()));
        let same = build(&t, &key(), &CTX, "a1", Some(&live));
        assert_eq!(overwritten_entry(&t, &live, &same), None);
        let renamed = tsk(Some(SecretTemplate {
            keys: Some(SecretKeyNames {
                tenant_id: Some("DB_PASSWORD".into()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let desired = build(&renamed, &key(), &CTX, "a1", Some(&live));
        assert_eq!(
            overwritten_entry(&renamed, &live, &desired),
            Some("DB_PASSWORD")
        );
        // An entry of its own that someone edited is the key's to write again.
        let mut tampered = live.clone();
        tampered
            .data
            .as_mut()
            .unwrap()
            .insert("privateKey".into(), ByteString(b"edited".to_vec()));
        assert_eq!(overwritten_entry(&t, &tampered, &same), None);
        // Without the list (a Secret of an earlier version), the spec's entries are its own.
        live.annotations_mut().remove(ENTRIES_ANNOTATION);
        assert_eq!(foreign_entries(&t, &live), ["DB_PASSWORD"]);
    }

    #[test]
    fn a_shared_secret_is_stripped_rather_than_deleted() {
        let t = tsk(None);
        let admins = admins_secret(&[(ADOPT_BY_ANNOTATION, "payments")]);
        let mut live = build(&t, &key(), &CTX, "a1", Some(&admins));
        live.metadata.resource_version = Some("7".into());
        live.annotations_mut()
            .insert(ADOPT_BY_ANNOTATION.into(), "payments".into());
        live.data
            .as_mut()
            .unwrap()
            .insert("DB_PASSWORD".into(), ByteString(b"hunter2".to_vec()));
        let patch = strip_patch(&t, &live).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        assert_eq!(patch["metadata"]["ownerReferences"], serde_json::json!([]));
        let data = patch["data"].as_object().unwrap();
        assert_eq!(data.len(), 5);
        assert!(data.values().all(serde_json::Value::is_null));
        assert!(!data.contains_key("DB_PASSWORD"));
        let annotations = patch["metadata"]["annotations"].as_object().unwrap();
        assert!(annotations.contains_key(OWNER_UID_ANNOTATION));
        assert!(annotations.contains_key(ENTRIES_ANNOTATION));
        assert!(!annotations.contains_key(ADOPT_BY_ANNOTATION));
        assert!(patch["metadata"]["labels"][MANAGED_BY_LABEL].is_null());
        assert_eq!(strip_patch(&t, &build(&t, &key(), &CTX, "a1", None)), None);
    }
}
