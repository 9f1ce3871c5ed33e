//! `kubectl tsk status`: everything that tells whether a key is healthy, in one place.

use anyhow::Result;
use k8s_openapi::{
    api::{core::v1::Secret, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;
use tenant_key_api::{
    crd::{
        AccountKind, ClusterImburseAccount, ImburseAccount, PreviousKey, READY,
        ROTATE_REQUESTED_AT_ANNOTATION, TenantSecurityKey, find_condition,
    },
    key_secret::{FINGERPRINT_ANNOTATION, secret_name, stored_key},
};

use crate::{
    cli::Scope,
    cluster,
    output::{self, Format, duration, or_none, seconds_between, table, when},
};

/// How many of the newest Events `status` shows.
const EVENTS_SHOWN: usize = 10;

/// The state of one TenantSecurityKey, as `status NAME` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<Condition>,
    pub key_name: Option<String>,
    pub public_key: Option<String>,
    pub created_at: Option<Time>,
    pub key_age_seconds: Option<i64>,
    pub next_rotation_at: Option<Time>,
    /// The rotation asked for last (the annotation's value).
    pub rotate_requested_at: Option<String>,
    pub last_handled_rotate_request: Option<String>,
    /// Replaced keys not yet revoked at Imburse.
    pub pending_revocations: Vec<PreviousKey>,
    pub secret: SecretCheck,
    pub account: AccountCheck,
    /// Oldest first, as `kubectl describe` lists them.
    pub events: Vec<EventLine>,
}

/// Whether the Secret holds the key the status records.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretCheck {
    pub name: String,
    pub fingerprint: FingerprintCheck,
    /// Fingerprint of the pair stored in the Secret.
    pub stored_fingerprint: Option<String>,
    /// The Secret's fingerprint annotation, which reloaders watch.
    pub annotation_fingerprint: Option<String>,
    /// Why the Secret could not be read.
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FingerprintCheck {
    /// The Secret holds the recorded key and its annotation says so.
    Matches,
    /// The Secret holds another key than the status records.
    Differs,
    /// The Secret holds the recorded key, but its annotation names another.
    AnnotationDiffers,
    /// The status records no key yet.
    NotRecorded,
    /// The Secret lacks the public or the private key.
    NoKeyMaterial,
    SecretNotFound,
    Unreadable,
}

impl FingerprintCheck {
    fn of(recorded: Option<&str>, stored: Option<&str>, annotation: Option<&str>) -> Self {
        match (recorded, stored) {
            (None, _) => Self::NotRecorded,
            (Some(_), None) => Self::NoKeyMaterial,
            (Some(recorded), Some(stored)) if recorded != stored => Self::Differs,
            _ if annotation != stored => Self::AnnotationDiffers,
            _ => Self::Matches,
        }
    }
}

/// The account the key is created with, and whether its credentials work.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountCheck {
    pub kind: AccountKind,
    pub name: String,
    /// The account's `Ready` condition.
    pub ready: Option<Condition>,
    /// Why the account could not be read (including that it does not exist).
    pub error: Option<String>,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub count: i32,
    pub last_seen: Option<Time>,
}

impl EventLine {
    /// Reads an `events.k8s.io/v1` Event, which is how the operator publishes them, including
    /// repeats folded into a series.
    fn of(event: &Event) -> Self {
        let last_seen = event
            .series
            .as_ref()
            .map(|s| Time(s.last_observed_time.0))
            .or_else(|| event.event_time.as_ref().map(|t| Time(t.0)))
            .or_else(|| event.deprecated_last_timestamp.clone())
            .or_else(|| event.metadata.creation_timestamp.clone());
        let count = event
            .series
            .as_ref()
            .map(|s| s.count)
            .or(event.deprecated_count)
            .unwrap_or(1);
        Self {
            type_: event.type_.clone(),
            reason: event.reason.clone(),
            message: event.note.clone(),
            count,
            last_seen,
        }
    }
}

/// The newest [`EVENTS_SHOWN`] Events, oldest first.
fn recent(events: &[Event]) -> Vec<EventLine> {
    let mut lines: Vec<EventLine> = events.iter().map(EventLine::of).collect();
    lines.sort_by_key(|l| l.last_seen.as_ref().map(|t| t.0));
    let skip = lines.len().saturating_sub(EVENTS_SHOWN);
    lines.drain(..skip);
    lines
}

