//! Tests of `--node` patterns: the grammar, matching, padding, and the lines that
//! explain a pattern matching nothing.

use super::*;

/// The names of `inventory` that the `--node` values `args` pick, or the error line.
fn pick(args: &[&str], inventory: &[&str]) -> Result<Vec<String>, String> {
    let patterns = NodePatterns::parse(args).map_err(|e| e.to_string())?;
    let flags = patterns.matches(inventory).map_err(|e| e.to_string())?;
    let names = inventory.iter().zip(flags).filter(|(_, f)| *f);
    Ok(names.map(|(n, _)| n.to_string()).collect())
}

/// `worker-01` … `worker-20`.
fn workers() -> Vec<String> {
    (1..=20).map(|i| format!("worker-{i:02}")).collect()
}

fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

const FLEET: &[&str] = &["web1", "web2", "web3", "db1", "db2", "cache"];

#[test]
fn ranges_lists_and_plain_names_match() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["web[1-3]"], &["web1", "web2", "web3"]),
        (&["web[1-3],db1"], &["web1", "web2", "web3", "db1"]),
        (&["web[1,3]"], &["web1", "web3"]),
        (&["web[1-2,3]"], &["web1", "web2", "web3"]),
        (&["db1", "web2"], &["web2", "db1"]),
        (&["cache"], &["cache"]),
        (&["web[1-3]", "web2"], &["web1", "web2", "web3"]),
        (&[" web1 , db2 "], &["web1", "db2"]),
        (&["web[2]"], &["web2"]),
        (&["web[0-9]"], &["web1", "web2", "web3"]),
        (&["web[1-1000000000000]"], &["web1", "web2", "web3"]),
    ];
    for (args, want) in cases {
        assert_eq!(pick(args, FLEET).unwrap(), *want, "{args:?}");
    }
}

#[test]
fn zero_padding_keeps_its_width() {
    let workers = workers();
    let fleet = refs(&workers);
    let all = pick(&["worker-[01-20]"], &fleet).unwrap();
    assert_eq!(all, workers);
    assert_eq!(
        pick(&["worker-[08-11]"], &fleet).unwrap(),
        ["worker-08", "worker-09", "worker-10", "worker-11"]
    );
    // Unpadded numbers are not the padded names.
    let err = pick(&["worker-[1-3]"], &fleet).unwrap_err();
    assert!(
        err.ends_with("(it has worker-[01-03])"),
        "the near miss is shown: {err}"
    );
    // Padding past the numbers' own width: 001 … 005 and 100 in one range.
    let mixed = ["n001", "n005", "n099", "n100", "n1000"];
    assert_eq!(
        pick(&["n[001-100]"], &mixed).unwrap(),
        ["n001", "n005", "n099", "n100"]
    );
    assert_eq!(pick(&["n[001-5]"], &mixed).unwrap(), ["n001", "n005"]);
    assert_eq!(pick(&["n[1000]"], &mixed).unwrap(), ["n1000"]);
    assert!(pick(&["n[1]"], &mixed).is_err(), "n1 is not n001");
}

#[test]
fn several_brackets_multiply() {
    let names = ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2", "rack3-n1"];
    assert_eq!(
        pick(&["rack[1-2]-n[1-2]"], &names).unwrap(),
        ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    );
    assert_eq!(
        pick(&["rack[1-3]-n1"], &names).unwrap(),
        ["rack1-n1", "rack2-n1", "rack3-n1"]
    );
    assert_eq!(
        pick(&["rack[2-3]-n[1]"], &names).unwrap(),
        ["rack2-n1", "rack3-n1"]
    );
    // Adjacent brackets and digits around them: the split is searched for.
    let grid = ["n10", "n20", "n30", "n12"];
    assert_eq!(pick(&["n[1-3]0"], &grid).unwrap(), ["n10", "n20", "n30"]);
    assert_eq!(pick(&["n[1][0-2]"], &grid).unwrap(), ["n10", "n12"]);
    assert_eq!(pick(&["n[1-2][0]"], &grid).unwrap(), ["n10", "n20"]);
}

#[test]
fn a_pattern_matching_nothing_is_named() {
    let err = pick(&["web[7-9]"], FLEET).unwrap_err();
    assert_eq!(
        err,
        "--node `web[7-9]` matches no node of the inventory (it has web[1-3])"
    );
    let err = pick(&["web9"], FLEET).unwrap_err();
    assert_eq!(
        err,
        "--node `web9` matches no node of the inventory (it has web[1-3])"
    );
    let err = pick(&["mail[1-3]"], FLEET).unwrap_err();
    assert_eq!(err, "--node `mail[1-3]` matches no node of the inventory");
    // Case and small typos are near misses too.
    let err = pick(&["Cache"], FLEET).unwrap_err();
    assert!(err.ends_with("(it has cache)"), "{err}");
    let err = pick(&["cahce"], FLEET).unwrap_err();
    assert!(err.ends_with("(it has cache)"), "{err}");
    // The second of two patterns, and the second of two --node values.
    let err = pick(&["web1,db[3-4]"], FLEET).unwrap_err();
    assert!(err.starts_with("--node `db[3-4]` matches no node"), "{err}");
    assert!(err.ends_with("(it has db[1-2])"), "{err}");
    let err = pick(&["web1", "dc1"], FLEET).unwrap_err();
    assert!(err.starts_with("--node `dc1` matches no node"), "{err}");
    assert!(err.ends_with("(it has db1)"), "{err}");
}

