//! What `p2pimg push` shows people, through the built binary against a real
//! 2-node cluster: plain lines and the final table when stdout is not a
//! terminal; the live fleet view, cleared and followed by the same table,
//! when asked for (`--progress live`) or on a pseudo-terminal (`script`).

use std::process::{Command, Stdio};

use crate::common::bin;
use crate::common::cluster::PUSH_TIMEOUT_SECS;
use crate::common::{build_test_image, run_with_timeout, Cluster};

/// Runs a push command; returns (exit code, stdout, stderr).
fn run(mut cmd: Command) -> (i32, String, String) {
    let out = run_with_timeout(cmd.stdin(Stdio::null()), PUSH_TIMEOUT_SECS);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Checks that `lines` are the final table of a push to n1 and n2 in
/// which both loaded the image.
fn assert_table(lines: &[&str], all: &str) {
    assert_eq!(lines.len(), 4, "not a table of 2 nodes:\n{all}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NODE", "ADDRESS", "FROM", "SEED", "FROM", "PEERS", "RESULT"],
        "{all}"
    );
    for (line, node) in lines[1..3].iter().zip(["n1", "n2"]) {
        assert!(
            line.starts_with(&format!("{node}    127.0.0.1:")),
            "{line}\n{all}"
        );
        assert!(line.ends_with("  loaded"), "{line}\n{all}");
    }
    assert!(lines[3].starts_with("seed uploaded "), "{all}");
}

/// The text after the last terminal control sequence: what was printed
/// once the live view was cleared.
fn after_the_view(stdout: &str) -> &str {
    let esc = stdout
        .rfind('\x1b')
        .unwrap_or_else(|| panic!("no live view drawn:\n{stdout:?}"));
    let rest = &stdout[esc..];
    // A CSI sequence: ESC [ parameters, then one final letter.
    let end = rest
        .char_indices()
        .skip(2)
        .find(|(_, c)| c.is_ascii_alphabetic())
        .map_or(rest.len(), |(i, _)| i + 1);
    rest[end..].trim_start_matches('\r')
}

#[test]
fn push_shows_plain_lines_off_a_terminal_and_the_live_view_on_one() {
    let cluster = Cluster::start(bin(), 2);

    // stdout is a pipe: one plain line per event, then the table; no escape codes.
    build_test_image(&cluster.seed, "plain:1");
    let (code, stdout, stderr) = run(cluster.push_command(&["plain:1"], &[]));
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", cluster.logs());
    assert!(
        !stdout.contains('\x1b'),
        "escape codes in plain output:\n{stdout:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let (events, table) = lines.split_at(lines.len().saturating_sub(4));
    assert_table(table, &stdout);
    assert!(events[0].starts_with("exported 1 image(s): "), "{stdout}");
    for line in &events[1..] {
        assert!(
            line.starts_with("n1: ") || line.starts_with("n2: "),
            "{line}\n{stdout}"
        );
    }
    for node in ["n1", "n2"] {
        let said = |what: &str| events.iter().any(|l| l.starts_with(&format!("{node}: {what}")));
        assert!(said("fetching ") && said("loaded"), "{node}:\n{stdout}");
    }

    // Forced live on a pipe: the view is drawn with control sequences, then
    // cleared, and the same table follows with nothing else after the view.
    build_test_image(&cluster.seed, "live:1");
    let (code, stdout, stderr) = run(cluster.push_command(&["live:1"], &["--progress", "live"]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("total ") && stdout.contains("n2 "), "{stdout:?}");
    let rest: Vec<&str> = after_the_view(&stdout).lines().collect();
    assert_table(&rest, &stdout);
    assert!(
        !stdout.contains("n1: fetching"),
        "plain lines in the live view:\n{stdout:?}"
    );

    // `--progress` and `--json` are two answers to one question.
    let (code, _, stderr) = run(cluster.push_command(&["live:1"], &["--progress", "live", "--json"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--json"), "{stderr}");

    // A real pseudo-terminal with the default `--progress auto`: the view is
    // chosen by itself. util-linux `script` provides the terminal; without it this
    // check fails rather than passing untested (scripts/test.sh installs it).
    if let Err(e) = Command::new("script").arg("--version").output() {
        panic!("cannot run `script` (util-linux; Debian's bsdutils) for the pseudo-terminal check: {e}");
    }
    build_test_image(&cluster.seed, "tty:1");
    let push = cluster.push_command(&["tty:1"], &[]);
    let line: Vec<String> = std::iter::once(push.get_program())
        .chain(push.get_args())
        .map(|a| format!("'{}'", a.to_str().unwrap().replace('\'', r"'\''")))
        .collect();
    let mut script = Command::new("script");
    script
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("TERM", "xterm");
    let (code, out, stderr) = run(script);
    assert_eq!(code, 0, "{out}\n{stderr}");
    assert!(out.contains("total ") && out.contains("\x1b["), "{out:?}");
    // The terminal turns each newline into CR LF.
    let rest = after_the_view(&out).replace("\r\n", "\n");
    let rest: Vec<&str> = rest.lines().collect();
    assert_table(&rest, &out);
}