pub async fn show(
    client: Client,
    namespace: &str,
    name: &str,
    format: Option<Format>,
) -> Result<()> {
    let keys: Api<TenantSecurityKey> = Api::namespaced(client.clone(), namespace);
    let tsk = cluster::get(&keys, namespace, name).await?;
    let secret = check_secret(&client, namespace, &tsk).await;
    let account = check_account(&client, namespace, &tsk).await;
    let events: Api<Event> = Api::namespaced(client, namespace);
    let selector = format!("regarding.uid={}", tsk.uid().unwrap_or_default());
    let events = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => recent(&list.items),
        Err(e) => {
            eprintln!("warning: could not list Events: {e}");
            Vec::new()
        }
    };
    let now = Timestamp::now();
    let status = key_status(&tsk, secret, account, events, now);
    output::emit(&match format {
        Some(format) => output::render(format, &status)?,
        None => text(&status, now),
    })
}

async fn check_secret(client: &Client, namespace: &str, tsk: &TenantSecurityKey) -> SecretCheck {
    let recorded = tsk.status.as_ref().and_then(|s| s.fingerprint.as_deref());
    let name = tsk
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| secret_name(tsk));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (fingerprint, stored, annotation, error) = match secrets.get_opt(&name).await {
        Ok(Some(secret)) => {
            let names = tsk.spec.secret.as_ref().and_then(|s| s.keys.as_ref());
            let stored = stored_key(names, &secret).fingerprint;
            let annotation = secret.annotations().get(FINGERPRINT_ANNOTATION).cloned();
            let check = FingerprintCheck::of(recorded, stored.as_deref(), annotation.as_deref());
            (check, stored, annotation, None)
        }
        Ok(None) => (FingerprintCheck::SecretNotFound, None, None, None),
        Err(e) => (
            FingerprintCheck::Unreadable,
            None,
            None,
            Some(e.to_string()),
        ),
    };
    SecretCheck {
        name,
        fingerprint,
        stored_fingerprint: stored,
        annotation_fingerprint: annotation,
        error,
    }
}

async fn check_account(client: &Client, namespace: &str, tsk: &TenantSecurityKey) -> AccountCheck {
    let reference = &tsk.spec.account_ref;
    let status = match reference.kind {
        AccountKind::ImburseAccount => Api::<ImburseAccount>::namespaced(client.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map(|a| a.map(|a| a.status)),
        AccountKind::ClusterImburseAccount => Api::<ClusterImburseAccount>::all(client.clone())
            .get_opt(&reference.name)
            .await
            .map(|a| a.map(|a| a.status)),
    };
    let (ready, error) = match status {
        Ok(Some(status)) => (
            status.and_then(|s| find_condition(&s.conditions, READY).cloned()),
            None,
        ),
        Ok(None) => (None, Some("not found".to_owned())),
        Err(e) => (None, Some(e.to_string())),
    };
    AccountCheck {
        kind: reference.kind,
        name: reference.name.clone(),
        ready,
        error,
    }
}

fn key_status(
    tsk: &TenantSecurityKey,
    secret: SecretCheck,
    account: AccountCheck,
    events: Vec<EventLine>,
    now: Timestamp,
) -> KeyStatus {
    let status = tsk.status.clone().unwrap_or_default();
    KeyStatus {
        namespace: tsk.namespace().unwrap_or_default(),
        name: tsk.name_any(),
        conditions: status.conditions,
        key_name: status.key_name,
        public_key: status.public_key,
        key_age_seconds: status.created_at.as_ref().map(|t| seconds_between(t, now)),
        created_at: status.created_at,
        next_rotation_at: status.next_rotation_at,
        rotate_requested_at: tsk
            .annotations()
            .get(ROTATE_REQUESTED_AT_ANNOTATION)
            .cloned(),
        last_handled_rotate_request: status.last_handled_rotate_request,
        pending_revocations: status.previous_keys,
        secret,
        account,
        events,
    }
}

/// `status NAME` for people.
fn text(status: &KeyStatus, now: Timestamp) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: &str| out.push_str(&format!("{label:<22}{value}\n"));
    field("Name:", &status.name);
    field("Namespace:", &status.namespace);
    field("Key name:", &or_none(status.key_name.as_deref()));
    field("Public key:", &or_none(status.public_key.as_deref()));
    let age = match (&status.created_at, status.key_age_seconds) {
        (Some(created), Some(age)) => {
            format!("{} (created {})", duration(age), output::exact(created))
        }
        _ => "<no key yet>".to_owned(),
    };
    field("Key age:", &age);
    let next = status
        .next_rotation_at
        .as_ref()
        .map_or_else(|| "not scheduled".to_owned(), |t| when(t, now));
    field("Next rotation:", &next);
    let rotation = match (
        &status.rotate_requested_at,
        &status.last_handled_rotate_request,
    ) {
        (None, _) => "none requested".to_owned(),
        (Some(asked), Some(handled)) if asked == handled => format!("{asked} (done)"),
        (Some(asked), _) => format!("{asked} (pending)"),
    };
    field("Rotation request:", &rotation);
    field("Secret:", &secret_text(&status.secret));
    field("Account:", &account_text(&status.account));
    out.push_str("Conditions:\n");
    if status.conditions.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            "  ",
            &["TYPE", "STATUS", "REASON", "MESSAGE"],
            &rows,
        ));
    }
    out.push_str("Pending revocations:\n");
    if status.pending_revocations.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .pending_revocations
            .iter()
            .map(|k| {
                vec![
                    k.public_key.clone(),
                    k.revoke_after
                        .as_ref()
                        .map_or_else(|| "as soon as possible".to_owned(), |t| when(t, now)),
                    or_none(k.revocation_error.as_deref()),
                ]
            })
            .collect();
        out.push_str(&table(
            "  ",
            &["PUBLIC KEY", "REVOKE AFTER", "REVOCATION ERROR"],
            &rows,
        ));
    }
    out.push_str("Events:\n");
    if status.events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .events
            .iter()
            .map(|e| {
                let age = e
                    .last_seen
                    .as_ref()
                    .map_or_else(|| "<unknown>".to_owned(), |t| output::relative(t, now));
                let age = if e.count > 1 {
                    format!("{age} (x{})", e.count)
                } else {
                    age
                };
                vec![
                    or_none(e.type_.as_deref()),
                    or_none(e.reason.as_deref()),
                    age,
                    e.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            "  ",
            &["TYPE", "REASON", "LAST SEEN", "MESSAGE"],
            &rows,
        ));
    }
    out
}

