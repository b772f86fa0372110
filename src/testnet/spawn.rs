//! Node processes: start one per node, notice when one dies, stop them all.
//!
//! Each node runs `<this binary> <role> --config DIR/<name>/config.toml` with stdout and stderr
//! going to `DIR/<name>/log`, in its own process group (so a Ctrl-C in the terminal reaches only
//! the orchestrator, which then stops the nodes in order), and with a parent-death signal so a
//! node never outlives an orchestrator that was killed outright.
//!
//! The parent-death signal fires when the *thread* that spawned the child exits, so nodes must
//! be spawned from a thread that lives as long as the orchestrator: `allium testnet` runs on a
//! current-thread runtime on the main thread.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use super::layout::NodeSpec;

/// A running (or exited) node process.
pub struct NodeProc {
    pub spec: NodeSpec,
    child: Child,
    /// Set once the process has been seen to exit.
    pub exited: Option<ExitStatus>,
}

impl NodeProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Checks (without blocking) whether the process has exited; returns the status the first
    /// time it is seen.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                Some(status)
            }
            _ => None,
        }
    }
}

/// Starts the node described by `spec`.
pub fn spawn(exe: &Path, spec: &NodeSpec) -> io::Result<NodeProc> {
    let log = File::create(spec.log_path())?;
    let mut cmd = Command::new(exe);
    cmd.arg(spec.role.subcommand())
        .arg("--config")
        .arg(spec.config_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    die_with_parent(&mut cmd);
    let child = cmd.spawn()?;
    Ok(NodeProc { spec: spec.clone(), child, exited: None })
}

/// Makes the child receive SIGKILL when the thread that spawned it exits.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes two system calls (prctl, getppid) and builds io::Errors from
    // raw OS codes; it allocates nothing, takes no lock and touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal will come.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Stops every node still running: SIGTERM to all, then up to `grace` for them to exit, then
/// SIGKILL for the rest. Every child is reaped before this returns.
pub async fn stop_all(nodes: &mut [NodeProc], grace: Duration) {
    for n in nodes.iter_mut() {
        n.poll_exit();
        if n.exited.is_none() {
            if let Some(pid) = Pid::from_raw(n.pid() as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        nodes.iter_mut().for_each(|n| {
            n.poll_exit();
        });
        if nodes.iter().all(|n| n.exited.is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes.iter_mut().filter(|n| n.exited.is_none()) {
        eprintln!("{} did not stop within {} s of SIGTERM; killing it", n.spec.name, grace.as_secs());
        let _ = n.child.kill();
        if let Ok(status) = n.child.wait() {
            n.exited = Some(status);
        }
    }
}

/// The last `lines` lines of a log file (or why it could not be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                "    (log is empty)".to_string()
            } else {
                all[start..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
            }
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}