#[test]
fn a_range_inside_a_bracket_matching_nothing_is_named() {
    let err = pick(&["web[1-3,7]"], FLEET).unwrap_err();
    assert_eq!(
        err,
        "--node `web[1-3,7]`: `web7` matches no node of the inventory (it has web[1-3])"
    );
    let err = pick(&["web[1,20-29]"], FLEET).unwrap_err();
    assert!(err.contains(": `web[20-29]` matches no node"), "{err}");
    let names = ["rack1-n1", "rack2-n1"];
    let err = pick(&["rack[1-2,3]-n[1]"], &names).unwrap_err();
    assert!(err.contains(": `rack3-n1` matches no node"), "{err}");
    let err = pick(&["rack[1-2]-n[1-2,5]"], &names).unwrap_err();
    assert!(err.contains(": `rack[1-2]-n5` matches no node"), "{err}");
    // A range of which some numbers exist is fine: it expands against the inventory.
    assert_eq!(pick(&["web[2-50]"], FLEET).unwrap(), ["web2", "web3"]);
}

#[test]
fn malformed_patterns_say_what_is_wrong() {
    let cases = [
        ("web[3-1]", "the range `3-1` runs backwards (write `1-3`)"),
        ("web[", "`[` is never closed by a `]`"),
        ("web[1-3", "`[` is never closed"),
        ("web]", "`]` without a `[` before it"),
        ("web1]", "`]` without a `[`"),
        (
            "web[a-b]",
            "`a-b` in `[a-b]` is not a number or a range of numbers",
        ),
        ("web[1-b]", "`1-b` in `[1-b]` is not a number"),
        ("web[1-]", "`1-` in `[1-]` is not a number"),
        ("web[-3]", "`-3` in `[-3]` is not a number"),
        ("web[1-2-3]", "`1-2-3` in `[1-2-3]` is not a number"),
        ("web[]", "`[]` is empty"),
        ("web[ ]", "`[]` is empty"),
        ("web[1,,2]", "an empty item in `[1,,2]`"),
        ("web[[1]]", "brackets cannot nest"),
        ("web[1-05]", "padded to different widths"),
        ("web[01-005]", "padded to different widths"),
        ("web[1234567890123456789]", "is not a number"),
        ("web*", "`*` cannot be in a node name"),
        ("web?", "`?` cannot be in a node name"),
        ("web1 db1", "a space inside `web1 db1`"),
        ("", "an empty name"),
        ("web1,", "an empty name"),
        (",web1", "an empty name"),
        ("web1,,db1", "an empty name"),
    ];
    for (arg, reason) in cases {
        let err = NodePatterns::parse(&[arg]).unwrap_err();
        assert!(
            matches!(&err, PatternError::Malformed { arg: a, .. } if a == arg),
            "{arg:?}: {err:?}"
        );
        let line = err.to_string();
        assert!(line.starts_with(&format!("--node `{arg}`: ")), "{line}");
        assert!(line.contains(reason), "{arg:?}: {reason:?} missing from {line:?}");
    }
}

#[test]
fn well_formed_edge_cases_parse() {
    for arg in [
        "n[0]",
        "n[0-0]",
        "n[00-10]",
        "n[1-10,12,14-15]",
        "[1-3]",
        "[1-3]x",
        "a.b_c-d[1]",
        "n[ 1 - 3 ]",
    ] {
        let parsed = NodePatterns::parse(&[arg]);
        if arg == "n[ 1 - 3 ]" {
            assert!(parsed.is_err(), "spaces inside a range are not numbers");
        } else {
            assert!(parsed.is_ok(), "{arg}: {parsed:?}");
        }
    }
    assert!(NodePatterns::parse::<&str>(&[]).unwrap().is_empty());
    assert_eq!(pick(&["[1-3]x"], &["1x", "2x", "x"]).unwrap(), ["1x", "2x"]);
    assert_eq!(pick(&["n[1, 3]"], &["n1", "n2", "n3"]).unwrap(), ["n1", "n3"]);
}

#[test]
fn fold_writes_names_as_patterns() {
    let workers = workers();
    assert_eq!(fold(&refs(&workers)), "worker-[01-20]");
    assert_eq!(fold(FLEET), "web[1-3],db[1-2],cache");
    assert_eq!(fold(&["n1", "n2", "n4", "n9", "n10", "n11"]), "n[1-2,4,9-11]");
    assert_eq!(fold(&["n09", "n10", "n1"]), "n[1,09-10]");
    assert_eq!(fold(&["rack1-a", "rack2-a", "rack1-b"]), "rack[1-2]-a,rack1-b");
    assert_eq!(fold(&["web", "web1"]), "web,web1");
    assert_eq!(fold(&[]), "");
    let many: Vec<String> = (0..10).map(|i| format!("{}x", (b'a' + i) as char)).collect();
    assert_eq!(fold(&refs(&many)), "ax,bx,cx,dx,ex,fx,…");
    // What fold writes, parsed as a pattern, picks the same names back.
    for names in [refs(&workers), FLEET.to_vec(), vec!["n09", "n10", "n1", "n7"]] {
        let folded = fold(&names);
        let mut back = pick(&[&folded], &names).unwrap();
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        back.sort();
        want.sort();
        assert_eq!(back, want, "{folded}");
    }
}
