//! Every flag, environment variable, chart value, reason and metric that README.md and the
//! pages of docs/ name exists: flags and environment variables in the clap definition, values in
//! values.yaml (or fields in the CRD schemas, which read alike), reasons in `Reason::ALL` or
//! among the reasons and kinds the code and chart name, metrics in the registry.
//!
//! Only what the pages mark as a name is checked: inline code spans (`--concurrency`,
//! `metrics.port`, `KeyNotRevoked`) that are not struck through, one-word headings, `--set`
//! paths and `- --flag` lines in code blocks, and metric names anywhere.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use clap::CommandFactory;
use serde_json::Value;
use tenant_key_operator::{cli::Cli, controller::error::Reason};

use crate::{reference, workspace};

/// Kinds and reasons of Kubernetes and other tools that the pages name, and that neither the
/// code, the chart nor the examples use.
const OTHER_NAMES: [&str; 3] = [
    "HelmRepository",
    "OCIRepository",
    "NamespaceFinalizersRemaining",
];
/// Fields of Kubernetes' and other tools' objects that the pages name: a CRD's stored
/// versions, an Argo CD Application's revision, a Flux HelmRelease's chart version.
const OTHER_PATHS: [&str; 4] = [
    "status.storedVersions",
    "storedVersions",
    "targetRevision",
    "chart.spec.version",
];
/// Last segments that make a dotted name a file or a host rather than a value or field.
const NOT_PATHS: [&str; 9] = [
    "com", "io", "example", "md", "yaml", "json", "lua", "rs", "svg",
];
const METRIC_PREFIX: &str = "tenant_key_operator_";

#[derive(Default)]
struct Known {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
    /// Chart value paths and CRD field paths (with and without `spec.`/`status.`), and every
    /// key and property name on its own.
    paths: BTreeSet<String>,
    /// Reasons, and every other CamelCase name the code or the chart uses (kinds, alerts).
    names: BTreeSet<String>,
    metrics: BTreeSet<String>,
}

impl Known {
    fn load(root: &Path) -> Known {
        let mut known = Known::default();
        // The operator's command line, and the developer commands the pages describe.
        let clis = [Cli::command(), crate::Cli::command()];
        let commands = clis
            .iter()
            .flat_map(|cli| std::iter::once(cli).chain(all_subcommands(cli)));
        for command in commands {
            for arg in command.get_arguments() {
                if let Some(long) = arg.get_long() {
                    known.flags.insert(format!("--{long}"));
                }
                if let Some(env) = arg.get_env() {
                    known.env.insert(env.to_string_lossy().into_owned());
                }
            }
        }
        known
            .flags
            .extend(["--help", "--version"].map(String::from));
        known
            .env
            .insert(testenv::versions::CACHE_DIR_ENV.to_owned());

        let values: serde_yaml::Value =
            serde_yaml::from_str(&read(&root.join("charts/tenant-key-operator/values.yaml")))
                .expect("values.yaml parses");
        value_paths(&values, "", &mut known.paths);
        for crd in tenant_key_api::crd::all() {
            let crd = serde_json::to_value(&crd).expect("a CRD serializes");
            for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
                let schema = &version["schema"]["openAPIV3Schema"];
                field_paths(schema, "", &mut known.paths);
            }
        }

        known
            .names
            .extend(Reason::ALL.map(|reason| reason.as_str().to_owned()));
        known.names.extend(OTHER_NAMES.map(String::from));
        known.paths.extend(OTHER_PATHS.map(String::from));
        let sources = ["src", "crates/tenant-key-api/src"].map(|dir| files(&root.join(dir), "rs"));
        for file in sources.iter().flatten() {
            // Event and condition reasons are string literals where they are published.
            known.names.extend(
                read(file)
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .filter(|literal| is_camel_case(literal))
                    .map(String::from),
            );
        }
        // Words of the chart and the examples: Kubernetes fields and kinds they set, such as
        // `readOnlyRootFilesystem` or `RollingUpdate`, alert names, Flux's `healthChecks`.
        let chart = root.join("charts/tenant-key-operator");
        let manifests = files(&chart.join("templates"), "")
            .into_iter()
            .chain([chart.join("Chart.yaml"), chart.join("values.yaml")])
            .chain(files(&root.join("examples"), ".yaml"));
        for file in manifests {
            for word in read(&file).split(|c: char| !c.is_ascii_alphanumeric()) {
                if is_camel_case(word) {
                    known.names.insert(word.to_owned());
                } else if !word.is_empty() {
                    known.paths.insert(word.to_owned());
                }
            }
        }

