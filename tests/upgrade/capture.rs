//! Writes the fixtures of the current operator version from a real run: the operator binary of
//! this build against a real control plane and the sandbox, with faults and kills to stop it
//! in each state it can leave behind. Two states that need a kill between two API server
//! writes, which no sandbox fault can time, are assembled from real captures of the same run
//! (see each description).

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::{Config, Faults, Options, TenantKey};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject},
};
use serde_json::json;
use tenant_key_api::crd::{ImburseAccount, TenantSecurityKey};
use tenant_key_operator::controller::FIELD_MANAGER;

use crate::fixture::{self, Expect, Fixture, ResourceOutcome, SecretOutcome};
use crate::support::{Env, poll, wait_for};

const NS: &str = "payments";

/// One tenant per state, so that each state's sandbox keys are those of its tenant.
mod tenant {
    pub const READY: usize = 0;
    pub const READY_TEMPLATED: usize = 1;
    pub const RETAIN_DELETING: usize = 2;
    pub const PREVIOUS_KEY_PENDING: usize = 3;
    pub const WITH_SECRET: usize = 4;
    pub const WITH_SECRET_REPLACEMENT: usize = 5;
    pub const WITHOUT_SECRET: usize = 6;
    pub const WITHOUT_SECRET_REPLACEMENT: usize = 7;
    pub const ROTATED: usize = 8;
    pub const COUNT: usize = 9;
}

pub fn run() -> Result<()> {
    let dir = fixture::root().join(format!("v{}", env!("CARGO_PKG_VERSION")));
    ensure!(
        !dir.exists(),
        "{} exists: a version's fixtures are written once (delete the folder to write them again)",
        dir.display()
    );
    let state = tempfile::tempdir()?;
    let state_file = state.path().join("sandbox-state.json");
    let env = Env::start_with(
        Config::generate(1, tenant::COUNT),
        Options {
            state_file: Some(state_file.clone()),
            ..Options::default()
        },
        &[],
    )?;
    let capture = Capture {
        env: &env,
        state_file,
        commit: commit()?,
    };
    let fixtures = env.block_on(capture.all())?;
    std::fs::create_dir_all(&dir)?;
    for (name, fixture) in fixtures {
        let header = format!(
            "State `{name}` as tenant-key-operator {} (commit {}) left it.\n\
             Written by `cargo test --test upgrade -- --ignored capture`; do not edit.\n\
             See tests/fixtures/upgrade/README.md.",
            fixture.operator_version, fixture.commit
        );
        std::fs::write(dir.join(format!("{name}.yaml")), fixture.to_yaml(&header)?)?;
    }
    Ok(())
}

/// The commit of the working tree, marked `-dirty` when it has uncommitted changes.
fn commit() -> Result<String> {
    let output = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=40"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    ensure!(output.status.success(), "git describe failed");
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

struct Capture<'a> {
    env: &'a Env,
    state_file: PathBuf,
    commit: String,
}

