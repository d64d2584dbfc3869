//! The `sheep` command line (CLI.md §3), parsed getopt-style so the
//! original's option spellings and error messages keep working.

use std::net::IpAddr;

/// Parsed daemon options.
#[derive(Clone, Debug)]
pub struct Opts {
    pub dir: String,
    /// The disks objects spread over (`DIR,DISK1,...`); none: `DIR/obj`.
    pub disks: Vec<std::path::PathBuf>,
    pub port: u16,
    pub bind: Option<IpAddr>,
    /// The `-c` argument (`local[:path]`, `zookeeper:...`), validated.
    pub cluster: String,
    pub zone: Option<u32>,
    pub nosync: bool,
    pub gateway: bool,
    pub foreground: bool,
    pub log_level: tracing::Level,
    pub log_dir: Option<String>,
    pub log_stdout: bool,
    pub pidfile: Option<String>,
    pub vnodes: Option<u16>,
    pub myaddr: Option<IpAddr>,
    pub io_addr: Option<(IpAddr, u16)>,
    /// `-R`: the recovery throttle a node starts with.
    pub recovery_throttle: sd_proto::RecoveryThrottling,
    /// `--nbd [ADDR:]PORT`: serve every VDI over NBD.
    pub nbd: Option<std::net::SocketAddr>,
    /// `-j dir=,size=[,skip]`: the write-ahead journal.
    pub journal: Option<JournalOpts>,
    /// `-D`: object data with `O_DIRECT`.
    pub direct_io: bool,
    /// Options of the original accepted for compatibility that change
    /// nothing here, each with why (logged at start).
    pub without_effect: Vec<String>,
}

/// The journal the node keeps (`-j`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalOpts {
    /// Its directory (default: the store's meta directory).
    pub dir: Option<std::path::PathBuf>,
    pub size: u64,
    /// `skip` was given: the original skipped replay; we never do (it
    /// would lose acknowledged writes), and say so.
    pub skip_asked: bool,
}

/// What the command line asks for.
pub enum Parsed {
    Run(Box<Opts>),
    /// Print this to stdout and exit 0 (help, version).
    Print(String),
}

/// An option error: message for stderr (and optional stdout text), exit 1.
#[derive(Debug)]
pub struct OptError {
    pub stderr: String,
    pub stdout: String,
}

fn err(msg: impl Into<String>) -> OptError {
    OptError {
        stderr: msg.into(),
        stdout: String::new(),
    }
}

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "_rust");

const OPTIONS: &[(char, &str, bool, &str)] = &[
    (
        'b',
        "bindaddr",
        true,
        "specify IP address of interface to listen on",
    ),
    (
        'c',
        "cluster",
        true,
        "specify the cluster driver (default: local)",
    ),
    ('D', "directio", false, "use direct IO for backend store"),
    (
        'f',
        "foreground",
        false,
        "make the program run in foreground",
    ),
    (
        'g',
        "gateway",
        false,
        "make the program run as a gateway mode",
    ),
    ('h', "help", false, "display this help and exit"),
    (
        'i',
        "ioaddr",
        true,
        "use separate network card to handle IO requests",
    ),
    (
        'j',
        "journal",
        true,
        "use journal file to log all the write operations. (default: disabled)",
    ),
    (
        'l',
        "log",
        true,
        "specify the log level, the log directory and the log format",
    ),
    ('n', "nosync", false, "drop O_SYNC for write of backend"),
    (
        'p',
        "port",
        true,
        "specify the TCP port on which to listen (default: 7000)",
    ),
    ('P', "pidfile", true, "create a pid file"),
    ('r', "http", true, "enable http service"),
    (
        'R',
        "recovery",
        true,
        "specify the recovery speed throttling",
    ),
    ('u', "upgrade", false, "upgrade to the latest data layout"),
    ('v', "version", false, "show the version"),
    ('V', "vnodes", true, "set number of vnodes"),
    (
        'w',
        "wq-threads",
        true,
        "specify the number of threads for workqueues",
    ),
    (
        'W',
        "wildcard-recovery",
        false,
        "wildcard recovery for first time",
    ),
    (
        'x',
        "max-dynamic-threads",
        true,
        "specify the maximum number of threads for dynamic workqueue",
    ),
    (
        'y',
        "myaddr",
        true,
        "specify the address advertised to other sheep",
    ),
    (
        'z',
        "zone",
        true,
        "specify the zone id (default: determined by listen address)",
    ),
];

fn help() -> String {
    let mut s = format!(
        "Sheepdog daemon (version {VERSION})\nUsage: sheep [OPTION]... [PATH] (default: /tmp)\nOptions:\n"
    );
    for (c, long, _, desc) in OPTIONS {
        s.push_str(&format!("  -{c}, --{long:<18}{desc}\n"));
    }
    s.push_str(
        "\nTry 'sheep <option>', e.g., 'sheep -w', to get more detail about specific option\n",
    );
    s
}