fn secret_text(secret: &SecretCheck) -> String {
    let stored = or_none(secret.stored_fingerprint.as_deref());
    let detail = match secret.fingerprint {
        FingerprintCheck::Matches => format!("holds the recorded key ({stored})"),
        FingerprintCheck::Differs => {
            format!("holds another key ({stored}) than the status records")
        }
        FingerprintCheck::AnnotationDiffers => format!(
            "holds the recorded key ({stored}), but its {FINGERPRINT_ANNOTATION} annotation is {}",
            or_none(secret.annotation_fingerprint.as_deref())
        ),
        FingerprintCheck::NotRecorded => "no key recorded in the status yet".to_owned(),
        FingerprintCheck::NoKeyMaterial => "has no key pair".to_owned(),
        FingerprintCheck::SecretNotFound => "not found".to_owned(),
        FingerprintCheck::Unreadable => {
            format!("could not be read: {}", or_none(secret.error.as_deref()))
        }
    };
    format!("{}: {detail}", secret.name)
}

fn account_text(account: &AccountCheck) -> String {
    let state = match (&account.error, &account.ready) {
        (Some(error), _) => error.clone(),
        (None, None) => "Ready unknown (no condition yet)".to_owned(),
        (None, Some(ready)) if ready.message.is_empty() => {
            format!("Ready={} {}", ready.status, ready.reason)
        }
        (None, Some(ready)) => {
            format!("Ready={} {}: {}", ready.status, ready.reason, ready.message)
        }
    };
    format!("{:?}/{}: {state}", account.kind, account.name)
}

/// One row of `status` without a name.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    pub namespace: String,
    pub name: String,
    pub ready: Option<String>,
    pub reason: Option<String>,
    pub created_at: Option<Time>,
    pub next_rotation_at: Option<Time>,
    pub pending_revocations: usize,
    /// Pending revocations Imburse refused for good, which need a person.
    pub failed_revocations: usize,
}

