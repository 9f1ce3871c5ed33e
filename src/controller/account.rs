//! Imburse accounts: resolving them for a key, connecting with their credentials, and the
//! reconciler that reports whether their credentials work.

use std::{fmt::Debug, sync::Arc, time::Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, Resource, ResourceExt, runtime::controller::Action};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    Context,
    error::{Error, Result},
    status::{self, Outcome},
};
use crate::crd::{
    AccountKind, AccountRef, AccountSpec, AccountStatus, ApiGeneration, ClusterImburseAccount,
    ImburseAccount,
};

/// Behaviour shared by `ImburseAccount` and `ClusterImburseAccount`.
pub trait AccountResource:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    fn account_spec(&self) -> &AccountSpec;
    fn account_status(&self) -> Option<&AccountStatus>;
    /// Namespace of the credentials Secret.
    fn secret_namespace(&self, ctx: &Context) -> String;
    fn api(ctx: &Context, namespace: Option<&str>) -> Api<Self>;
}

impl AccountResource for ImburseAccount {
    const KIND: &'static str = "ImburseAccount";

    fn account_spec(&self) -> &AccountSpec {
        &self.spec.account
    }

    fn account_status(&self) -> Option<&AccountStatus> {
        self.status.as_ref()
    }

    fn secret_namespace(&self, _: &Context) -> String {
        self.namespace().unwrap_or_default()
    }

    fn api(ctx: &Context, namespace: Option<&str>) -> Api<Self> {
        match namespace {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        }
    }
}

impl AccountResource for ClusterImburseAccount {
    const KIND: &'static str = "ClusterImburseAccount";

    fn account_spec(&self) -> &AccountSpec {
        &self.spec.account
    }

    fn account_status(&self) -> Option<&AccountStatus> {
        self.status.as_ref()
    }

    fn secret_namespace(&self, ctx: &Context) -> String {
        ctx.settings.cluster_account_secret_namespace.clone()
    }

    fn api(ctx: &Context, _: Option<&str>) -> Api<Self> {
        Api::all(ctx.client.clone())
    }
}

/// An account a key may use, with where its credentials are.
pub struct ResolvedAccount {
    pub spec: AccountSpec,
    pub secret_namespace: String,
    kind: &'static str,
    name: String,
    ready: bool,
}

impl ResolvedAccount {
    /// Refuses accounts whose base URL the operator does not allow, so that a key reports it
    /// even while it needs no Imburse call.
    fn from_resource<A: AccountResource>(account: &A, ctx: &Context) -> Result<Self> {
        let spec = account.account_spec();
        ctx.settings
            .allowed_imburse_hosts
            .check(spec.effective_base_url())?;
        let ready = account.account_status().is_some_and(|s| {
            s.observed_generation == account.meta().generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == status::READY && c.status == "True")
        });
        Ok(Self {
            spec: spec.clone(),
            secret_namespace: account.secret_namespace(ctx),
            kind: A::KIND,
            name: account.name_any(),
            ready,
        })
    }

    /// Checks that the account allows a key for this tenant with these roles. Only creating
    /// keys is gated: revoking a key the account no longer allows must keep working.
    pub fn authorize(&self, tenant_id: &str, roles: &[String]) -> Result<()> {
        if !self.spec.allows_tenant(tenant_id) {
            return Err(Error::TenantNotAllowed {
                kind: self.kind,
                name: self.name.clone(),
                tenant_id: tenant_id.into(),
            });
        }
        let refused = self.spec.disallowed_roles(roles);
        if !refused.is_empty() {
            return Err(Error::RolesNotAllowed {
                kind: self.kind,
                name: self.name.clone(),
                roles: refused.into_iter().map(Into::into).collect(),
            });
        }
        Ok(())
    }

    /// Connects, refusing accounts whose credentials have not been verified yet.
    pub async fn connect(&self, ctx: &Context) -> Result<imburse::AccountClient> {
        if !self.ready {
            return Err(Error::AccountNotReady {
                kind: self.kind,
                name: self.name.clone(),
            });
        }
        connect(ctx, &self.spec, &self.secret_namespace).await
    }
}

/// Finds the account a key in `namespace` refers to and checks that the key may use it.
pub async fn resolve(
    ctx: &Context,
    namespace: &str,
    account_ref: &AccountRef,
) -> Result<ResolvedAccount> {
    match account_ref.kind {
        AccountKind::ImburseAccount => {
            let account = ImburseAccount::api(ctx, Some(namespace))
                .get_opt(&account_ref.name)
                .await?
                .ok_or_else(|| not_found::<ImburseAccount>(&account_ref.name, Some(namespace)))?;
            ResolvedAccount::from_resource(&account, ctx)
        }
        AccountKind::ClusterImburseAccount => {
            let account = ClusterImburseAccount::api(ctx, None)
                .get_opt(&account_ref.name)
                .await?
                .ok_or_else(|| not_found::<ClusterImburseAccount>(&account_ref.name, None))?;
            let allowed = &account.spec.allowed_namespaces;
            let permitted = allowed.names.iter().any(|n| n == namespace)
                || (allowed.selector.is_some() && {
                    let ns = Api::<Namespace>::all(ctx.client.clone())
                        .get(namespace)
                        .await?;
                    allowed.allows(namespace, ns.labels())
                });
            if !permitted {
                return Err(Error::NamespaceNotAllowed {
                    namespace: namespace.into(),
                    name: account_ref.name.clone(),
                });
            }
            ResolvedAccount::from_resource(&account, ctx)
        }
    }
}

