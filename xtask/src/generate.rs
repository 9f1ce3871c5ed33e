//! `cargo xtask generate`: rewrites every generated file from its source, and checks them.
//!
//! - `crds/` and the chart's `files/crds/` from the Rust types;
//! - the values table of the chart's README.md from the `# --` comments of values.yaml;
//! - `argocd/argocd-cm.yaml` from the Lua scripts of `argocd/resource_customizations/`;
//! - the pages of `docs/reference/` from the code they describe (see [`reference`]).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{reference, workspace};

const CHART: &str = "charts/tenant-key-operator";
const VALUES_START: &str = "<!-- values:start (cargo xtask generate) -->";
const VALUES_END: &str = "<!-- values:end -->";
/// Kinds with Argo CD resource customizations, and the actions of each.
const ARGOCD_KINDS: [(&str, &[&str]); 3] = [
    ("TenantSecurityKey", &["rotate"]),
    ("ImburseAccount", &[]),
    ("ClusterImburseAccount", &[]),
];

/// Every generated file: its path in the repository and its content.
pub fn files(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for crd in tenant_key_operator::crd::all() {
        let yaml = tenant_key_operator::crd::to_yaml(&crd)?;
        let name = tenant_key_operator::crd::file_name(&crd);
        files.push((Path::new("crds").join(&name), yaml.clone()));
        files.push((Path::new(CHART).join("files/crds").join(&name), yaml));
    }
    let readme = Path::new(CHART).join("README.md");
    let values = read(&root.join(CHART).join("values.yaml"))?;
    files.push((
        readme.clone(),
        with_values_table(&read(&root.join(&readme))?, &values)?,
    ));
    files.push((
        PathBuf::from("argocd/argocd-cm.yaml"),
        argocd_cm(&root.join("argocd/resource_customizations/imbursepayments.com"))?,
    ));
    files.extend(reference::pages()?);
    Ok(files)
}

