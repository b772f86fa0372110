//! Waiting on the kernel instead of polling with sleeps: a process's exit (its pidfd becomes
//! readable; any process, not only this one's children) and a file being written or renamed
//! into place (inotify).

use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

/// Why a wait ended without what it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The process the wait watched exited first.
    Exited,
    /// The time limit passed.
    TimedOut,
}

/// A pidfd for `pid`; None if there is no such process (any more).
fn pidfd(pid: u32) -> Option<OwnedFd> {
    pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()).ok()
}

/// Blocks until one of `fds` is readable (its index) or `deadline` passes (None).
fn readable(fds: &[BorrowedFd<'_>], deadline: Instant) -> Option<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN)).collect();
        let timeout = Timespec::try_from(left).expect("a test's time limit fits a timespec");
        match poll(&mut polled, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return polled.iter().position(|p| !p.revents().is_empty()),
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Waits up to `limit` for process `pid` to exit (a zombie counts as exited); true if it has.
pub fn wait_exit(pid: u32, limit: Duration) -> bool {
    let Some(fd) = pidfd(pid) else { return true };
    readable(&[fd.as_fd()], Instant::now() + limit).is_some()
}

/// Waits up to `limit` until `check` gives a value, checking again each time file `path` is
/// created, written, renamed into place or deleted (its directory may not exist yet: the directory's
/// parent is watched for it). Ends early with [`Ended::Exited`] if process `pid` (if given)
/// exits first.
pub fn wait_file<T>(path: &Path, pid: Option<u32>, limit: Duration, check: impl FnMut() -> Option<T>) -> Result<T, Ended> {
    let dir = path.parent().expect("a file in a directory");
    // Events name a file in a watched directory: the file itself, or its directory appearing.
    let names: Vec<&OsStr> = [path.file_name(), dir.file_name()].into_iter().flatten().collect();
    wait_named(dir, &names, pid, limit, check)
}

/// [`wait_file`] for any of the files `names` in `dir`.
pub fn wait_files<T>(dir: &Path, names: &[&str], limit: Duration, check: impl FnMut() -> Option<T>) -> Result<T, Ended> {
    let mut names: Vec<&OsStr> = names.iter().map(OsStr::new).collect();
    names.extend(dir.file_name());
    wait_named(dir, &names, None, limit, check)
}

/// Waits until `check` gives a value, checking again when an event in `dir` (or its parent)
/// names one of `names`.
fn wait_named<T>(dir: &Path, names: &[&OsStr], pid: Option<u32>, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T, Ended> {
    let deadline = Instant::now() + limit;
    let notify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).expect("inotify_init1");
    let wrote = inotify::WatchFlags::MODIFY | inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CREATE | inotify::WatchFlags::DELETE;
    if let Some(parent) = dir.parent() {
        inotify::add_watch(&notify, parent, wrote).unwrap_or_else(|e| panic!("watch {}: {e}", parent.display()));
    }
    let process = pid.map(|p| pidfd(p).ok_or(Ended::Exited)).transpose()?;
    let mut watching_dir = false;
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 4096];
    let mut changed = true;
    loop {
        // Watch before checking, so that nothing written in between goes unnoticed.
        watching_dir = watching_dir || inotify::add_watch(&notify, dir, wrote).is_ok();
        if changed {
            if let Some(found) = check() {
                return Ok(found);
            }
        }
        let mut fds = vec![notify.as_fd()];
        fds.extend(process.as_ref().map(|p| p.as_fd()));
        match readable(&fds, deadline) {
            None => return Err(Ended::TimedOut),
            Some(1) => return check().ok_or(Ended::Exited),
            Some(_) => changed = names_any(&notify, &mut buf, names),
        }
    }
}

/// Reads every queued inotify event; whether one of them names one of `names`.
fn names_any(notify: &OwnedFd, buf: &mut [MaybeUninit<u8>], names: &[&OsStr]) -> bool {
    let mut events = inotify::Reader::new(notify, buf);
    let mut hit = false;
    while let Ok(event) = events.next() {
        hit |= event.file_name().is_some_and(|n| names.contains(&OsStr::from_bytes(n.to_bytes())));
    }
    hit
}
