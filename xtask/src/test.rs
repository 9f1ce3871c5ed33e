//! `cargo xtask test`: every check CI runs, in order, stopping at the first failing step, then a
//! table of wall times.
//!
//! The tests are built once and their executables run several at a time: each integration
//! binary starts its own control plane, sandbox and operator on free ports in temporary folders,
//! and spends most of its time waiting on Leases, grace periods and watches, so running them one
//! after another leaves the machine idle.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testenv::{build, versions};

use crate::{image, workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Test executables to run at once; by default twice the cores, as far as memory allows.
    #[arg(long)]
    jobs: Option<usize>,
}

/// Memory a test executable may take at once: its own kube-apiserver, etcd,
/// kube-controller-manager, sandbox and operators.
const MEMORY_PER_JOB: u64 = 2 << 30;

/// Free space a run may fill where the build goes: a clean clone's target/ ends at 3.3 GiB, a
/// warm one grows by what changed.
const DISK_FOR_TARGET: u64 = 4 << 30;
const DISK_FOR_WARM_TARGET: u64 = 1 << 30;
/// Free space a run may fill in the temporary folder: etcd data and logs of several control
/// planes at once.
const DISK_FOR_TEMP: u64 = 1 << 30;

pub fn run(args: Args) -> Result<()> {
    let mut report = Report::new();
    let result = steps(&args, &mut report);
    report.print();
    result
}

