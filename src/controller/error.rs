//! Errors of the reconcilers, each mapped to the reason users see in conditions and Events.

use std::time::Duration;

/// Why a reconcile did not finish. Messages are short, name resources and identifiers only,
/// and never contain key material, tokens or remote error bodies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("{kind} {name:?} not found{}", namespace.as_ref().map(|n| format!(" in namespace {n:?}")).unwrap_or_default())]
    AccountNotFound {
        kind: &'static str,
        name: String,
        /// Set for namespaced accounts, which serve only their own namespace.
        namespace: Option<String>,
    },
    #[error("namespace {namespace:?} is not allowed to use ClusterImburseAccount {name:?}")]
    NamespaceNotAllowed { namespace: String, name: String },
    #[error("{kind} {name:?} does not allow tenant {tenant_id}")]
    TenantNotAllowed {
        kind: &'static str,
        name: String,
        tenant_id: String,
    },
    #[error("{kind} {name:?} does not allow role(s) {}", roles.join(", "))]
    RolesNotAllowed {
        kind: &'static str,
        name: String,
        roles: Vec<String>,
    },
    #[error(transparent)]
    BaseUrlNotAllowed(#[from] crate::allowed_hosts::Refusal),
    #[error("{kind} {name:?} is not ready")]
    AccountNotReady { kind: &'static str, name: String },
    #[error("credentials Secret {namespace}/{name} not found")]
    CredentialsSecretNotFound { namespace: String, name: String },
    #[error("credentials invalid: {0}")]
    CredentialsInvalid(String),
    #[error("Secret {0:?} exists and is not owned by this TenantSecurityKey")]
    SecretConflict(String),
    #[error("Secret {name:?} cannot be adopted: {why}")]
    AdoptionRefused { name: String, why: String },
    #[error("the API server refuses Secret {name:?}: {message}")]
    SecretRejected { name: String, message: String },
    #[error(
        "the account's API generation cannot list tenant keys, so a possibly created key cannot be found; check the tenant's keys at Imburse and delete any named {0:?}"
    )]
    ListingUnsupported(String),
    #[error(
        "key {public_key} could not be proven revoked: {why}; it is kept on record until the credentials it was made with say it is gone, or it is revoked by hand"
    )]
    KeyNotRevoked { public_key: String, why: String },
    #[error(
        "{pending} replaced keys still wait for revocation (at most {cap}): no further key is made until older ones are revoked"
    )]
    RotationLimited { pending: usize, cap: usize },
    #[error("Imburse API: {0}")]
    Imburse(#[from] imburse::Error),
    /// Imburse refused the last create outright; repeated without asking again until the
    /// refusal's backoff ends or the spec changes (the same text, so the status stays as is).
    #[error("{message}")]
    Refused { reason: Reason, message: String },
    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),
}

/// Condition and Event reasons. The names are part of the user-facing contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    InvalidSpec,
    AccountNotFound,
    NamespaceNotAllowed,
    TenantNotAllowed,
    RolesNotAllowed,
    BaseUrlNotAllowed,
    AccountNotReady,
    CredentialsSecretNotFound,
    CredentialsInvalid,
    Forbidden,
    TenantNotFound,
    RateLimited,
    ImburseUnavailable,
    ImburseRejected,
    SecretConflict,
    AdoptionRefused,
    SecretRejected,
    ListingUnsupported,
    KubernetesError,
    KeyNotRevoked,
    RotationLimited,
}

