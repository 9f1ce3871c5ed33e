//! tenant-key-api: what clients of tenant-key-operator's API need, without the operator.
//!
//! - [`crd`]: the custom resource types (the source of the CRD YAML in `crds/`);
//! - [`key_secret`]: the contract of the Secret that delivers a key (its labels, annotations,
//!   entries and fingerprint);
//! - [`labels`]: label selector evaluation, for the accounts' `allowedNamespaces`;
//! - [`migrate`]: rewrites stored objects at the storage version (`kubectl tsk migrate`).
//!
//! The operator and the `kubectl tsk` plugin both build on it.

pub mod crd;
pub mod key_secret;
pub mod labels;
pub mod migrate;
