//! The seed quick start, run for real: six daemonized sheep with the local
//! driver, `dog cluster format`, `dog vdi create -c 3 replica 20G`, then
//! `vdi list`, `node info`, `node list` and `cluster info` compared line by
//! line with the original's formats (times and sizes masked).

use sd_testkit::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces every run of digits in `s` matched by the mask positions.
fn mask_date(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // YYYY-MM-DD HH:MM[:SS]
        if i + 16 <= b.len()
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 7] == b'-'
            && b[i + 10] == b' '
            && b[i + 13] == b':'
        {
            let len = if i + 19 <= b.len() && b[i + 16] == b':' {
                19
            } else {
                16
            };
            out.push_str(if len == 19 { "DATE_TIME" } else { "DATE" });
            i += len;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

struct Daemons {
    root: tempfile::TempDir,
    ports: Vec<u16>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for p in &self.ports {
            let pidfile = self.root.path().join(format!("pid{p}"));
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: sending a signal to a pid we started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

#[test]
fn seed_quick_start() {
    let root = tempfile::Builder::new()
        .prefix("quickstart")
        .tempdir()
        .unwrap();
    let base = free_ports(6, PORTS);
    let ports: Vec<u16> = (0..6).map(|i| base + i).collect();
    let d = Daemons {
        root,
        ports: ports.clone(),
    };
    let shm = d.root.path().join("shm");
    for (i, p) in ports.iter().enumerate() {
        let store = d.root.path().join(format!("store{i}"));
        let (rc, _, err) = run(Command::new(sheep_bin())
            .arg(&store)
            .args([
                "-n",
                "-c",
                &format!("local:{}", shm.display()),
                "-z",
                &i.to_string(),
                "-p",
                &p.to_string(),
            ])
            .args([
                "-P",
                &d.root.path().join(format!("pid{p}")).to_string_lossy(),
            ]));
        assert_eq!(rc, 0, "sheep returns 0 once daemonized: {err}");
    }
    let dog = |args: &[&str]| {
        run(Command::new(dog_bin())
            .args(args)
            .args(["-p", &ports[0].to_string()]))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (rc, out, _) = dog(&["node", "list"]);
        if rc == 0 && out.lines().count() == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "six nodes did not gather");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Before formatting, the cluster says so.
    let (rc, out, _) = dog(&["cluster", "info"]);
    assert_eq!(rc, 0);
    assert_eq!(
        out,
        "Cluster status: Waiting for cluster to be formatted\n\n"
    );
    let (rc, _, err) = dog(&["vdi", "create", "replica", "20G"]);
    assert_eq!(
        (rc, err.as_str()),
        (
            1,
            "Failed to create VDI replica: Waiting for cluster to be formatted\n"
        )
    );

    let (rc, out, err) = dog(&["cluster", "format"]);
    assert_eq!(
        (rc, out.as_str(), err.as_str()),
        (0, "using backend plain store\n", "")
    );
    let (rc, out, err) = dog(&["vdi", "create", "-c", "3", "replica", "20G"]);
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));

    let vid = sd_proto::sd_hash_vdi(b"replica");
    let (rc, out, _) = dog(&["vdi", "list"]);
    assert_eq!(rc, 0);
    let want = format!(
        "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n  replica      0   20 GB  0.0 MB  0.0 MB DATE  {vid:>7x}      3                22\n"
    );
    assert_eq!(mask_date(&out), want);
    let (_, out, _) = dog(&["vdi", "list", "-r"]);
    let f: Vec<&str> = out.trim_end().split(' ').collect();
    assert_eq!(f.len(), 11, "{out}");
    assert_eq!(
        (f[0], f[1], f[2], f[3], f[4], f[5]),
        ("=", "replica", "0", "21474836480", "0", "0")
    );
    assert_eq!(
        (f[7], f[8], f[9], f[10]),
        (format!("{vid:x}").as_str(), "3", "", "22")
    );

    let (rc, out, _) = dog(&["node", "list"]);
    assert_eq!(rc, 0);
    let mut want = String::from("  Id   Host:Port         V-Nodes       Zone\n");
    for (i, p) in ports.iter().enumerate() {
        want.push_str(&format!(
            "{i:>4}   {:<20}\t{:>2}{:>11}\n",
            format!("127.0.0.1:{p}"),
            128,
            i
        ));
    }
    assert_eq!(out, want);

    let (rc, out, _) = dog(&["node", "info"]);
    assert_eq!(rc, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert_eq!(lines[0], "Id\tSize\tUsed\tAvail\tUse%");
    let size = regex_like_size();
    for (i, l) in lines[1..7].iter().enumerate() {
        let c: Vec<&str> = l.split('\t').collect();
        assert_eq!(c.len(), 5, "{l}");
        assert_eq!(c[0], format!("{i:>2}"));
        assert!(size(c[1]) && size(c[2]) && size(c[3]), "{l}");
        assert!(c[4].ends_with('%') && c[4].len() == 4, "{l}");
    }
    assert!(lines[7].starts_with("Total\t"));
    assert_eq!(lines[8], "");
    assert_eq!(lines[9], "Total virtual image size\t20 GB");

    let (rc, out, _) = dog(&["cluster", "info"]);
    assert_eq!(rc, 0);
    let members: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}:128")).collect();
    let lines: Vec<String> = out.lines().map(mask_date).collect();
    assert_eq!(lines[0], "Cluster status: running, auto-recovery enabled");
    assert_eq!(lines[1], "");
    assert!(
        lines[2].starts_with("Cluster created at ")
            && lines[2].len() == "Cluster created at Sat Nov 21 09:12:11 2026".len()
    );
    assert_eq!(lines[3], "");
    assert_eq!(
        lines[4],
        "Epoch Time           Version [Host:Port:V-Nodes,,,]"
    );
    assert_eq!(
        lines[5],
        format!("DATE_TIME      1 [{}]", members.join(", "))
    );
    assert_eq!(lines.len(), 6);

    // Shutdown stops every daemon cleanly.
    let (rc, _, _) = dog(&["cluster", "shutdown"]);
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports
        .iter()
        .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
    {
        assert!(Instant::now() < deadline, "daemons did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Matches a human size such as `79 GB` or `0.0 MB`.
fn regex_like_size() -> impl Fn(&str) -> bool {
    |s: &str| {
        let Some((n, u)) = s.split_once(' ') else {
            return false;
        };
        ["MB", "GB", "TB", "PB"].contains(&u)
            && !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit() || c == '.')
    }
}
