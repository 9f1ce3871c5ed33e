//! The benchmark's report: the figures as JSON, two plots (time to Ready and memory against
//! the number of keys) and a Markdown table for the README.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::{Value, json};

/// The machine the figures were measured on.
pub(super) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| (kib / 1024.0 / 1024.0).round());
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "cpuModel": model,
        "memoryGiB": memory_gib,
        "note": "the control plane, the sandbox and the operator share these cpus",
    })
}

/// Merges `figures` into the figures already in `dir` (its `results.json`), replacing the
/// parts it has, and writes them all again: a creation run keeps the seeded runs' figures and
/// the other way round.
pub(super) fn update(dir: &Path, figures: &Value) -> Result<()> {
    let mut merged = std::fs::read(dir.join("results.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    // Seeded runs are measured one at a time: those of other sizes stay.
    let new_sizes: Vec<&Value> = seeded_runs(figures).iter().map(|r| &r["keys"]).collect();
    let mut runs: Vec<Value> = seeded_runs(&merged)
        .iter()
        .filter(|r| !new_sizes.contains(&&r["keys"]))
        .cloned()
        .collect();
    runs.extend(seeded_runs(figures).iter().cloned());
    runs.sort_by_key(|r| r["keys"].as_u64());
    if let (Some(merged), Some(figures)) = (merged.as_object_mut(), figures.as_object()) {
        merged.extend(figures.clone());
    }
    if !runs.is_empty() {
        merged["seeded"]["runs"] = Value::Array(runs);
    }
    write(dir, &merged)
}

fn seeded_runs(figures: &Value) -> &[Value] {
    figures["seeded"]["runs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Writes `results.json`, `time.svg`, `memory.svg` and `summary.md` into `dir`.
fn write(dir: &Path, figures: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(figures)?,
    )?;
    let runs = figures["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let at = |path: &[&str]| series(runs, path);
    let seeded = seeded_runs(figures);
    let seeded_at = |path: &[&str]| series(seeded, path);
    plot(
        &dir.join("time.svg"),
        "Seconds until every key is Ready",
        "seconds",
        &[
            ("operator", at(&["operator", "secondsToAllReady"])),
            ("protocol floor", at(&["protocolFloorSeconds"])),
            ("mirror floor", at(&["mirrorFloorSeconds"])),
            ("latency floor", at(&["latencyFloorSeconds"])),
            ("rate limit floor", at(&["rateLimitFloorSeconds"])),
            ("manual flow", at(&["manualSeconds"])),
        ],
    )?;
    plot(
        &dir.join("memory.svg"),
        "Operator resident memory",
        "MiB",
        &[
            (
                "peak while creating",
                at(&["operator", "memoryMiB", "sampledPeakWhileCreating"]),
            ),
            ("at rest", at(&["operator", "memoryMiB", "atRest"])),
            (
                "at rest after restart",
                at(&["operator", "memoryMiB", "atRestAfterRestart"]),
            ),
            (
                "started on Ready keys: peak",
                seeded_at(&["memoryMiB", "sampledPeakDuringSync"]),
            ),
            (
                "started on Ready keys: at rest",
                seeded_at(&["memoryMiB", "atRest"]),
            ),
        ],
    )?;
    plot(
        &dir.join("requests.svg"),
        "Kubernetes API requests per key while creating",
        "requests",
        &[("operator", at(&["operator", "kubeRequestsPerKeyTotal"]))],
    )?;
    std::fs::write(dir.join("summary.md"), summary(figures))?;
    Ok(())
}

/// (keys, figure) of every run that has the figure.
fn series(runs: &[Value], path: &[&str]) -> Vec<(f64, f64)> {
    runs.iter()
        .filter_map(|run| {
            let keys = run["keys"].as_f64()?;
            let value = path.iter().fold(run, |v, p| &v[*p]).as_f64()?;
            Some((keys, value))
        })
        .collect()
}

/// A log-log line plot of `lines` against the number of keys.
fn plot(path: &Path, title: &str, unit: &str, lines: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let points = lines.iter().flat_map(|(_, l)| l.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0_f64, f64::MAX, 0.0_f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let x_min = lines
        .iter()
        .flat_map(|(_, l)| l.iter().map(|p| p.0))
        .fold(x_max, f64::min);
    let y_min = if y_min == f64::MAX { 1.0 } else { y_min };
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x_min * 0.8..x_max * 1.25).log_scale(),
            (y_min.max(1e-3) * 0.5..y_max * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("TenantSecurityKeys")
        .y_desc(unit)
        .draw()?;
    for (i, (name, line)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(
            line.iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The figures as a Markdown table, one row per run.
fn summary(figures: &Value) -> String {
    let mut out = String::from(
        "| keys | operator (s) | protocol floor (s) | latency floor (s) | rate limit floor (s) \
         | × binding floor | mirror floor (s) | requests per key | manual flow (s) \
         | speed-up over manual | peak (MiB) | at rest (MiB) | restart: synced (s) \
         | restart: writes |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in figures["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let operator = &run["operator"];
        let memory = &operator["memoryMiB"];
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run["keys"],
            number(&operator["secondsToAllReady"], 1),
            number(&run["protocolFloorSeconds"], 1),
            number(&run["latencyFloorSeconds"], 1),
            number(&run["rateLimitFloorSeconds"], 1),
            number(&run["timesBindingFloor"], 2),
            number(&run["mirrorFloorSeconds"], 1),
            number(&operator["kubeRequestsPerKeyTotal"], 1),
            number(&run["manualSeconds"], 0),
            number(&run["speedUpOverManual"], 0),
            number(&memory["sampledPeakWhileCreating"], 0),
            number(&memory["atRest"], 0),
            number(&operator["restart"]["secondsToEveryKeyReconciled"], 1),
            operator["restart"]["kubeWrites"],
        );
    }
    let _ = writeln!(
        out,
        "\nLatency {} ms per Imburse call, concurrency {}, Imburse rate limit {}/s (burst {}), \
         measured on {}.",
        figures["latencyMs"],
        figures["concurrency"],
        figures["imburseRateLimit"],
        figures["imburseBurst"],
        figures["machine"]
    );
    if let Some(runs) = figures["seeded"]["runs"].as_array() {
        seeded_summary(&mut out, &figures["seeded"], runs);
    }
    out
}

/// The seeded runs as a second table: the operator started on keys that are Ready already.
fn seeded_summary(out: &mut String, seeded: &Value, runs: &[Value]) {
    out.push_str(
        "\n### Started on Ready keys\n\n\
         | Ready keys | unrelated Secrets | seeding (s) | every key reconciled (s) \
         | peak (MiB) | at rest (MiB) | writes | Imburse calls besides listings \
         | kube-apiserver (MiB) | etcd (MiB) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        seeded_row(out, &run["keys"].to_string(), run, run);
        // A second build started on the same keys, named by its file.
        let compared = &run["comparedWith"];
        if compared["run"].is_object() && compared["run"]["error"].is_null() {
            let binary = compared["binary"].as_str().unwrap_or_default();
            let name = binary.rsplit('/').next().unwrap_or(binary);
            seeded_row(
                out,
                &format!("{} ({name})", run["keys"]),
                run,
                &compared["run"],
            );
        }
    }
    let _ = writeln!(
        out,
        "\nVerify interval {} s, {} tenants, measured on {}.",
        seeded["verifySeconds"], seeded["tenants"], seeded["machine"]
    );
}

/// One row of the seeded table: the seeding of `run`, the operator of `started`.
fn seeded_row(out: &mut String, label: &str, run: &Value, started: &Value) {
    let memory = &started["memoryMiB"];
    let plane = &started["controlPlaneMiB"];
    let seeding = run["seedingSeconds"]["keys"].as_f64().unwrap_or_default()
        + run["seedingSeconds"]["unrelatedSecrets"]
            .as_f64()
            .unwrap_or_default();
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        run["unrelatedSecrets"],
        number(&json!(seeding), 0),
        number(&started["secondsToEveryKeyReconciled"], 1),
        number(&memory["sampledPeakDuringSync"], 0),
        number(&memory["atRest"], 0),
        started["apiserverWrites"],
        started["imburseCallsBesidesListing"],
        number(&plane["kube-apiserver"], 0),
        number(&plane["etcd"], 0),
    );
}

/// `v` with `digits` decimals, or a dash when it is no number.
fn number(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_owned(), |n| format!("{n:.digits$}"))
}
