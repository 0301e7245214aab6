//! The reference grammar, on the cases of distribution/reference's own tests
//! (`reference_test.go` `TestReferenceParse`, `normalize_test.go`
//! `TestValidateReferenceName` and `TestValidateRemoteName`), and the
//! mistakes users made (issue #21).

use super::*;

const FFF: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// (input, tag, digest) of the references `TestReferenceParse` accepts.
fn accepted() -> Vec<(String, Option<&'static str>, bool)> {
    let d = |s: &str| s.replace("FFF", FFF);
    vec![
        ("test_com".into(), None, false),
        ("test.com:tag".into(), Some("tag"), false),
        ("test.com:5000".into(), Some("5000"), false),
        ("test.com/repo:tag".into(), Some("tag"), false),
        ("test:5000/repo".into(), None, false),
        ("test:5000/repo:tag".into(), Some("tag"), false),
        (d("test:5000/repo@sha256:FFF"), None, true),
        (d("test:5000/repo:tag@sha256:FFF"), Some("tag"), true),
        ("lowercase:Uppercase".into(), Some("Uppercase"), false),
        (
            format!("{}a:tag-puts-this-over-max", "a/".repeat(127)),
            Some("tag-puts-this-over-max"),
            false,
        ),
        ("sub-dom1.foo.com/bar/baz/quux".into(), None, false),
        (
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            Some("some-long-tag"),
            false,
        ),
        (
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            Some("test.example.com"),
            false,
        ),
        (
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            Some("xn--n3h.com"),
            false,
        ),
        (
            d("xn--7o8h.com/myimage:xn--7o8h.com@sha256:FFF"),
            Some("xn--7o8h.com"),
            true,
        ),
        ("foo_bar.com:8080".into(), Some("8080"), false),
        ("foo/foo_bar.com:8080".into(), Some("8080"), false),
        ("192.168.1.1".into(), None, false),
        ("192.168.1.1:tag".into(), Some("tag"), false),
        ("192.168.1.1:5000".into(), Some("5000"), false),
        ("192.168.1.1/repo".into(), None, false),
        ("192.168.1.1:5000/repo".into(), None, false),
        ("192.168.1.1:5000/repo:5050".into(), Some("5050"), false),
        ("[2001:db8::1]/repo".into(), None, false),
        ("[2001:db8:1:2:3:4:5:6]/repo:tag".into(), Some("tag"), false),
        ("[2001:db8::1]:5000/repo".into(), None, false),
        ("[2001:db8::1]:5000/repo:tag".into(), Some("tag"), false),
        (d("[2001:db8::1]:5000/repo@sha256:FFF"), None, true),
        (d("[2001:db8::1]:5000/repo:tag@sha256:FFF"), Some("tag"), true),
        ("[2001:db8::]:5000/repo".into(), None, false),
        ("[::1]:5000/repo".into(), None, false),
        (format!("example.com/{}:tag", "a".repeat(255)), Some("tag"), false),
    ]
}

#[test]
fn accepts_what_distribution_reference_accepts() {
    for (input, tag, digested) in accepted() {
        let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.tag(), tag, "{input}");
        assert_eq!(r.digest().is_some(), digested, "{input}");
    }
}

#[test]
fn refuses_what_distribution_reference_refuses() {
    let cases = [
        ("", Problem::Empty),
        (":justtag", Problem::Format),
        ("@sha256:FFF", Problem::Format),
        (
            "repo@sha256:ffffffffffffffffffffffffffffffffff",
            Problem::BadDigest,
        ),
        ("validname@invaliddigest:FFF", Problem::BadDigest),
        ("Uppercase:tag", Problem::Uppercase),
        ("test:5000/Uppercase/lowercase:tag", Problem::Uppercase),
        ("aa/asdf$$^/aa", Problem::Format),
        ("[2001:db8::1]", Problem::Format),
        ("[2001:db8::1]:5000", Problem::Format),
        ("[2001:db8::1]:tag", Problem::Format),
        ("[fe80::1%eth0]:5000/repo", Problem::Format),
        ("[fe80::1%@invalidzone]:5000/repo", Problem::BadDigest),
    ];
    for (input, problem) in cases {
        let input = input.replace("FFF", FFF);
        let err = Reference::parse(&input).expect_err(&input);
        assert_eq!(err.problem, problem, "{input}");
    }
    let long = format!("domain/{}:tag", "a".repeat(256));
    assert_eq!(Reference::parse(&long).unwrap_err().problem, Problem::TooLong);
}

