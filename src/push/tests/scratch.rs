//! Tests of scratch directories: which stale ones go.

use super::*;

#[test]
fn stale_scratch_of_a_dead_process_goes_and_a_live_one_stays() {
    let parent = tempfile::tempdir().unwrap();
    // PIDs above the kernel's limit (2^22) never run.
    let dead = parent.path().join(format!("{BUNDLE_PREFIX}-{}", 1 << 23));
    fs::create_dir_all(dead.join("chunks/ab")).unwrap();
    fs::write(dead.join("chunks/ab/x"), b"data").unwrap();
    // PID 1 runs (init), whatever its lock says.
    let live = parent.path().join(format!("{BUNDLE_PREFIX}-1"));
    fs::create_dir_all(&live).unwrap();
    // A dead PID whose lock is held: another PID namespace's process.
    let held = parent.path().join(format!("{BUNDLE_PREFIX}-{}", (1 << 23) + 1));
    let _lock = DirLock::acquire(&held).unwrap();
    // A symbolic link with a dead PID: not ours to follow or remove.
    let target = parent.path().join("target");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("keep"), b"keep").unwrap();
    let link = parent.path().join(format!("{BUNDLE_PREFIX}-{}", (1 << 23) + 2));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let other = parent.path().join(format!("{SEED_PREFIX}-{}", 1 << 23));
    fs::create_dir_all(&other).unwrap();

    let scratch = Scratch::create(parent.path(), BUNDLE_PREFIX).unwrap();
    assert!(!dead.exists(), "a dead process's scratch is removed");
    assert!(live.exists() && held.exists() && other.exists());
    assert!(link.exists() && target.join("keep").exists());
    let own = parent
        .path()
        .join(format!("{BUNDLE_PREFIX}-{}", std::process::id()));
    assert!(own.join("chunks").is_dir());
    drop(scratch);
    assert!(!own.exists(), "removed when dropped");
}