fn version() -> String {
    format!("Sheepdog daemon version {VERSION}\n\nSupported features:\n\tCluster drivers: zookeeper local\n\tMiscellaneous: none\n")
}

/// C `strtoll` base 10 over the whole string: optional whitespace and `+`,
/// no trailing garbage, non-negative.
fn parse_uint(s: &str, max: u64) -> Option<u64> {
    let t = s.trim_start();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v <= max)
}

/// Parses `argv` (without the program name).
pub fn parse(args: &[String]) -> Result<Parsed, OptError> {
    let mut o = Opts {
        dir: "/tmp".into(),
        disks: Vec::new(),
        port: sd_proto::SD_LISTEN_PORT,
        bind: None,
        cluster: "local".into(),
        zone: None,
        nosync: false,
        gateway: false,
        foreground: false,
        log_level: tracing::Level::INFO,
        log_dir: None,
        log_stdout: false,
        pidfile: None,
        vnodes: None,
        myaddr: None,
        io_addr: None,
        recovery_throttle: Default::default(),
        journal: None,
        direct_io: false,
        without_effect: Vec::new(),
        nbd: None,
    };
    let mut dir: Option<String> = None;
    let mut i = 0;
    let mut opts_done = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if opts_done || a == "-" || !a.starts_with('-') {
            if dir.is_none() {
                dir = Some(a.clone());
            }
            continue;
        }
        if a == "--" {
            opts_done = true;
            continue;
        }
        if a == "--nbd" || a.starts_with("--nbd=") {
            let v = match a.strip_prefix("--nbd=") {
                Some(v) => v.to_string(),
                None if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                None => return Err(err("sheep: option '--nbd' requires an argument\nTry 'sheep --help' for more information.")),
            };
            o.nbd = Some(parse_nbd(&v)?);
            continue;
        }
        // Collect (option char, inline argument) pairs.
        let mut items: Vec<(char, Option<String>)> = Vec::new();
        if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let m: Vec<_> = OPTIONS.iter().filter(|x| x.1.starts_with(name)).collect();
            let exact = OPTIONS.iter().find(|x| x.1 == name);
            let Some(opt) = exact.or(if m.len() == 1 { Some(m[0]) } else { None }) else {
                return Err(err(format!(
                    "sheep: unrecognized option '{a}'\nTry 'sheep --help' for more information."
                )));
            };
            items.push((opt.0, val));
        } else {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let Some(opt) = OPTIONS.iter().find(|x| x.0 == c) else {
                    return Err(err(format!(
                        "sheep: invalid option -- '{c}'\nTry 'sheep --help' for more information."
                    )));
                };
                if opt.2 && k < chars.len() {
                    items.push((c, Some(chars[k..].iter().collect())));
                    break;
                }
                items.push((c, None));
            }
        }
        for (c, mut val) in items {
            let opt = OPTIONS.iter().find(|x| x.0 == c).unwrap();
            if opt.2 && val.is_none() {
                if i < args.len() {
                    val = Some(args[i].clone());
                    i += 1;
                } else {
                    return Err(err(format!(
                        "sheep: option requires an argument -- '{c}'\nTry 'sheep --help' for more information."
                    )));
                }
            }
            let v = val.unwrap_or_default();
            match c {
                'h' => return Ok(Parsed::Print(help())),
                'v' => return Ok(Parsed::Print(version())),
                'p' => {
                    o.port = parse_uint(&v, 65535)
                        .filter(|&p| p >= 1)
                        .ok_or_else(|| err(format!("Invalid port number '{v}'")))? as u16
                }
                'b' => o.bind = Some(v.parse().map_err(|_| err(format!("Bad address '{v}'")))?),
                'c' => o.cluster = parse_cluster(&v)?,
                'z' => {
                    o.zone = Some(parse_uint(&v, u32::MAX as u64).ok_or_else(|| {
                        err(format!("Invalid zone id '{v}': must be an integer between 0 and 4294967295"))
                    })? as u32)
                }
                'n' => o.nosync = true,
                'g' => o.gateway = true,
                'f' => o.foreground = true,
                'P' => o.pidfile = Some(v),
                'V' => {
                    o.vnodes = Some(parse_uint(&v, 65535).filter(|&n| n >= 1).ok_or_else(|| {
                        err(format!("Invalid number of vnodes '{v}': must be an integer between 1 and 65535"))
                    })? as u16)
                }
                'y' => o.myaddr = Some(v.parse().map_err(|_| err(format!("Invalid address: '{v}'")))?),
                'l' => parse_log(&v, &mut o)?,
                'i' => o.io_addr = Some(parse_ioaddr(&v)?),
                'x' => {
                    parse_uint(&v, u32::MAX as u64).filter(|&n| n >= 1).ok_or_else(|| {
                        err(format!("Invalid number of threads '{v}': must be an integer between 1 and 4294967295"))
                    })?;
                    o.without_effect
                        .push("-x: there is no dynamic thread pool to bound".into());
                }
                'R' => o.recovery_throttle = parse_throttle(&v)?,
                'j' => o.journal = Some(parse_journal(&v)?),
                'D' => o.direct_io = true,
                // Accepted for compatibility, and said to change nothing.
                'r' => o
                    .without_effect
                    .push("-r: the HTTP object service is not there yet; nothing is served over HTTP".into()),
                'u' => o
                    .without_effect
                    .push("-u: the data layout is the only one there is; nothing to upgrade".into()),
                'w' => o
                    .without_effect
                    .push("-w: there are no work queues to size".into()),
                'W' => o.without_effect.push(
                    "-W: recovery has no separate wildcard mode here; the option changes nothing".into(),
                ),
                _ => unreachable!(),
            }
        }
    }
    if o.gateway && o.vnodes.is_some() {
        return Err(err("Options '-g' and '-V' can not be both specified"));
    }
    if let Some(d) = dir {
        // `DIR,DISK1,DISK2,...`: the meta directory, then the disks.
        let mut parts = d.split(',');
        o.dir = parts.next().unwrap_or_default().to_string();
        o.disks = parts
            .filter(|p| !p.is_empty())
            .map(|p| std::path::PathBuf::from(p.trim_end_matches('/')))
            .collect();
    }
    Ok(Parsed::Run(Box::new(o)))
}

