//! tenant-key-operator: declares Imburse Tenant Security Keys as Kubernetes resources and
//! delivers them as Secrets.
//!
//! - [`crd`]: the custom resource types (the source of the CRD YAML in `crds/`);
//! - [`controller`]: the reconcilers, built around the pure [`controller::decision`];
//! - [`http`], [`metrics`] and [`liveness`]: the operational surface;
//! - [`leader`]: leader election, so that one of several replicas reconciles;
//! - [`kube_client`]: the Kubernetes API client and its optional rate limit;
//! - [`allowed_hosts`]: where accounts may send signed requests;
//! - [`migrate`]: rewrites stored objects at the storage version (`kubectl tsk migrate`);
//! - [`cli`]: the binary's wiring.
//!
//! The Imburse API client lives in the `imburse` crate.

pub mod allowed_hosts;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod http;
pub mod kube_client;
pub mod labels;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod migrate;
