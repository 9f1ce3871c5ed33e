//! Imburse accounts: resolving them for a key, connecting with their credentials, and the
//! reconciler that reports whether their credentials work.

use std::{
    fmt::Debug,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tenant_key_api::crd::{
    AccountKind, AccountRef, AccountSpec, AccountStatus, ApiGeneration, Audit,
    ClusterImburseAccount, Endpoint, ImburseAccount,
};

use super::{
    AccountStores, Context,
    error::{Error, Reason, Result},
    finalizer, inventory,
    status::{self, Outcome},
};

/// Behaviour shared by `ImburseAccount` and `ClusterImburseAccount`.
pub trait AccountResource:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    const ACCOUNT_KIND: AccountKind;
    fn account_spec(&self) -> &AccountSpec;
    fn account_status(&self) -> Option<&AccountStatus>;
    /// Namespace of the credentials Secret.
    fn secret_namespace(&self, ctx: &Context) -> String;
    fn api(ctx: &Context, namespace: Option<&str>) -> Api<Self>;
    /// The caches this kind is held in.
    fn stores(stores: &AccountStores) -> Vec<&Store<Self>>;
}

impl AccountResource for ImburseAccount {
    const KIND: &'static str = "ImburseAccount";
    const ACCOUNT_KIND: AccountKind = AccountKind::ImburseAccount;

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

    fn stores(stores: &AccountStores) -> Vec<&Store<Self>> {
        stores.namespaced.iter().collect()
    }
}

impl AccountResource for ClusterImburseAccount {
    const KIND: &'static str = "ClusterImburseAccount";
    const ACCOUNT_KIND: AccountKind = AccountKind::ClusterImburseAccount;

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

    fn stores(stores: &AccountStores) -> Vec<&Store<Self>> {
        vec![&stores.cluster]
    }
}

/// Finalizer on an account and on its credentials Secret while TenantSecurityKeys refer to
/// the account: deleting a namespace deletes all three at once, and the keys can only be
/// revoked while the account and its credentials are still there.
pub const IN_USE_FINALIZER: &str = "imbursepayments.com/in-use";

/// An account a key may use, with where its credentials are.
pub struct ResolvedAccount {
    pub spec: AccountSpec,
    pub secret_namespace: String,
    kind: AccountKind,
    name: String,
    /// Set for namespaced accounts.
    namespace: Option<String>,
    ready: bool,
    /// The account carries [`IN_USE_FINALIZER`].
    held: bool,
}

impl ResolvedAccount {
    /// Refuses accounts whose base URL the operator does not allow, so that a key reports it
    /// even while it needs no Imburse call.
    fn from_resource<A: AccountResource>(account: &A, ctx: &Context) -> Result<Self> {
        ctx.settings
            .allowed_imburse_hosts
            .check(account.account_spec().effective_base_url())?;
        Ok(Self::describe(account, ctx))
    }

    /// The account as it is, allowed or not.
    fn describe<A: AccountResource>(account: &A, ctx: &Context) -> Self {
        let spec = account.account_spec();
        // Deletion bumps the generation without changing the spec, and a deleting account is
        // not verified again: its last verdict stands while its keys are revoked.
        let deleting = account.meta().deletion_timestamp.is_some();
        let ready = account.account_status().is_some_and(|s| {
            (deleting || s.observed_generation == account.meta().generation)
                && tenant_key_api::crd::is_true(&s.conditions, status::READY)
        });
        Self {
            spec: spec.clone(),
            secret_namespace: account.secret_namespace(ctx),
            kind: A::ACCOUNT_KIND,
            name: account.name_any(),
            namespace: account.namespace(),
            ready,
            held: account.finalizers().iter().any(|f| f == IN_USE_FINALIZER),
        }
    }

    /// Checks that the account allows a key for this tenant with these roles. Only creating
    /// keys is gated: revoking a key the account no longer allows must keep working.
    pub fn authorize(&self, tenant_id: &str, roles: &[String]) -> Result<()> {
        if !self.spec.allows_tenant(tenant_id) {
            return Err(Error::TenantNotAllowed {
                kind: kind_name(self.kind),
                name: self.name.clone(),
                tenant_id: tenant_id.into(),
            });
        }
        let refused = self.spec.disallowed_roles(roles);
        if !refused.is_empty() {
            return Err(Error::RolesNotAllowed {
                kind: kind_name(self.kind),
                name: self.name.clone(),
                roles: refused.into_iter().map(Into::into).collect(),
            });
        }
        Ok(())
    }

    /// Keeps the account and its credentials Secret from being deleted while keys need them.
    pub async fn hold(&self, ctx: &Context) -> Result<()> {
        if self.held {
            return Ok(());
        }
        self.set_in_use(ctx, true).await
    }

