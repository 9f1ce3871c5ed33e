//! Who may read `/metrics` when it is served securely: a caller whose bearer token the API
//! server authenticates (a TokenReview) and authorizes for `get` on the non-resource URL
//! `/metrics` (a SubjectAccessReview), as controller-runtime's secure metrics do. Prometheus is
//! granted that by a ClusterRole, like any other scraper of a controller.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};
use sha2::{Digest, Sha256};

/// How long a verdict is reused: a scrape every few seconds must not cost two API requests
/// each, and a revoked grant should not outlive a minute.
const ALLOWED_FOR: Duration = Duration::from_secs(60);
const DENIED_FOR: Duration = Duration::from_secs(10);
/// Verdicts kept at most; beyond this the cache starts over (callers are a few scrapers).
const CACHE_LIMIT: usize = 1024;

/// The answer for one bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The API server does not know the token.
    Unauthenticated,
    /// It knows the caller, who may not read `/metrics`.
    Forbidden,
}

/// Reviews callers' tokens with the API server, remembering verdicts briefly.
pub struct Authorizer {
    client: kube::Client,
    /// By the SHA-256 of the token, so that no token is kept in memory longer than a request.
    verdicts: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
}

impl Authorizer {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            verdicts: Mutex::default(),
        })
    }

    /// The verdict for `token` on `get /metrics`.
    pub async fn review(&self, token: &str) -> kube::Result<Verdict> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(verdict) = self.cached(&digest, now) {
            return Ok(verdict);
        }
        let verdict = self.ask(token).await?;
        let lifetime = match verdict {
            Verdict::Allowed => ALLOWED_FOR,
            Verdict::Unauthenticated | Verdict::Forbidden => DENIED_FOR,
        };
        let mut verdicts = self.lock();
        if verdicts.len() >= CACHE_LIMIT {
            verdicts.clear();
        }
        verdicts.insert(digest, (verdict, now + lifetime));
        Ok(verdict)
    }

    fn cached(&self, digest: &[u8; 32], now: Instant) -> Option<Verdict> {
        self.lock()
            .get(digest)
            .filter(|(_, until)| now < *until)
            .map(|(verdict, _)| *verdict)
    }

    async fn ask(&self, token: &str) -> kube::Result<Verdict> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let Some(user) = reviewed
            .status
            .filter(|status| status.authenticated == Some(true))
            .and_then(|status| status.user)
        else {
            return Ok(Verdict::Unauthenticated);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(if decided.status.is_some_and(|status| status.allowed) {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Verdict, Instant)>> {
        // Each entry is written whole, so a panic elsewhere leaves the map usable.
        self.verdicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Lets a request through only with a bearer token allowed to `get /metrics`.
pub async fn require_metrics_reader(
    State(authorizer): State<Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return (StatusCode::UNAUTHORIZED, "a bearer token is required").into_response();
    };
    match authorizer.review(token).await {
        Ok(Verdict::Allowed) => next.run(request).await,
        Ok(Verdict::Unauthenticated) => {
            (StatusCode::UNAUTHORIZED, "the token was not accepted").into_response()
        }
        Ok(Verdict::Forbidden) => {
            (StatusCode::FORBIDDEN, "not allowed to get /metrics").into_response()
        }
        Err(e) => {
            // The error names the review, never the token.
            tracing::warn!(error = %e, "could not review a metrics caller");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not review the caller",
            )
                .into_response()
        }
    }
}