impl KeySummary {
    fn of(tsk: &TenantSecurityKey) -> Self {
        let status = tsk.status.clone().unwrap_or_default();
        let ready = find_condition(&status.conditions, READY);
        Self {
            namespace: tsk.namespace().unwrap_or_default(),
            name: tsk.name_any(),
            ready: ready.map(|c| c.status.clone()),
            reason: ready.map(|c| c.reason.clone()),
            created_at: status.created_at,
            next_rotation_at: status.next_rotation_at,
            pending_revocations: status.previous_keys.len(),
            failed_revocations: status
                .previous_keys
                .iter()
                .filter(|k| k.revocation_error.is_some())
                .count(),
        }
    }
}

pub async fn list(client: Client, scope: &Scope, format: Option<Format>) -> Result<()> {
    let (keys, where_): (Api<TenantSecurityKey>, String) = match scope {
        Scope::Namespace(ns) => (Api::namespaced(client, ns), format!("{ns} namespace")),
        Scope::All => (Api::all(client), "any namespace".to_owned()),
    };
    let mut summaries: Vec<KeySummary> = keys
        .list(&ListParams::default())
        .await?
        .iter()
        .map(KeySummary::of)
        .collect();
    summaries.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    if let Some(format) = format {
        return output::emit(&output::render(format, &summaries)?);
    }
    if summaries.is_empty() {
        eprintln!("No resources found in {where_}.");
        return Ok(());
    }
    output::emit(&summary_table(
        &summaries,
        *scope == Scope::All,
        Timestamp::now(),
    ))
}