    /// Adds or removes [`IN_USE_FINALIZER`] on the credentials Secret, then on the account. The
    /// account's finalizer is what [`Self::hold`] and [`release_if_unused`] look at, so it goes
    /// last either way: after a crash in between, the next call does both again.
    async fn set_in_use(&self, ctx: &Context, held: bool) -> Result<()> {
        let metrics = &ctx.metrics;
        let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &self.secret_namespace);
        let credentials = &self.spec.credentials_secret_ref.name;
        finalizer::set(&secrets, credentials, IN_USE_FINALIZER, held, metrics).await?;
        match self.kind {
            AccountKind::ImburseAccount => {
                let api = ImburseAccount::api(ctx, self.namespace.as_deref());
                finalizer::set(&api, &self.name, IN_USE_FINALIZER, held, metrics).await?
            }
            AccountKind::ClusterImburseAccount => {
                let api = ClusterImburseAccount::api(ctx, None);
                finalizer::set(&api, &self.name, IN_USE_FINALIZER, held, metrics).await?
            }
        };
        Ok(())
    }

    /// Where keys made with this account live now.
    pub fn endpoint(&self) -> Endpoint {
        endpoint_of(&self.spec)
    }

    /// Connects, refusing accounts whose credentials have not been verified yet.
    pub async fn connect(&self, ctx: &Context) -> Result<imburse::AccountClient> {
        self.connect_at(ctx, &self.endpoint()).await
    }

    /// Connects with this account's credentials to where a key was made, which may be where
    /// the account pointed before a change: a key can only be revoked where it lives.
    pub async fn connect_at(
        &self,
        ctx: &Context,
        endpoint: &Endpoint,
    ) -> Result<imburse::AccountClient> {
        if !self.ready {
            return Err(Error::AccountNotReady {
                kind: kind_name(self.kind),
                name: self.name.clone(),
            });
        }
        connect_to(ctx, &self.spec, &self.secret_namespace, endpoint).await
    }
}

/// The endpoint an account spec points at, normalised so that a trailing slash is no change.
pub fn endpoint_of(spec: &AccountSpec) -> Endpoint {
    Endpoint {
        base_url: spec.effective_base_url().trim_end_matches('/').to_owned(),
        api_generation: spec.effective_api_generation(),
        account_id: spec.account_id.clone(),
    }
}

/// Whether `client` signs with the credentials a key was recorded with (see
/// [`imburse::AccountClient::credentials_fingerprint`]): only they can say the key is gone, as
/// another Imburse account does not know it either. A record without them (keys of versions
/// before 0.4, until their credentials are filled in) cannot tell, and is taken to.
pub fn same_credentials(recorded: Option<&str>, client: &imburse::AccountClient) -> bool {
    recorded.is_none_or(|r| r == client.credentials_fingerprint())
}

/// What a key wants to do with an account: creating keys is checked against what the account
/// allows; revoking is always allowed, since it only ever takes access away (a namespace that
/// lost its permission must still be able to revoke the keys it made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Create,
    Revoke,
}

/// Finds the account a key in `namespace` refers to and checks that the key may use it for
/// `purpose`.
pub async fn resolve(
    ctx: &Context,
    namespace: &str,
    account_ref: &AccountRef,
    purpose: Purpose,
) -> Result<ResolvedAccount> {
    match account_ref.kind {
        AccountKind::ImburseAccount => {
            let account = find::<ImburseAccount>(ctx, Some(namespace), &account_ref.name)
                .await?
                .ok_or_else(|| not_found::<ImburseAccount>(&account_ref.name, Some(namespace)))?;
            ResolvedAccount::from_resource(account.as_ref(), ctx)
        }
        AccountKind::ClusterImburseAccount => {
            let account = find::<ClusterImburseAccount>(ctx, None, &account_ref.name)
                .await?
                .ok_or_else(|| not_found::<ClusterImburseAccount>(&account_ref.name, None))?;
            let allowed = &account.spec.allowed_namespaces;
            let permitted = purpose == Purpose::Revoke
                || allowed.names.iter().any(|n| n == namespace)
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
            ResolvedAccount::from_resource(account.as_ref(), ctx)
        }
    }
}

/// The account named `name` (in `namespace` for namespaced kinds): from the caches, which
/// an account change reaches before it wakes the account's keys, or else from the API
/// server.
async fn find<A: AccountResource>(
    ctx: &Context,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Arc<A>>> {
    let mut reference = ObjectRef::new(name);
    if let Some(ns) = namespace {
        reference = reference.within(ns);
    }
    if let Some(cached) = ctx.cached_account(&reference) {
        return Ok(Some(cached));
    }
    Ok(A::api(ctx, namespace).get_opt(name).await?.map(Arc::new))
}

/// The name of an account kind, for messages and metrics.
pub(super) fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::ImburseAccount => ImburseAccount::KIND,
        AccountKind::ClusterImburseAccount => ClusterImburseAccount::KIND,
    }
}

