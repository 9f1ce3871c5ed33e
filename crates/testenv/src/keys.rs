//! How an end-to-end check looks at a delivered key: the pair its Secret holds (at the default
//! entry names), and whether that is the key the status records and it authenticates.

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::Sandbox;
use k8s_openapi::api::core::v1::Secret;
use tenant_key_api::key_secret::{self, EntryNames};

/// The key pair stored in a Secret.
pub fn secret_key_pair(secret: &Secret) -> Result<imburse::KeyPair> {
    let names = EntryNames::of(None);
    let entry = |entry: &str| {
        key_secret::entry(secret, entry).with_context(|| {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            format!("Secret {name} has no {entry}")
        })
    };
    Ok(imburse::KeyPair::new(
        entry(names.public_key)?,
        imburse::SecretString::from(entry(names.private_key)?),
    ))
}

/// `secret` holds the key whose public key is `public_key`, and that key authenticates at
/// `sandbox`.
pub async fn holds_working_key(
    secret: &Secret,
    public_key: &str,
    http: &imburse::Client,
    sandbox: &Sandbox,
) -> Result<()> {
    let pair = secret_key_pair(secret)?;
    ensure!(
        pair.public_key == public_key,
        "the Secret holds another key"
    );
    imburse::authenticate(
        http,
        &sandbox.base_url(),
        imburse::ApiGeneration::Seed,
        &pair,
    )
    .await
    .context("the Secret's key does not authenticate")?;
    Ok(())
}