/// `[ADDR:]PORT` (IPv6 addresses in brackets); the address defaults to all.
fn parse_nbd(v: &str) -> Result<std::net::SocketAddr, OptError> {
    let bad = || err(format!("Invalid NBD address '{v}': expected [ADDR:]PORT"));
    if let Some(p) = parse_uint(v, 65535) {
        return Ok(std::net::SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            p as u16,
        ));
    }
    v.parse::<std::net::SocketAddr>().map_err(|_| bad())
}

fn parse_cluster(v: &str) -> Result<String, OptError> {
    let (name, rest) = v.split_once(':').unwrap_or((v, ""));
    match name {
        "local" => Ok(v.to_string()),
        "zookeeper" => match sd_cluster::ZkOptions::parse(rest) {
            Ok(_) => Ok(v.to_string()),
            Err(e) => Err(err(e.to_string())),
        },
        _ => Err(OptError {
            stderr: format!("Invalid cluster driver '{v}'"),
            stdout: "\nSupported features:\n\tCluster drivers: zookeeper local\n".into(),
        }),
    }
}

fn parse_log(v: &str, o: &mut Opts) -> Result<(), OptError> {
    for item in v.split(',') {
        if let Some(l) = item.strip_prefix("level=") {
            o.log_level = match l {
                "emerg" | "alert" | "crit" | "err" => tracing::Level::ERROR,
                "warning" => tracing::Level::WARN,
                "notice" | "info" => tracing::Level::INFO,
                "debug" => tracing::Level::DEBUG,
                _ => return Err(err(format!("Invalid log level '{l}'"))),
            };
        } else if let Some(d) = item.strip_prefix("dir=") {
            o.log_dir = Some(d.to_string());
        } else if let Some(d) = item.strip_prefix("dst=") {
            match d {
                "stdout" => o.log_stdout = true,
                "default" | "syslog" => {}
                _ => return Err(err(format!("invalid type of log destination: {d}"))),
            }
        } else if item.starts_with("format=") {
        } else {
            return Err(err(format!("invalid option {item}")));
        }
    }
    Ok(())
}

/// `-R max=N,interval=MS`: the initial recovery throttle (numbers as C
/// `atoi` reads them, as the original).
fn parse_throttle(v: &str) -> Result<sd_proto::RecoveryThrottling, OptError> {
    let atoi = |x: &str| -> i64 {
        let t = x.trim_start();
        let (neg, d) = match t.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let n = d.bytes().take_while(u8::is_ascii_digit).fold(0i64, |n, c| {
            n.saturating_mul(10).saturating_add((c - b'0') as i64)
        });
        if neg {
            -n
        } else {
            n
        }
    };
    let mut t = sd_proto::RecoveryThrottling::default();
    for item in v.split(',') {
        if let Some(m) = item.strip_prefix("max=") {
            t.max_exec_count = atoi(m) as u32;
        } else if let Some(i) = item.strip_prefix("interval=") {
            t.queue_work_interval = atoi(i) as u64;
        } else {
            return Err(err(format!("invalid option {item}")));
        }
    }
    Ok(t)
}

