//! Custom resource types of the `imbursepayments.com/v1alpha1` API group.
//!
//! The Rust types are the source of truth: `tenant-key-operator crd` prints the CRD YAML
//! generated from them, and `crds/` holds that output.
//!
//! No field carries a schema default: GitOps tools compare the applied manifest with the live
//! object, and a server-side default would show up as a permanent diff. Defaults live in code
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

use kube::CustomResourceExt;

/// API group of every resource of this operator.
pub const GROUP: &str = "imbursepayments.com";

/// Every CRD the operator serves, in the order they are written to `crds/`.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        TenantSecurityKey::crd(),
        ImburseAccount::crd(),
        ClusterImburseAccount::crd(),
    ]
}

/// File name of a CRD inside `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as YAML, as stored in `crds/`.
pub fn to_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}

/// The CRDs as one multi-document YAML stream.
pub fn render_yaml() -> Result<String, serde_yaml::Error> {
    all().iter().map(to_yaml).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` must hold exactly what the types generate; regenerate it with
    /// `cargo run -- crd --output-dir crds`.
    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
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
