//! The inventory of keys at Imburse: every key a listing returns is classified as managed,
//! leaked, foreign or unmanaged ([`KeyClass`]).
//!
//! The classification ([`classify`]) is a pure function of the key and of what the cluster
//! holds ([`Known`]). It serves two callers: the verifier, which counts the keys of each
//! account and tenant it lists anyway (the `tenant_key_operator_imburse_keys` gauge) and
//! reports a newly leaked key in an Event on its account; and an audit requested on an
//! account, which lists that account's tenants, classifies on a fresh read of the cluster and
//! may revoke the leaked keys a person confirmed ([`audit`]).
//!
//! A key is only ever revoked here when the operator's own classification, made after the
//! listing on a fresh read of every TenantSecurityKey of the cluster, finds it leaked: its
//! marker names this cluster, and no resource records it, no creation in progress names its
//! attempt and no Secret kept by a deleted resource holds it. Foreign and unmanaged keys are
//! never revoked, nor keys whose marker does not name a cluster and whose resource this
//! cluster does not have: such a key may be another cluster's.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Mutex,
};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, ResourceExt,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::{events::EventType, reflector::ObjectRef},
};
use tenant_key_api::{
    crd::{
        AccountKind, AccountRef, Audit, AuditedKey, ClusterImburseAccount, Endpoint,
        ImburseAccount, KeyClass, TenantSecurityKey,
    },
    key_secret,
};

use super::{
    Context,
    account::{self, AccountResource, Purpose},
    error::Result,
    intent::{self, Recorded},
    scoped, status,
};

/// What the cluster holds that makes a key at Imburse managed, and this cluster's id.
#[derive(Debug, Default)]
pub struct Known {
    cluster: String,
    /// Public keys that resources record (current and replaced keys), with their owner.
    recorded: HashMap<String, String>,
    /// (resource uid, attempt) of creations in progress and of Secrets kept by deleted
    /// resources, with their owner: their keys are named by the attempt.
    attempts: HashMap<(String, String), String>,
    /// Uids of every resource.
    uids: HashSet<String>,
}

impl Known {
    /// What `keys` record, for the cluster `cluster`.
    pub fn new<'a>(cluster: &str, keys: impl IntoIterator<Item = &'a TenantSecurityKey>) -> Self {
        let mut known = Self {
            cluster: cluster.to_owned(),
            ..Self::default()
        };
        for key in keys {
            let owner = format!(
                "TenantSecurityKey {}/{}",
                key.namespace().unwrap_or_default(),
                key.name_any()
            );
            let uid = key.uid().unwrap_or_default();
            let status = key.status.as_ref();
            for public_key in status
                .and_then(|s| s.public_key.as_ref())
                .into_iter()
                .chain(
                    status
                        .into_iter()
                        .flat_map(|s| s.previous_keys.iter().map(|p| &p.public_key)),
                )
            {
                known.recorded.insert(public_key.clone(), owner.clone());
            }
            // An intent in the annotation of an older version may be forged; believing it only
            // ever counts a key as managed, which revokes nothing.
            let attempts = status
                .and_then(|s| s.pending_create.as_ref())
                .map(|i| i.attempt.clone())
                .into_iter()
                .chain(
                    key.annotations()
                        .get(intent::ANNOTATION)
                        .and_then(|v| Recorded::parse(v))
                        .map(|r| r.attempt().to_owned()),
                );
            for attempt in attempts {
                known
                    .attempts
                    .insert((uid.clone(), attempt), format!("{owner} (being created)"));
            }
            known.uids.insert(uid);
        }
        known
    }

    /// Adds the Secrets that deleted resources kept (`deletionPolicy: Retain`): they name the
    /// resource and the attempt that made the key they hold. Their annotations can be written
    /// by whoever may edit the Secret, which can only make a key count as managed.
    pub fn with_retained<'a>(mut self, secrets: impl IntoIterator<Item = &'a ObjectMeta>) -> Self {
        for meta in secrets {
            let annotations = meta.annotations.as_ref();
            let get = |name: &str| annotations.and_then(|a| a.get(name)).cloned();
            if let (Some(uid), Some(attempt)) = (
                get(key_secret::OWNER_UID_ANNOTATION),
                get(key_secret::ATTEMPT_ANNOTATION),
            ) {
                let owner = format!(
                    "Secret {}/{} (retained)",
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default()
                );
                self.attempts.insert((uid, attempt), owner);
            }
        }
        self
    }
}