/// The original's sizes: a number (fractions allowed) with an optional
/// one-letter suffix, K, M, G, T or P (powers of 1024), or B.
fn parse_size(v: &str) -> Option<u64> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        _ => return None,
    };
    Some((n * (1u64 << shift) as f64) as u64)
}

/// `-j dir=PATH,size=SIZE[,skip]`, as the original.
fn parse_journal(v: &str) -> Result<JournalOpts, OptError> {
    let mut j = JournalOpts {
        dir: None,
        size: 0,
        skip_asked: false,
    };
    for item in v.split(',') {
        if let Some(d) = item.strip_prefix("dir=") {
            j.dir = Some(d.into());
        } else if let Some(sz) = item.strip_prefix("size=") {
            let min = sd_store::journal::MIN_SIZE;
            j.size = parse_size(sz).filter(|&n| n >= min).ok_or_else(|| {
                err(format!(
                    "invalid size {sz}, must be bigger than {}(M)",
                    min >> 20
                ))
            })?;
        } else if item == "skip" {
            j.skip_asked = true;
        } else {
            return Err(err(format!("invalid option {item}")));
        }
    }
    if j.size == 0 {
        return Err(err("you must specify size for journal"));
    }
    Ok(j)
}

fn parse_ioaddr(v: &str) -> Result<(IpAddr, u16), OptError> {
    let mut addr = None;
    let mut port = sd_proto::SD_LISTEN_PORT;
    for item in v.split(',') {
        if let Some(a) = item.strip_prefix("host=") {
            addr = Some(a.parse().map_err(|_| err(format!("Bad addr: '{a}'")))?);
        } else if let Some(p) = item.strip_prefix("port=") {
            port = parse_uint(p, 65535)
                .filter(|&x| x >= 1)
                .ok_or_else(|| err(format!("Bad port '{p}'")))? as u16;
        } else {
            return Err(err(format!("invalid option {item}")));
        }
    }
    Ok((addr.ok_or_else(|| err(format!("Bad addr: '{v}'")))?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_throttle_as_the_original() {
        let o = run(&["/d", "-R", "max=4,interval=250"]).unwrap();
        assert_eq!(
            (
                o.recovery_throttle.max_exec_count,
                o.recovery_throttle.queue_work_interval
            ),
            (4, 250)
        );
        // atoi: trailing junk ignored, junk reads as 0.
        let o = run(&["/d", "-R", "max=7x,interval=y"]).unwrap();
        assert_eq!(
            (
                o.recovery_throttle.max_exec_count,
                o.recovery_throttle.queue_work_interval
            ),
            (7, 0)
        );
        let e = run(&["/d", "-R", "max=1,speed=2"]).unwrap_err();
        assert!(e.stderr.contains("invalid option speed=2"), "{}", e.stderr);
    }

    fn run(a: &[&str]) -> Result<Opts, OptError> {
        match parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Print(_) => panic!("print"),
        }
    }

    #[test]
    fn quick_start_line() {
        let o = run(&["/tmp/store0", "-n", "-c", "local", "-z", "0", "-p", "7000"]).unwrap();
        assert_eq!(o.dir, "/tmp/store0");
        assert!(o.disks.is_empty());
        assert!(o.nosync);
        assert_eq!(o.zone, Some(0));
        assert_eq!(o.port, 7000);
        let o = run(&["-p7001", "--zone=3", "-gf", "d"]).unwrap();
        assert_eq!(
            (o.port, o.zone, o.gateway, o.foreground),
            (7001, Some(3), true, true)
        );
    }

    #[test]
    fn bad_values() {
        for p in ["0", "65536", "4294967297", "-1", "a", "42a", "+", "-"] {
            let e = run(&["-p", p, "d"]).unwrap_err();
            assert_eq!(e.stderr, format!("Invalid port number '{p}'"), "{p}");
        }
        assert_eq!(run(&["-p", "+80", "d"]).unwrap().port, 80);
        assert!(run(&["-c", "corosync", "d"])
            .unwrap_err()
            .stderr
            .starts_with("Invalid cluster driver"));
        assert!(run(&["-Q"])
            .unwrap_err()
            .stderr
            .contains("invalid option -- 'Q'"));
        assert!(run(&["-g", "-V", "5"]).is_err());
        assert_eq!(
            run(&["--nbd", "10809", "d"]).unwrap().nbd,
            Some("0.0.0.0:10809".parse().unwrap())
        );
        assert_eq!(
            run(&["--nbd=127.0.0.1:10810", "d"]).unwrap().nbd,
            Some("127.0.0.1:10810".parse().unwrap())
        );
        assert!(run(&["--nbd", "x:y", "d"])
            .unwrap_err()
            .stderr
            .starts_with("Invalid NBD address"));
    }
}
