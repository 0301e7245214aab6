//! Disk full (issue #5, scenario 4): a node whose state directory, or whose Docker data
//! root, is on a small file system fails with a message naming that disk and the space
//! needed, loads nothing, keeps running; once space is freed, the same push completes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::bin;
use crate::common::dockerd::mount_tmpfs;
use crate::common::process::check;
use crate::common::{build_test_image, run_with_timeout, Cluster, ClusterOptions, DockerdOptions, Push};

/// Size of the small file systems: room for a daemon's own files, or the store's
/// directories, and the filler.
const SMALL_FS: u64 = 256 << 20;

/// Free space left next to the filler: well under what the ~5 MB test image needs.
const LEAVE_FREE: u64 = 2 << 20;

/// A tmpfs mounted on a directory for one test, lazily unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        mount_tmpfs(dir, bytes);
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes available on the file system of `dir` (`df`).
fn available(dir: &Path) -> u64 {
    let mut cmd = Command::new("df");
    cmd.args(["-B1", "--output=avail"]).arg(dir).stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, 30);
    check("df", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

/// Writes a file in `dir` that leaves about `leave` bytes free there; returns its path.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = File::create(&path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    let mut left = available(dir).saturating_sub(leave);
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        match f.write_all(&block[..n]) {
            // Filling to the last byte: the file system may count a little differently.
            Err(e) if leave == 0 && e.kind() == std::io::ErrorKind::StorageFull => break,
            written => written.unwrap(),
        }
        left -= n as u64;
    }
    f.sync_all().unwrap();
    path
}

/// Checks that node n1 failed with a reason containing every one of `parts`, loaded
/// nothing and kept running, and that n2 loaded.
fn n1_failed_cleanly(cluster: &mut Cluster, push: &Push, parts: &[&str]) {
    let logs = cluster.logs();
    let node = &mut cluster.nodes[0];
    assert_eq!(push.code, 1, "{}\n{}\n{logs}", push.stdout, push.stderr);
    assert_eq!(push.status("n1"), "failed", "{}", push.stdout);
    let reason = push.reason("n1");
    eprintln!("n1: failed: {reason}");
    for part in parts {
        assert!(reason.contains(part), "{part:?} missing from: {reason}");
    }
    assert_eq!(node.engine.image_id("app:1"), None, "nothing loaded");
    assert_eq!(node.engine.docker_ok(["images", "-aq"]), "", "no image at all");
    assert!(node.agent.try_exit_status().is_none(), "the agent keeps running");
    assert_eq!(push.status("n2"), "loaded", "the other node is not held up");
}

/// Deletes `filler` and pushes again: every node then holds image `id`, n1 loaded it.
fn free_and_push_again(cluster: &Cluster, filler: &Path, id: &str) -> Push {
    fs::remove_file(filler).unwrap();
    let push = cluster.push(&["app:1"], &[]);
    let logs = cluster.logs();
    assert_eq!(push.code, 0, "{}\n{}\n{logs}", push.stdout, push.stderr);
    for node in &cluster.nodes {
        assert_eq!(
            node.engine.image_id("app:1").as_deref(),
            Some(id),
            "{}",
            node.name
        );
    }
    assert_eq!(push.status("n1"), "loaded");
    push
}

/// Moves n1's state directory to a small file system (unmounted when the
/// guard is dropped), restarting its agent on it.
fn small_state_disk(cluster: &mut Cluster) -> (PathBuf, Tmpfs) {
    cluster.stop_agent(0);
    let state = cluster.nodes[0].state_dir.clone();
    let _ = fs::remove_dir_all(&state);
    let small = Tmpfs::mount(&state, SMALL_FS);
    cluster.restart_agent(0);
    (state, small)
}

#[test]
fn full_state_disk_fails_the_node_clearly_until_space_is_freed() {
    let mut cluster = Cluster::start(bin(), 2);
    let image = build_test_image(&cluster.seed, "app:1");
    // n1's state directory moves to a small file system, nearly full.
    let (state, _small) = small_state_disk(&mut cluster);
    let filler = fill(&state, LEAVE_FREE);

    let push = cluster.push(&["app:1"], &[]);
    let state_shown = state.display().to_string();
    let parts = [
        "not enough disk space for chunks in the state directory",
        &state_shown,
        "needs about",
        "free space there",
    ];
    n1_failed_cleanly(&mut cluster, &push, &parts);
    assert!(
        fs::read_dir(state.join("chunks")).unwrap().next().is_none(),
        "nothing fetched into the full disk"
    );

    let again = free_and_push_again(&cluster, &filler, &image.id);
    assert!(again.received_total("n1") > 0);
}

#[test]
fn full_docker_data_root_fails_the_node_clearly_until_space_is_freed() {
    let opts = ClusterOptions {
        engine: |i| DockerdOptions {
            data_root_bytes: (i == 1).then_some(SMALL_FS),
            ..DockerdOptions::default()
        },
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(bin(), 2, &opts);
    let image = build_test_image(&cluster.seed, "app:1");
    let data_root = cluster.nodes[0].engine.dir().join("data");
    let filler = fill(&data_root, LEAVE_FREE);

    let push = cluster.push(&["app:1"], &[]);
    let root_shown = data_root.display().to_string();
    let parts = [
        "not enough disk space for docker load in Docker's data root",
        &root_shown,
        "needs about",
    ];
    n1_failed_cleanly(&mut cluster, &push, &parts);

    free_and_push_again(&cluster, &filler, &image.id);
}

#[test]
fn state_disk_with_no_byte_free_gets_the_same_clear_line() {
    let mut cluster = Cluster::start(bin(), 2);
    let image = build_test_image(&cluster.seed, "app:1");
    let (state, _small) = small_state_disk(&mut cluster);
    // Not a byte left: even the distribution's record cannot be written.
    let filler = fill(&state, 0);

    let push = cluster.push(&["app:1"], &[]);
    let state_shown = state.display().to_string();
    let parts = [
        "not enough disk space for chunks in the state directory",
        &state_shown,
        "0 B free",
        "needs about",
        "free space there",
    ];
    n1_failed_cleanly(&mut cluster, &push, &parts);

    free_and_push_again(&cluster, &filler, &image.id);
}
