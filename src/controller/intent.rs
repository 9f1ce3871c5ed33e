//! The creation intent recorded on a TenantSecurityKey before a key is created, and the name
//! the key gets at Imburse.
//!
//! The private key is shown once, so a key whose creation was interrupted must be found and
//! revoked later. Two things make that exact:
//! - the key's name at Imburse carries a marker with the resource's uid, the attempt id and the
//!   cluster, so the operator only ever revokes keys it made for this very resource (never a
//!   key made by hand, by another resource with the same name, or by another cluster), and an
//!   inventory of a tenant's keys tells this cluster's keys from another's;
//! - the intent records what the attempt asked for (tenant, roles, account, endpoint), so a
//!   key recovered from its Secret after a crash is recorded as what it is, not as whatever
//!   the spec says by then.
//!
//! The intent lives in `status.pendingCreate`, which only the operator can write. Versions up
//! to 0.4 kept it in an annotation, which anyone who can edit the resource can write: such an
//! intent is read only to finish what an older version began, and only once everything it
//! names passes the checks a new spec of this namespace would.

/// Annotation where versions up to 0.4 kept the open intent: JSON ([`Intent`]), or
/// `<attempt>:<key name>` before that.
pub const ANNOTATION: &str = "imbursepayments.com/create-pending";

/// Separates the human part of a key name from the operator's marker.
const MARKER: &str = " #tko:";

/// What one creation attempt asked Imburse for, as the status records it.
pub type Intent = tenant_key_api::crd::CreateIntent;

/// An intent as found on a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    Current(Intent),
    /// Written by an earlier version: only the attempt and a key name that does not identify
    /// the resource, so keys found under that name are reported, never revoked.
    Legacy {
        attempt: String,
        name: String,
    },
}

impl Recorded {
    pub fn parse(value: &str) -> Option<Self> {
        if value.trim_start().starts_with('{') {
            return serde_json::from_str(value).ok().map(Self::Current);
        }
        let (attempt, name) = value.split_once(':')?;
        (!attempt.is_empty()).then(|| Self::Legacy {
            attempt: attempt.into(),
            name: name.into(),
        })
    }

    pub fn attempt(&self) -> &str {
        match self {
            Self::Current(intent) => &intent.attempt,
            Self::Legacy { attempt, .. } => attempt,
        }
    }
}

/// A fresh attempt id: 16 hex characters are plenty to tell attempts of one resource apart.
pub fn new_attempt() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..16].to_owned()
}

/// Length of a cluster's id in markers: 48 bits of its `kube-system` namespace uid tell the
/// clusters sharing an Imburse tenant apart, and keep key names short.
const CLUSTER_ID_LEN: usize = 12;

/// The id by which markers name a cluster: the first hex digits of its `kube-system` namespace
/// uid, which lives as long as the cluster and differs between clusters.
pub fn cluster_id(kube_system_uid: &str) -> String {
    kube_system_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(CLUSTER_ID_LEN)
        .collect()
}

/// The name a key gets at Imburse: the human name, then a marker naming the resource (by
/// uid), the attempt and the cluster. The cluster comes last, so that a version that reads
/// only `<uid>:<attempt>` still finds the resource's keys.
pub fn key_name(human: &str, uid: &str, attempt: &str, cluster: &str) -> String {
    format!("{human}{MARKER}{uid}:{attempt}:{cluster}")
}

/// The human part of a key name (the whole name when it has no marker).
pub fn human_name(name: &str) -> &str {
    name.rsplit_once(MARKER).map_or(name, |(human, _)| human)
}

/// What the marker in a key's name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker<'a> {
    /// Uid of the resource the key was made for.
    pub uid: &'a str,
    pub attempt: &'a str,
    /// Id of the cluster that made the key; `None` for keys named before markers named their
    /// cluster (versions up to 0.5), which may have been made by any cluster.
    pub cluster: Option<&'a str>,
}