impl Reason {
    /// Every reason, for tools that must map each one (the Argo CD health check's test).
    pub const ALL: [Reason; 21] = [
        Self::InvalidSpec,
        Self::AccountNotFound,
        Self::NamespaceNotAllowed,
        Self::TenantNotAllowed,
        Self::RolesNotAllowed,
        Self::BaseUrlNotAllowed,
        Self::AccountNotReady,
        Self::CredentialsSecretNotFound,
        Self::CredentialsInvalid,
        Self::Forbidden,
        Self::TenantNotFound,
        Self::RateLimited,
        Self::ImburseUnavailable,
        Self::ImburseRejected,
        Self::SecretConflict,
        Self::AdoptionRefused,
        Self::SecretRejected,
        Self::ListingUnsupported,
        Self::KubernetesError,
        Self::KeyNotRevoked,
        Self::RotationLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::AccountNotFound => "AccountNotFound",
            Self::NamespaceNotAllowed => "NamespaceNotAllowed",
            Self::TenantNotAllowed => "TenantNotAllowed",
            Self::RolesNotAllowed => "RolesNotAllowed",
            Self::BaseUrlNotAllowed => "BaseUrlNotAllowed",
            Self::AccountNotReady => "AccountNotReady",
            Self::CredentialsSecretNotFound => "CredentialsSecretNotFound",
            Self::CredentialsInvalid => "CredentialsInvalid",
            Self::Forbidden => "Forbidden",
            Self::TenantNotFound => "TenantNotFound",
            Self::RateLimited => "RateLimited",
            Self::ImburseUnavailable => "ImburseUnavailable",
            Self::ImburseRejected => "ImburseRejected",
            Self::SecretConflict => "SecretConflict",
            Self::AdoptionRefused => "AdoptionRefused",
            Self::SecretRejected => "SecretRejected",
            Self::ListingUnsupported => "ListingUnsupported",
            Self::KubernetesError => "KubernetesError",
            Self::KeyNotRevoked => "KeyNotRevoked",
            Self::RotationLimited => "RotationLimited",
        }
    }

    /// What the reason means, in one sentence: the status reasons reference in docs/ is
    /// generated from it, so that the page and the code cannot disagree about which reasons
    /// exist.
    pub fn summary(self) -> &'static str {
        match self {
            Self::InvalidSpec => {
                "The spec is wrong in a way the CRD schema cannot express, e.g. an invalid Secret name, a base URL that does not parse, or a rotation beyond the operator's limits."
            }
            Self::AccountNotFound => {
                "The account the key refers to does not exist; an ImburseAccount must be in the key's own namespace."
            }
            Self::NamespaceNotAllowed => {
                "The ClusterImburseAccount does not allow the key's namespace (`allowedNamespaces`)."
            }
            Self::TenantNotAllowed => {
                "The account's `allowedTenantIds` does not include the key's tenant."
            }
            Self::RolesNotAllowed => {
                "The account's `allowedRoles` does not include one of the key's roles."
            }
            Self::BaseUrlNotAllowed => {
                "The account's `baseUrl` names a host outside `--allowed-imburse-hosts`, or carries a user name or password."
            }
            Self::AccountNotReady => {
                "The account's credentials are not verified; the account's own Ready condition says why."
            }
            Self::CredentialsSecretNotFound => "The account's credentials Secret does not exist.",
            Self::CredentialsInvalid => {
                "Imburse refused the account's credentials (401), or the credentials Secret lacks a usable key pair."
            }
            Self::Forbidden => "Imburse answered 403: the account may not do this.",
            Self::TenantNotFound => "Imburse answered 404 for the tenant.",
            Self::RateLimited => "Imburse answered 429; retried after its `Retry-After`.",
            Self::ImburseUnavailable => {
                "Imburse answered 5xx or an unexpected status, or did not answer in time; retried with backoff."
            }
            Self::ImburseRejected => "Imburse refused the request as invalid (400).",
            Self::SecretConflict => {
                "A Secret of that name exists and is not the resource's; it is never overwritten unless `adopt` is set."
            }
            Self::AdoptionRefused => {
                "`adopt` is set, but the Secret does not consent, carries another resource's marks, or holds a key that does not check out at Imburse."
            }
            Self::SecretRejected => {
                "The API server refuses the Secret (validation, an admission webhook, a quota); found before any key is created when the spec gives the Secret labels or annotations."
            }
            Self::ListingUnsupported => {
                "A create may have happened and the account's API generation cannot list keys to check; the message names the key to look for."
            }
            Self::KubernetesError => {
                "The API server failed or refused a request of the operator other than the Secret itself; retried with backoff."
            }
            Self::KeyNotRevoked => {
                "A key could not be proven revoked with the credentials it was made with; the resource is held until it is."
            }
            Self::RotationLimited => {
                "As many replaced keys as allowed still wait for revocation; no further key is made until one of them is revoked."
            }
        }
    }

    /// Whether retrying without a change to some watched object cannot help. Such failures
    /// stall the resource until the resource, its account or a Secret changes. For an Imburse
    /// call it also means that Imburse refused the request itself, so the call had no effect
    /// (no key was created); a call whose outcome is unknown is never permanent.
    ///
    /// This is the one classification of failures. The Imburse client's own
    /// `is_transient` answers a narrower question, whether the same HTTP call may be repeated
    /// at once: it does not repeat a 404 for a key, a 409 or an unexpected status, yet those
    /// are no user error, so a reconcile, which decides afresh, retries them with backoff.
    pub fn is_permanent(self) -> bool {
        match self {
            Self::InvalidSpec
            | Self::AccountNotFound
            | Self::NamespaceNotAllowed
            | Self::TenantNotAllowed
            | Self::RolesNotAllowed
            | Self::BaseUrlNotAllowed
            | Self::CredentialsSecretNotFound
            | Self::CredentialsInvalid
            | Self::Forbidden
            | Self::TenantNotFound
            | Self::ImburseRejected
            | Self::SecretConflict
            | Self::AdoptionRefused
            | Self::SecretRejected
            | Self::ListingUnsupported
            | Self::KeyNotRevoked
            | Self::RotationLimited => true,
            Self::AccountNotReady
            | Self::RateLimited
            | Self::ImburseUnavailable
            | Self::KubernetesError => false,
        }
    }
}

