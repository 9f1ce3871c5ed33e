//! `TenantSecurityKey`: one Imburse Tenant Security Key, delivered as a Kubernetes Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiGeneration, Condition};

/// Kind of account a key is created with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum AccountKind {
    /// An `ImburseAccount` in the key's own namespace.
    ImburseAccount,
    /// A `ClusterImburseAccount` that allows the key's namespace.
    ClusterImburseAccount,
}

/// Reference to the account that creates the key.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AccountRef {
    /// `ImburseAccount` (same namespace) or `ClusterImburseAccount`.
    pub kind: AccountKind,
    /// Name of the account resource.
    pub name: String,
}

/// What happens to the Imburse key and the Secret when the resource is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Revoke the key at Imburse and delete the Secret (default); from a Secret that also holds
    /// entries the operator did not write, only the key's entries are removed.
    #[default]
    Delete,
    /// Leave the key valid at Imburse and keep the Secret (no longer owned by the resource).
    Retain,
}

/// Names of the entries written into the Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyNames {
    /// Entry holding the key's public key (default `publicKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Entry holding the key's base64 private key (default `privateKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Entry holding the tenant id (default `tenantId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Entry holding the account id, written when the account declares one (default `accountId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Entry holding the Imburse base URL (default `baseUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// The Secret the key material is written to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Name of the Secret, in the resource's namespace (default: the resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Secret type: `Opaque` (the default) or a custom type with a domain prefix, such as
    /// `example.com/imburse-key`. Types the API server gives a meaning to (`kubernetes.io/...`)
    /// are refused: the operator must not mint anything but a key.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_TYPE_RULE).message("secret.type must be Opaque or a custom type with a domain prefix outside kubernetes.io and k8s.io"))]
    pub type_: Option<String>,
    /// Extra labels on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Names of the entries inside the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<SecretKeyNames>,
}

/// CEL form of [`is_allowed_secret_type`], so the API server refuses what the operator would.
const SECRET_TYPE_RULE: &str = r"self == 'Opaque' || (self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$') && !self.matches('^([^/]*\\.)?(kubernetes|k8s)\\.io/'))";

/// Whether the operator may write a Secret of this type: `Opaque`, or `<domain>/<name>` with a
/// dotted domain that is not the API server's own (`kubernetes.io`, `k8s.io` and their
/// subdomains), whose types carry meanings (service account tokens, TLS, registry auth) that
/// key material cannot satisfy or that would make the API server mint something else.
pub fn is_allowed_secret_type(value: &str) -> bool {
    if value == "Opaque" {
        return true;
    }
    let Some((domain, name)) = value.split_once('/') else {
        return false;
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let reserved = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|r| domain == *r || domain.ends_with(&format!(".{r}")));
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    domain.contains('.') && domain.split('.').all(label) && name_ok && !reserved
}

/// Go-style durations (`720h`, `90m`, `1h30m`, `0s`), as Kubernetes fields spell them.
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// When keys are replaced on a schedule, and how long a replaced key stays valid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    /// Age at which a key is replaced by a new one, e.g. `720h`. Absent: only on request or
    /// when the spec changes. Each resource rotates up to a tenth of the interval early, so a
    /// fleet created at once does not rotate at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// How long a replaced key stays valid after the Secret holds its successor, so running
    /// workloads can reload (default `5m`; `0s` revokes at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub grace_period: Option<String>,
}

/// Annotation on a TenantSecurityKey that requests a rotation: each new value (e.g. the
/// current RFC 3339 time) replaces the key once, and `status.lastHandledRotateRequest` records
/// the value once the new key is in the Secret.
pub const ROTATE_REQUESTED_AT_ANNOTATION: &str = "imbursepayments.com/rotate-requested-at";

/// Default of `rotation.gracePeriod`.
pub const DEFAULT_GRACE_PERIOD: &str = "5m";

/// Parses a Go-style duration as the schema admits it (an older CRD may not have checked it).
pub fn parse_duration(value: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// Kind of workload restarted when the key changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// A workload in the resource's namespace that is restarted when the Secret's key changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// Name of the workload.
    pub name: String,
}