/// Whose the key `public_key` named `name` at Imburse is, and for a managed key what holds it.
///
/// A marker without a cluster (keys named by versions up to 0.5) is this cluster's only when
/// it names a resource this cluster has: uids are unique, so no other cluster made a key for
/// it. Naming a resource this cluster does not have, it may be another cluster's key as well
/// as one that outlived a resource of this cluster: foreign, so that it is never revoked.
pub fn classify(known: &Known, public_key: &str, name: Option<&str>) -> (KeyClass, Option<String>) {
    if let Some(owner) = known.recorded.get(public_key) {
        return (KeyClass::Managed, Some(owner.clone()));
    }
    let Some(marker) = name.and_then(intent::marker) else {
        return (KeyClass::Unmanaged, None);
    };
    let ours = match marker.cluster {
        Some(cluster) => cluster == known.cluster,
        None => known.uids.contains(marker.uid),
    };
    if !ours {
        return (KeyClass::Foreign, None);
    }
    let attempt = (marker.uid.to_owned(), marker.attempt.to_owned());
    match known.attempts.get(&attempt) {
        Some(owner) => (KeyClass::Managed, Some(owner.clone())),
        None => (KeyClass::Leaked, None),
    }
}

/// The labels of one account and tenant in the gauge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Where {
    pub kind: &'static str,
    /// The account's namespace; empty for cluster accounts.
    pub namespace: String,
    pub account: String,
    pub tenant: String,
}

/// Keys per class.
pub type Tally = BTreeMap<KeyClass, u64>;

/// The last count of each account and tenant, per verifier: a verifier's round replaces all it
/// counted before, so the gauge has a series only for what the last round listed.
#[derive(Default)]
pub struct Counts {
    rounds: Mutex<HashMap<Option<String>, Round>>,
}

#[derive(Default)]
struct Round {
    tallies: BTreeMap<Where, Tally>,
    /// Leaked public keys, so that each is reported once.
    leaked: HashSet<String>,
}

impl Counts {
    /// Replaces the counts of verifier `scope`; returns the leaked keys it had not seen
    /// leaked before.
    pub fn replace(
        &self,
        scope: Option<&str>,
        tallies: BTreeMap<Where, Tally>,
        leaked: HashSet<String>,
    ) -> HashSet<String> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let round = rounds.entry(scope.map(str::to_owned)).or_default();
        let new = leaked.difference(&round.leaked).cloned().collect();
        *round = Round { tallies, leaked };
        new
    }

    /// Every account and tenant's count. With watched namespaces, the verifiers of two may
    /// list the same tenant of a cluster account: they see the same keys, so the largest
    /// count of each class is taken, not their sum.
    pub fn snapshot(&self) -> BTreeMap<Where, Tally> {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: BTreeMap<Where, Tally> = BTreeMap::new();
        for (place, tally) in rounds.values().flat_map(|r| &r.tallies) {
            let entry = all.entry(place.clone()).or_default();
            for (class, count) in tally {
                let slot = entry.entry(*class).or_default();
                *slot = (*slot).max(*count);
            }
        }
        all
    }
}

/// Whether the operator sees every TenantSecurityKey of the cluster: only then can it tell
/// that no resource records a key.
fn sees_whole_cluster(ctx: &Context) -> bool {
    ctx.settings.watch_namespaces.is_empty()
}

