//! One control plane process: spawned with its output in a log file, stopped with SIGTERM and,
//! after a grace period, SIGKILL.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// Who is responsible for ending a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Dies with the process that started it, even if that process is killed.
    Owned,
    /// Outlives the process that started it, in its own process group; found again through a
    /// pid file.
    Detached,
}

pub(crate) struct Process {
    pub name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    pub log: PathBuf,
    pid_file: PathBuf,
    lifetime: Lifetime,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with `args`, appending its output to `<dir>/<name>.log`.
    pub fn start(
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        dir: &Path,
        lifetime: Lifetime,
    ) -> Result<Process> {
        Self::start_with_env(name, program, args, Vec::new(), dir, lifetime)
    }

    /// Like [`Process::start`], with `env` added to the inherited environment (on every
    /// restart too).
    pub fn start_with_env(
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        dir: &Path,
        lifetime: Lifetime,
    ) -> Result<Process> {
        let mut process = Process {
            name,
            program: program.to_path_buf(),
            args,
            env,
            log: dir.join(format!("{name}.log")),
            pid_file: pid_file(dir, name),
            lifetime,
            child: None,
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = match self.lifetime {
            Lifetime::Owned => spawn_owned(cmd),
            Lifetime::Detached => {
                // A process group of its own keeps a Ctrl-C in the starting terminal from
                // reaching it.
                cmd.process_group(0);
                cmd.spawn()
            }
        }
        .with_context(|| format!("starting {}", self.program.display()))?;
        if self.lifetime == Lifetime::Detached {
            fs::write(&self.pid_file, format!("{}\n", child.id()))
                .with_context(|| format!("writing {}", self.pid_file.display()))?;
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, once it has exited by itself.
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// An error saying that the process has exited, with the end of its log, if it has.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(anyhow!("{} is not running", self.name));
        };
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                crate::log_tail(&self.log, 40)
            )),
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`) and reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                signal(child.id(), libc::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    thread::sleep(Duration::from_millis(50));
                }
                // Does nothing if the process has already exited.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if self.lifetime == Lifetime::Detached {
            let _ = fs::remove_file(&self.pid_file);
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process and starts it again with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.stop(STOP_GRACE);
        self.spawn()
    }
}

pub(crate) fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

pub(crate) fn signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory effects; the pid is positive, so it names one process.
    pid > 0 && unsafe { libc::kill(pid, signal) } == 0
}

/// Whether a process exists and is not a zombie waiting to be reaped by its new parent.
pub(crate) fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The process's command line, with arguments separated by spaces.
pub(crate) fn command_line(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Spawns `cmd` so that the kernel kills it with SIGKILL when this process dies.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the whole process.
/// Test threads come and go (a control plane may be shared by several tests), so every owned
/// process is forked by one thread that lives as long as the process does.
fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, getppid and
    // raise, which are async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }

    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the process spawner thread");
        requests
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?
}
