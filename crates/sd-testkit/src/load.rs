//! `sdload` driven from tests: a background verifying load, and the
//! checks of what it acknowledged (see `src/bin/sdload.rs`).

use crate::bin_dir;
use crate::netns::die_with_parent;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn sdload_bin() -> PathBuf {
    bin_dir().join("sdload")
}

/// An `sdload` command that dies with the test process.
pub fn sdload() -> Command {
    let mut cmd = Command::new(sdload_bin());
    die_with_parent(&mut cmd);
    cmd
}

/// A background `sdload write`.
pub struct Load {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// 256 blocks, one every 256 KiB: 16 objects of a 64 MiB VDI.
pub const LOAD_SHAPE: &[&str] = &["--blocks", "256", "--stride", "262144"];

impl Load {
    /// Starts writing to `vdi` through `addrs` until stopped; its output
    /// goes to `dir/sdload.<tag>.{out,err}`.
    pub fn start(dir: &Path, addrs: &[SocketAddr], vdi: &str, journal: &Path, tag: &str) -> Load {
        let out = dir.join(format!("sdload.{tag}.out"));
        let err = dir.join(format!("sdload.{tag}.err"));
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let child = sdload()
            .args([
                "write",
                "--addr",
                &list.join(","),
                "--vdi",
                vdi,
                "--journal",
            ])
            .arg(journal)
            .args(LOAD_SHAPE)
            .args([
                "--duration",
                "100000",
                "--workers",
                "4",
                "--op-timeout",
                "10",
                "--give-up",
                "60",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn sdload");
        Load {
            child: Some(child),
            out,
            err,
        }
    }

    /// Stops the load (SIGTERM: current writes finish) and returns its
    /// summary line; panics if it failed.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sdload did not stop within 90 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        assert!(st.success(), "sdload write failed ({st}): {out}\n{err}");
        out.lines().last().unwrap_or_default().to_string()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `key=<number>` from an sdload summary line.
pub fn field(summary: &str, key: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| {
            v.trim_end_matches("MiB/s")
                .trim_end_matches('s')
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key}= in '{summary}'")) as u64
}

/// `sdload verify` through `addr`: every acknowledged write reads back.
pub fn try_verify(addr: SocketAddr, vdi: &str, journal: &Path) -> Result<String, String> {
    let out = sdload()
        .args([
            "verify",
            "--addr",
            &addr.to_string(),
            "--vdi",
            vdi,
            "--journal",
        ])
        .arg(journal)
        .args(["--retry-for", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text.lines().last().unwrap_or_default().to_string())
    } else {
        Err(format!(
            "verification through {addr} failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn verify(addr: SocketAddr, vdi: &str, journal: &Path) -> String {
    try_verify(addr, vdi, journal).unwrap_or_else(|e| panic!("{e}"))
}

/// `sdload check` of the object directories `stores`: every replica of
/// every object holds each acknowledged block, and every object has
/// `copies` copies.
pub fn try_check_files(stores: &[PathBuf], journal: &Path, copies: usize) -> Result<(), String> {
    let mut cmd = sdload();
    cmd.args(["check", "--journal"]).arg(journal);
    for d in stores {
        cmd.arg("--store").arg(d);
    }
    let out = cmd
        .args(["--copies", &copies.to_string()])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "replica check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn check_files(stores: &[PathBuf], journal: &Path, copies: usize) {
    try_check_files(stores, journal, copies).unwrap_or_else(|e| panic!("{e}"))
}