/// The Secrets the operator wrote, metadata only, in the namespaces it watches.
async fn operator_secrets(ctx: &Context) -> Result<Vec<ObjectMeta>> {
    let selector = ListParams::default().labels(&format!(
        "{}={}",
        key_secret::MANAGED_BY_LABEL,
        key_secret::MANAGED_BY_VALUE
    ));
    let mut all = Vec::new();
    for scope in ctx.settings.scopes() {
        let api = scoped::<PartialObjectMeta<Secret>>(&ctx.client, scope.as_deref());
        all.extend(
            api.list_metadata(&selector)
                .await?
                .items
                .into_iter()
                .map(|s| s.metadata),
        );
    }
    Ok(all)
}

/// Classifies the keys listed at one account and tenant.
pub fn tally<'a>(
    known: &Known,
    listed: impl IntoIterator<Item = &'a imburse::TenantKey>,
    leaked: &mut Vec<&'a imburse::TenantKey>,
) -> Tally {
    let mut tally: Tally = KeyClass::ALL.into_iter().map(|c| (c, 0)).collect();
    for key in listed {
        let (class, _) = classify(known, &key.public_key, key.name.as_deref());
        *tally.entry(class).or_default() += 1;
        if class == KeyClass::Leaked {
            leaked.push(key);
        }
    }
    tally
}

/// The keys listed at one account and tenant.
pub struct Listing {
    /// The account's namespace, for namespaced accounts.
    pub namespace: Option<String>,
    pub account: AccountRef,
    pub tenant: String,
    pub keys: Vec<imburse::TenantKey>,
}

