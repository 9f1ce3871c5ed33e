//! Kubernetes Events, with repeats folded into a series.
//!
//! kube-runtime's `Recorder` keeps a whole copy of every Event it published for six minutes and
//! sweeps that map under a write lock on every publish. With ten thousand keys created at once
//! that is tens of megabytes held long after the burst, and a sweep of twenty thousand entries
//! per Event. This recorder remembers, for a bounded number of recent (object, type, reason,
//! action, note), only the Event's name and its count: enough to turn a repeat into a series
//! update, as the `events.k8s.io/v1` API asks of reporters.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as KubeEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType},
};

/// How long a repeat still counts as the same occurrence: the window `kubectl describe` and the
/// Kubernetes client libraries use to aggregate.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How many recent Events are remembered; beyond it the oldest are forgotten, and their next
/// repeat starts a new Event instead of a series. About 100 bytes each.
const REMEMBERED: usize = 4096;

/// Where the Events of cluster-scoped objects go.
const CLUSTER_EVENT_NAMESPACE: &str = "default";

/// Publishes Events as one controller instance.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Recent,
}

/// Recently published Events, by [`identity`].
#[derive(Default)]
struct Recent(Mutex<HashMap<u64, Seen>>);

/// A published Event that a repeat would extend.
struct Seen {
    name: String,
    count: i32,
    last: Instant,
}

impl Recorder {
    /// `instance` defaults to the controller's name, as a reporter must name one.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Recent::default(),
        }
    }

    /// Creates the Event, or counts it into the series of the same Event published within the
    /// last few minutes.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding
            .namespace
            .as_deref()
            .unwrap_or(CLUSTER_EVENT_NAMESPACE);
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), namespace);
        let key = identity(event, regarding);
        let now = Timestamp::now();
        if let Some((name, count)) = self.recent.repeat(key) {
            let series = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired at the API server (Events live an hour): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let created = api
            .create(&PostParams::default(), &self.event(event, regarding, now))
            .await?;
        self.recent
            .remember(key, created.metadata.name.unwrap_or_default());
        Ok(())
    }

    fn event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> KubeEvent {
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(event_name(object, now)),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.as_deref().map(fit_note),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..KubeEvent::default()
        }
    }
}

/// Longest Event name, a DNS subdomain.
const MAX_NAME: usize = 253;
/// Longest note the API server keeps in an Event.
const MAX_NOTE: usize = 1024;

/// The object's name and the time, as kubectl and client-go name Events, with the object's
/// name cut short where both would not fit a name.
fn event_name(object: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let mut prefix = object;
    if prefix.len() + suffix.len() > MAX_NAME {
        let mut end = MAX_NAME - suffix.len();
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix = prefix[..end].trim_end_matches(['-', '.']);
    }
    format!("{prefix}{suffix}")
}

/// A note the API server takes: at most [`MAX_NOTE`] bytes, cut at a character boundary and
/// marked as cut. A refused Event would be lost whole, with what it had to say.
fn fit_note(note: &str) -> String {
    const MARK: &str = " [...]";
    if note.len() <= MAX_NOTE {
        return note.to_owned();
    }
    let mut end = MAX_NOTE - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &note[..end])
}

impl Recent {
    /// The name and next count of a recent Event like this one, counted.
    fn repeat(&self, key: u64) -> Option<(String, i32)> {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let seen = recent.get_mut(&key)?;
        if seen.last.elapsed() > SERIES_WINDOW {
            recent.remove(&key);
            return None;
        }
        seen.count += 1;
        seen.last = Instant::now();
        Some((seen.name.clone(), seen.count))
    }

    fn remember(&self, key: u64, name: String) {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= REMEMBERED {
            recent.retain(|_, seen| seen.last.elapsed() <= SERIES_WINDOW);
        }
        if recent.len() >= REMEMBERED {
            // A burst of distinct Events: forgetting them all costs at most one Event more per
            // repeat, and keeps the sweep above rare.
            recent.clear();
        }
        recent.insert(
            key,
            Seen {
                name,
                count: 1,
                last: Instant::now(),
            },
        );
    }
}

/// What makes two Events the same occurrence, hashed: the object (by uid, so a recreated object
/// starts afresh), type, reason, action and note.
fn identity(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        &regarding.kind,
        &regarding.namespace,
        &regarding.name,
        &regarding.uid,
    )
        .hash(&mut hasher);
    (
        matches!(event.type_, EventType::Warning),
        &event.reason,
        &event.action,
        &event.note,
    )
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_notes_fit_what_the_api_server_takes() {
        let now = Timestamp::now();
        let long = format!("{}-x", "a".repeat(250));
        let name = event_name(&long, now);
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert!(!name.contains("-."), "{name}");
        assert!(event_name("pay", now).starts_with("pay."));
        let note = "ä".repeat(1000);
        let fitted = fit_note(&note);
        assert!(fitted.len() <= MAX_NOTE && fitted.ends_with("[...]"));
        assert_eq!(fit_note("short"), "short");
    }

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn object(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("TenantSecurityKey".into()),
            namespace: Some("ns".into()),
            name: Some("key".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn repeats_count_into_the_series_of_the_first() {
        let recent = Recent::default();
        assert_eq!(recent.repeat(7), None);
        recent.remember(7, "key.1".into());
        assert_eq!(recent.repeat(7), Some(("key.1".into(), 2)));
        assert_eq!(recent.repeat(7), Some(("key.1".into(), 3)));
        assert_eq!(recent.repeat(8), None);
    }

    #[test]
    fn memory_stays_bounded_in_a_burst_of_distinct_events() {
        let recent = Recent::default();
        for key in 0..=REMEMBERED as u64 {
            recent.remember(key, format!("key.{key}"));
        }
        let held = recent.0.lock().unwrap().len();
        assert!(held <= REMEMBERED, "{held} Events remembered");
        assert!(recent.repeat(REMEMBERED as u64).is_some());
    }

    #[test]
    fn the_same_event_about_the_same_object_is_one_occurrence() {
        let a = identity(&event("AccountNotReady", "x"), &object("1"));
        assert_eq!(a, identity(&event("AccountNotReady", "x"), &object("1")));
        assert_ne!(a, identity(&event("AccountNotReady", "y"), &object("1")));
        assert_ne!(a, identity(&event("InvalidSpec", "x"), &object("1")));
        assert_ne!(a, identity(&event("AccountNotReady", "x"), &object("2")));
    }
}
