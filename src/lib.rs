//! tenant-key-operator: declares Imburse Tenant Security Keys as Kubernetes resources and
//! delivers them as Secrets.
//!
//! - [`controller`]: the reconcilers, built around the pure [`controller::decision`];
//! - [`http`], [`metrics`] and [`liveness`]: the operational surface;
//! - [`leader`]: leader election, so that one of several replicas reconciles;
//! - [`kube_client`]: the Kubernetes API client and its optional rate limit;
//! - [`allowed_hosts`]: where accounts may send signed requests;
//! - [`cli`]: the binary's wiring.
//!
//! The Imburse API client lives in the `imburse` crate; the API types (the custom resources, the
//! key Secret's contract, the stored-version migration) live in the `tenant-key-api` crate.

pub mod allowed_hosts;
pub mod cli;
pub mod controller;
pub mod http;
pub mod kube_client;
pub mod leader;
pub mod liveness;
pub mod metrics;