impl Error {
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidSpec(_) => Reason::InvalidSpec,
            Self::AccountNotFound { .. } => Reason::AccountNotFound,
            Self::NamespaceNotAllowed { .. } => Reason::NamespaceNotAllowed,
            Self::TenantNotAllowed { .. } => Reason::TenantNotAllowed,
            Self::RolesNotAllowed { .. } => Reason::RolesNotAllowed,
            // A URL that does not parse, or names no host, is a mistake, not a refusal.
            Self::BaseUrlNotAllowed(
                crate::allowed_hosts::Refusal::Invalid | crate::allowed_hosts::Refusal::NoHost,
            ) => Reason::InvalidSpec,
            Self::BaseUrlNotAllowed(_) => Reason::BaseUrlNotAllowed,
            Self::AccountNotReady { .. } => Reason::AccountNotReady,
            Self::CredentialsSecretNotFound { .. } => Reason::CredentialsSecretNotFound,
            Self::CredentialsInvalid(_) => Reason::CredentialsInvalid,
            Self::SecretConflict(_) => Reason::SecretConflict,
            Self::AdoptionRefused { .. } => Reason::AdoptionRefused,
            Self::SecretRejected { .. } => Reason::SecretRejected,
            Self::ListingUnsupported(_) => Reason::ListingUnsupported,
            Self::KeyNotRevoked { .. } => Reason::KeyNotRevoked,
            Self::RotationLimited { .. } => Reason::RotationLimited,
            Self::Kube(_) => Reason::KubernetesError,
            Self::Refused { reason, .. } => *reason,
            Self::Imburse(e) => match e {
                imburse::Error::Unauthorized(_) => Reason::CredentialsInvalid,
                imburse::Error::Forbidden(_) => Reason::Forbidden,
                imburse::Error::TenantNotFound(_) => Reason::TenantNotFound,
                imburse::Error::RateLimited { .. } => Reason::RateLimited,
                imburse::Error::InvalidConfig(_) => Reason::InvalidSpec,
                imburse::Error::BadRequest(_) => Reason::ImburseRejected,
                _ => Reason::ImburseUnavailable,
            },
        }
    }

    /// See [`Reason::is_permanent`].
    pub fn is_permanent(&self) -> bool {
        self.reason().is_permanent()
    }

    /// A conflict found by the operator itself, reported like the API server's own.
    pub fn conflict(message: &str) -> Self {
        Self::Kube(kube::Error::Api(
            kube::core::Status::failure(message, "Conflict")
                .with_code(409)
                .boxed(),
        ))
    }

    /// Whether the API server refused a write made on an older version of the object: someone
    /// else (a user, another operator process) changed it since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(e)) if e.code == 409)
    }

    /// The delay the remote side asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Imburse(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Correlation id of the failed Imburse request, for logs and Events (never in status,
    /// whose text must not change from one retry to the next).
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            Self::Imburse(e) => e.correlation_id(),
            _ => None,
        }
    }

    /// The error as an Event note: the status message plus the correlation id, if any.
    pub fn event_note(&self) -> String {
        match self.correlation_id() {
            Some(id) => format!("{self} (correlation id {id})"),
            None => self.to_string(),
        }
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        self.reason().as_str()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The API server's own message and code, without the debug dump of its Status object.
fn kube_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status message of a repeated failure must not change between retries (a changing
    /// status triggers the next reconcile at once); the correlation id goes to the Event.
    #[test]
    fn all_lists_every_reason_once() {
        for (position, reason) in Reason::ALL.into_iter().enumerate() {
            // Exhaustive: a new reason does not compile here until it is placed in ALL.
            let expected = match reason {
                Reason::InvalidSpec => 0,
                Reason::AccountNotFound => 1,
                Reason::NamespaceNotAllowed => 2,
                Reason::TenantNotAllowed => 3,
                Reason::RolesNotAllowed => 4,
                Reason::BaseUrlNotAllowed => 5,
                Reason::AccountNotReady => 6,
                Reason::CredentialsSecretNotFound => 7,
                Reason::CredentialsInvalid => 8,
                Reason::Forbidden => 9,
                Reason::TenantNotFound => 10,
                Reason::RateLimited => 11,
                Reason::ImburseUnavailable => 12,
                Reason::ImburseRejected => 13,
                Reason::SecretConflict => 14,
                Reason::AdoptionRefused => 15,
                Reason::SecretRejected => 16,
                Reason::ListingUnsupported => 17,
                Reason::KubernetesError => 18,
                Reason::KeyNotRevoked => 19,
                Reason::RotationLimited => 20,
            };
            assert_eq!(position, expected, "{}", reason.as_str());
        }
    }

    #[test]
    fn imburse_errors_read_the_same_on_every_retry() {
        let failure = |id: &str| {
            Error::from(imburse::Error::RateLimited {
                retry_after: None,
                details: imburse::ApiErrorDetails {
                    error_code: Some("TOO_MANY_REQUESTS".into()),
                    correlation_id: Some(id.into()),
                },
            })
        };
        assert_eq!(failure("a").to_string(), failure("b").to_string());
        assert!(failure("a").to_string().contains("TOO_MANY_REQUESTS"));
        assert!(failure("a").event_note().contains("correlation id a"));
        let lost = Error::from(imburse::Error::CreateOutcomeUnknown {
            correlation_id: "c".into(),
        });
        assert!(!lost.to_string().contains("correlation"));
        assert!(lost.event_note().ends_with("(correlation id c)"));
    }

    #[test]
    fn api_server_errors_are_short() {
        let status = kube::core::Status::failure("secrets \"x\" is forbidden", "Forbidden")
            .with_code(403)
            .boxed();
        let e = Error::from(kube::Error::Api(status));
        assert_eq!(
            e.to_string(),
            "Kubernetes API: secrets \"x\" is forbidden (403)"
        );
        assert!(!e.is_permanent());
    }

    #[test]
    fn refusals_by_account_or_operator_are_permanent() {
        let cases = [
            (
                Error::TenantNotAllowed {
                    kind: "ClusterImburseAccount",
                    name: "shared".into(),
                    tenant_id: "88fdb12a-14dc-419c-b74c-422e2c25cfe7".into(),
                },
                "TenantNotAllowed",
            ),
            (
                Error::RolesNotAllowed {
                    kind: "ImburseAccount",
                    name: "imburse".into(),
                    roles: vec!["tenant-admin".into(), "tenant-app-write".into()],
                },
                "RolesNotAllowed",
            ),
            (
                Error::from(crate::allowed_hosts::Refusal::NotAllowed(
                    "evil.example".into(),
                )),
                "BaseUrlNotAllowed",
            ),
        ];
        for (e, reason) in cases {
            assert_eq!(e.reason().as_str(), reason);
            assert!(e.is_permanent(), "{reason}");
        }
    }

    #[test]
    fn imburse_errors_map_to_documented_reasons() {
        let d = imburse::ApiErrorDetails::default;
        let cases = [
            (
                imburse::Error::Unauthorized(d()),
                "CredentialsInvalid",
                true,
            ),
            (imburse::Error::Forbidden(d()), "Forbidden", true),
            (imburse::Error::TenantNotFound(d()), "TenantNotFound", true),
            (
                imburse::Error::RateLimited {
                    retry_after: Some(Duration::from_secs(3)),
                    details: d(),
                },
                "RateLimited",
                false,
            ),
            (
                imburse::Error::Server {
                    status: 503,
                    details: d(),
                },
                "ImburseUnavailable",
                false,
            ),
            (imburse::Error::Timeout, "ImburseUnavailable", false),
        ];
        for (e, reason, permanent) in cases {
            let e = Error::from(e);
            assert_eq!(e.reason().as_str(), reason);
            assert_eq!(e.is_permanent(), permanent, "{reason}");
        }
    }
}