fn not_found<A: AccountResource>(name: &str, namespace: Option<&str>) -> Error {
    Error::AccountNotFound {
        kind: A::KIND,
        name: name.into(),
        namespace: namespace.map(Into::into),
    }
}

/// Reads the credentials Secret and returns the Imburse client for the account. Tokens are
/// cached inside the Imburse client per credentials, so connecting again costs no API call.
/// The base URL is checked first: credentials are not even read for a host not allowed.
pub async fn connect(
    ctx: &Context,
    spec: &AccountSpec,
    secret_namespace: &str,
) -> Result<imburse::AccountClient> {
    ctx.settings
        .allowed_imburse_hosts
        .check(spec.effective_base_url())?;
    if spec.effective_api_generation() == ApiGeneration::Current && spec.account_id.is_none() {
        return Err(Error::InvalidSpec(
            "accountId is required when apiGeneration is current".into(),
        ));
    }
    let secret_ref = &spec.credentials_secret_ref;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), secret_namespace)
        .get_opt(&secret_ref.name)
        .await?
        .ok_or_else(|| Error::CredentialsSecretNotFound {
            namespace: secret_namespace.into(),
            name: secret_ref.name.clone(),
        })?;
    let entry = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::CredentialsInvalid(format!(
                    "Secret {secret_namespace}/{} has no non-empty UTF-8 entry {key:?}",
                    secret_ref.name
                ))
            })
    };
    let credentials = imburse::KeyPair::new(
        entry(secret_ref.effective_public_key_key())?,
        imburse::SecretString::from(entry(secret_ref.effective_private_key_key())?),
    );
    credentials.validate().map_err(|e| {
        Error::CredentialsInvalid(format!(
            "Secret {secret_namespace}/{}: {e}",
            secret_ref.name
        ))
    })?;
    Ok(ctx.imburse.account(imburse::AccountConfig {
        base_url: spec.effective_base_url().to_owned(),
        generation: spec.effective_api_generation().into(),
        account_id: spec.account_id.clone(),
        credentials,
    })?)
}

/// Reconciles either account kind: verifies the credentials and reports the result.
pub async fn reconcile<A: AccountResource>(account: Arc<A>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = verify(account.as_ref(), &ctx).await;
    let outcome = match &result {
        Ok(()) => Outcome::Ready {
            reason: "CredentialsVerified",
            message: "a management token was obtained with these credentials",
        },
        Err(e) => Outcome::Failed(e),
    };
    let previous = account.account_status().cloned().unwrap_or_default();
    let mut next = previous.clone();
    next.observed_generation = account.meta().generation;
    status::set_outcome(
        &mut next.conditions,
        &outcome,
        account.meta().generation,
        &status::now(),
    );
    let name = account.name_any();
    if next != previous {
        let api = A::api(&ctx, account.namespace().as_deref());
        status::apply_status(&ctx, &api, &name, &next).await?;
        let (warning, reason, note) = match &result {
            Ok(()) => (
                false,
                "CredentialsVerified",
                "credentials verified".to_owned(),
            ),
            Err(e) => (true, e.reason().as_str(), e.event_note()),
        };
        if ready_reason(&previous) != ready_reason(&next) {
            status::publish(
                &ctx,
                account.as_ref(),
                warning,
                reason,
                "VerifyCredentials",
                note,
            )
            .await;
        }
    }
    let label = result.as_ref().map_or_else(|e| e.metric_label(), |()| "ok");
    ctx.metrics
        .observe_reconcile(A::KIND, label, started.elapsed());
    match result {
        Ok(()) => Ok(Action::await_change()),
        Err(e) => {
            tracing::warn!(
                kind = A::KIND,
                %name,
                reason = e.reason().as_str(),
                error = %e,
                correlation_id = e.correlation_id(),
                permanent = e.is_permanent(),
                "account not ready"
            );
            if e.is_permanent() {
                Ok(Action::await_change())
            } else {
                Err(e)
            }
        }
    }
}

fn ready_reason(status: &AccountStatus) -> Option<(&str, &str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == status::READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

async fn verify<A: AccountResource>(account: &A, ctx: &Context) -> Result<()> {
    let client = connect(ctx, account.account_spec(), &account.secret_namespace(ctx)).await?;
    client.verify_credentials().await?;
    Ok(())
}