impl Listing {
    fn place(&self) -> Where {
        Where {
            kind: account::kind_name(self.account.kind),
            namespace: self.namespace.clone().unwrap_or_default(),
            account: self.account.name.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

/// Counts what the verifier of `scope` listed, and reports each newly leaked key in an Event
/// on its account.
pub async fn count(ctx: &Context, scope: Option<&str>, listed: &[Listing]) {
    // After the listings: a key listed was created after its intent was recorded, so the
    // cache, read now, holds the intent or the key.
    let cached = ctx.cached_keys();
    let mut known = Known::new(&ctx.settings.cluster_id, cached.iter().map(AsRef::as_ref));
    let mut tallies = BTreeMap::new();
    let mut leaked = Vec::new();
    for listing in listed {
        tallies.insert(
            listing.place(),
            tally(&known, &listing.keys, &mut Vec::new()),
        );
    }
    // Secrets kept by deleted resources are read only when a key looks leaked without them.
    if tallies.values().any(|t| t[&KeyClass::Leaked] > 0) {
        match operator_secrets(ctx).await {
            Ok(secrets) => known = known.with_retained(&secrets),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the Secrets kept by deleted resources; leaked keys not counted");
                return;
            }
        }
        for listing in listed {
            let mut found = Vec::new();
            tallies.insert(listing.place(), tally(&known, &listing.keys, &mut found));
            leaked.extend(found.into_iter().map(|k| (listing, k)));
        }
    }
    let public_keys = leaked.iter().map(|(_, k)| k.public_key.clone()).collect();
    let new = ctx.inventory.replace(scope, tallies, public_keys);
    for (listing, key) in leaked
        .into_iter()
        .filter(|(_, k)| new.contains(&k.public_key))
    {
        tracing::warn!(tenant_id = %listing.tenant, public_key = %key.public_key, "leaked key found");
        let note = format!(
            "key {} named {:?} at tenant {} carries this cluster's marker, but no resource records it: see LeakedKeyFound in the troubleshooting guide",
            key.public_key,
            key.name.as_deref().unwrap_or_default(),
            listing.tenant
        );
        publish(ctx, listing, note).await;
    }
}

/// Publishes a leaked key's Warning Event on the account of `listing`, found in the caches.
async fn publish(ctx: &Context, listing: &Listing, note: String) {
    let (reason, action) = ("LeakedKeyFound", "Inventory");
    let name = &listing.account.name;
    match listing.account.kind {
        AccountKind::ImburseAccount => {
            let namespace = listing.namespace.as_deref().unwrap_or_default();
            let reference = ObjectRef::new(name).within(namespace);
            if let Some(a) = ctx.cached_account::<ImburseAccount>(&reference) {
                status::publish(ctx, a.as_ref(), EventType::Warning, reason, action, note).await;
            }
        }
        AccountKind::ClusterImburseAccount => {
            let reference = ObjectRef::new(name);
            if let Some(a) = ctx.cached_account::<ClusterImburseAccount>(&reference) {
                status::publish(ctx, a.as_ref(), EventType::Warning, reason, action, note).await;
            }
        }
    }
}

/// Most revocations one request may name: a request is a person's confirmed list.
const MAX_REVOCATIONS: usize = 100;

/// The public keys a revocation request names, without duplicates.
pub fn requested_revocations(value: Option<&str>) -> BTreeSet<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .take(MAX_REVOCATIONS)
        .map(str::to_owned)
        .collect()
}

/// Answers an audit request on `account`: lists every tenant the account's keys use, once
/// each, classifies on a fresh read of the cluster, and revokes the keys of `revoke` that this
/// classification finds leaked.
pub async fn audit<A: AccountResource>(
    ctx: &Context,
    account: &A,
    request: &str,
    revoke: &BTreeSet<String>,
) -> Audit {
    let account_ref = AccountRef {
        kind: A::ACCOUNT_KIND,
        name: account.name_any(),
    };
    let namespace = account.namespace();
    let mut audit = Audit {
        request: request.to_owned(),
        completed_at: status::now(),
        keys: Vec::new(),
        revoked: Vec::new(),
        refused: Vec::new(),
        errors: Vec::new(),
    };
    let mut listings = Vec::new();
    for (endpoint, tenant) in tenants(ctx, namespace.as_deref(), &account_ref) {
        match list(ctx, namespace.as_deref(), &account_ref, &endpoint, &tenant).await {
            Ok(Some((client, keys))) => listings.push((tenant, client, keys)),
            Ok(None) => audit
                .errors
                .push(format!("{tenant}: its API cannot list keys")),
            Err(e) => audit.errors.push(format!("{tenant}: {e}")),
        }
    }
    // Read after the listings, from the API server rather than the caches: a key listed was
    // created after its intent was recorded, so this read holds the intent or the key.
    let known = match fresh(ctx).await {
        Ok(known) => known,
        Err(e) => {
            audit
                .errors
                .push(format!("could not read the cluster's keys: {e}"));
            audit.refused = revoke
                .iter()
                .map(|k| format!("{k}: not classified"))
                .collect();
            return audit;
        }
    };
    let mut leaked = HashMap::new();
    for (tenant, client, keys) in &listings {
        for key in keys {
            let (class, owner) = classify(&known, &key.public_key, key.name.as_deref());
            if class == KeyClass::Leaked {
                leaked.insert(key.public_key.as_str(), (client, tenant.as_str()));
            }
            audit.keys.push(AuditedKey {
                tenant_id: tenant.clone(),
                public_key: key.public_key.clone(),
                name: key.name.clone(),
                class,
                owner,
            });
        }
    }
    for public_key in revoke {
        let refusal = match leaked.get(public_key.as_str()) {
            None => {
                let class = audit.keys.iter().find(|k| &k.public_key == public_key);
                Some(
                    class.map_or("not listed at this account's tenants".to_owned(), |k| {
                        format!("it is {}, not leaked", k.class.as_str())
                    }),
                )
            }
            Some(_) if !sees_whole_cluster(ctx) => Some(
                "the operator watches only some namespaces, and a resource elsewhere may hold it"
                    .to_owned(),
            ),
            Some((client, tenant)) => match client.delete_key(tenant, public_key).await {
                Ok(()) | Err(imburse::Error::NotFound(_)) => None,
                Err(e) => Some(e.to_string()),
            },
        };
        match refusal {
            Some(why) => audit.refused.push(format!("{public_key}: {why}")),
            None => {
                ctx.metrics.keys_revoked.inc();
                tracing::info!(%public_key, "revoked leaked key on request");
                status::publish(
                    ctx,
                    account,
                    EventType::Normal,
                    "LeakedKeyRevoked",
                    "Audit",
                    format!("revoked leaked key {public_key} on request"),
                )
                .await;
                audit.revoked.push(public_key.clone());
            }
        }
    }
    audit
}

/// Where the keys of the account live: the endpoint and tenant of every key, replaced key and
/// spec that names it, as the caches hold them.
fn tenants(
    ctx: &Context,
    namespace: Option<&str>,
    account: &AccountRef,
) -> HashSet<(Option<Endpoint>, String)> {
    let mut tenants = HashSet::new();
    for key in ctx.cached_keys() {
        if namespace.is_some_and(|ns| key.namespace().as_deref() != Some(ns)) {
            continue;
        }
        if key.spec.account_ref == *account {
            tenants.insert((None, key.spec.tenant_id.clone()));
        }
        let Some(s) = &key.status else { continue };
        if let (Some(a), Some(tenant)) = (&s.account_ref, &s.tenant_id)
            && a == account
        {
            tenants.insert((s.endpoint.clone(), tenant.clone()));
        }
        for p in s.previous_keys.iter().filter(|p| p.account_ref == *account) {
            tenants.insert((p.endpoint.clone(), p.tenant_id.clone()));
        }
    }
    tenants
}

/// The keys listed at the tenant, with the client that listed them; `None` when the API
/// cannot list.
pub async fn list(
    ctx: &Context,
    namespace: Option<&str>,
    account: &AccountRef,
    endpoint: &Option<Endpoint>,
    tenant: &str,
) -> Result<Option<(imburse::AccountClient, Vec<imburse::TenantKey>)>> {
    let resolved =
        account::resolve(ctx, namespace.unwrap_or_default(), account, Purpose::Revoke).await?;
    let client = match endpoint {
        Some(at) if *at != resolved.endpoint() => resolved.connect_at(ctx, at).await?,
        _ => resolved.connect(ctx).await?,
    };
    if !client.supports_listing() {
        return Ok(None);
    }
    let keys = client.list_keys(tenant).await?;
    Ok(Some((client, keys)))
}

/// What the cluster holds, read from the API server.
async fn fresh(ctx: &Context) -> Result<Known> {
    let mut keys = Vec::new();
    for scope in ctx.settings.scopes() {
        let api: Api<TenantSecurityKey> = scoped(&ctx.client, scope.as_deref());
        keys.extend(api.list(&ListParams::default()).await?.items);
    }
    let secrets = operator_secrets(ctx).await?;
    Ok(Known::new(&ctx.settings.cluster_id, &keys).with_retained(&secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenant_key_api::crd::{CreateIntent, PreviousKey, TenantSecurityKeyStatus};

    const HERE: &str = "0a1b2c3d4e5f";
    const THERE: &str = "f5e4d3c2b1a0";
    const UID: &str = "11111111-1111-4111-8111-111111111111";
    const OTHER_UID: &str = "22222222-2222-4222-8222-222222222222";

    fn resource(status: TenantSecurityKeyStatus) -> TenantSecurityKey {
        let mut key = TenantSecurityKey::new(
            "pay",
            serde_json::from_value(serde_json::json!({
                "accountRef": {"kind": "ImburseAccount", "name": "a"},
                "tenantId": "t",
                "roles": ["tenant-admin"],
            }))
            .unwrap(),
        );
        key.metadata.namespace = Some("team-a".into());
        key.metadata.uid = Some(UID.into());
        key.status = Some(status);
        key
    }

    /// Whether the resource records the key, names its attempt in a creation in progress, or
    /// whether a retained Secret does; or neither.
    #[derive(Clone, Copy, Debug)]
    enum Holder {
        Current,
        Previous,
        Creating,
        RetainedSecret,
        Nothing,
    }

    /// What the key's name says.
    #[derive(Clone, Copy, Debug)]
    enum Mark {
        NoName,
        Unmarked,
        Here,
        There,
        Old,
        OldForAnotherResource,
        Malformed,
    }

    fn name(mark: Mark) -> Option<String> {
        let human = "team-a/pay";
        match mark {
            Mark::NoName => None,
            Mark::Unmarked => Some("Admin Key".into()),
            Mark::Here => Some(intent::key_name(human, UID, "a1", HERE)),
            Mark::There => Some(intent::key_name(human, UID, "a1", THERE)),
            Mark::Old => Some(format!("{human} #tko:{UID}:a1")),
            Mark::OldForAnotherResource => Some(format!("{human} #tko:{OTHER_UID}:a1")),
            Mark::Malformed => Some(format!("{human} #tko:{UID}")),
        }
    }

    fn known(holder: Holder) -> Known {
        let mut status = TenantSecurityKeyStatus::default();
        let mut secrets = Vec::new();
        match holder {
            Holder::Current => status.public_key = Some("pk".into()),
            Holder::Previous => status.previous_keys.push(PreviousKey {
                public_key: "pk".into(),
                tenant_id: "t".into(),
                account_ref: AccountRef {
                    kind: AccountKind::ImburseAccount,
                    name: "a".into(),
                },
                endpoint: None,
                revoke_after: None,
                credentials_fingerprint: None,
                revocation_error: None,
            }),
            Holder::Creating => {
                status.pending_create = Some(Box::new(CreateIntent {
                    attempt: "a1".into(),
                    name: String::new(),
                    tenant_id: "t".into(),
                    roles: vec![],
                    account_ref: AccountRef {
                        kind: AccountKind::ImburseAccount,
                        name: "a".into(),
                    },
                    endpoint: Endpoint {
                        base_url: String::new(),
                        api_generation: Default::default(),
                        account_id: None,
                    },
                    rotate_request: None,
                    credentials_fingerprint: None,
                }))
            }
            Holder::RetainedSecret => secrets.push(ObjectMeta {
                namespace: Some("team-a".into()),
                name: Some("kept".into()),
                annotations: Some(
                    [
                        (key_secret::OWNER_UID_ANNOTATION.to_owned(), UID.to_owned()),
                        (key_secret::ATTEMPT_ANNOTATION.to_owned(), "a1".to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            Holder::Nothing => {}
        }
        // A retained Secret outlives its resource: the cluster then has no resource of that uid.
        let resources = match holder {
            Holder::RetainedSecret => vec![],
            _ => vec![resource(status)],
        };
        Known::new(HERE, &resources).with_retained(&secrets)
    }

    /// The rule, spelt out case by case.
    fn expected(holder: Holder, mark: Mark) -> KeyClass {
        use KeyClass::*;
        match (holder, mark) {
            // What a resource records is managed whatever its name: adopted keys have none.
            (Holder::Current | Holder::Previous, _) => Managed,
            (_, Mark::NoName | Mark::Unmarked | Mark::Malformed) => Unmanaged,
            (_, Mark::There) => Foreign,
            // An old marker naming no resource of this cluster may be another cluster's.
            (_, Mark::OldForAnotherResource) => Foreign,
            (Holder::RetainedSecret, Mark::Old) => Foreign,
            (Holder::Creating | Holder::RetainedSecret, Mark::Here | Mark::Old) => Managed,
            (Holder::Nothing, Mark::Here | Mark::Old) => Leaked,
        }
    }

    #[test]
    fn every_holder_and_marker_is_classified() {
        let holders = [
            Holder::Current,
            Holder::Previous,
            Holder::Creating,
            Holder::RetainedSecret,
            Holder::Nothing,
        ];
        let marks = [
            Mark::NoName,
            Mark::Unmarked,
            Mark::Here,
            Mark::There,
            Mark::Old,
            Mark::OldForAnotherResource,
            Mark::Malformed,
        ];
        for holder in holders {
            for mark in marks {
                let (class, owner) = classify(&known(holder), "pk", name(mark).as_deref());
                assert_eq!(class, expected(holder, mark), "{holder:?} {mark:?}");
                assert_eq!(
                    owner.is_some(),
                    class == KeyClass::Managed,
                    "{holder:?} {mark:?}"
                );
            }
        }
    }

    #[test]
    fn owners_name_what_holds_the_key() {
        let owner = |holder| classify(&known(holder), "pk", name(Mark::Here).as_deref()).1;
        assert_eq!(
            owner(Holder::Current).as_deref(),
            Some("TenantSecurityKey team-a/pay")
        );
        assert_eq!(
            owner(Holder::Creating).as_deref(),
            Some("TenantSecurityKey team-a/pay (being created)")
        );
        assert_eq!(
            owner(Holder::RetainedSecret).as_deref(),
            Some("Secret team-a/kept (retained)")
        );
    }

    #[test]
    fn another_attempt_of_a_resource_is_leaked() {
        let key = intent::key_name("team-a/pay", UID, "a2", HERE);
        assert_eq!(
            classify(&known(Holder::Creating), "pk", Some(&key)).0,
            KeyClass::Leaked
        );
        assert_eq!(
            classify(&known(Holder::Current), "other", Some(&key)).0,
            KeyClass::Leaked
        );
    }

    #[test]
    fn tallies_count_every_class() {
        let keys: Vec<imburse::TenantKey> = [Mark::Here, Mark::There, Mark::Unmarked]
            .into_iter()
            .map(|mark| imburse::TenantKey {
                identity: None,
                public_key: format!("{mark:?}"),
                name: name(mark),
                roles: vec![],
            })
            .collect();
        let mut leaked = Vec::new();
        let tally = tally(&known(Holder::Nothing), &keys, &mut leaked);
        assert_eq!(
            tally.into_iter().collect::<Vec<_>>(),
            [
                (KeyClass::Managed, 0),
                (KeyClass::Leaked, 1),
                (KeyClass::Foreign, 1),
                (KeyClass::Unmanaged, 1)
            ]
        );
        assert_eq!(leaked.len(), 1);
    }

    #[test]
    fn revocation_requests_are_bounded_and_trimmed() {
        assert_eq!(
            requested_revocations(Some(" a, b ,,a"))
                .into_iter()
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(requested_revocations(None).is_empty());
        let many = (0..500)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(requested_revocations(Some(&many)).len(), MAX_REVOCATIONS);
    }

    #[test]
    fn counts_report_a_leak_once_and_forget_what_is_not_listed() {
        let counts = Counts::default();
        let place = Listing {
            namespace: Some("team-a".into()),
            account: AccountRef {
                kind: AccountKind::ImburseAccount,
                name: "a".into(),
            },
            tenant: "t".into(),
            keys: vec![],
        }
        .place();
        let tally: Tally = [(KeyClass::Leaked, 1)].into();
        let leaked: HashSet<String> = ["pk".to_owned()].into();
        let first = counts.replace(
            None,
            [(place.clone(), tally.clone())].into(),
            leaked.clone(),
        );
        assert_eq!(first, leaked);
        assert!(
            counts
                .replace(None, [(place.clone(), tally)].into(), leaked)
                .is_empty()
        );
        assert_eq!(counts.snapshot()[&place][&KeyClass::Leaked], 1);
        counts.replace(None, BTreeMap::new(), HashSet::new());
        assert!(counts.snapshot().is_empty());
    }
}
