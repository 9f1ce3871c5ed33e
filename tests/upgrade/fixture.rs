//! The fixture format: one state an operator version left behind, with everything needed to
//! rebuild it on a fresh control plane and sandbox, and what the current operator may do to it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Resource as _,
    api::{DynamicObject, ObjectMeta},
};
use serde::{Deserialize, Serialize};
use tenant_key_api::crd::TenantSecurityKey;

/// Where the fixtures live: one folder per operator version (`v0.1.0`), one file per state.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade")
}

/// Every fixture file of every version folder, sorted, as `(test name, path)`.
pub fn discover() -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let versions = match std::fs::read_dir(root()) {
        Ok(versions) => versions,
        // Nothing captured yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e.into()),
    };
    for version in versions {
        let version = version?.path();
        if !version.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&version)? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "yaml") {
                let name = format!(
                    "{}/{}",
                    file_stem(&version),
                    file_stem(&file.with_extension(""))
                );
                found.push((name, file));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn file_stem(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One state as an operator version wrote it. Server-populated metadata (uid, resourceVersion,
/// creationTimestamp, managedFields, generation) is left out, except the key's uid, which the
/// recorded values name the resource by; everything else is as read back from the API server.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    /// Version of the operator that wrote the objects.
    pub operator_version: String,
    /// Commit the operator was built from.
    pub commit: String,
    /// How the state came about.
    pub description: String,
    /// The field manager the operator wrote with. The fields it owned are written back with
    /// it, so that its later server-side applies own (and may drop) them as after an upgrade.
    pub field_manager: String,
    /// Base URL of the sandbox the objects point at; replaced with the replaying sandbox's.
    pub sandbox_url: String,
    /// The sandbox's account, the key's tenant, and every key the tenant had at Imburse
    /// (private keys included: sandbox-only test data, never printed).
    pub sandbox: imburse_sandbox::Config,
    /// The Secret with the account's key pair.
    pub credentials: Secret,
    /// The ImburseAccount, with its status.
    pub account: DynamicObject,
    /// The TenantSecurityKey, with its uid, finalizers, annotations and status.
    pub key: DynamicObject,
    /// The key's Secret, if one existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Whether the resource is deleted before the operator starts.
    #[serde(default)]
    pub delete_before_start: bool,
    pub expect: Expect,
}

/// What the current operator may do to the state: exactly this, and nothing else.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    /// Keys created at Imburse, e.g. 1 where an open intent never got its Secret.
    pub keys_created: u64,
    /// Public keys revoked at Imburse, because the state itself calls for it: keys an open
    /// intent orphaned, the key it replaces, replaced keys still queued for revocation.
    pub keys_revoked: BTreeSet<String>,
    /// What happens to the key's Secret.
    pub secret: SecretOutcome,
    /// Where the resource ends up.
    pub resource: ResourceOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretOutcome {
    /// Data, type, labels, annotations and owner stay byte for byte; not even rewritten.
    Unchanged,
    /// As `Unchanged`, except that the resource no longer owns it (`deletionPolicy: Retain`):
    /// no owner reference and no `imbursepayments.com/owner-uid` annotation.
    Released,
    /// The operator writes a newly created key into it.
    Written,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResourceOutcome {
    /// Ready, with the key of its Secret.
    Ready,
    /// Deleted.
    Gone,
}

impl Fixture {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The fixture as YAML, after a comment header.
    pub fn to_yaml(&self, header: &str) -> Result<String> {
        let comment: String = header.lines().map(|l| format!("# {l}\n")).collect();
        Ok(format!("{comment}{}", serde_yaml::to_string(self)?))
    }

    pub fn namespace(&self) -> Result<String> {
        self.key
            .metadata
            .namespace
            .clone()
            .context("the fixture's key has no namespace")
    }

    pub fn key_name(&self) -> Result<String> {
        self.key
            .metadata
            .name
            .clone()
            .context("the fixture's key has no name")
    }

    /// Points every recorded use of the capturing sandbox at `url`.
    pub fn rebase(&mut self, url: &str) -> Result<()> {
        let from = self.sandbox_url.clone();
        self.replace(&from, url)
    }

    /// Points every recorded use of the captured resource's uid (key names at Imburse, the
    /// intent, the Secret's annotations and owner) at `uid`, the re-created resource's.
    pub fn adopt_uid(&mut self, uid: &str) -> Result<()> {
        match self.recorded_uid() {
            Some(from) => self.replace(&from, uid),
            None => Ok(()),
        }
    }

    /// The captured resource's uid. Fixtures of 0.1.0 record it only in the Secret's owner
    /// reference, and without a Secret they record it nowhere.
    fn recorded_uid(&self) -> Option<String> {
        self.key.metadata.uid.clone().or_else(|| {
            let name = self.key.metadata.name.as_ref()?;
            self.secret
                .as_ref()?
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == TenantSecurityKey::kind(&()) && &o.name == name)
                .map(|o| o.uid.clone())
        })
    }

    /// Replaces `from` with `to` in every string of the fixture and in the Secret's text
    /// entries (which serialize as base64, out of reach of the string replacement).
    fn replace(&mut self, from: &str, to: &str) -> Result<()> {
        let mut value = serde_json::to_value(&*self)?;
        replace_strings(&mut value, from, to);
        *self = serde_json::from_value(value)?;
        if let Some(data) = self.secret.as_mut().and_then(|s| s.data.as_mut()) {
            for value in data.values_mut() {
                if let Ok(text) = std::str::from_utf8(&value.0)
                    && text.contains(from)
                {
                    *value = ByteString(text.replace(from, to).into_bytes());
                }
            }
        }
        Ok(())
    }

    /// Public keys of the sandbox keys the fixture's Secret holds.
    pub fn delivered_keys(&self) -> BTreeSet<String> {
        let values = secret_values(self.secret.as_ref());
        self.sandbox
            .keys
            .iter()
            .filter(|k| values.contains(&k.public_key))
            .map(|k| k.public_key.clone())
            .collect()
    }

    /// Checks that the expectations are possible and safe: revoked keys existed, and no key
    /// that a Secret delivers to its users is ever revoked.
    pub fn check(&self) -> Result<()> {
        let seeded: BTreeSet<_> = self.sandbox.keys.iter().map(|k| &k.public_key).collect();
        for revoked in &self.expect.keys_revoked {
            ensure!(
                seeded.contains(revoked),
                "expect.keysRevoked names {revoked}, which is not a sandbox key of the fixture"
            );
        }
        let delivered = self.delivered_keys();
        let unsafe_revocations: Vec<_> =
            self.expect.keys_revoked.intersection(&delivered).collect();
        ensure!(
            unsafe_revocations.is_empty(),
            "expect.keysRevoked names keys its Secret delivers: {unsafe_revocations:?}"
        );
        ensure!(
            self.secret.is_some() || self.expect.secret == SecretOutcome::Written,
            "without a Secret, the only possible outcome is a written one"
        );
        Ok(())
    }
}

/// The Secret's entries that are text.
pub fn secret_values(secret: Option<&Secret>) -> BTreeSet<String> {
    secret
        .and_then(|s| s.data.as_ref())
        .into_iter()
        .flat_map(|d| d.values())
        .filter_map(|v| String::from_utf8(v.0.clone()).ok())
        .collect()
}

fn replace_strings(value: &mut serde_json::Value, from: &str, to: &str) {
    match value {
        serde_json::Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|v| replace_strings(v, from, to));
        }
        serde_json::Value::Object(fields) => {
            fields
                .values_mut()
                .for_each(|v| replace_strings(v, from, to));
        }
        _ => {}
    }
}

/// Removes what the API server populates, keeping everything a client wrote.
pub fn strip_server_fields(metadata: &mut ObjectMeta) {
    metadata.uid = None;
    metadata.resource_version = None;
    metadata.creation_timestamp = None;
    metadata.managed_fields = None;
    metadata.generation = None;
}
