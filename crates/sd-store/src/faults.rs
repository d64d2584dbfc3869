//! Disk faults injected on purpose, so that the handling of a failing
//! disk is tested for real and repeatably.
//!
//! Set `SHEEP_INJECT` in a sheep's environment to a comma-separated list
//! of `OP:WHEN`, where OP is `read`, `write` or `fsync` and WHEN is
//! `always`, `after=N` (the first N such operations succeed, every later
//! one fails: a disk that dies) or `p=F` (each fails with probability F,
//! from a fixed seed). A failing operation returns EIO, as a real disk
//! does. An item `disk=DIR` limits the plan to the files under DIR (one
//! disk of a multi-disk node). Example:
//! `SHEEP_INJECT=fsync:after=100,read:p=0.01,disk=/srv/d2`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that holds the plan.
pub const ENV: &str = "SHEEP_INJECT";

/// A kind of disk operation that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Fsync,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum When {
    Always,
    After(u64),
    Probability(f64),
}

#[derive(Debug)]
struct Rule {
    op: Op,
    when: When,
    seen: AtomicU64,
}

/// The faults to inject (none by default).
#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<Rule>,
    rng: AtomicU64,
    /// Only files under this directory fail, if set.
    disk: Option<std::path::PathBuf>,
}

impl Faults {
    /// Parses a plan (see the module documentation).
    pub fn parse(plan: &str) -> Result<Faults, String> {
        let mut rules = Vec::new();
        let mut disk = None;
        for item in plan.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(d) = item.strip_prefix("disk=") {
                disk = Some(d.into());
                continue;
            }
            let bad = || {
                format!(
                    "bad fault '{item}' (expected read|write|fsync:always|after=N|p=F or disk=DIR)"
                )
            };
            let (op, when) = item.split_once(':').ok_or_else(bad)?;
            let op = match op {
                "read" => Op::Read,
                "write" => Op::Write,
                "fsync" => Op::Fsync,
                _ => return Err(bad()),
            };
            let when = match when.split_once('=') {
                None if when == "always" => When::Always,
                Some(("after", n)) => When::After(n.parse().map_err(|_| bad())?),
                Some(("p", f)) => match f.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => When::Probability(p),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            };
            rules.push(Rule {
                op,
                when,
                seen: AtomicU64::new(0),
            });
        }
        Ok(Faults {
            rules,
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            disk,
        })
    }

    /// The plan in this process's environment, if any.
    pub fn from_env() -> Result<Faults, String> {
        match std::env::var(ENV) {
            Ok(plan) => Faults::parse(&plan),
            Err(_) => Ok(Faults::default()),
        }
    }

    /// EIO if an operation of kind `op` on the file at `path` is to fail
    /// now.
    /// Whether no failure is planned.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn check(&self, op: Op, path: &std::path::Path) -> std::io::Result<()> {
        if self.disk.as_ref().is_some_and(|d| !path.starts_with(d)) {
            return Ok(());
        }
        for r in self.rules.iter().filter(|r| r.op == op) {
            let n = r.seen.fetch_add(1, Ordering::SeqCst);
            let fail = match r.when {
                When::Always => true,
                When::After(k) => n >= k,
                When::Probability(p) => self.next_unit() < p,
            };
            if fail {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }

    /// A pseudo-random number in [0, 1) (xorshift64*, fixed seed).
    fn next_unit(&self) -> f64 {
        let mut x = self.rng.load(Ordering::SeqCst);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::SeqCst);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_fail_what_they_say() {
        let any = std::path::Path::new("/d/x");
        let f = Faults::parse("fsync:after=2, read:always").unwrap();
        assert!(f.check(Op::Write, any).is_ok());
        assert!(f.check(Op::Read, any).is_err());
        assert!(f.check(Op::Fsync, any).is_ok());
        assert!(f.check(Op::Fsync, any).is_ok());
        assert!(f.check(Op::Fsync, any).is_err());
        assert!(f.check(Op::Fsync, any).is_err());
        let p = Faults::parse("write:p=0.5").unwrap();
        let failed = (0..1000)
            .filter(|_| p.check(Op::Write, any).is_err())
            .count();
        assert!((400..600).contains(&failed), "{failed}");
        assert!(Faults::parse("").unwrap().check(Op::Read, any).is_ok());
        // Limited to one disk.
        let d = Faults::parse("read:always,disk=/d/2").unwrap();
        assert!(d.check(Op::Read, std::path::Path::new("/d/1/obj")).is_ok());
        assert!(d.check(Op::Read, std::path::Path::new("/d/2/obj")).is_err());
        for bad in [
            "fsync",
            "disk:always",
            "read:after=x",
            "write:p=2",
            "read:sometimes",
        ] {
            assert!(Faults::parse(bad).is_err(), "{bad}");
        }
    }
}