impl Capture<'_> {
    async fn all(&self) -> Result<Vec<(&'static str, Fixture)>> {
        let env = self.env;
        env.namespace_with_account(NS, 0).await?;
        let tenant_id = |i| env.tenant(0, i);
        let templated = json!({
            "name": "checkout/api",
            "roles": ["tenant-admin", "tenant-app-read"],
            "secret": {
                "name": "checkout-imburse",
                "type": "imbursepayments.com/tenant-key",
                "labels": { "team": "checkout" },
                "annotations": { "reloader.stakater.com/match": "true" },
                "keys": { "publicKey": "IMBURSE_PUBLIC_KEY", "privateKey": "IMBURSE_PRIVATE_KEY" },
            },
        });
        let keys = [
            ("ready", tenant::READY, json!({})),
            ("ready-templated", tenant::READY_TEMPLATED, templated),
            (
                "retain-deleting",
                tenant::RETAIN_DELETING,
                json!({ "deletionPolicy": "Retain" }),
            ),
            (
                "previous-key-pending",
                tenant::PREVIOUS_KEY_PENDING,
                json!({}),
            ),
            ("intent-open-with-secret", tenant::WITH_SECRET, json!({})),
            (
                "intent-open-with-secret-replacement",
                tenant::WITH_SECRET_REPLACEMENT,
                json!({}),
            ),
            (
                "intent-open-without-secret-replacement",
                tenant::WITHOUT_SECRET_REPLACEMENT,
                json!({}),
            ),
            (
                "rotated-in-grace",
                tenant::ROTATED,
                json!({
                    // A century: a replay must never find the scheduled rotation due.
                    "rotation": { "interval": "876000h", "gracePeriod": "1h" },
                    "rolloutRestartTargets": [{ "kind": "Deployment", "name": "checkout" }],
                }),
            ),
        ];
        for (name, i, extra) in &keys {
            env.create_key(NS, name, &tenant_id(*i), extra.clone())
                .await?;
        }
        for (name, _, _) in &keys {
            env.wait_ready(NS, name).await?;
        }

        let mut fixtures = Vec::new();
        for (name, i, description) in [
            ("ready", tenant::READY, "A Ready key and its Secret."),
            (
                "ready-templated",
                tenant::READY_TEMPLATED,
                "A Ready key with a key name, two roles and a Secret template (name, type, \
                 labels, annotations, entry names).",
            ),
        ] {
            let fixture = self
                .fixture(description, name, i, self.live_secret(name).await?)
                .await?
                .expecting(Expect::nothing());
            fixtures.push((name, fixture));
        }
        fixtures.push(("rotated-in-grace", self.rotated_in_grace().await?));
        let mut retain = self
            .fixture(
                "A Ready key with deletionPolicy Retain, deleted before the operator starts.",
                "retain-deleting",
                tenant::RETAIN_DELETING,
                self.live_secret("retain-deleting").await?,
            )
            .await?
            .expecting(Expect {
                secret: SecretOutcome::Released,
                resource: ResourceOutcome::Gone,
                ..Expect::nothing()
            });
        retain.delete_before_start = true;
        fixtures.push(("retain-deleting", retain));

        // A crash after the Secret write of a first create leaves the Secret of the open
        // attempt and a status holding only the intent: the Ready key's status, turned back
        // into the intent it closed.
        let mut with_secret = self
            .fixture(
                "A first create interrupted after the Secret write, before the status recorded \
                 the key: the open intent's Secret is there, the status holds only the intent. \
                 Assembled from the Ready key of a real create, its status turned back into the \
                 intent it closed.",
                "intent-open-with-secret",
                tenant::WITH_SECRET,
                self.live_secret("intent-open-with-secret").await?,
            )
            .await?
            .expecting(Expect::nothing());
        reopen_intent(&mut with_secret.key, None)?;
        fixtures.push(("intent-open-with-secret", with_secret));
        let replaced = self.live_key("intent-open-with-secret-replacement").await?;
        let replaced_status = replaced.data.get("status").cloned();
        let replaced_key = public_key(&replaced)?;

        // Revocations fail, so replaced keys stay in status.previousKeys.
        env.sandbox
            .admin()
            .set_faults(&Faults {
                fail_deletes: u32::MAX,
                ..Faults::default()
            })
            .await?;
        for name in [
            "previous-key-pending",
            "intent-open-with-secret-replacement",
        ] {
            env.secrets(NS)
                .delete(name, &DeleteParams::default())
                .await?;
        }
        for name in [
            "previous-key-pending",
            "intent-open-with-secret-replacement",
        ] {
            wait_for(&env.keys(NS), name, |k| {
                k.status
                    .as_ref()
                    .is_some_and(|s| !s.previous_keys.is_empty())
            })
            .await?;
        }
        let pending = self
            .fixture(
                "A key whose Secret was deleted: it was replaced, and the replaced key is still \
                 in status.previousKeys because Imburse failed the revocation (503).",
                "previous-key-pending",
                tenant::PREVIOUS_KEY_PENDING,
                self.live_secret("previous-key-pending").await?,
            )
            .await?;
        let previous: BTreeSet<String> = self
            .env
            .keys(NS)
            .get("previous-key-pending")
            .await?
            .status
            .map(|s| s.previous_keys.into_iter().map(|p| p.public_key).collect())
            .unwrap_or_default();
        fixtures.push((
            "previous-key-pending",
            pending.expecting(Expect {
                keys_revoked: previous,
                ..Expect::nothing()
            }),
        ));

        // A crash after the Secret write of a replacement leaves the new Secret and the open
        // intent, with the status still on the replaced key.
        let mut with_secret_replacement = self
            .fixture(
                "A replacement (the Secret was deleted) interrupted after the new Secret was \
                 written, before the status recorded it: the status still has the replaced \
                 key. Assembled from the same resource before and after a real replacement.",
                "intent-open-with-secret-replacement",
                tenant::WITH_SECRET_REPLACEMENT,
                self.live_secret("intent-open-with-secret-replacement")
                    .await?,
            )
            .await?
            .expecting(Expect {
                keys_revoked: BTreeSet::from([replaced_key]),
                ..Expect::nothing()
            });
        reopen_intent(&mut with_secret_replacement.key, replaced_status)?;
        fixtures.push((
            "intent-open-with-secret-replacement",
            with_secret_replacement,
        ));
        env.sandbox.admin().set_faults(&Faults::default()).await?;

        // Creates answer late, and the operator is killed while they are in flight: the keys
        // exist at Imburse, their private keys nowhere else.
        env.sandbox
            .admin()
            .set_faults(&Faults {
                create_response_delay_ms: 120_000,
                ..Faults::default()
            })
            .await?;
        env.secrets(NS)
            .delete(
                "intent-open-without-secret-replacement",
                &DeleteParams::default(),
            )
            .await?;
        env.create_key(
            NS,
            "intent-open-without-secret",
            &tenant_id(tenant::WITHOUT_SECRET),
            json!({}),
        )
        .await?;
        poll(
            || async {
                Ok(env
                    .sandbox_keys(&tenant_id(tenant::WITHOUT_SECRET))
                    .await?
                    .len()
                    == 1
                    && env
                        .sandbox_keys(&tenant_id(tenant::WITHOUT_SECRET_REPLACEMENT))
                        .await?
                        .len()
                        == 2)
            },
            "the interrupted creates to reach the sandbox",
        )
        .await?;
        env.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        for (name, i, description) in [
            (
                "intent-open-without-secret",
                tenant::WITHOUT_SECRET,
                "A first create interrupted after Imburse created the key, before the Secret \
                 write (the operator was killed while the create response was delayed): the \
                 created key is an orphan.",
            ),
            (
                "intent-open-without-secret-replacement",
                tenant::WITHOUT_SECRET_REPLACEMENT,
                "A replacement (the Secret was deleted) interrupted after Imburse created the \
                 new key, before the Secret write (the operator was killed while the create \
                 response was delayed): the new key is an orphan, the status still has the \
                 replaced key.",
            ),
        ] {
            ensure!(
                self.live_secret(name).await?.is_none(),
                "{name}: a Secret was written before the kill"
            );
            let mut fixture = self.fixture(description, name, i, None).await?;
            // The orphan and, for a replacement, the key it replaces.
            let every_key = fixture
                .sandbox
                .keys
                .iter()
                .map(|k| k.public_key.clone())
                .collect();
            fixture = fixture.expecting(Expect {
                keys_created: 1,
                keys_revoked: every_key,
                secret: SecretOutcome::Written,
                resource: ResourceOutcome::Ready,
            });
            fixtures.push((name, fixture));
        }
        for (_, fixture) in &fixtures {
            fixture.check()?;
        }
        Ok(fixtures)
    }

    /// The state of key `name` now, with the Secret given and its tenant's keys at the sandbox.
    async fn fixture(
        &self,
        description: &str,
        name: &str,
        tenant: usize,
        secret: Option<Secret>,
    ) -> Result<Fixture> {
        let config = &self.env.config;
        let tenant_id = self.env.tenant(0, tenant);
        let keys: Vec<TenantKey> = imburse_sandbox::state_keys(&self.state_file)?
            .into_iter()
            .filter(|k| k.tenant_id == tenant_id)
            .collect();
        let mut credentials = self.env.secrets(NS).get("imburse-credentials").await?;
        fixture::strip_server_fields(&mut credentials.metadata);
        let mut account = dynamic::<ImburseAccount>(self.env).get("imburse").await?;
        fixture::strip_server_fields(&mut account.metadata);
        Ok(Fixture {
            operator_version: env!("CARGO_PKG_VERSION").into(),
            commit: self.commit.clone(),
            description: description.into(),
            field_manager: FIELD_MANAGER.into(),
            sandbox_url: self.env.sandbox.base_url(),
            sandbox: Config {
                token_lifetime_seconds: config.token_lifetime_seconds,
                accounts: config.accounts.clone(),
                tenants: config
                    .tenants
                    .iter()
                    .filter(|t| t.tenant_id == tenant_id)
                    .cloned()
                    .collect(),
                keys,
            },
            credentials,
            account,
            key: self.live_key(name).await?,
            secret,
            delete_before_start: false,
            expect: Expect::nothing(),
        })
    }

    /// A key rotated on request, its replaced key in a one-hour grace period, with a rotation
    /// schedule and a restart target that does not exist (so the rollout condition reports
    /// it skipped).
    async fn rotated_in_grace(&self) -> Result<Fixture> {
        let name = "rotated-in-grace";
        let keys = self.env.keys(NS);
        keys.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "metadata": { "annotations": {
                tenant_key_api::crd::ROTATE_REQUESTED_AT_ANNOTATION: "2026-11-27T12:00:00Z",
            } } })),
        )
        .await?;
        let rotated = wait_for(&keys, name, |k| {
            k.status.as_ref().is_some_and(|s| {
                s.last_handled_rotate_request.is_some() && s.previous_keys.len() == 1
            })
        })
        .await?;
        let previous: BTreeSet<String> = rotated
            .status
            .map(|s| s.previous_keys.into_iter().map(|p| p.public_key).collect())
            .unwrap_or_default();
        // The replaced key is due once its grace period has passed, which it has by the time
        // a replay runs, or is still in it: either way it is the one to revoke.
        Ok(self
            .fixture(
                "A Ready key rotated on request, with an interval, a one-hour grace period \
                 for the replaced key and a rollout restart target that does not exist.",
                name,
                tenant::ROTATED,
                self.live_secret(name).await?,
            )
            .await?
            .expecting(Expect {
                keys_revoked: previous,
                ..Expect::nothing()
            }))
    }

    async fn live_key(&self, name: &str) -> Result<DynamicObject> {
        let mut key = dynamic::<TenantSecurityKey>(self.env).get(name).await?;
        let uid = key.metadata.uid.take();
        fixture::strip_server_fields(&mut key.metadata);
        // Recorded values name the resource by its uid; the replay maps it to the new one's.
        key.metadata.uid = uid;
        Ok(key)
    }

    async fn live_secret(&self, name: &str) -> Result<Option<Secret>> {
        let secret_name = self
            .env
            .keys(NS)
            .get(name)
            .await?
            .spec
            .secret
            .and_then(|s| s.name)
            .unwrap_or_else(|| name.to_owned());
        let mut secret = self.env.secrets(NS).get_opt(&secret_name).await?;
        if let Some(secret) = secret.as_mut() {
            fixture::strip_server_fields(&mut secret.metadata);
        }
        Ok(secret)
    }
}