/// The marker of a key name: `<uid>:<attempt>` or `<uid>:<attempt>:<cluster>` after the last
/// ` #tko:`, none of them empty.
pub fn marker(name: &str) -> Option<Marker<'_>> {
    let (_, marker) = name.rsplit_once(MARKER)?;
    let mut parts = marker.split(':');
    let uid = parts.next().filter(|p| !p.is_empty())?;
    let attempt = parts.next().filter(|p| !p.is_empty())?;
    let cluster = match parts.next() {
        None => None,
        Some(cluster) if !cluster.is_empty() => Some(cluster),
        Some(_) => return None,
    };
    parts.next().is_none().then_some(Marker {
        uid,
        attempt,
        cluster,
    })
}

/// Whether `name` is exactly the name attempt `attempt` of the resource `uid` gives a key. The
/// uid alone tells the resource (uids are unique across clusters), so old and new markers
/// both count.
pub fn names_attempt(name: &str, uid: &str, attempt: &str) -> bool {
    marker(name).is_some_and(|m| m.uid == uid && m.attempt == attempt)
}

/// Whether Imburse's key name marks the key as made for the resource with this uid.
pub fn made_for(name: &str, uid: &str) -> bool {
    marker(name).is_some_and(|m| m.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenant_key_api::crd::{AccountKind, AccountRef, ApiGeneration, Endpoint};

    fn to_annotation(intent: &Intent) -> String {
        serde_json::to_string(intent).unwrap()
    }

    fn intent() -> Intent {
        Intent {
            attempt: "0123456789abcdef".into(),
            name: key_name("team-a/pay", "uid-1", "0123456789abcdef", CLUSTER),
            tenant_id: "t1".into(),
            roles: vec!["tenant-admin".into()],
            account_ref: AccountRef {
                kind: AccountKind::ImburseAccount,
                name: "acc".into(),
            },
            endpoint: Endpoint {
                base_url: "https://api.imbursepayments.com".into(),
                api_generation: ApiGeneration::Seed,
                account_id: None,
            },
            rotate_request: Some("2026-11-27T10:00:00Z".into()),
            credentials_fingerprint: None,
        }
    }

    #[test]
    fn intent_round_trips_through_the_annotation() {
        let value = to_annotation(&intent());
        assert_eq!(Recorded::parse(&value), Some(Recorded::Current(intent())));
    }

    #[test]
    fn legacy_values_are_read() {
        assert_eq!(
            Recorded::parse("a1b2:team-a/pay"),
            Some(Recorded::Legacy {
                attempt: "a1b2".into(),
                name: "team-a/pay".into()
            })
        );
        // A legacy name may itself contain colons.
        assert_eq!(
            Recorded::parse("a1:x:y").map(|r| r.attempt().to_owned()),
            Some("a1".into())
        );
        assert_eq!(Recorded::parse(":name"), None);
        assert_eq!(Recorded::parse("{not json"), None);
        assert_eq!(Recorded::parse("garbage"), None);
    }

    const CLUSTER: &str = "0a1b2c3d4e5f";

    #[test]
    fn key_names_identify_resource_and_attempt() {
        let name = key_name("Admin Key", "uid-1", "a1", CLUSTER);
        assert_eq!(human_name(&name), "Admin Key");
        assert!(made_for(&name, "uid-1"));
        assert!(!made_for(&name, "uid-2"));
        // A key made by hand, or by an earlier version, is never taken for one of ours.
        assert!(!made_for("Admin Key", "uid-1"));
        assert!(!made_for("team-a/pay", "uid-1"));
        // A human name that imitates the marker still needs the real uid.
        let nested = key_name("x #tko:uid-2:a0", "uid-1", "a1", CLUSTER);
        assert!(made_for(&nested, "uid-1"));
        assert!(!made_for(&nested, "uid-2"));
        assert!(!made_for("x #tko:uid-1:", "uid-1"));
        assert!(!made_for("x #tko:uid-1:a1:", "uid-1"));
        assert!(!made_for("x #tko:uid-1:a1:c:extra", "uid-1"));
    }

    #[test]
    fn markers_name_their_cluster_and_old_ones_none() {
        let name = key_name("Admin Key", "uid-1", "a1", CLUSTER);
        assert_eq!(
            marker(&name),
            Some(Marker {
                uid: "uid-1",
                attempt: "a1",
                cluster: Some(CLUSTER)
            })
        );
        // Names given by versions up to 0.5 keep naming their resource and attempt.
        let old = "team-a/pay #tko:uid-1:a1";
        assert_eq!(
            marker(old),
            Some(Marker {
                uid: "uid-1",
                attempt: "a1",
                cluster: None
            })
        );
        assert!(names_attempt(old, "uid-1", "a1"));
        assert!(made_for(old, "uid-1"));
        assert_eq!(marker("Admin Key"), None);
        assert_eq!(marker(" #tko::a1"), None);
    }

    #[test]
    fn cluster_ids_are_short_hex_of_the_namespace_uid() {
        assert_eq!(
            cluster_id("0A1B2C3D-4E5F-4789-8abc-def012345678"),
            "0a1b2c3d4e5f"
        );
        assert_eq!(cluster_id("").len(), 0);
    }

    #[test]
    fn an_attempt_names_exactly_its_keys() {
        let name = key_name("Admin Key", "uid-1", "a1", CLUSTER);
        assert!(names_attempt(&name, "uid-1", "a1"));
        assert!(!names_attempt(&name, "uid-1", "a2"));
        assert!(!names_attempt(&name, "uid-2", "a1"));
        assert!(!names_attempt("Admin Key", "uid-1", "a1"));
        assert!(!names_attempt(
            &key_name("x", "uid-1", "", CLUSTER),
            "uid-1",
            ""
        ));
    }

    fn any_intent() -> impl proptest::strategy::Strategy<Value = Intent> {
        use proptest::prelude::*;
        (
            "[0-9a-f]{16}",
            (".{0,30}", ".{0,20}"),
            ".{0,40}",
            proptest::collection::btree_set(".{0,16}", 0..4),
            (
                prop_oneof![
                    Just(AccountKind::ImburseAccount),
                    Just(AccountKind::ClusterImburseAccount)
                ],
                ".{0,20}",
            ),
            (
                ".{0,40}",
                prop_oneof![Just(ApiGeneration::Seed), Just(ApiGeneration::Current)],
                proptest::option::of(".{0,20}"),
            ),
            proptest::option::of(".{0,30}"),
        )
            .prop_map(
                |(
                    attempt,
                    (human, uid),
                    tenant_id,
                    roles,
                    (kind, name),
                    (base_url, api_generation, account_id),
                    rotate_request,
                )| Intent {
                    name: key_name(&human, &uid, &attempt, CLUSTER),
                    attempt,
                    tenant_id,
                    roles: roles.into_iter().collect(),
                    account_ref: AccountRef { kind, name },
                    endpoint: Endpoint {
                        base_url,
                        api_generation,
                        account_id,
                    },
                    rotate_request,
                    credentials_fingerprint: None,
                },
            )
    }

    proptest::proptest! {
        // The annotation can be edited by anyone who can edit the resource: any value is read
        // or ignored, never a panic.
        #[test]
        fn parse_never_panics(value in ".{0,80}") {
            let _ = Recorded::parse(&value);
        }

        #[test]
        fn parse_never_panics_on_near_json(value in r#"\{[a-zA-Z"{}:,\[\] ]{0,60}"#) {
            let _ = Recorded::parse(&value);
        }

        #[test]
        fn intents_round_trip_through_the_annotation(intent in any_intent()) {
            let parsed = Recorded::parse(&to_annotation(&intent));
            proptest::prop_assert_eq!(parsed, Some(Recorded::Current(intent)));
        }

        // The marker in a key's name is found again whatever the human name holds.
        #[test]
        fn key_names_keep_their_marker(human in ".{0,30}", uid in "[a-f0-9-]{1,36}", attempt in "[0-9a-f]{16}", cluster in "[0-9a-f]{12}") {
            let name = key_name(&human, &uid, &attempt, &cluster);
            proptest::prop_assert!(names_attempt(&name, &uid, &attempt));
            proptest::prop_assert_eq!(marker(&name).and_then(|m| m.cluster), Some(cluster.as_str()));
            proptest::prop_assert_eq!(human_name(&name), human.as_str());
        }
    }

    #[test]
    fn attempts_are_distinct() {
        assert_ne!(new_attempt(), new_attempt());
        assert_eq!(new_attempt().len(), 16);
    }
}