fn summary_table(summaries: &[KeySummary], with_namespace: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "NAME",
        "READY",
        "REASON",
        "KEY AGE",
        "NEXT ROTATION",
        "PENDING REVOCATIONS",
    ];
    if with_namespace {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                or_none(s.ready.as_deref()),
                or_none(s.reason.as_deref()),
                s.created_at.as_ref().map_or_else(
                    || "<none>".to_owned(),
                    |t| duration(seconds_between(t, now)),
                ),
                s.next_rotation_at
                    .as_ref()
                    .map_or_else(|| "<none>".to_owned(), |t| output::relative(t, now)),
                match s.failed_revocations {
                    0 => s.pending_revocations.to_string(),
                    failed => format!("{} ({failed} failed)", s.pending_revocations),
                },
            ];
            if with_namespace {
                row.insert(0, s.namespace.clone());
            }
            row
        })
        .collect();
    table("", &headers, &rows)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::events::v1::EventSeries;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use tenant_key_api::crd::AccountRef;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn at(offset: i64) -> Time {
        Time(Timestamp::from_second(NOW + offset).unwrap())
    }

    fn now() -> Timestamp {
        at(0).0
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: at(-60),
        }
    }

    fn healthy() -> KeyStatus {
        KeyStatus {
            namespace: "payments".into(),
            name: "checkout-api".into(),
            conditions: vec![
                condition("Ready", "True", "KeyReady", "the key is in the Secret"),
                condition("Reconciling", "False", "KeyReady", ""),
            ],
            key_name: Some("payments/checkout-api".into()),
            public_key: Some("a123456b-c12c-123d-1ab4-18bd8c8e88a3".into()),
            created_at: Some(at(-2 * 86400 - 3 * 3600)),
            key_age_seconds: Some(2 * 86400 + 3 * 3600),
            next_rotation_at: Some(at(28 * 86400)),
            rotate_requested_at: Some("2027-01-15T08:00:00Z".into()),
            last_handled_rotate_request: Some("2027-01-15T08:00:00Z".into()),
            pending_revocations: vec![PreviousKey {
                public_key: "old-public-key".into(),
                tenant_id: "88fdb12a-14dc-419c-b74c-422e2c25cfe7".into(),
                account_ref: AccountRef {
                    kind: AccountKind::ImburseAccount,
                    name: "imburse".into(),
                },
                endpoint: None,
                revoke_after: Some(at(300)),
                credentials_fingerprint: None,
                revocation_error: Some("Imburse answered 403".into()),
            }],
            secret: SecretCheck {
                name: "checkout-api".into(),
                fingerprint: FingerprintCheck::Matches,
                stored_fingerprint: Some("sha256:abc".into()),
                annotation_fingerprint: Some("sha256:abc".into()),
                error: None,
            },
            account: AccountCheck {
                kind: AccountKind::ImburseAccount,
                name: "imburse".into(),
                ready: Some(condition("Ready", "True", "CredentialsVerified", "")),
                error: None,
            },
            events: vec![EventLine {
                type_: Some("Normal".into()),
                reason: Some("KeyCreated".into()),
                message: Some("created key payments/checkout-api".into()),
                count: 2,
                last_seen: Some(at(-90)),
            }],
        }
    }

    #[test]
    fn status_text_shows_every_part() {
        let text = text(&healthy(), now());
        let expected = [
            "Name:                 checkout-api",
            "Key age:              2d3h (created ",
            "Next rotation:        in 28d (",
            "Rotation request:     2027-01-15T08:00:00Z (done)",
            "Secret:               checkout-api: holds the recorded key (sha256:abc)",
            "Account:              ImburseAccount/imburse: Ready=True CredentialsVerified",
            "  TYPE          STATUS   REASON     MESSAGE",
            "  Ready         True     KeyReady   the key is in the Secret",
            "  PUBLIC KEY       REVOKE AFTER",
            "  old-public-key   in 5m (",
            "Imburse answered 403",
            "  Normal   KeyCreated   90s ago (x2)   created key payments/checkout-api",
        ];
        for line in expected {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn status_text_explains_what_is_missing() {
        let mut status = healthy();
        status.conditions.clear();
        status.created_at = None;
        status.key_age_seconds = None;
        status.next_rotation_at = None;
        status.rotate_requested_at = Some("later".into());
        status.pending_revocations.clear();
        status.events.clear();
        status.secret.fingerprint = FingerprintCheck::SecretNotFound;
        status.account.ready = None;
        status.account.error = Some("not found".into());
        let text = text(&status, now());
        for line in [
            "Key age:              <no key yet>",
            "Next rotation:        not scheduled",
            "Rotation request:     later (pending)",
            "Secret:               checkout-api: not found",
            "Account:              ImburseAccount/imburse: not found",
            "Conditions:\n  <none>\nPending revocations:\n  <none>\nEvents:\n  <none>\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn fingerprints_are_compared_with_the_status() {
        use FingerprintCheck::*;
        let check = FingerprintCheck::of;
        assert_eq!(check(Some("a"), Some("a"), Some("a")), Matches);
        assert_eq!(check(Some("a"), Some("b"), Some("b")), Differs);
        assert_eq!(check(Some("a"), Some("a"), Some("b")), AnnotationDiffers);
        assert_eq!(check(Some("a"), Some("a"), None), AnnotationDiffers);
        assert_eq!(check(None, Some("a"), Some("a")), NotRecorded);
        assert_eq!(check(Some("a"), None, Some("a")), NoKeyMaterial);
    }

    fn event(reason: &str, seen: i64, series: Option<i32>) -> Event {
        Event {
            reason: Some(reason.into()),
            event_time: Some(MicroTime(at(seen - 10).0)),
            series: series.map(|count| EventSeries {
                count,
                last_observed_time: MicroTime(at(seen).0),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_newest_events_are_shown_oldest_first() {
        let mut events: Vec<Event> = (0..15).map(|i| event(&format!("E{i}"), -i, None)).collect();
        events.push(event("Repeated", 5, Some(4)));
        let lines = recent(&events);
        assert_eq!(lines.len(), EVENTS_SHOWN);
        let reasons: Vec<&str> = lines.iter().filter_map(|l| l.reason.as_deref()).collect();
        assert_eq!(
            reasons,
            [
                "E8", "E7", "E6", "E5", "E4", "E3", "E2", "E1", "E0", "Repeated"
            ]
        );
        assert_eq!(lines[9].count, 4);
        assert_eq!(lines[9].last_seen, Some(at(5)));
        assert_eq!(lines[0].count, 1);
        assert_eq!(lines[0].last_seen, Some(at(-18)));
    }

    #[test]
    fn summary_table_has_a_namespace_column_only_across_namespaces() {
        let summary = KeySummary {
            namespace: "payments".into(),
            name: "checkout-api".into(),
            ready: Some("True".into()),
            reason: Some("KeyReady".into()),
            created_at: Some(at(-600)),
            next_rotation_at: None,
            pending_revocations: 2,
            failed_revocations: 1,
        };
        assert_eq!(
            summary_table(std::slice::from_ref(&summary), false, now()),
            "NAME           READY   REASON     KEY AGE   NEXT ROTATION   PENDING REVOCATIONS\n\
             checkout-api   True    KeyReady   10m       <none>          2 (1 failed)\n"
        );
        assert!(
            summary_table(&[summary], true, now()).starts_with("NAMESPACE   NAME           READY")
        );
    }
}