/// Where a key lives at Imburse: the API endpoint and account it was created with. A key can
/// only be used and revoked there, so a change of any of these replaces the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Base URL of the Imburse API, without a trailing slash.
    pub base_url: String,
    /// API generation spoken there.
    pub api_generation: ApiGeneration,
    /// Imburse account id, when the account declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// A Tenant Security Key that the operator creates at Imburse and stores in a Secret.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "imbursepayments.com",
    version = "v1beta1",
    kind = "TenantSecurityKey",
    namespaced,
    status = "TenantSecurityKeyStatus",
    shortname = "tsk",
    category = "imburse",
    doc = "An Imburse Tenant Security Key, created by the operator with an Imburse account and delivered as a Secret that the resource owns.",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenantId","priority":1}"#,
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".spec.accountRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName","priority":1}"#,
    printcolumn = r#"{"name":"Key Age","type":"date","jsonPath":".status.createdAt"}"#,
    printcolumn = r#"{"name":"Next Rotation","type":"string","jsonPath":".status.nextRotationAt","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSecurityKeySpec {
    /// The account that creates and revokes the key.
    pub account_ref: AccountRef,
    /// Id (a UUID) of the Imburse tenant the key belongs to. Immutable: create a new resource
    /// to move a key to another tenant.
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantId is immutable"))]
    pub tenant_id: String,
    /// Roles granted to the key, e.g. `tenant-admin`, `tenant-transaction-read`. Imburse
    /// decides which names are valid. Changing them replaces the key.
    #[schemars(length(min = 1, max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub roles: Vec<String>,
    /// Name of the key at Imburse (default `<namespace>/<name>` of this resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Secret the key is written to.
    // Boxed, as is the status's pending create: the operator's cache holds every key, and most
    // leave this out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Box<SecretTemplate>>,
    /// `Delete` (default) revokes the key at Imburse and deletes the Secret when this resource
    /// is deleted (or only the key's entries, when the Secret holds entries of others);
    /// `Retain` leaves both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Scheduled rotation and the grace period of replaced keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicy>,
    /// Workloads whose pods are restarted (through a pod template annotation) once each time
    /// the Secret's key changes. A workload is restarted only with its owner's consent: it must
    /// carry the annotation `imbursepayments.com/restart-for` naming this resource (a
    /// comma-separated list of TenantSecurityKey names in its namespace). A target without it,
    /// missing, or refused by the API server (RBAC, admission policy) is skipped and reported
    /// in the `RolloutRestarted` condition and an Event; it never holds the key or the
    /// revocation of a replaced one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,
    /// Take over an existing Secret that holds a key made by other means (for example by
    /// hand), instead of refusing it. The Secret's owner must consent: the Secret must carry
    /// the annotation `imbursepayments.com/adopt-by` naming this resource, and no owner
    /// reference or operator label or annotation of another resource. The pair must
    /// authenticate at Imburse and the public key must belong to the tenant. No key is created.
    /// Entries of the Secret other than the key's are never changed; a Secret holding such
    /// entries is not deleted with the resource (`deletionPolicy: Delete` then removes only the
    /// key's entries). Without `adopt`, such a Secret is a conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<bool>,
}

impl TenantSecurityKeySpec {
    /// The grace period of replaced keys; an unparsable value (which the schema refuses) means
    /// the default rather than revoking at once.
    pub fn grace_period(&self) -> std::time::Duration {
        self.rotation
            .as_ref()
            .and_then(|r| r.grace_period.as_deref())
            .or(Some(DEFAULT_GRACE_PERIOD))
            .and_then(parse_duration)
            .unwrap_or_default()
    }

    /// The rotation interval, when set and not zero.
    pub fn rotation_interval(&self) -> Option<std::time::Duration> {
        self.rotation
            .as_ref()
            .and_then(|r| r.interval.as_deref())
            .and_then(parse_duration)
            .filter(|d| !d.is_zero())
    }
}

impl TenantSecurityKey {
    /// Every account the resource depends on: the one its spec names, and the ones its keys
    /// (current, replaced, being created) were made with, which revoke them.
    pub fn account_refs(&self) -> impl Iterator<Item = &AccountRef> {
        let status = self.status.as_ref();
        std::iter::once(&self.spec.account_ref)
            .chain(status.and_then(|s| s.account_ref.as_ref()))
            .chain(
                status
                    .into_iter()
                    .flat_map(|s| s.previous_keys.iter().map(|p| &p.account_ref)),
            )
            .chain(status.and_then(|s| s.pending_create.as_ref().map(|i| &i.account_ref)))
    }
}

/// A key that was replaced and still has to be revoked at Imburse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    /// Public key of the replaced key.
    pub public_key: String,
    /// Tenant the replaced key belongs to.
    pub tenant_id: String,
    /// Account the replaced key was created with.
    pub account_ref: AccountRef,
    /// Where the replaced key lives; absent for keys recorded before endpoints were recorded,
    /// which live where the account points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// When the key may be revoked; revoked as soon as possible when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<Time>,
    /// Fingerprint of the account key pair the replaced key was made with (see
    /// `status.credentialsFingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_fingerprint: Option<String>,
    /// Why the key could not be revoked where it lives. Set when Imburse refused for good
    /// (e.g. the account's credentials no longer work at that endpoint): revoke it by hand,
    /// then remove the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_error: Option<String>,
}

