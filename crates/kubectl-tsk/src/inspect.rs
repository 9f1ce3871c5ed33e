//! `kubectl tsk inspect secret`: what a key Secret holds, for people and scripts. The private
//! key is never read into the output: only [`stored_key`] touches it, for the fingerprint.

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;
use tenant_key_api::{
    crd::TenantSecurityKey,
    key_secret::{FINGERPRINT_ANNOTATION, is_owned_by, stored_key},
};

use crate::{
    cluster,
    output::{self, Format, or_none},
};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The TenantSecurityKey that owns the Secret, if any.
    pub owner: Option<String>,
    pub public_key: Option<String>,
    /// Fingerprint of the stored pair.
    pub fingerprint: Option<String>,
    /// The fingerprint annotation, which should equal `fingerprint`.
    pub annotation_fingerprint: Option<String>,
    /// Whether the owner's status records this key.
    pub owner_records_this_key: Option<bool>,
    pub tenant_id: Option<String>,
    pub account_id: Option<String>,
    pub base_url: Option<String>,
    /// Names of the Secret's entries (not their values).
    pub entries: Vec<String>,
}

pub async fn secret(
    client: Client,
    namespace: &str,
    name: &str,
    format: Option<Format>,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = cluster::get(&secrets, namespace, name).await?;
    // An owner is found by ownership (owner reference, or the uid annotation of a retained
    // Secret), not by name: the Secret's name is the resource's choice.
    let keys: Api<TenantSecurityKey> = Api::namespaced(client, namespace);
    let owner = match keys.list(&ListParams::default()).await {
        Ok(list) => list.items.into_iter().find(|k| is_owned_by(&secret, k)),
        Err(e) => {
            eprintln!("warning: could not list TenantSecurityKeys to find the owner: {e}");
            None
        }
    };
    let view = view(&secret, owner.as_ref());
    output::emit(&match format {
        Some(format) => output::render(format, &view)?,
        None => text(&view),
    })
}

/// What may be shown of a Secret, read with its owner's entry names.
fn view(secret: &Secret, owner: Option<&TenantSecurityKey>) -> SecretView {
    let names = owner
        .and_then(|o| o.spec.secret.as_ref())
        .and_then(|s| s.keys.as_ref());
    let stored = stored_key(names, secret);
    let recorded = owner
        .and_then(|o| o.status.as_ref())
        .and_then(|s| s.fingerprint.as_deref());
    SecretView {
        namespace: secret.namespace().unwrap_or_default(),
        name: secret.name_any(),
        type_: secret.type_.clone(),
        owner: owner.map(ResourceExt::name_any),
        owner_records_this_key: owner
            .map(|_| recorded.is_some() && recorded == stored.fingerprint.as_deref()),
        public_key: stored.public_key,
        fingerprint: stored.fingerprint,
        annotation_fingerprint: secret.annotations().get(FINGERPRINT_ANNOTATION).cloned(),
        tenant_id: stored.tenant_id,
        account_id: stored.account_id,
        base_url: stored.base_url,
        entries: secret.data.iter().flat_map(|d| d.keys().cloned()).collect(),
    }
}

fn text(view: &SecretView) -> String {
    let fingerprint = match (&view.fingerprint, &view.annotation_fingerprint) {
        (None, _) => "<no key pair>".to_owned(),
        (Some(f), Some(a)) if f == a => format!("{f} (matches the annotation)"),
        (Some(f), Some(a)) => format!("{f} (the {FINGERPRINT_ANNOTATION} annotation says {a})"),
        (Some(f), None) => format!("{f} (no {FINGERPRINT_ANNOTATION} annotation)"),
    };
    let owner = match (&view.owner, view.owner_records_this_key) {
        (None, _) => "<none>".to_owned(),
        (Some(o), Some(true)) => format!("TenantSecurityKey {o} (its status records this key)"),
        (Some(o), _) => format!("TenantSecurityKey {o} (its status records another key)"),
    };
    let fields = [
        ("Name:", view.name.clone()),
        ("Namespace:", view.namespace.clone()),
        ("Type:", or_none(view.type_.as_deref())),
        ("Owner:", owner),
        ("Public key:", or_none(view.public_key.as_deref())),
        ("Fingerprint:", fingerprint),
        ("Tenant id:", or_none(view.tenant_id.as_deref())),
        ("Account id:", or_none(view.account_id.as_deref())),
        ("Base URL:", or_none(view.base_url.as_deref())),
        ("Entries:", view.entries.join(", ")),
    ];
    fields
        .iter()
        .map(|(label, value)| format!("{label:<14}{value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use serde_json::json;

    use super::*;

    const PRIVATE_KEY: &str = "AGHYR1aWYgHgyjhJLkVCd7b8XfAVeA4tuFwCQl3X64Y=";

    fn owner(uid: &str, keys: serde_json::Value) -> TenantSecurityKey {
        serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": {"name": "checkout-api", "namespace": "payments", "uid": uid},
            "spec": {
                "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
                "tenantId": "88fdb12a-14dc-419c-b74c-422e2c25cfe7",
                "roles": ["tenant-admin"],
                "secret": {"keys": keys},
            },
        }))
        .unwrap()
    }

    fn secret(entries: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("checkout-api".into()),
                namespace: Some("payments".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn view_uses_the_owners_entry_names_and_hides_the_private_key() {
        let owner = owner(
            "uid-1",
            json!({"privateKey": "PRIVATE", "publicKey": "PUBLIC"}),
        );
        let secret = secret(
            &[
                ("PUBLIC", "a123456b-c12c-123d-1ab4-18bd8c8e88a3"),
                ("PRIVATE", PRIVATE_KEY),
                ("tenantId", "88fdb12a-14dc-419c-b74c-422e2c25cfe7"),
                ("baseUrl", "https://sandbox-api.imbursepayments.com"),
            ],
            &[(FINGERPRINT_ANNOTATION, "sha256:stale")],
        );
        let view = view(&secret, Some(&owner));
        assert_eq!(view.owner.as_deref(), Some("checkout-api"));
        assert_eq!(
            view.public_key.as_deref(),
            Some("a123456b-c12c-123d-1ab4-18bd8c8e88a3")
        );
        assert!(view.fingerprint.as_deref().unwrap().starts_with("sha256:"));
        assert_eq!(view.owner_records_this_key, Some(false));
        assert_eq!(view.account_id, None);
        let shown = [
            text(&view),
            output::render(Format::Json, &view).unwrap(),
            output::render(Format::Yaml, &view).unwrap(),
        ];
        for shown in shown {
            assert!(!shown.contains(PRIVATE_KEY), "private key shown:\n{shown}");
            assert!(
                shown.contains("PRIVATE"),
                "entry names are listed:\n{shown}"
            );
        }
        assert!(text(&view).contains("annotation says sha256:stale"));
    }

    #[test]
    fn a_secret_without_owner_is_read_with_the_default_names() {
        let secret = secret(&[("publicKey", "pk"), ("tenantId", "t")], &[]);
        let view = view(&secret, None);
        assert_eq!(view.public_key.as_deref(), Some("pk"));
        assert_eq!(view.fingerprint, None);
        let text = text(&view);
        assert!(text.contains("Owner:        <none>"), "{text}");
        assert!(text.contains("Fingerprint:  <no key pair>"), "{text}");
    }
}
