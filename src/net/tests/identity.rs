//! Tests of `identity`.

use super::*;

fn cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_cluster(dir.path()).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_ca_and_pusher_with_modes() {
    let dir = tempfile::tempdir().unwrap();
    let report = init_cluster(&dir.path().join("new")).unwrap();
    let names: Vec<_> = report.files.iter().map(|p| p.file_name().unwrap()).collect();
    assert_eq!(names, ["ca.crt", "ca.key", "pusher.crt", "pusher.key"]);
    assert_eq!(mode(&report.files[1]), 0o600);
    assert_eq!(mode(&report.files[3]), 0o600);
    assert_eq!(mode(&report.files[0]) & 0o600, 0o600);
    let pusher = Identity::load_from_dir(&dir.path().join("new"), "pusher").unwrap();
    assert_eq!((pusher.name.as_str(), pusher.role), ("pusher", Role::Pusher));
}

#[test]
fn init_refuses_existing_cluster() {
    let dir = cluster();
    let err = init_cluster(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::AlreadyInitialized { .. }), "{err}");
}

#[test]
fn issued_leaf_loads_with_name_role_and_san() {
    let dir = cluster();
    let files = issue(dir.path(), "n1", Role::Node, 30).unwrap();
    assert_eq!(mode(&files.key), 0o600);
    let id = Identity::load_from_dir(dir.path(), "n1").unwrap();
    assert_eq!((id.name.as_str(), id.role), ("n1", Role::Node));
    let chain = id.cert_chain();
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(format!("{:?}", san.value.general_names), r#"[DNSName("p2pimg")]"#);
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / SECS_PER_DAY as i64;
    assert_eq!(days, 30);
}

#[test]
fn issue_refuses_overwrite_and_bad_names() {
    let dir = cluster();
    issue(dir.path(), "n1", Role::Node, 1).unwrap();
    let err = issue(dir.path(), "n1", Role::Node, 1).unwrap_err();
    assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
    for bad in ["", ".n", "-n", "a/b", "n 1", &"x".repeat(64)] {
        let err = issue(dir.path(), bad, Role::Node, 1).unwrap_err();
        assert!(matches!(err, IdentityError::InvalidName { .. }), "{bad}: {err}");
    }
    issue(dir.path(), &"x".repeat(63), Role::Node, 1).unwrap();
    issue(dir.path(), "A.b_c-9", Role::Pusher, 1).unwrap();
}

/// Issue #21: `--days 3000000` panicked inside the certificate library.
#[test]
fn issue_bounds_the_validity() {
    let dir = cluster();
    for days in [0, MAX_VALID_DAYS + 1, 3_000_000, u32::MAX] {
        let err = issue(dir.path(), "n1", Role::Node, days).unwrap_err();
        assert!(matches!(err, IdentityError::BadValidity { .. }), "{days}: {err}");
        assert!(err.to_string().contains("1 to 36500 days"), "{err}");
    }
    issue(dir.path(), "n1", Role::Node, MAX_VALID_DAYS).unwrap();
    Identity::load_from_dir(dir.path(), "n1").unwrap();
}

/// Issue #21: a CA key readable by others was used without a word, and a
/// missing one was blamed on ca.crt.
#[test]
fn issue_holds_the_ca_key_to_the_key_rule() {
    let dir = cluster();
    let ca_key = dir.path().join("ca.key");
    fs::set_permissions(&ca_key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = issue(dir.path(), "n1", Role::Node, 1).unwrap_err().to_string();
    assert!(err.contains(&format!("chmod 600 {}", ca_key.display())), "{err}");
    assert!(!dir.path().join("n1.key").exists());
    fs::remove_file(&ca_key).unwrap();
    let err = issue(dir.path(), "n1", Role::Node, 1).unwrap_err().to_string();
    assert!(err.contains("ca.key") && !err.contains("ca.crt"), "{err}");
}

#[test]
fn load_refuses_group_readable_key() {
    let dir = cluster();
    let files = issue(dir.path(), "n1", Role::Node, 1).unwrap();
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o640)).unwrap();
    let err = Identity::load_from_dir(dir.path(), "n1").unwrap_err().to_string();
    assert!(
        err.contains(&format!("chmod 600 {}", files.key.display())),
        "{err}"
    );
}

#[test]
fn load_missing_cert_names_file_and_fix() {
    let dir = cluster();
    let err = Identity::load_from_dir(dir.path(), "n9").unwrap_err().to_string();
    assert!(err.starts_with("cannot read certificate "), "{err}");
    assert!(
        err.contains("n9.crt") && err.contains("p2pimg cert issue n9"),
        "{err}"
    );
}

#[test]
fn load_refuses_cert_from_other_ca_and_swapped_key() {
    let (a, b) = (cluster(), cluster());
    let pusher = IssuedFiles::in_dir(a.path(), "pusher");
    let err = Identity::load(&b.path().join("ca.crt"), &pusher.cert, &pusher.key);
    assert!(matches!(err, Err(IdentityError::NotIssuedByCa { .. })), "{err:?}");
    let n1 = issue(a.path(), "n1", Role::Node, 1).unwrap();
    let err = Identity::load(&a.path().join("ca.crt"), &n1.cert, &pusher.key);
    assert!(matches!(err, Err(IdentityError::KeyMismatch { .. })), "{err:?}");
}

#[test]
fn errors_and_debug_never_show_key_material() {
    let dir = cluster();
    let files = IssuedFiles::in_dir(dir.path(), "pusher");
    let key_pem = fs::read_to_string(&files.key).unwrap();
    let body = key_pem.lines().nth(1).unwrap();
    let id = Identity::load_from_dir(dir.path(), "pusher").unwrap();
    assert!(!format!("{id:?}").contains(body));
    fs::write(&files.cert, &key_pem).unwrap();
    let err = Identity::load_from_dir(dir.path(), "pusher").unwrap_err();
    assert!(!err.to_string().contains(body), "{err}");
}

#[test]
fn role_round_trips() {
    for role in [Role::Node, Role::Pusher] {
        assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        assert_eq!(Role::from_unit(role.unit()), Some(role));
    }
    assert!("admin".parse::<Role>().is_err());
}