/// Whether any TenantSecurityKey in the cache refers to the account (`namespace` is set for
/// namespaced accounts), other than the one with uid `except`: in its spec, or as the account
/// of a key it still has to revoke.
fn in_use(
    ctx: &Context,
    kind: AccountKind,
    name: &str,
    namespace: Option<&str>,
    except: Option<&str>,
) -> bool {
    let Some(stores) = ctx.key_stores.get() else {
        return true;
    };
    stores.iter().flat_map(Store::state).any(|k| {
        k.account_refs().any(|r| r.kind == kind && r.name == name)
            && namespace.is_none_or(|ns| k.namespace().as_deref() == Some(ns))
            && k.uid().as_deref() != except
    })
}

/// Lets an account and its credentials go once no TenantSecurityKey refers to it; called when
/// a key is gone (`released`, the uid of that key) and when an account is being deleted.
/// Returns false while the account is still in use.
pub async fn release_if_unused(
    ctx: &Context,
    key_namespace: &str,
    account_ref: &AccountRef,
    released: Option<&str>,
) -> Result<bool> {
    let namespace = match account_ref.kind {
        AccountKind::ImburseAccount => Some(key_namespace),
        AccountKind::ClusterImburseAccount => None,
    };
    if in_use(
        ctx,
        account_ref.kind,
        &account_ref.name,
        namespace,
        released,
    ) {
        return Ok(false);
    }
    let account = match account_ref.kind {
        AccountKind::ImburseAccount => ImburseAccount::api(ctx, namespace)
            .get_opt(&account_ref.name)
            .await?
            .map(|a| ResolvedAccount::describe(&a, ctx)),
        AccountKind::ClusterImburseAccount => ClusterImburseAccount::api(ctx, None)
            .get_opt(&account_ref.name)
            .await?
            .map(|a| ResolvedAccount::describe(&a, ctx)),
    };
    if let Some(account) = account.filter(|a| a.held) {
        account.set_in_use(ctx, false).await?;
    }
    Ok(true)
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
    connect_to(ctx, spec, secret_namespace, &endpoint_of(spec)).await
}

/// [`connect`] to a given endpoint, which may be where the account pointed before: the host
/// is checked there too, so a recorded endpoint never carries credentials anywhere else.
async fn connect_to(
    ctx: &Context,
    spec: &AccountSpec,
    secret_namespace: &str,
    endpoint: &Endpoint,
) -> Result<imburse::AccountClient> {
    ctx.settings
        .allowed_imburse_hosts
        .check(&endpoint.base_url)?;
    if endpoint.api_generation == ApiGeneration::Current && endpoint.account_id.is_none() {
        return Err(Error::InvalidSpec(
            "accountId is required when apiGeneration is current".into(),
        ));
    }
    let credentials = credentials(ctx, spec, secret_namespace).await?;
    Ok(ctx.imburse.account(imburse::AccountConfig {
        base_url: endpoint.base_url.clone(),
        generation: generation(endpoint),
        account_id: endpoint.account_id.clone(),
        credentials,
    })?)
}

/// The API generation an endpoint speaks, as the Imburse client names it.
pub(crate) fn generation(endpoint: &Endpoint) -> imburse::ApiGeneration {
    match endpoint.api_generation {
        ApiGeneration::Seed => imburse::ApiGeneration::Seed,
        ApiGeneration::Current => imburse::ApiGeneration::Current,
    }
}

/// The account's key pair: kept from a recent read (see [`super::credentials`]), else read
/// from its Secret and checked.
async fn credentials(
    ctx: &Context,
    spec: &AccountSpec,
    secret_namespace: &str,
) -> Result<imburse::KeyPair> {
    let secret_ref = &spec.credentials_secret_ref;
    let source = (
        secret_namespace.to_owned(),
        secret_ref.name.clone(),
        secret_ref.effective_public_key_key().to_owned(),
        secret_ref.effective_private_key_key().to_owned(),
    );
    if let Some(pair) = ctx.credentials.get(&source, std::time::Instant::now()) {
        return Ok(pair);
    }
    let reading = ctx.credentials.read(&source);
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
    reading.keep(&credentials, std::time::Instant::now());
    Ok(credentials)
}

