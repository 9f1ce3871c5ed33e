//! Certificates and keys for one control plane, generated fresh for each start.
//!
//! A private CA signs the API server's serving certificate and an admin client certificate in
//! group `system:masters`, so kube-rs, kubectl and helm all verify the server properly instead of
//! skipping TLS verification.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The admin identity written into the control plane's kubeconfig.
pub const ADMIN_USER: &str = "tko-admin";

/// PEM files of one control plane, all inside its `pki` folder.
#[derive(Clone, Debug)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// Signs ServiceAccount tokens.
    pub service_account_key: PathBuf,
    /// Verifies ServiceAccount tokens (kube-apiserver reads only public keys from this file).
    pub service_account_public_key: PathBuf,
}

impl Pki {
    pub fn paths(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        Pki {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("service-account.key"),
            service_account_public_key: dir.join("service-account.pub"),
        }
    }

    /// Generates every certificate and key into `<dir>/pki`.
    pub fn generate(dir: &Path) -> Result<Pki> {
        let pki = Pki::paths(dir);
        let pki_dir = dir.join("pki");
        fs::create_dir_all(&pki_dir).with_context(|| format!("creating {}", pki_dir.display()))?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tenant-key-operator test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        fs::write(&pki.ca_cert, ca.pem())?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // The first address of --service-cluster-ip-range, the in-cluster `kubernetes` Service.
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serving_key = KeyPair::generate()?;
        fs::write(
            &pki.serving_cert,
            serving.signed_by(&serving_key, &ca)?.pem(),
        )?;
        fs::write(&pki.serving_key, serving_key.serialize_pem())?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, ADMIN_USER);
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let admin_key = KeyPair::generate()?;
        fs::write(&pki.admin_cert, admin.signed_by(&admin_key, &ca)?.pem())?;
        fs::write(&pki.admin_key, admin_key.serialize_pem())?;

        let service_account_key = KeyPair::generate()?;
        fs::write(
            &pki.service_account_key,
            service_account_key.serialize_pem(),
        )?;
        fs::write(
            &pki.service_account_public_key,
            service_account_key.public_key_pem(),
        )?;
        Ok(pki)
    }
}
