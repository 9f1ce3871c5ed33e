//! A control plane started with [`crate::ControlPlane::start_detached`] outlives the command that
//! started it; these functions find it again through its pid files, report on it and stop it.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, STOP_GRACE};

/// Components in the order they are stopped: dependants first.
const COMPONENTS: [&str; 3] = ["kube-controller-manager", "kube-apiserver", "etcd"];

/// The folder `cargo xtask controlplane up` runs the shared control plane in.
pub fn default_dir() -> PathBuf {
    crate::versions::cache_root().join("run")
}

/// What a pid file says about one component.
#[derive(Clone, Debug)]
pub struct ComponentStatus {
    pub name: &'static str,
    /// The pid recorded in `<dir>/<name>.pid`, if any.
    pub pid: Option<u32>,
    /// Whether that pid is alive and still runs this control plane's component.
    pub running: bool,
}

/// The state of each component of the control plane in `dir`.
pub fn status(dir: &Path) -> Vec<ComponentStatus> {
    COMPONENTS
        .into_iter()
        .map(|name| {
            let pid = read_pid(dir, name);
            ComponentStatus {
                name,
                pid,
                running: pid.is_some_and(|pid| is_ours(pid, dir)),
            }
        })
        .collect()
}

/// Stops exactly the processes named by the pid files in `dir`, waits until they have exited and
/// removes `dir`. Stopping a control plane that is not running does nothing. Returns the
/// components that were stopped and their pids.
pub fn stop(dir: &Path) -> Result<Vec<(&'static str, u32)>> {
    let mut stopped = Vec::new();
    for component in status(dir) {
        let Some(pid) = component.pid.filter(|_| component.running) else {
            continue;
        };
        process::signal(pid, libc::SIGTERM);
        if !wait_for_exit(pid, STOP_GRACE) {
            process::signal(pid, libc::SIGKILL);
            if !wait_for_exit(pid, Duration::from_secs(10)) {
                bail!("{} (pid {pid}) did not exit after SIGKILL", component.name);
            }
        }
        // The exited process stays a zombie until its new parent (init) reaps it; give that a
        // moment so `pgrep` right after a stop finds nothing.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        stopped.push((component.name, pid));
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(stopped)
}

fn read_pid(dir: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(process::pid_file(dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A pid file may outlive its process and the pid be reused, so a pid counts as ours only while
/// its command line names this control plane's folder (every component's arguments do).
fn is_ours(pid: u32, dir: &Path) -> bool {
    process::alive(pid)
        && process::command_line(pid).is_some_and(|line| line.contains(&*dir.to_string_lossy()))
}

fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process::alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}
