//! Acting on someone else's object needs that object's consent, given on the object by whoever
//! may write it: adopting a Secret (`imbursepayments.com/adopt-by`) and restarting a workload
//! (`imbursepayments.com/restart-for`). Each test on the real control plane and the sandbox,
//! one at a time against one environment.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use imburse_sandbox::Config;
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::Deployment,
    core::v1::Secret,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Env, TestFn, create_secret, deployment, expect_single_key, poll, public_key, request_rotation,
    template_state, wait_for, wait_replaced,
};
use tenant_key_api::crd::TenantSecurityKey;

fn main() -> std::process::ExitCode {
    let start = || Env::start(Config::generate(1, 4));
    let tests: Vec<(&str, TestFn)> = testenv::named_tests![
        an_admins_secret_is_adopted_only_with_its_consent_and_keeps_its_entries,
        a_restart_denied_by_admission_does_not_hold_the_revocation,
        a_workload_without_consent_is_not_restarted,
    ];
    support::run_suite(start, tests)
}

fn entry(secret: &Secret, name: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(name)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

fn condition(key: &TenantSecurityKey, type_: &str) -> Option<(String, String, String)> {
    key.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// An admin's Secret holds a hand-made key and a database password. A resource that asks to
/// adopt it is refused until the Secret consents (no key revoked, nothing deleted when the
/// resource goes); the consent alone wakes the resource, which then adopts the key without
/// touching the password, also when the key is rotated; deleting the resource then removes only
/// the key's entries.
fn an_admins_secret_is_adopted_only_with_its_consent_and_keeps_its_entries(
    env: &Env,
) -> Result<()> {
    env.block_on(async {
        let ns = "consent-adopt";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        let made = env.key_by_hand(&tenant, "Admin Key").await?;
        let private_key = secrecy::ExposeSecret::expose_secret(&made.private_key).to_owned();
        create_secret(
            &env.client,
            ns,
            "app-config",
            BTreeMap::from([
                ("publicKey".to_owned(), made.public_key.clone()),
                ("privateKey".to_owned(), private_key),
                ("DB_PASSWORD".to_owned(), "correct horse".to_owned()),
            ]),
        )
        .await?;
        let original = env.secrets(ns).get("app-config").await?;
        let spec = json!({ "adopt": true, "secret": { "name": "app-config" } });

        env.create_key(ns, "payments", &tenant, spec.clone())
            .await?;
        let refused = env.wait_reason(ns, "payments", "AdoptionRefused").await?;
        let (_, _, message) = condition(&refused, "Ready").context("Ready")?;
        ensure!(
            message.contains("imbursepayments.com/adopt-by=payments"),
            "the refusal does not say how to consent: {message}"
        );
        env.wait_event(ns, "payments", "AdoptionRefused").await?;
        // Permanent: the resource is not reconciled in a loop.
        let version = refused.resource_version();
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(env.keys(ns).get("payments").await?.resource_version() == version);
        env.delete_key(ns, "payments").await?;
        env.wait_gone(ns, "payments").await?;
        let kept = env.secrets(ns).get("app-config").await?;
        ensure!(kept.data == original.data, "the refused Secret was changed");
        ensure!(kept.owner_references().is_empty() && kept.labels().is_empty());
        ensure!(
            env.sandbox_keys(&tenant).await? == [made.public_key.clone()],
            "the admin's key was revoked"
        );

        env.create_key(ns, "payments", &tenant, spec).await?;
        env.wait_reason(ns, "payments", "AdoptionRefused").await?;
        env.secrets(ns)
            .patch(
                "app-config",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": {
                    "imbursepayments.com/adopt-by": "payments",
                } } })),
            )
            .await?;
        ensure!(expect_single_key(env, ns, "payments", &tenant).await? == made.public_key);
        let adopted = env.secrets(ns).get("app-config").await?;
        ensure!(entry(&adopted, "DB_PASSWORD").as_deref() == Some("correct horse"));
        ensure!(
            adopted.owner_references().is_empty(),
            "a Secret holding entries of others must not be left to the garbage collector"
        );
        let uid = env.keys(ns).get("payments").await?.uid();
        ensure!(adopted.annotations().get("imbursepayments.com/owner-uid") == uid.as_ref());

        request_rotation(env, ns, "payments", "once").await?;
        let rotated = wait_replaced(env, ns, "payments", &made.public_key).await?;
        let new_key = public_key(&rotated).context("public key")?.to_owned();
        expect_single_key(env, ns, "payments", &tenant).await?;
        let rewritten = env.secrets(ns).get("app-config").await?;
        ensure!(entry(&rewritten, "publicKey").as_deref() == Some(new_key.as_str()));
        ensure!(
            entry(&rewritten, "DB_PASSWORD").as_deref() == Some("correct horse"),
            "the rewrite lost the admin's entry"
        );
        // Settled: the entries of others do not make the layout look wrong.
        let version = rewritten.resource_version();
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(env.secrets(ns).get("app-config").await?.resource_version() == version);

        env.delete_key(ns, "payments").await?;
        env.wait_gone(ns, "payments").await?;
        ensure!(env.sandbox_keys(&tenant).await?.is_empty());
        let left = env.secrets(ns).get("app-config").await?;
        let entries: Vec<_> = left
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        ensure!(entries == ["DB_PASSWORD"], "left entries {entries:?}");
        ensure!(entry(&left, "DB_PASSWORD").as_deref() == Some("correct horse"));
        ensure!(
            !left.labels().contains_key("app.kubernetes.io/managed-by")
                && !left
                    .annotations()
                    .contains_key("imbursepayments.com/owner-uid"),
            "the operator's marks remain"
        );
        Ok(())
    })
}

