//! Child processes for the harness: running a command with a deadline, signalling and
//! finding processes, and unmounting what a dead daemon left behind.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// SIGKILL: cannot be caught; used when a polite SIGTERM was not enough.
pub const SIGKILL: i32 = 9;
/// SIGTERM: asks a process (dockerd, an agent) to shut down cleanly.
pub const SIGTERM: i32 = 15;
/// SIGSTOP: freezes a process (a hung daemon) until SIGCONT.
pub const SIGSTOP: i32 = 19;
/// SIGCONT: lets a process stopped by SIGSTOP run again.
pub const SIGCONT: i32 = 18;

/// `umount2` flag: detach now, finish when no longer busy. A leftover mount under a
/// dead daemon's directory must not make the cleanup fail.
const MNT_DETACH: i32 = 2;

/// Longest pause between two polls of a running child: short enough not to slow fast
/// commands down much, long enough not to burn a core that the 2-core machine needs.
const MAX_POLL: Duration = Duration::from_millis(50);

// libc is linked into every Rust program on Linux; declaring the two calls we need keeps
// the harness free of a `libc` dev-dependency.
extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn umount2(target: *const std::os::raw::c_char, flags: i32) -> i32;
}

/// Runs `cmd` to completion, capturing stdout and stderr, and returns its `Output`
/// whatever its exit status. Panics, after killing it, if it runs longer than `secs`.
///
/// Stdin is left as the caller set it (so a pipe from another child works); set
/// `Stdio::null()` for commands that must not read the test's stdin.
pub fn run_with_timeout(cmd: &mut Command, secs: u64) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_deadline(&mut child, Duration::from_secs(secs));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let (out, err) = (join_text(stdout), join_text(stderr));
        panic!("timed out after {secs} s: {what}\n--- stdout ---\n{out}\n--- stderr ---\n{err}");
    };
    Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    }
}

/// Like [`run_with_timeout`], but panics unless the command succeeds; returns its
/// trimmed stdout.
pub fn run_ok(cmd: &mut Command, secs: u64) -> String {
    let out = run_with_timeout(cmd, secs);
    check(&format!("{cmd:?}"), &out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Panics with the command's stdout and stderr unless `out` is a success.
pub fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// Runs an engine's CLI, `cmd` with `args` and no stdin, for at most `limit_secs`;
/// returns its output whatever the exit status.
pub fn cli_output<I, S>(mut cmd: Command, args: I, limit_secs: u64) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    cmd.args(args).stdin(Stdio::null());
    run_with_timeout(&mut cmd, limit_secs)
}

/// [`cli_output`], panicking unless it succeeds (naming `label` and the arguments);
/// returns the trimmed stdout.
pub fn cli_ok<S: AsRef<std::ffi::OsStr>>(label: &str, cmd: Command, args: Vec<S>, limit_secs: u64) -> String {
    let shown: Vec<_> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let out = cli_output(cmd, &args, limit_secs);
    check(&format!("{label} {}", shown.join(" ")), &out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits for `child` to exit for at most `limit`; `None` if it is still running.
pub fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(pause),
            Err(e) => panic!("cannot wait for child {}: {e}", child.id()),
        }
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs. Returns the exit status.
pub fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    signal(child.id(), SIGTERM);
    if let Some(status) = wait_deadline(child, grace) {
        return status;
    }
    let _ = child.kill();
    child
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for child {}: {e}", child.id()))
}

/// Sends `sig` to `pid`; false if there is no such process.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { kill(pid, sig) == 0 }
}

/// True if `pid` exists and is not a zombie (a zombie has exited; some init processes on
/// these machines do not reap the orphans they adopt).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z') | Some('X') | None)
}

/// Pids of the live processes whose command line mentions `dir` (a daemon's private
/// directory: its dockerd, containerd and containerd shims all name it).
pub fn pids_referring_to(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_bytes();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_alive(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// SIGKILLs every process that refers to `dir` and waits (up to 10 s) until they are gone.
pub fn kill_all_referring_to(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_referring_to(dir);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            signal(pid, SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Detaches every mount point at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut points: Vec<PathBuf> = p2pimg::content::disk::mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        if unsafe { umount2(c.as_ptr(), MNT_DETACH) } != 0 {
            eprintln!("harness: cannot unmount {}", p.display());
        }
    }
}

/// Reads a pipe to its end on a thread of its own, so that a child filling one pipe
/// never blocks on the other.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn join(h: JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

fn join_text(h: JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&join(h)).into_owned()
}
