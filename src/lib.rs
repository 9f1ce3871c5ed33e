//! tenant-key-operator: declares Imburse Tenant Security Keys as Kubernetes resources.

pub mod crd;
