//! Label selector evaluation, for rules the API server cannot evaluate for us.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`, with Kubernetes semantics: every `matchLabels` pair and
/// every `matchExpressions` requirement must hold; an empty selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|req| {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator this code does not know must not widen access.
            _ => false,
        }
    });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn match_labels() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("team", "pay")])),
            ..Default::default()
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("team", "pay"), ("x", "y")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("team", "ops")])));
        assert!(!selector_matches(&sel, &labels(&[])));
    }

    #[test]
    fn match_expressions() {
        let l = labels(&[("env", "prod")]);
        assert!(selector_matches(&expr("env", "In", &["prod", "dev"]), &l));
        assert!(!selector_matches(&expr("env", "NotIn", &["prod"]), &l));
        assert!(selector_matches(&expr("tier", "NotIn", &["x"]), &l));
        assert!(selector_matches(&expr("env", "Exists", &[]), &l));
        assert!(!selector_matches(&expr("env", "DoesNotExist", &[]), &l));
        assert!(!selector_matches(&expr("env", "Bogus", &["prod"]), &l));
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
    }
}