fn steps(args: &Args, report: &mut Report) -> Result<()> {
    let cargo = cargo();
    let cache_root = versions::cache_root();

    // Checked first: a full disk otherwise shows minutes later as etcd or the linker failing.
    report.step("free disk space", |_| {
        let target = std::path::absolute(workspace::target_dir())?;
        let for_target = if target.join("debug").exists() {
            DISK_FOR_WARM_TARGET
        } else {
            DISK_FOR_TARGET
        };
        enough_disk(&[
            (&target, for_target),
            (&std::env::temp_dir(), DISK_FOR_TEMP),
        ])
    })?;
    report.step("cargo fmt", |_| {
        status_step(Command::new(&cargo).args(["fmt", "--all", "--", "--check"]))
    })?;
    report.step("cargo clippy", |_| {
        status_step(Command::new(&cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    report.step(
        &format!("control plane binaries ({})", versions::summary()),
        |_| {
            build::ensure_all(&mut std::io::stdout())?;
            Ok(())
        },
    )?;

    let executables = report.step("cargo test: build", |_| build_tests())?;
    let jobs = args.jobs.unwrap_or_else(default_jobs).max(1);
    let totals = report.step(&format!("cargo test: run, {jobs} at once"), |times| {
        let mut tests: Vec<Job> = executables.iter().map(Job::executable).collect();
        tests.push(Job::doc_tests());
        let last = last_durations();
        // Unknown ones first: a new executable may well be a long one.
        tests.sort_by_key(|job| std::cmp::Reverse(last.get(&job.label).unwrap_or(&u64::MAX)));
        let totals = run_tests(tests, jobs, times);
        if let Err(e) = record_durations(times) {
            eprintln!("warning: the test durations were not recorded: {e:#}");
        }
        totals
    })?;

    // Tests and the demo find the control plane binaries through the same cache root.
    report.step("demo", |_| {
        status_step(
            Command::new(&cargo)
                .args(["xtask", "demo", "--exit-when-ready"])
                .env(versions::CACHE_DIR_ENV, &cache_root),
        )
    })?;
    let image_step = "container image";
    // Installs what the image step built, so it runs exactly when that step does.
    let registry_step = "install from a local OCI registry";
    let unavailable = image::uninstallable_packages();
    if unavailable.is_empty() || ci() {
        report.step(image_step, |_| {
            status_step(Command::new(&cargo).args(["xtask", "image"]))
        })?;
        report.step(registry_step, |_| {
            status_step(
                Command::new(&cargo)
                    .args(["xtask", "registry-install"])
                    .env(versions::CACHE_DIR_ENV, &cache_root),
            )
        })?;
    } else {
        let packages = unavailable.join(" ");
        let why = format!(
            "{packages} missing, and installing them takes root: install them \
             (`sudo apt-get install {packages}`) and run `cargo xtask image` and \
             `cargo xtask registry-install`; with CI=true this step fails instead"
        );
        report.skip(image_step, why.clone());
        report.skip(registry_step, why);
    }
    if report.skipped() {
        println!("==> every step that ran passed");
    } else {
        println!("==> all steps passed");
    }
    // One closing line over every test binary, so that the suite's result does not read as the
    // last binary's.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// CI runs every step: a step that cannot run there fails rather than being skipped.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs a step's command with its output going straight to the terminal.
fn status_step(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{status}");
    }
    Ok(())
}

/// A test executable that `cargo test --no-run` built.
struct Executable {
    path: PathBuf,
    /// The package it belongs to and that package's manifest.
    package: String,
    manifest: PathBuf,
    /// `--lib`, `--bin <name>` or `--test <name>`: how `cargo test -p <package>` selects it.
    selector: String,
}

/// Builds every test executable of the workspace once, as `cargo test` would, and lists them.
fn build_tests() -> Result<Vec<Executable>> {
    let mut child = Command::new(cargo())
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test --no-run")?;
    let mut messages = String::new();
    child
        .stdout
        .take()
        .context("cargo's output")?
        .read_to_string(&mut messages)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test --no-run failed ({status})");
    }
    let executables: Vec<Executable> = messages
        .lines()
        .filter_map(|line| executable(&serde_json::from_str(line).ok()?))
        .collect();
    if executables.is_empty() {
        bail!("cargo test --no-run named no test executable");
    }
    Ok(executables)
}

/// The test executable a `compiler-artifact` message of cargo names, if any.
fn executable(message: &serde_json::Value) -> Option<Executable> {
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let path = PathBuf::from(message["executable"].as_str()?);
    let package = package_name(message["package_id"].as_str()?)?;
    let target = &message["target"];
    let name = target["name"].as_str()?;
    let selector = match target["kind"][0].as_str()? {
        "lib" => "--lib".to_owned(),
        kind => format!("--{kind} {name}"),
    };
    Some(Executable {
        path,
        package: package.to_owned(),
        manifest: PathBuf::from(message["manifest_path"].as_str()?),
        selector,
    })
}

/// The name in a package ID spec: `<url>#<name>@<version>`, or `<url>#<version>` when the name
/// is the URL's last segment.
fn package_name(id: &str) -> Option<&str> {
    let (url, fragment) = id.rsplit_once('#')?;
    match fragment.split_once('@') {
        Some((name, _version)) => Some(name),
        None => url.rsplit('/').next(),
    }
}

/// One test executable or command, run with its output kept until it ends.
struct Job {
    label: String,
    command: Command,
}

impl Job {
    /// Runs an executable as `cargo test` does: from its package's folder, with the package's
    /// variables, and with the cache root the control plane binaries were just built in.
    fn executable(executable: &Executable) -> Job {
        let dir = executable.manifest.parent().unwrap_or(Path::new("."));
        let mut command = Command::new(&executable.path);
        command
            .current_dir(dir)
            .env("CARGO", cargo())
            .env("CARGO_MANIFEST_DIR", dir)
            .env("CARGO_MANIFEST_PATH", &executable.manifest)
            .env("CARGO_PKG_NAME", &executable.package)
            .env(versions::CACHE_DIR_ENV, versions::cache_root());
        Job {
            label: format!("{} {}", executable.package, executable.selector),
            command,
        }
    }

    /// The doc tests, which `cargo test` compiles and runs itself.
    fn doc_tests() -> Job {
        let mut command = Command::new(cargo());
        command
            .args(["test", "--workspace", "--doc"])
            .env(versions::CACHE_DIR_ENV, versions::cache_root());
        Job {
            label: "doc tests".to_owned(),
            command,
        }
    }

    fn run(self) -> Finished {
        let started = Instant::now();
        let result = capture(self.command);
        Finished {
            label: self.label,
            elapsed: started.elapsed(),
            result,
        }
    }
}

struct Finished {
    label: String,
    elapsed: Duration,
    /// How the job ended and everything it printed, or why it could not run.
    result: Result<(ExitStatus, String)>,
}

impl Finished {
    fn passed(&self) -> bool {
        matches!(&self.result, Ok((status, _)) if status.success())
    }
}

/// Runs `command` with its standard output and error in one pipe, so that they stay in order.
fn capture(mut command: Command) -> Result<(ExitStatus, String)> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("could not start {command:?}"))?;
    // The command holds copies of the pipe's writing end: the output ends only once they are
    // closed too.
    drop(command);
    let mut output = Vec::new();
    reader.read_to_end(&mut output)?;
    let status = child.wait()?;
    Ok((status, String::from_utf8_lossy(&output).into_owned()))
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Where each test executable's wall time in the last run is kept, so that the next run starts
/// the longest first: the step then takes about as long as its longest executable, not that plus
/// whatever happened to start before it.
fn durations_file() -> PathBuf {
    workspace::target_dir().join("xtask-test-durations.tsv")
}

/// Seconds per test executable in the last run; none when there was no run.
fn last_durations() -> HashMap<String, u64> {
    std::fs::read_to_string(durations_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (label, seconds) = line.split_once('\t')?;
            Some((label.to_owned(), seconds.parse().ok()?))
        })
        .collect()
}

fn record_durations(times: &[Row]) -> Result<()> {
    let lines: String = times
        .iter()
        .filter_map(|row| Some(format!("{}\t{}\n", row.name, row.elapsed?.as_secs())))
        .collect();
    std::fs::write(durations_file(), lines)?;
    Ok(())
}

/// Runs `tests`, `jobs` at a time, printing each one's output as a block when it ends. Every
/// test runs even when one fails; the step then fails naming them.
fn run_tests(tests: Vec<Job>, jobs: usize, times: &mut Vec<Row>) -> Result<Totals> {
    let count = tests.len();
    let queue = Mutex::new(tests.into_iter());
    let (sender, finished) = mpsc::channel();
    let mut totals = Totals::default();
    let mut failed = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(count) {
            let sender = sender.clone();
            let queue = &queue;
            scope.spawn(move || {
                while let Some(job) = next(queue) {
                    if sender.send(job.run()).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        for (done, test) in finished.iter().enumerate() {
            let verdict = print_block(&test, done + 1, count);
            if let Ok((_, output)) = &test.result {
                for summary in output
                    .lines()
                    .filter_map(|l| l.strip_prefix("test result: "))
                {
                    totals.passed += count_of(summary, "passed");
                    totals.failed += count_of(summary, "failed");
                }
            }
            if !test.passed() {
                failed.push(test.label.clone());
            }
            times.push(Row::new(&test.label, true, Some(test.elapsed), verdict));
        }
    });
    println!(
        "==> tests: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(totals)
}

fn next(queue: &Mutex<std::vec::IntoIter<Job>>) -> Option<Job> {
    queue.lock().unwrap_or_else(|e| e.into_inner()).next()
}

/// Prints a finished test's output under one header; returns its verdict.
fn print_block(test: &Finished, done: usize, count: usize) -> &'static str {
    let verdict = if test.passed() { "ok" } else { "FAILED" };
    let mut out = std::io::stdout().lock();
    // A closed standard output is no reason to stop the tests.
    let _ = writeln!(
        out,
        "==> [{done}/{count}] {} ({verdict}, {})",
        test.label,
        minutes(test.elapsed)
    );
    let _ = match &test.result {
        Ok((_, output)) if test.passed() => write!(out, "{output}"),
        Ok((status, output)) => writeln!(out, "{output}{} ended: {status}", test.label),
        Err(e) => writeln!(out, "{e:#}"),
    };
    let _ = out.flush();
    verdict
}

/// The number before `word` in a libtest summary such as `ok. 14 passed; 0 failed; ...`.
fn count_of(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Twice the cores, because the integration binaries mostly wait; at most as many as the
/// available memory holds.
fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let by_memory = available_memory().map_or(usize::MAX, |bytes| {
        usize::try_from(bytes / MEMORY_PER_JOB).unwrap_or(usize::MAX)
    });
    (2 * cores).min(by_memory)
}

/// Fails unless each file system has the bytes free for unprivileged users that the `needs`
/// on it add up to; a path that does not exist yet counts on its nearest existing parent's.
fn enough_disk(needs: &[(&Path, u64)]) -> Result<()> {
    let mut by_file_system: Vec<(u64, &Path, u64, u64)> = Vec::new();
    for &(path, needed) in needs {
        let existing = path
            .ancestors()
            .find(|p| p.exists())
            .with_context(|| format!("no folder of {} exists", path.display()))?;
        let stats = rustix::fs::statvfs(existing)
            .with_context(|| format!("reading the free space of {}", existing.display()))?;
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        match by_file_system
            .iter_mut()
            .find(|(id, ..)| *id == stats.f_fsid)
        {
            Some((_, _, _, total)) => *total = total.saturating_add(needed),
            None => by_file_system.push((stats.f_fsid, existing, free, needed)),
        }
    }
    for (_, path, free, needed) in by_file_system {
        if free < needed {
            bail!(
                "{} has {:.1} GiB free; a run needs about {:.1} GiB there. Free some space and run again",
                path.display(),
                gib(free),
                gib(needed),
            );
        }
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 30)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Every step's wall time (and each test executable's), for the table at the end.
struct Report {
    rows: Vec<Row>,
    started: Instant,
}

struct Row {
    name: String,
    /// Indented under its step.
    detail: bool,
    elapsed: Option<Duration>,
    verdict: String,
}

impl Row {
    fn new(name: &str, detail: bool, elapsed: Option<Duration>, verdict: &str) -> Row {
        Row {
            name: name.to_owned(),
            detail,
            elapsed,
            verdict: verdict.to_owned(),
        }
    }
}

impl Report {
    fn new() -> Report {
        Report {
            rows: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Runs a step, recording its time and verdict, and under it the rows `run` adds (longest
    /// first); a failure names the step.
    fn step<T>(&mut self, name: &str, run: impl FnOnce(&mut Vec<Row>) -> Result<T>) -> Result<T> {
        println!("==> {name}");
        let started = Instant::now();
        let mut details = Vec::new();
        let result = run(&mut details);
        let verdict = if result.is_ok() { "ok" } else { "FAILED" };
        self.rows
            .push(Row::new(name, false, Some(started.elapsed()), verdict));
        details.sort_by_key(|r| std::cmp::Reverse(r.elapsed));
        self.rows.extend(details);
        result.with_context(|| format!("step `{name}` failed"))
    }

    fn skip(&mut self, name: &str, why: String) {
        println!("==> {name}: skipped: {why}");
        self.rows
            .push(Row::new(name, false, None, &format!("skipped: {why}")));
    }

    fn skipped(&self) -> bool {
        self.rows.iter().any(|r| r.elapsed.is_none())
    }

    fn print(&self) {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.len() + 2)
            .max()
            .unwrap_or(0);
        println!("==> wall time");
        for row in &self.rows {
            let indent = if row.detail { "  " } else { "" };
            let name = format!("{indent}{}", row.name);
            let time = row.elapsed.map_or_else(|| "-".to_owned(), minutes);
            println!("  {name:<width$} {time:>7}  {}", row.verdict);
        }
        println!(
            "  {:<width$} {:>7}",
            "total",
            minutes(self.started.elapsed())
        );
    }
}

/// `12m05s`.
fn minutes(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::{count_of, enough_disk, package_name};

    #[test]
    fn counts_libtest_summaries() {
        let ok =
            "ok. 14 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 8.89s";
        assert_eq!((count_of(ok, "passed"), count_of(ok, "failed")), (14, 0));
        let failed = "FAILED. 10 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(
            (count_of(failed, "passed"), count_of(failed, "failed")),
            (10, 4)
        );
    }

    #[test]
    fn a_full_disk_is_named_with_what_a_run_needs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("target/not/yet");
        let stats = rustix::fs::statvfs(dir.path()).unwrap();
        let most = stats.f_bavail * stats.f_frsize / 5 * 3;
        enough_disk(&[(&missing, most)]).unwrap();
        enough_disk(&[(dir.path(), most)]).unwrap();
        // Two needs on one file system add up.
        let error = enough_disk(&[(&missing, most), (dir.path(), most)])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&dir.path().display().to_string()),
            "{error}"
        );
        assert!(error.contains("GiB free; a run needs about"), "{error}");
    }

    #[test]
    fn reads_package_ids() {
        assert_eq!(
            package_name("path+file:///src/tko#tenant-key-operator@0.4.0"),
            Some("tenant-key-operator")
        );
        assert_eq!(
            package_name("path+file:///src/tko/crates/imburse#0.1.0"),
            Some("imburse")
        );
    }
}