/// Freezes the pod template of the Deployment `name` in namespace `ns`, as a cluster admin
/// might; returns once the API server enforces it.
async fn freeze_pod_template(env: &Env, ns: &str, name: &str) -> Result<()> {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": { "name": "freeze-pod-template" },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["UPDATE"],
                "resources": ["deployments"],
            }] },
            "validations": [{
                "expression": format!(
                    "object.metadata.name != '{name}' || object.spec.template == oldObject.spec.template"
                ),
                "message": "the pod template is frozen",
            }],
        },
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": { "name": "freeze-pod-template" },
        "spec": {
            "policyName": "freeze-pod-template",
            "validationActions": ["Deny"],
            "matchResources": { "namespaceSelector": { "matchLabels": {
                "kubernetes.io/metadata.name": ns,
            } } },
        },
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    let probe = json!({ "spec": { "template": { "metadata": { "annotations": {
        "probe": "1",
    } } } } });
    poll(
        || async {
            match deployments
                .patch(
                    name,
                    &PatchParams::default().dry_run(),
                    &Patch::Merge(&probe),
                )
                .await
            {
                Ok(_) => Ok(false),
                Err(kube::Error::Api(e)) if e.code == 422 => Ok(true),
                Err(e) => Err(e.into()),
            }
        },
        "the admission policy to be enforced",
    )
    .await
}

/// A restart target whose pod template an admission policy freezes (422) is reported as
/// skipped; the key stays Ready and the replaced key is still revoked after its grace period.
fn a_restart_denied_by_admission_does_not_hold_the_revocation(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "consent-denied";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 1);
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
        deployments
            .create(
                &PostParams::default(),
                &deployment("web", Some("rotating"))?,
            )
            .await?;
        freeze_pod_template(env, ns, "web").await?;
        env.create_key(
            ns,
            "rotating",
            &tenant,
            json!({
                "rotation": { "gracePeriod": "3s" },
                "rolloutRestartTargets": [{ "kind": "Deployment", "name": "web" }],
            }),
        )
        .await?;
        let first = expect_single_key(env, ns, "rotating", &tenant).await?;
        request_rotation(env, ns, "rotating", "once").await?;
        wait_replaced(env, ns, "rotating", &first).await?;
        // Only the new key is left: the old one was revoked once its grace period ended.
        let second = expect_single_key(env, ns, "rotating", &tenant).await?;
        let key = wait_for(&env.keys(ns), "rotating", |k| {
            k.status
                .as_ref()
                .is_some_and(|s| s.previous_keys.is_empty())
        })
        .await?;
        ensure!(public_key(&key) == Some(second.as_str()));
        let (state, reason, message) =
            condition(&key, "RolloutRestarted").context("RolloutRestarted")?;
        ensure!(
            state == "False"
                && reason == "TargetSkipped"
                && message.contains("the pod template is frozen"),
            "RolloutRestarted is {state} {reason}: {message}"
        );
        env.wait_event(ns, "rotating", "RolloutTargetSkipped")
            .await?;
        ensure!(template_state(&deployments, "web").await?.0.is_none());
        Ok(())
    })
}

/// Only the listed workload whose restart-for annotation names the key is restarted; one
/// without the annotation, or naming another key, is skipped with a message naming it.
fn a_workload_without_consent_is_not_restarted(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "consent-restart";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 2);
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
        for (name, restart_for) in [
            ("consenting", Some("restarting")),
            ("unasked", None),
            ("elsewhere", Some("reporting")),
        ] {
            deployments
                .create(&PostParams::default(), &deployment(name, restart_for)?)
                .await?;
        }
        let generations = [
            template_state(&deployments, "unasked").await?,
            template_state(&deployments, "elsewhere").await?,
        ];
        env.create_key(
            ns,
            "restarting",
            &tenant,
            json!({ "rolloutRestartTargets": [
                { "kind": "Deployment", "name": "consenting" },
                { "kind": "Deployment", "name": "unasked" },
                { "kind": "Deployment", "name": "elsewhere" },
            ] }),
        )
        .await?;
        let first = expect_single_key(env, ns, "restarting", &tenant).await?;
        request_rotation(env, ns, "restarting", "once").await?;
        let rotated = wait_replaced(env, ns, "restarting", &first).await?;
        let fingerprint = rotated
            .status
            .as_ref()
            .and_then(|s| s.fingerprint.clone())
            .context("fingerprint")?;
        poll(
            || async {
                Ok(template_state(&deployments, "consenting")
                    .await?
                    .0
                    .as_deref()
                    == Some(fingerprint.as_str()))
            },
            "the consenting Deployment to carry the new fingerprint",
        )
        .await?;
        let key = wait_for(&env.keys(ns), "restarting", |k| {
            condition(k, "RolloutRestarted")
                .is_some_and(|(_, _, m)| m.contains("Deployment/unasked"))
        })
        .await?;
        let (state, reason, message) =
            condition(&key, "RolloutRestarted").context("RolloutRestarted")?;
        ensure!(state == "False" && reason == "TargetSkipped");
        ensure!(
            message.contains("imbursepayments.com/restart-for=restarting")
                && message.contains("Deployment/elsewhere")
                && !message.contains("Deployment/consenting"),
            "{message}"
        );
        env.wait_event(ns, "restarting", "RolloutTargetSkipped")
            .await?;
        ensure!(
            [
                template_state(&deployments, "unasked").await?,
                template_state(&deployments, "elsewhere").await?,
            ] == generations,
            "a workload was restarted without its consent"
        );
        Ok(())
    })
}
