//! Tests of the state-directory lock.

use super::*;

#[test]
fn a_second_holder_is_refused_with_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = DirLock::acquire(&state).unwrap();
    // flock locks belong to the open file, so a second open in this
    // process conflicts just as another process would.
    match DirLock::acquire(&state) {
        Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("expected Held, got {other:?}"),
    }
    drop(first);
    DirLock::acquire(&state).expect("free again once dropped");
}

#[test]
fn a_lock_file_left_behind_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
    DirLock::acquire(dir.path()).expect("a stale lock file is not a lock");
    let pid = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());
}