        for metric in reference::metrics::all().expect("the metrics encode") {
            known.metrics.extend(metric.sample_names());
            known.metrics.insert(metric.name);
        }
        known
    }
}

/// Every subcommand of `command`, at any depth.
fn all_subcommands(command: &clap::Command) -> Vec<&clap::Command> {
    command
        .get_subcommands()
        .flat_map(|sub| std::iter::once(sub).chain(all_subcommands(sub)))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The files under `dir` whose names end with `extension` (any file for "").
fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(files(&path, extension));
        } else if path.to_string_lossy().ends_with(extension) {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn value_paths(value: &serde_yaml::Value, path: &str, out: &mut BTreeSet<String>) {
    for (key, child) in value.as_mapping().into_iter().flatten() {
        let key = key.as_str().unwrap_or_default();
        let child_path = join(path, key);
        value_paths(child, &child_path, out);
        out.insert(key.to_owned());
        out.insert(child_path);
    }
}

/// The paths of the fields under `schema`, array items without a `[]` (pages strip it), each
/// also without its first segment, as pages name `rotation.interval` for `spec.rotation.interval`.
fn field_paths(schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    let object = schema.get("items").unwrap_or(schema);
    for (name, field) in object["properties"].as_object().into_iter().flatten() {
        let child_path = join(path, name);
        field_paths(field, &child_path, out);
        if let Some((_, rest)) = child_path.split_once('.') {
            out.insert(rest.to_owned());
        }
        out.insert(name.clone());
        out.insert(child_path);
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `KeyNotRevoked`, `ClusterImburseAccount`: a capital, then at least one more after lower case.
fn is_camel_case(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric())
        && word.chars().any(|c| c.is_ascii_lowercase())
        && word.chars().filter(char::is_ascii_uppercase).count() >= 2
}

/// `metrics.port`, `leaderElection.leaseDuration`, `previousKeys[].revokeAfter`, `replicaCount`:
/// a lower-case start, and a dot or a capital inside.
fn is_path(span: &str) -> bool {
    let segments: Vec<&str> = span.split('.').collect();
    span.starts_with(|c: char| c.is_ascii_lowercase())
        && (segments.len() > 1 || span.chars().any(|c| c.is_ascii_uppercase()))
        && segments.iter().all(|segment| {
            let segment = segment.strip_suffix("[]").unwrap_or(segment);
            !segment.is_empty() && segment.chars().all(|c| c.is_ascii_alphanumeric())
        })
        && !segments.last().is_some_and(|last| NOT_PATHS.contains(last))
        && segments[0] != "metadata"
}

/// What one page names that does not exist.
fn problems(page: &str, known: &Known) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |exists: bool, what: &str, name: &str| {
        if !exists {
            problems.push(format!("{what} `{name}`"));
        }
    };
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        for metric in line.split(METRIC_PREFIX).skip(1) {
            let rest: String = metric
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !rest.is_empty() {
                let name = format!("{METRIC_PREFIX}{rest}");
                check(known.metrics.contains(&name), "metric", &name);
            }
        }
        if fenced {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["-", flag, ..] = words.as_slice()
                && flag.starts_with("--")
            {
                let flag = flag.split('=').next().unwrap_or_default();
                check(known.flags.contains(flag), "flag", flag);
            }
            for pair in words.windows(2) {
                if pair[0] == "--set" || pair[0] == "--set-string" {
                    let path = pair[1]
                        .trim_matches('\'')
                        .split('=')
                        .next()
                        .unwrap_or_default();
                    check(known.paths.contains(path), "chart value", path);
                }
            }
            continue;
        }
        let heading: Vec<&str> = line.trim_start_matches('#').split_whitespace().collect();
        let heading = match heading.as_slice() {
            [word] if line.starts_with('#') => Some(*word),
            _ => None,
        };
        // A span struck through (~~`--old-flag`~~) names what no longer exists, for upgrade notes.
        let parts: Vec<&str> = line.split('`').collect();
        let spans = parts
            .iter()
            .enumerate()
            .skip(1)
            .step_by(2)
            .filter(|(i, _)| !parts[i - 1].ends_with("~~"))
            .map(|(_, span)| *span);
        for span in spans.chain(heading) {
            let span = span.trim();
            let words: Vec<&str> = span.split_whitespace().collect();
            let flags: &[&str] = match words.as_slice() {
                [first, ..] if first.starts_with("--") => &words[..1],
                ["tenant-key-operator", rest @ ..] => rest,
                _ => &[],
            };
            for flag in flags.iter().filter(|word| word.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or_default();
                // `--leader-election*` names a family of flags.
                let exists = match flag.strip_suffix('*') {
                    Some(prefix) => known.flags.iter().any(|known| known.starts_with(prefix)),
                    None => known.flags.contains(flag),
                };
                check(exists, "flag", flag);
            }
            if span.starts_with("TKO_") && span != "TKO_" {
                let env = span.split('=').next().unwrap_or_default();
                check(known.env.contains(env), "environment variable", env);
            } else if is_camel_case(span) {
                check(known.names.contains(span), "reason or kind", span);
            } else if is_path(span) {
                check(
                    known.paths.contains(&span.replace("[]", "")),
                    "chart value or field",
                    span,
                );
            }
        }
    }
    problems
}