impl Fixture {
    fn expecting(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

impl Expect {
    /// Nothing created, nothing revoked, the Secret untouched, the key Ready.
    fn nothing() -> Self {
        Self {
            keys_created: 0,
            keys_revoked: BTreeSet::new(),
            secret: SecretOutcome::Unchanged,
            resource: ResourceOutcome::Ready,
        }
    }
}

fn dynamic<K: kube::Resource<DynamicType = ()>>(env: &Env) -> Api<DynamicObject> {
    Api::namespaced_with(env.client.clone(), NS, &ApiResource::erase::<K>(&()))
}

/// Turns the status of a key that recorded its new key back into the open intent that the
/// record closed, on top of `before` (the status before the attempt, or none for a first
/// create): what a crash between the Secret write and the status write leaves.
fn reopen_intent(key: &mut DynamicObject, before: Option<serde_json::Value>) -> Result<()> {
    let after = &key.data["status"];
    let field = |name: &str| after[name].clone();
    let intent = json!({
        "attempt": field("attempt"),
        "name": field("keyName"),
        "tenantId": field("tenantId"),
        "roles": field("roles"),
        "accountRef": field("accountRef"),
        "endpoint": field("endpoint"),
        "credentialsFingerprint": field("credentialsFingerprint"),
    });
    ensure!(
        intent
            .as_object()
            .is_some_and(|i| i.values().all(|v| !v.is_null())),
        "the status records no complete key: {after}"
    );
    let mut status = before.unwrap_or_else(|| json!({}));
    status["pendingCreate"] = intent;
    key.data["status"] = status;
    Ok(())
}

fn public_key(key: &DynamicObject) -> Result<String> {
    key.data["status"]["publicKey"]
        .as_str()
        .map(str::to_owned)
        .context("the key has no status.publicKey")
}
