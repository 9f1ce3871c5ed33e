//! `docs/reference/api.md`, from the CRD schemas.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{cell, header};

pub fn page() -> Result<String> {
    let crds = tenant_key_api::crd::all()
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    let mut page = header("API reference", "the CRD schemas (src/crd/)");
    page.push_str(
        "Every kind is served at `v1beta1`, the version stored and the one the operator uses, \
         and at `v1alpha1`, deprecated. Both have the same fields (the API server converts \
         between them by changing `apiVersion` alone); what differs is listed under each \
         kind. No v1beta1 field has a server-side default: the operator applies the defaults \
         the descriptions name, so GitOps tools never see a field the manifest did not set. \
         The same text is shown by `kubectl explain`.\n\n",
    );
    for crd in &crds {
        let kind = str_at(crd, "/spec/names/kind")?;
        writeln!(page, "- [{kind}](#{})", kind.to_lowercase())?;
    }
    for crd in &crds {
        kind_section(crd, &mut page)?;
    }
    Ok(page)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Result<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("a CRD has no {pointer}"))
}

fn kind_section(crd: &Value, page: &mut String) -> Result<()> {
    let kind = str_at(crd, "/spec/names/kind")?;
    let group = str_at(crd, "/spec/group")?;
    let scope = str_at(crd, "/spec/scope")?;
    let short_names = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
        .map(|names| {
            let names: Vec<String> = names
                .iter()
                .filter_map(Value::as_str)
                .map(|name| format!("`{name}`"))
                .collect();
            format!(", short name {}", names.join(", "))
        })
        .unwrap_or_default();
    let versions: Vec<&Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let storage = versions
        .iter()
        .find(|v| v["storage"] == true)
        .with_context(|| format!("{kind} has no storage version"))?;
    let schema = |version: &Value| {
        version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .with_context(|| format!("{kind} has no schema"))
    };
    let stored = schema(storage)?;
    writeln!(
        page,
        "\n## {kind}\n\n`{group}/{}`, {scope}{short_names}. {}\n\n\
         | Field | Type | Required | Description |\n|---|---|---|---|",
        str_at(storage, "/name")?,
        cell(stored["description"].as_str().unwrap_or_default())
    )?;
    let stored_rows = rows(&stored)?;
    for row in &stored_rows {
        writeln!(page, "{row}")?;
    }
    for version in versions.iter().filter(|v| v["storage"] != true) {
        let name = str_at(version, "/name")?;
        let differing: Vec<String> = rows(&schema(version)?)?
            .into_iter()
            .filter(|row| !stored_rows.contains(row))
            .collect();
        let deprecated = if version["deprecated"] == true {
            ", deprecated"
        } else {
            ""
        };
        write!(
            page,
            "\n`{group}/{name}`{deprecated}: the same fields as `{}`",
            str_at(storage, "/name")?
        )?;
        if differing.is_empty() {
            writeln!(page, ".")?;
        } else {
            writeln!(
                page,
                ", except:\n\n| Field | Type | Required | Description |\n|---|---|---|---|\n{}",
                differing.join("\n")
            )?;
        }
    }
    Ok(())
}

/// The table rows of a version's spec and status.
fn rows(schema: &Value) -> Result<Vec<String>> {
    let mut rows = String::new();
    let required = required(schema);
    for part in ["spec", "status"] {
        if let Some(field) = schema.pointer(&format!("/properties/{part}")) {
            fields(field, part, required.contains(&part), &mut rows)?;
        }
    }
    Ok(rows.lines().map(str::to_owned).collect())
}

/// The names `schema` lists as required.
fn required(schema: &Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// A row for the field at `path`, then rows for the fields inside it (those of an array's items
/// under `path[]`).
fn fields(schema: &Value, path: &str, required: bool, page: &mut String) -> Result<()> {
    writeln!(
        page,
        "| `{path}` | {} | {} | {} |",
        type_of(schema),
        if required { "yes" } else { "" },
        cell(&description(schema)?)
    )?;
    let (object, path) = match schema.get("items") {
        Some(items) => (items, format!("{path}[]")),
        None => (schema, path.to_owned()),
    };
    let required = self::required(object);
    for (name, field) in object["properties"].as_object().into_iter().flatten() {
        fields(
            field,
            &format!("{path}.{name}"),
            required.contains(&name.as_str()),
            page,
        )?;
    }
    Ok(())
}

fn type_of(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == true {
        return "int or string".to_owned();
    }
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&schema["items"])),
        Some("object") if schema["additionalProperties"].is_object() => {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        Some(kind) => match schema["format"].as_str() {
            Some(format) => format!("{kind} ({format})"),
            None => kind.to_owned(),
        },
        None => "any".to_owned(),
    }
}

/// The field's description, with the values it accepts and its schema default, if any.
fn description(schema: &Value) -> Result<String> {
    let mut text = schema["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|value| match value.as_str() {
                Some(text) => format!("`{text}`"),
                None => format!("`{value}`"),
            })
            .collect();
        write!(text, " One of {}.", values.join(", "))?;
    }
    if let Some(default) = schema.get("default") {
        write!(text, " Default: `{default}`.")?;
    }
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(message) = rule["message"].as_str() {
            write!(text, " Rule: {message}.")?;
        }
    }
    Ok(text)
}