/// Reconciles either account kind: verifies the credentials and reports the result.
pub async fn reconcile<A: AccountResource>(account: Arc<A>, ctx: Arc<Context>) -> Result<Action> {
    let _in_flight = ctx.liveness.start(A::KIND);
    let started = Instant::now();
    if account.meta().deletion_timestamp.is_some() {
        // Keys still using it keep it (and its credentials) until they are revoked; the last
        // one to go lets it go. Its status stays as it was, so they can still use it.
        let account_ref = AccountRef {
            kind: A::ACCOUNT_KIND,
            name: account.name_any(),
        };
        let namespace = account.namespace().unwrap_or_default();
        // Keys deleted together (a namespace) may each still see the others in the cache when
        // they go, so the account looks again until the cache shows none.
        return Ok(
            if release_if_unused(&ctx, &namespace, &account_ref, None).await? {
                Action::await_change()
            } else {
                Action::requeue(Duration::from_secs(2))
            },
        );
    }
    let result = verify(account.as_ref(), &ctx).await;
    let previous = account.account_status().cloned().unwrap_or_default();
    let mut next = previous.clone();
    // An audit is answered only with credentials that work, at most once per spacing.
    let mut audit_due = None;
    if let (Ok(()), Some(request)) = (&result, audit_request(account.as_ref(), &previous)) {
        match audit_wait(previous.audit.as_ref()) {
            Some(wait) => audit_due = Some(wait),
            None => {
                let revoke = inventory::requested_revocations(
                    account
                        .annotations()
                        .get(tenant_key_api::crd::REVOKE_LEAKED_ANNOTATION)
                        .map(String::as_str),
                );
                next.audit = Some(inventory::audit(&ctx, account.as_ref(), request, &revoke).await);
            }
        }
    }
    let outcome = match &result {
        Ok(()) => Outcome::Ready {
            reason: "CredentialsVerified",
            message: "a management token was obtained with these credentials",
        },
        Err(e) => Outcome::Failed(e),
    };
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
        // Written on the version the verdict was reached on: a change since (a new spec, or
        // credentials swapped and verified meanwhile) is verified again instead.
        let version = account.meta().resource_version.as_deref();
        match status::apply_status(&ctx, &api, &name, &next, version).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => return Ok(Action::requeue(Duration::from_secs(1))),
            Err(e) => return Err(e),
        }
        let (type_, reason, note) = match &result {
            Ok(()) => (
                EventType::Normal,
                "CredentialsVerified",
                "credentials verified".to_owned(),
            ),
            Err(e) => (EventType::Warning, e.reason().as_str(), e.event_note()),
        };
        if ready_reason(&previous) != ready_reason(&next) {
            status::publish(
                &ctx,
                account.as_ref(),
                type_,
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
        Ok(()) => Ok(audit_due.map_or_else(Action::await_change, Action::requeue)),
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
            match e.reason() {
                // Imburse refused the credentials: maybe for good, maybe a clock skew or a
                // refusal of the moment. Nothing in the cluster changes when Imburse recovers,
                // so look again, slowly.
                Reason::CredentialsInvalid | Reason::Forbidden => {
                    Ok(Action::requeue(ctx.retries.stalled_retry(account.as_ref())))
                }
                _ if e.is_permanent() => Ok(Action::await_change()),
                _ => Err(e),
            }
        }
    }
}

/// Shortest time between two audits of an account: whoever can annotate it must not make the
/// operator list its tenants in a loop.
const AUDIT_SPACING: Duration = Duration::from_secs(10);

/// The audit request on the account that `status.audit` does not answer yet.
fn audit_request<'a, A: AccountResource>(
    account: &'a A,
    status: &AccountStatus,
) -> Option<&'a str> {
    let request = account
        .annotations()
        .get(tenant_key_api::crd::AUDIT_REQUESTED_AT_ANNOTATION)?;
    let answered = status.audit.as_ref().map(|a| &a.request);
    (answered != Some(request) && !request.is_empty()).then_some(request.as_str())
}

/// How long an audit request waits for the spacing since the last audit, if at all.
fn audit_wait(last: Option<&Audit>) -> Option<Duration> {
    let last = last?.completed_at.0;
    let since = Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(last)).ok();
    // A completion in the future (a clock step) waits a whole spacing rather than for ever.
    AUDIT_SPACING
        .checked_sub(since.unwrap_or_default())
        .filter(|d| !d.is_zero())
}

fn ready_reason(status: &AccountStatus) -> Option<(&str, &str)> {
    tenant_key_api::crd::find_condition(&status.conditions, status::READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

async fn verify<A: AccountResource>(account: &A, ctx: &Context) -> Result<()> {
    let client = connect(ctx, account.account_spec(), &account.secret_namespace(ctx)).await?;
    client.verify_credentials().await?;
    Ok(())
}