/// README.md and the hand-written pages of docs/ (the generated ones come from the code).
fn pages(root: &Path) -> Vec<PathBuf> {
    let generated = [root.join(reference::DIR), root.join("docs/benchmark")];
    let mut pages = vec![
        root.join("README.md"),
        root.join("CONTRIBUTING.md"),
        root.join("SECURITY.md"),
    ];
    pages.extend(
        files(&root.join("docs"), ".md")
            .into_iter()
            .filter(|page| !generated.iter().any(|dir| page.starts_with(dir))),
    );
    pages
}

#[test]
fn every_name_the_docs_use_exists() {
    let root = workspace::root();
    let known = Known::load(&root);
    let mut missing = BTreeSet::new();
    for page in pages(&root) {
        let shown = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        missing.extend(
            problems(&read(&page), &known)
                .into_iter()
                .map(|problem| format!("{shown}: {problem}")),
        );
    }
    assert!(
        missing.is_empty(),
        "the docs name what does not exist:\n{}",
        Vec::from_iter(missing).join("\n")
    );
}

/// Status reasons and the chart's alerts each have a `### <name>` heading on the
/// troubleshooting page, whose GitHub anchor (`#<name in lower case>`) is what the alerts'
/// `runbook_url` and the docs link to.
#[test]
fn troubleshooting_has_a_heading_per_reason_and_alert() {
    let root = workspace::root();
    let page = read(&root.join("docs/troubleshooting.md"));
    let headings: BTreeSet<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .collect();
    let rules = read(&root.join("charts/tenant-key-operator/templates/prometheusrule.yaml"));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(!alerts.is_empty(), "no alerts found in the chart");
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .chain(alerts)
        .filter(|name| !headings.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no `### <name>` heading for {missing:?}"
    );
}

#[test]
fn names_are_found_where_pages_mark_them() {
    let known = Known {
        flags: ["--concurrency".into()].into(),
        env: ["TKO_CONCURRENCY".into()].into(),
        paths: ["metrics.port".into(), "replicaCount".into()].into(),
        names: ["KeyNotRevoked".into()].into(),
        metrics: ["tenant_key_operator_keys_created_total".into()].into(),
    };
    let page = "\
# Page
### KeyNotRevoked
### NoSuchReason
Set `--concurrency=4` or `TKO_CONCURRENCY` (not ~~`--gone-before`~~), not `--wrong`, `TKO_WRONG` or `tenant-key-operator run --bad 1`.
Values `metrics.port`, `replicaCount`, `metrics.prot`; files `values.yaml`, `metadata.name`.
Rate: tenant_key_operator_keys_created_total, not `tenant_key_operator_nope`.
```sh
helm install x --set metrics.port=9090 --set 'nope.value=1' --namespace y
```
```yaml
extraArgs:
  - --concurrency=2
  - --gone
```
";
    assert_eq!(
        problems(page, &known),
        [
            "reason or kind `NoSuchReason`",
            "flag `--wrong`",
            "environment variable `TKO_WRONG`",
            "flag `--bad`",
            "chart value or field `metrics.prot`",
            "metric `tenant_key_operator_nope`",
            "chart value `nope.value`",
            "flag `--gone`",
        ]
    );
}
