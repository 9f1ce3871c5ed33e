//! Custom resource types of the `imbursepayments.com` API group, at its storage version
//! `v1beta1`.
//!
//! The Rust types are the source of truth: `tenant-key-operator crd` prints the CRD YAML
//! generated from them, and `crds/` holds that output.
//!
//! Each CRD also serves `v1alpha1`, deprecated, with the same fields: the conversion strategy
//! is `None`, so the API server only rewrites `apiVersion` between them. Only validation and
//! defaulting differ, and only for accounts: v1beta1 requires `baseUrl`, which v1alpha1
//! defaults to the sandbox (see [`versions`]).
//!
//! No other field carries a schema default: GitOps tools compare the applied manifest with the
//! live object, and a server-side default would show up as a diff. Defaults live in code
//! (`effective_*` accessors).

mod account;
mod conditions;
mod tenant_security_key;

pub use account::{
    AUDIT_REQUESTED_AT_ANNOTATION, AccountSpec, AccountStatus, AllowedNamespaces, ApiGeneration,
    Audit, AuditedKey, ClusterImburseAccount, ClusterImburseAccountSpec, CredentialsSecretRef,
    DEFAULT_BASE_URL, ImburseAccount, KeyClass, REVOKE_LEAKED_ANNOTATION,
};
pub use conditions::{Condition, ConditionStatus, READY, find_condition, is_true, set_condition};
pub use tenant_security_key::{
    AccountKind, AccountRef, CreateIntent, DEFAULT_GRACE_PERIOD, DeletionPolicy, Endpoint,
    PreviousKey, ROTATE_REQUESTED_AT_ANNOTATION, RolloutRestartTarget, RotationPolicy,
    SecretKeyNames, SecretTemplate, TenantSecurityKey, TenantSecurityKeySpec,
    TenantSecurityKeyStatus, WorkloadKind, is_allowed_secret_type, parse_duration,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSON, JSONSchemaProps,
    ValidationRule,
};
use kube::CustomResourceExt;

/// API group of every resource of this operator.
pub const GROUP: &str = "imbursepayments.com";

/// The storage version, which the operator reads and writes.
pub const VERSION: &str = "v1beta1";

/// The version served for manifests written before v1beta1, deprecated.
pub const DEPRECATED_VERSION: &str = "v1alpha1";

/// What v1beta1 says to an account without `baseUrl`.
pub const BASE_URL_REQUIRED: &str = "baseUrl is required: https://api.imbursepayments.com for production, https://sandbox-api.imbursepayments.com for the Imburse sandbox (v1alpha1 defaulted to the sandbox)";

/// Every CRD the operator serves, in the order they are written to `crds/`.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        versions(TenantSecurityKey::crd(), false),
        versions(ImburseAccount::crd(), true),
        versions(ClusterImburseAccount::crd(), true),
    ]
}

/// The CRD as generated from the types (`v1beta1` only), serving `v1alpha1` too: the same
/// schema, deprecated, not stored. For an account kind (`account`), v1beta1 refuses a spec
/// without `baseUrl` and v1alpha1 defaults it to [`DEFAULT_BASE_URL`], as the operator did in
/// code before: the API server applies a version's defaults to requests at that version and to
/// objects read from etcd as stored at it, so every v1alpha1 account, old or new, reaches
/// v1beta1 (and the operator) with the URL it always meant.
fn versions(mut crd: CustomResourceDefinition, account: bool) -> CustomResourceDefinition {
    let kind = crd.spec.names.kind.clone();
    let Some(mut storage) = crd.spec.versions.pop() else {
        return crd;
    };
    let mut deprecated = CustomResourceDefinitionVersion {
        name: DEPRECATED_VERSION.to_owned(),
        storage: false,
        deprecated: Some(true),
        deprecation_warning: Some(format!(
            "{GROUP}/{DEPRECATED_VERSION} {kind} is deprecated; use {GROUP}/{VERSION} {kind}"
        )),
        ..storage.clone()
    };
    if account {
        if let Some(spec) = spec_schema(&mut storage) {
            spec.x_kubernetes_validations = Some(vec![ValidationRule {
                rule: "has(self.baseUrl)".to_owned(),
                message: Some(BASE_URL_REQUIRED.to_owned()),
                field_path: Some(".baseUrl".to_owned()),
                reason: Some("FieldValueRequired".to_owned()),
                ..ValidationRule::default()
            }]);
        }
        // Not nullable: the API server prunes `baseUrl: null`, which the rule then refuses.
        if let Some(base_url) = base_url_schema(&mut storage) {
            base_url.nullable = None;
        }
        if let Some(base_url) = base_url_schema(&mut deprecated) {
            base_url.default = Some(JSON(serde_json::Value::from(DEFAULT_BASE_URL)));
        }
    }
    crd.spec.versions = vec![deprecated, storage];
    crd
}