/// A key creation the operator began and has not recorded yet: what it asked Imburse for.
/// Kept in the status, which only the operator writes, so that nobody who can edit the
/// resource can make the operator record, sweep or revoke a key elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateIntent {
    /// Random id of the attempt; the Secret written by it carries the same id.
    pub attempt: String,
    /// The exact name sent to Imburse, marked with the resource's uid and the attempt.
    pub name: String,
    pub tenant_id: String,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
    pub account_ref: AccountRef,
    pub endpoint: Endpoint,
    /// Value of the rotation request annotation when the attempt began: the attempt serves it,
    /// also when it is recovered after a crash, so no request is served twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_request: Option<String>,
    /// Fingerprint of the account key pair the attempt creates the key with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_fingerprint: Option<String>,
}

/// Observed state of a TenantSecurityKey. Everything needed to continue after a restart is
/// recorded here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSecurityKeyStatus {
    /// Generation of the spec that the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`, following kstatus conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Public key of the current key (public by design).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Name of the current key at Imburse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Secret holding the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current key was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// SHA-256 fingerprint of the current key material, also set as an annotation on the
    /// Secret so that reloaders can react to a new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Tenant the current key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Account the current key was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_ref: Option<AccountRef>,
    /// Imburse endpoint and account the current key was created at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Roles of the current key, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Creation attempt that produced the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Fingerprint (`sha256:` of the public key) of the account key pair the current key was
    /// made with. Imburse answers "not found" to other credentials, so a key only counts as
    /// revoked when the same credentials say it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_fingerprint: Option<String>,
    /// The creation in progress, until its key is recorded (or it is closed as failed).
    // Boxed: absent at rest, and the operator's cache holds every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<Box<CreateIntent>>,
    /// Replaced keys that still have to be revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKey>,
    /// When the current key is due for scheduled rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// Last value of the `imbursepayments.com/rotate-requested-at` annotation that was
    /// handled: a new value rotates the key once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_rotate_request: Option<String>,
    /// Fingerprint of the key the rollout restart targets were last restarted for (or found
    /// with): they are restarted when the current fingerprint differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restart_fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{DURATION_PATTERN, parse_duration};

    /// `d` as Go's `time.Duration.String` writes it, e.g. `1h2m3.5s`, `250ms`, `0s`.
    fn go_duration(d: Duration) -> String {
        let nanos = d.as_nanos();
        if nanos == 0 {
            return "0s".into();
        }
        let fraction = |value: u128, digits: usize| {
            let text = format!("{value:0digits$}");
            let text = text.trim_end_matches('0');
            if text.is_empty() {
                String::new()
            } else {
                format!(".{text}")
            }
        };
        if nanos < 1_000 {
            return format!("{nanos}ns");
        }
        if nanos < 1_000_000 {
            return format!("{}{}µs", nanos / 1_000, fraction(nanos % 1_000, 3));
        }
        if nanos < 1_000_000_000 {
            return format!("{}{}ms", nanos / 1_000_000, fraction(nanos % 1_000_000, 6));
        }
        let seconds = d.as_secs();
        let mut text = String::new();
        if seconds >= 3600 {
            text.push_str(&format!("{}h", seconds / 3600));
        }
        if seconds >= 60 {
            text.push_str(&format!("{}m", seconds / 60 % 60));
        }
        let subsec = fraction(u128::from(d.subsec_nanos()), 9);
        text.push_str(&format!("{}{subsec}s", seconds % 60));
        text
    }

    #[test]
    fn durations_read_like_kubernetes_fields() {
        assert_eq!(
            parse_duration("720h"),
            Some(Duration::from_secs(720 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "5", "m", "5d", "-5m", "5 m", "1h-2m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn go_duration_writes_like_go() {
        assert_eq!(go_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_micros(250)), "250µs");
        assert_eq!(go_duration(Duration::from_nanos(1_250_000)), "1.25ms");
    }

    proptest! {
        // An older CRD may hold any string here: it is read or refused, never a panic.
        #[test]
        fn parse_never_panics(value in ".{0,40}") {
            let _ = parse_duration(&value);
        }

        #[test]
        fn parse_never_panics_on_near_misses(value in "[0-9.hmsuµn -]{0,24}") {
            let _ = parse_duration(&value);
        }

        // Every value the schema admits is a duration, unless it is too large for one.
        #[test]
        fn what_the_schema_admits_parses(
            value in proptest::string::string_regex(
                DURATION_PATTERN.trim_start_matches('^').trim_end_matches('$'),
            )
            .unwrap(),
        ) {
            let huge = value.bytes().filter(u8::is_ascii_digit).count() > 15;
            prop_assert!(huge || parse_duration(&value).is_some(), "{value:?}");
        }

        // What Go (and kubectl, Argo CD, Flux) write parses back to the same duration; the
        // arithmetic is in floating point, so within a microsecond over ten thousand hours.
        #[test]
        fn go_durations_parse_back(nanos in 0u64..36_000_000_000_000_000) {
            let duration = Duration::from_nanos(nanos);
            let text = go_duration(duration);
            let parsed = parse_duration(&text).unwrap();
            prop_assert!(parsed.abs_diff(duration) < Duration::from_micros(1), "{text} read as {parsed:?}");
        }
    }
}