pub fn run() -> Result<()> {
    let root = workspace::root();
    for (path, content) in files(&root)? {
        let target = root.join(&path);
        if std::fs::read_to_string(&target).ok().as_deref() != Some(content.as_str()) {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&target, content)
                .with_context(|| format!("writing {}", target.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `readme` with the text between the values markers replaced by the table of `values`.
fn with_values_table(readme: &str, values: &str) -> Result<String> {
    let (before, rest) = readme
        .split_once(VALUES_START)
        .with_context(|| format!("the chart README has no {VALUES_START} line"))?;
    let (_, after) = rest
        .split_once(VALUES_END)
        .with_context(|| format!("the chart README has no {VALUES_END} line"))?;
    Ok(format!(
        "{before}{VALUES_START}\n{}{VALUES_END}{after}",
        values_table(values)?
    ))
}

/// A documented value: its dotted key and the text of its `# --` comment.
#[derive(Debug, PartialEq)]
struct Documented {
    key: String,
    description: String,
}

/// Reads the `# --` comments of values.yaml, in the style of helm-docs: the comment (with the
/// `#` lines that follow it) documents the key on the next line.
fn documented(values: &str) -> Vec<Documented> {
    let mut documented = Vec::new();
    let mut parents: Vec<(usize, &str)> = Vec::new();
    let mut comment: Option<String> = None;
    for line in values.lines() {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if let Some(start) = text.strip_prefix("# --") {
            comment = Some(start.trim().to_owned());
        } else if let Some(more) = text.strip_prefix('#') {
            if let Some(comment) = comment.as_mut() {
                comment.push(' ');
                comment.push_str(more.trim());
            }
        } else if text.is_empty() {
            comment = None;
        } else if let Some((key, _)) = text.split_once(':').filter(|_| !text.starts_with('-')) {
            parents.retain(|(parent_indent, _)| *parent_indent < indent);
            if let Some(description) = comment.take() {
                let mut path: Vec<&str> = parents.iter().map(|(_, key)| *key).collect();
                path.push(key);
                documented.push(Documented {
                    key: path.join("."),
                    description,
                });
            }
            parents.push((indent, key));
        }
    }
    documented
}

/// The Markdown table of every documented value, with its type and default read from the YAML.
fn values_table(values: &str) -> Result<String> {
    let parsed: serde_yaml::Value = serde_yaml::from_str(values)?;
    let mut table = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for Documented { key, description } in documented(values) {
        let value = key
            .split('.')
            .try_fold(&parsed, |value, part| value.get(part))
            .with_context(|| format!("values.yaml documents {key}, which it does not set"))?;
        let kind = match value {
            serde_yaml::Value::Null => "null",
            serde_yaml::Value::Bool(_) => "bool",
            serde_yaml::Value::Number(n) if n.is_f64() => "float",
            serde_yaml::Value::Number(_) => "int",
            serde_yaml::Value::String(_) => "string",
            serde_yaml::Value::Sequence(_) => "list",
            serde_yaml::Value::Mapping(_) | serde_yaml::Value::Tagged(_) => "object",
        };
        let default = serde_json::to_string(&serde_json::to_value(value)?)?;
        writeln!(
            table,
            "| `{key}` | {kind} | `{}` | {} |",
            reference::cell(&default),
            reference::cell(&description)
        )?;
    }
    Ok(table)
}

/// The argocd-cm entries that install the resource customizations: the health scripts as they
/// are, and each kind's actions in argocd-cm's own format.
fn argocd_cm(customizations: &Path) -> Result<String> {
    let mut data = String::new();
    for (kind, actions) in ARGOCD_KINDS {
        let dir = customizations.join(kind);
        let health = read(&dir.join("health.lua"))?;
        writeln!(
            data,
            "  resource.customizations.health.imbursepayments.com_{kind}: |\n{}",
            indent(&health, 4)
        )?;
        if actions.is_empty() {
            continue;
        }
        let mut definitions = format!(
            "discovery.lua: |\n{}definitions:\n",
            indent(&read(&dir.join("actions/discovery.lua"))?, 2)
        );
        for action in actions {
            let script = read(&dir.join("actions").join(action).join("action.lua"))?;
            write!(
                definitions,
                "  - name: {action}\n    action.lua: |\n{}",
                indent(&script, 6)
            )?;
        }
        writeln!(
            data,
            "  resource.customizations.actions.imbursepayments.com_{kind}: |\n{}",
            indent(&definitions, 4)
        )?;
    }
    if data.contains('\t') {
        bail!(
            "a script under {} contains a tab, which YAML block scalars refuse",
            customizations.display()
        );
    }
    Ok(format!(
        "# Generated by `cargo xtask generate` from argocd/resource_customizations/: do not edit.\n\
         # Merge into Argo CD's argocd-cm (see argocd/kustomization.yaml and the README).\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\ndata:\n{}",
        data.trim_end_matches('\n').to_owned() + "\n"
    ))
}

/// `text` with every non-empty line indented by `by` spaces.
fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("{:by$}{line}\n", "")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated file is what `cargo xtask generate` writes now.
    #[test]
    fn generated_files_are_current() {
        let root = workspace::root();
        for (path, content) in files(&root).unwrap() {
            let on_disk = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
            assert!(
                on_disk == content,
                "{} is out of date: run `cargo xtask generate`",
                path.display()
            );
        }
    }

    #[test]
    fn comments_document_the_next_key_with_its_path() {
        let values = "# file header\n\nimage:\n  # -- Image\n  # repository.\n  repository: x\n  tag: \"\"\n# -- Replicas.\nreplicaCount: 1\nlist:\n  - a: 1\n";
        assert_eq!(
            documented(values),
            [
                Documented {
                    key: "image.repository".into(),
                    description: "Image repository.".into()
                },
                Documented {
                    key: "replicaCount".into(),
                    description: "Replicas.".into()
                },
            ]
        );
        let table = values_table(values).unwrap();
        assert!(table.contains("| `image.repository` | string | `\"x\"` | Image repository. |"));
        assert!(table.contains("| `replicaCount` | int | `1` | Replicas. |"));
    }

    #[test]
    fn every_value_of_the_chart_is_documented() {
        let values = read(&workspace::root().join(CHART).join("values.yaml")).unwrap();
        let parsed: serde_yaml::Value = serde_yaml::from_str(&values).unwrap();
        let keys: Vec<String> = documented(&values).into_iter().map(|d| d.key).collect();
        let mut undocumented = Vec::new();
        leaves(&parsed, String::new(), &keys, &mut undocumented);
        assert!(
            undocumented.is_empty(),
            "values.yaml sets {undocumented:?} without a `# --` comment on them or a parent"
        );
    }

    /// Collects the keys of `value` that neither they nor a parent have documented.
    fn leaves(value: &serde_yaml::Value, path: String, keys: &[String], out: &mut Vec<String>) {
        if keys.contains(&path) {
            return;
        }
        match value.as_mapping() {
            Some(map) if !map.is_empty() => {
                for (key, child) in map {
                    let key = key.as_str().unwrap_or_default();
                    let child_path = if path.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(child, child_path, keys, out);
                }
            }
            _ => out.push(path),
        }
    }
}