/// The schema of a version's `spec`.
fn spec_schema(version: &mut CustomResourceDefinitionVersion) -> Option<&mut JSONSchemaProps> {
    version
        .schema
        .as_mut()?
        .open_api_v3_schema
        .as_mut()?
        .properties
        .as_mut()?
        .get_mut("spec")
}

/// The schema of an account version's `spec.baseUrl`.
fn base_url_schema(version: &mut CustomResourceDefinitionVersion) -> Option<&mut JSONSchemaProps> {
    spec_schema(version)?
        .properties
        .as_mut()?
        .get_mut("baseUrl")
}

/// File name of a CRD inside `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as YAML, as stored in `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}

/// The CRDs as one multi-document YAML stream.
pub fn render_yaml() -> Result<String, serde_yaml::Error> {
    all().iter().map(to_yaml).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both versions have the same fields; only an account's `baseUrl` is required and not
    /// nullable (v1beta1) or defaulted (v1alpha1), and the printer columns are the same.
    #[test]
    fn versions_differ_only_in_the_base_url() {
        for mut crd in all() {
            let kind = crd.spec.names.kind.clone();
            let names: Vec<(&str, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            assert_eq!(
                names,
                [(DEPRECATED_VERSION, true, false), (VERSION, true, true)],
                "{kind}"
            );
            let [old, new] = &mut crd.spec.versions[..] else {
                unreachable!()
            };
            assert!(
                old.deprecation_warning
                    .as_deref()
                    .is_some_and(|w| w.contains(&format!("use {GROUP}/{VERSION} {kind}")))
            );
            assert_eq!(
                old.additional_printer_columns,
                new.additional_printer_columns
            );
            let account = kind != "TenantSecurityKey";
            let rule = spec_schema(new)
                .and_then(|s| s.x_kubernetes_validations.take())
                .unwrap_or_default();
            assert_eq!(rule.len(), usize::from(account), "{kind}");
            let default = base_url_schema(old).and_then(|b| b.default.take());
            assert_eq!(default.is_some(), account, "{kind}");
            if let Some(base_url) = base_url_schema(new) {
                assert_eq!(base_url.nullable, None, "{kind}");
                base_url.nullable = Some(true);
            }
            assert_eq!(
                old.schema, new.schema,
                "{kind}: the versions' fields differ"
            );
        }
    }

    /// `crds/` must hold exactly what the types generate; regenerate it with
    /// `cargo run -- crd --output-dir crds`.
    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
        let mut expected: Vec<String> = all().iter().map(file_name).collect();
        expected.sort();
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        present.sort();
        assert_eq!(
            present, expected,
            "crds/ holds other files than the generated CRDs"
        );
        for crd in all() {
            let on_disk = std::fs::read_to_string(dir.join(file_name(&crd))).unwrap();
            assert!(
                on_disk == to_yaml(&crd).unwrap(),
                "crds/{} is out of date: run `cargo run -- crd --output-dir crds`",
                file_name(&crd)
            );
        }
    }
}
