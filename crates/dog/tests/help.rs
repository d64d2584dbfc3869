//! Runs the built `dog` for every `dog` invocation captured from the
//! original in `spec/original-help.txt` and compares stdout, stderr and
//! the exit status byte for byte (the version string is masked).
//!
//! Invocations that talk to a daemon expect nothing to listen on
//! 127.0.0.1:7000 (the capture was made that way); they are skipped when
//! something does. Invocations that reach a subcommand dog does not
//! implement yet (it says so on stderr) are skipped too, so each one is
//! checked as soon as it is implemented.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

struct Case {
    args: Vec<String>,
    rc: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn capture_file() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A copy of the spec's captures, so a clone of the repository alone
    // runs this test.
    manifest.join("tests/data/original-help.txt")
}

/// Parses blocks `===== <args> [rc=N] (stdout XB, stderr YB)\n` followed
/// by X bytes of stdout, Y bytes of stderr and a newline.
fn parse_captures(data: &[u8]) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut pos = 0;
    let marker = b"===== ";
    while let Some(off) = find(&data[pos..], marker) {
        let start = pos + off + marker.len();
        let eol = start + find(&data[start..], b"\n").expect("header line");
        let header = std::str::from_utf8(&data[start..eol]).unwrap();
        let (inv, rest) = header.split_once(" [rc=").unwrap();
        let (rc, rest) = rest.split_once("] (stdout ").unwrap();
        let (out_len, rest) = rest.split_once("B, stderr ").unwrap();
        let err_len = rest.strip_suffix("B)").unwrap();
        let (out_len, err_len): (usize, usize) =
            (out_len.parse().unwrap(), err_len.parse().unwrap());
        let body = eol + 1;
        let stdout = data[body..body + out_len].to_vec();
        let stderr = data[body + out_len..body + out_len + err_len].to_vec();
        pos = body + out_len + err_len;
        cases.push(Case {
            args: inv.split(' ').map(String::from).collect(),
            rc: rc.parse().unwrap(),
            stdout,
            stderr,
        });
    }
    cases
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Replaces the version in the main usage's first line.
fn mask_version(b: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(b).into_owned();
    match (s.find("(version "), s.find(")\n")) {
        (Some(a), Some(z)) if a < z => format!("{}(version V{}", &s[..a], &s[z..]).into_bytes(),
        _ => b.to_vec(),
    }
}

/// Runs dog with `argv[0]` = `dog`, as the captures were made.
fn run_dog(args: &[String]) -> (i32, Vec<u8>, Vec<u8>) {
    use std::os::unix::process::CommandExt;
    let out = Command::new(env!("CARGO_BIN_EXE_dog"))
        .arg0("dog")
        .args(args)
        .env_remove("SHEEPDOG_DOG_ADDR")
        .env_remove("SHEEPDOG_DOG_PORT")
        .env_remove("SHEEPDOG_DOG_LOG")
        .env_remove("POSIXLY_CORRECT")
        .stdin(Stdio::null())
        .output()
        .expect("run dog");
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

fn port_7000_refuses() -> bool {
    match std::net::TcpStream::connect("127.0.0.1:7000") {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(mut s) => {
            let _ = s.read(&mut [0u8; 0]);
            false
        }
    }
}

#[test]
fn captured_help_texts_match() {
    let data = std::fs::read(capture_file()).expect("spec/original-help.txt");
    let cases: Vec<Case> = parse_captures(&data)
        .into_iter()
        .filter(|c| c.args[0] == "dog")
        .collect();
    assert!(cases.len() > 100, "parsed {} dog cases", cases.len());
    let offline = port_7000_refuses();
    let (mut checked, mut failures) = (0, Vec::new());
    for c in &cases {
        let inv = c.args.join(" ");
        let needs_daemon = find(&c.stderr, b"Connection refused").is_some();
        if needs_daemon && !offline {
            continue;
        }
        let (rc, out, err) = run_dog(&c.args[1..]);
        if err.ends_with(b" is not supported yet\n") {
            continue;
        }
        checked += 1;
        if rc != c.rc || mask_version(&out) != mask_version(&c.stdout) || err != c.stderr {
            failures.push(format!(
                "{inv}: rc {rc} (want {})\n--- stdout\n{}--- want\n{}--- stderr\n{}--- want\n{}",
                c.rc,
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&c.stdout),
                String::from_utf8_lossy(&err),
                String::from_utf8_lossy(&c.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 90, "only {checked} cases checked");
    eprintln!("{checked} captured invocations compared (daemon-less ones: {offline})");
}

#[test]
fn getopt_errors_use_argv0_and_exit_64() {
    let cases: &[(&[&str], &str)] = &[
        (&["node", "list", "-v"], "dog: invalid option -- 'v'\n"),
        (
            &["vdi", "list", "-s", "1", "x"],
            "dog: invalid option -- 's'\n",
        ),
        (
            &["vdi", "create", "x", "-1"],
            "dog: invalid option -- '1'\n",
        ),
        (
            &["node", "list", "-p"],
            "dog: option requires an argument -- 'p'\n",
        ),
        (
            &["node", "list", "--foo"],
            "dog: unrecognized option '--foo'\n",
        ),
        (
            &["node", "list", "--raw=1"],
            "dog: option '--raw' doesn't allow an argument\n",
        ),
        (
            &["vdi", "create", "--p", "x"],
            "dog: option '--p' is ambiguous; possibilities: '--prealloc' '--port'\n",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (rc, out, err) = run_dog(&args);
        assert_eq!(rc, 64, "{args:?}");
        assert!(out.is_empty(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&err),
            format!("{want}Try 'dog --help' for more information.\n"),
            "{args:?}"
        );
    }
}

#[test]
fn usage_errors_and_option_values() {
    let run = |a: &[&str]| run_dog(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let (rc, _, err) = run(&["-p", "7000", "vdi", "list"]);
    assert_eq!(
        (rc, err.as_slice()),
        (
            64,
            &b"Invalid command '-p'\nTry 'dog --help' for more information.\n"[..]
        )
    );
    let (rc, _, err) = run(&["vdi", "-p", "7000", "list"]);
    assert_eq!(rc, 64);
    assert!(err.starts_with(b"Invalid command 'vdi -p'\nAvailable vdi commands:\n"));
    let (rc, _, err) = run(&["node", "list", "-p", "70000"]);
    assert_eq!(
        (rc, err.as_slice()),
        (64, &b"Invalid port number '70000'\n"[..])
    );
    let (rc, _, err) = run(&["vdi", "create", "-c", "3:1", "x", "1G"]);
    assert_eq!(rc, 1);
    assert!(err.starts_with(b"Invalid parameter 3:1\nTo create replicated vdi, set -c x\n"));
    let (rc, _, err) = run(&["vdi", "create", "-y", "-z", "22", "x", "1G"]);
    assert_eq!(
        (rc, err.as_slice()),
        (1, &b"Don't specify both -y and -z options, please\n"[..])
    );
    let (rc, _, err) = run(&["vdi", "delete", "-s", "0", "x"]);
    assert_eq!(
        (rc, err.as_slice()),
        (1, &b"The snapshot id must be larger than zero\n"[..])
    );
    let (rc, out, _) = run(&["vdi", "object", "x", "replica"]);
    assert_eq!(rc, 1);
    assert!(out.starts_with(b"Usage: dog vdi object {location|map|dump-inode}"));
    let (rc, out, _) = run(&["vdi", "read", "-h", "-x"]);
    assert_eq!(rc, 0);
    assert!(out.starts_with(b"Usage: dog vdi read [-s snapshot]"));
}