#[test]
fn repository_names_as_normalize_test_has_them() {
    let valid = [
        "docker/docker",
        "library/debian",
        "debian",
        "localhost/library/debian",
        "localhost/debian",
        "LOCALDOMAIN/library/debian",
        "LOCALDOMAIN/debian",
        "docker.io/docker/docker",
        "docker.io/library/debian",
        "docker.io/debian",
        "index.docker.io/docker/docker",
        "127.0.0.1:5000/docker/docker",
        "192.168.0.1",
        "192.168.0.1:80",
        "192.168.0.1:8/debian",
        "[fc00::1]:5000/docker",
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "Docker/docker",
        "DOCKER/docker",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker-rules/docker",
        "docker---rules/docker",
        "d/docker",
        "jess/t",
        "dock__er/docker",
    ];
    for name in valid {
        Reference::parse_tag(name).unwrap_or_else(|e| panic!("{e}"));
    }
    let invalid = [
        "https://github.com/docker/docker",
        "docker/Docker",
        "-docker",
        "-docker/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker/Docker",
        "docker.io/docker///docker",
        "[fc00::1]",
        "[fc00::1]:5000",
        "fc00::1:5000/debian",
        "[fe80::1%eth0]:5000/debian",
        "[2001:db8:3:4::192.0.2.33]:5000/debian",
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "docker-/docker",
        "-docker-/docker",
        "____/____",
        "_docker/_docker",
        "dock..er/docker",
        "dock_.er/docker",
        "dock-.er/docker",
        "docker/",
        &format!("{}/docker", "this_is_not_a_valid_namespace".repeat(9)),
    ];
    for name in invalid {
        assert!(Reference::parse_tag(name).is_err(), "{name} accepted");
    }
}

#[test]
fn mistakes_from_issue_21_name_the_problem() {
    let cases = [
        (
            "app:1:2",
            Problem::ColonInTag,
            "app:1:2: a tag may not contain ':'",
        ),
        (
            "App:1",
            Problem::Uppercase,
            "App:1: repository names must be lowercase",
        ),
        ("app:", Problem::BadTag, "app:: a tag is"),
        (
            "app:bad/tag",
            Problem::Format,
            "app:bad/tag: not a valid image reference",
        ),
        ("app:.x", Problem::BadTag, "app:.x: a tag is"),
        ("", Problem::Empty, "an image reference may not be empty"),
        ("a\nb", Problem::Format, "\"a\\nb\": not a valid"),
    ];
    for (input, problem, shown) in cases {
        let err = Reference::parse_tag(input).unwrap_err();
        assert_eq!(err.problem, problem, "{input}");
        assert!(err.to_string().starts_with(shown), "{err}");
    }
    let long = format!("app:{}", "t".repeat(MAX_TAG_LEN + 1));
    assert_eq!(Reference::parse_tag(&long).unwrap_err().problem, Problem::BadTag);
    let ok = format!("app:{}", "t".repeat(MAX_TAG_LEN));
    Reference::parse_tag(&ok).unwrap();
    // A short name gains `library/`: 250 characters are too long on Docker Hub.
    let hub = "a".repeat(250);
    assert_eq!(Reference::parse(&hub).unwrap_err().problem, Problem::TooLong);
    let digested = format!("app@sha256:{FFF}");
    Reference::parse(&digested).unwrap();
    assert_eq!(
        Reference::parse_tag(&digested).unwrap_err().problem,
        Problem::Digest
    );
}

#[test]
fn images_may_be_named_by_id() {
    check_image(FFF).unwrap();
    check_image(&format!("sha256:{FFF}")).unwrap();
    check_image("ffff12").unwrap();
    check_image("app:1.4").unwrap();
    assert_eq!(check_image("").unwrap_err().problem, Problem::Empty);
    assert_eq!(check_image("app:1:2").unwrap_err().problem, Problem::ColonInTag);
}

#[test]
fn canonical_form_fills_in_docker_hub() {
    let same = [
        "app",
        "app:latest",
        "docker.io/app",
        "docker.io/library/app:latest",
        "index.docker.io/library/app",
    ];
    for r in same {
        assert_eq!(
            Reference::parse(r).unwrap().canonical(),
            "docker.io/library/app:latest",
            "{r}"
        );
    }
    let r = Reference::parse("registry:5000/team/app:1").unwrap();
    assert_eq!(r.canonical(), "registry:5000/team/app:1");
    assert_eq!(
        Reference::parse("team/app").unwrap().canonical(),
        "docker.io/team/app:latest"
    );
}
