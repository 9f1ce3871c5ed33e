//! API versions: v1alpha1 and v1beta1 are served with the same fields, v1alpha1 with its
//! deprecation warning, and an account without `baseUrl` is refused at v1beta1 and defaulted
//! at v1alpha1.

mod support;

use anyhow::{Result, bail, ensure};
use imburse_sandbox::Config;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{Env, TestFn, no_secret_in_logs_events_or_status};
use tenant_key_api::crd::{self, DEFAULT_BASE_URL, ImburseAccount};

fn main() -> std::process::ExitCode {
    let start = || Env::start(Config::generate(1, 1));
    let at_once: Vec<(&str, TestFn)> = testenv::named_tests![both_versions_are_served];
    // Last: scans what every test above made the operator write.
    let last: Vec<(&str, TestFn)> = testenv::named_tests![no_secret_in_logs_events_or_status];
    support::run_suites(start, at_once, last)
}

/// Both versions are served with the same fields (conversion `None`): a key created at
/// v1alpha1 is made by the operator, which reads and writes v1beta1, and what either version
/// writes the other reads. v1alpha1 answers with its deprecation warning. A v1beta1 account
/// without `baseUrl` is refused with the hosts to choose from; v1alpha1 defaults it.
fn both_versions_are_served(env: &Env) -> Result<()> {
    env.block_on(async {
        let ns = "versions";
        env.namespace_with_account(ns, 0).await?;
        let tenant = env.tenant(0, 0);
        let at_v1alpha1 = |kind: &str| {
            ApiResource::from_gvk(&GroupVersionKind::gvk(
                crd::GROUP,
                crd::DEPRECATED_VERSION,
                kind,
            ))
        };
        let old = at_v1alpha1("TenantSecurityKey");
        let old_keys: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), ns, &old);
        let alpha: DynamicObject = serde_json::from_value(json!({
            "apiVersion": old.api_version,
            "kind": old.kind,
            "metadata": { "name": "from-alpha" },
            "spec": {
                "accountRef": { "kind": "ImburseAccount", "name": "imburse" },
                "tenantId": tenant,
                "roles": ["tenant-admin"],
            },
        }))?;
        old_keys.create(&PostParams::default(), &alpha).await?;
        let ready = env.wait_ready(ns, "from-alpha").await?;
        let interval = json!({"spec": {"rotation": {"interval": "720h"}}});
        env.keys(ns)
            .patch("from-alpha", &PatchParams::default(), &Patch::Merge(&interval))
            .await?;
        let read = old_keys.get("from-alpha").await?;
        ensure!(
            read.data["spec"]["rotation"]["interval"] == "720h"
                && read.data["status"]["publicKey"].as_str()
                    == ready.status.as_ref().and_then(|s| s.public_key.as_deref()),
            "v1alpha1 reads {read:?}"
        );

        // The other way round, for a key no account serves (the operator only reports it).
        env.create_key(ns, "from-beta", &tenant, json!({"accountRef": {"name": "none"}}))
            .await?;
        old_keys
            .patch("from-beta", &PatchParams::default(), &Patch::Merge(&interval))
            .await?;
        let read = env.keys(ns).get("from-beta").await?;
        ensure!(
            read.spec
                .rotation
                .as_ref()
                .and_then(|r| r.interval.as_deref())
                == Some("720h"),
            "v1beta1 reads {:?}",
            read.spec
        );

        let warnings = |version: &str| {
            let path = format!(
                "/apis/{}/{version}/namespaces/{ns}/tenantsecuritykeys/from-alpha",
                crd::GROUP
            );
            async move {
                let request = http::Request::get(path).body(kube::client::Body::empty())?;
                let response = env.client.send(request).await?;
                ensure!(response.status().is_success(), "GET answered {}", response.status());
                anyhow::Ok(
                    response
                        .headers()
                        .get_all("warning")
                        .iter()
                        .filter_map(|v| v.to_str().ok().map(str::to_owned))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let deprecated = warnings(crd::DEPRECATED_VERSION).await?;
        ensure!(
            deprecated.iter().any(|w| w.contains(
                "imbursepayments.com/v1alpha1 TenantSecurityKey is deprecated; use imbursepayments.com/v1beta1 TenantSecurityKey"
            )),
            "v1alpha1 warned {deprecated:?}"
        );
        let current = warnings(crd::VERSION).await?;
        ensure!(current.is_empty(), "v1beta1 warned {current:?}");

        let without_base_url = |api_version: &str, spec: serde_json::Value| {
            serde_json::from_value::<DynamicObject>(json!({
                "apiVersion": api_version,
                "kind": "ImburseAccount",
                "metadata": { "name": "no-base-url" },
                "spec": spec,
            }))
        };
        let credentials = json!({ "credentialsSecretRef": { "name": "absent" } });
        let accounts: Api<DynamicObject> = Api::namespaced_with(
            env.client.clone(),
            ns,
            &ApiResource::erase::<ImburseAccount>(&()),
        );
        let current = format!("{}/{}", crd::GROUP, crd::VERSION);
        for spec in [
            credentials.clone(),
            json!({ "baseUrl": null, "credentialsSecretRef": { "name": "absent" } }),
        ] {
            match accounts
                .create(&PostParams::default(), &without_base_url(&current, spec.clone())?)
                .await
            {
                Err(kube::Error::Api(status)) => ensure!(
                    status.code == 422
                        && status.message.contains("spec.baseUrl")
                        && status.message.contains("https://api.imbursepayments.com")
                        && status.message.contains(DEFAULT_BASE_URL),
                    "{spec} refused with {status:?}"
                ),
                other => bail!("a v1beta1 account {spec} was not refused: {other:?}"),
            }
        }
        let old = at_v1alpha1("ImburseAccount");
        // A dry run: the operator is not to reach the real sandbox with it.
        let defaulted = Api::<DynamicObject>::namespaced_with(env.client.clone(), ns, &old)
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &without_base_url(&old.api_version, credentials)?,
            )
            .await?;
        ensure!(
            defaulted.data["spec"]["baseUrl"] == DEFAULT_BASE_URL,
            "v1alpha1 defaulted to {}",
            defaulted.data["spec"]
        );
        Ok(())
    })
}
