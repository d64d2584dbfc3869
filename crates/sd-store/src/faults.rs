//! Disk faults injected on purpose, so that the handling of a failing
//! disk is tested for real and repeatably.
//!
//! Set `SHEEP_INJECT` in a sheep's environment to a comma-separated list
//! of `OP:WHEN`, where OP is `read`, `write` or `fsync` and WHEN is
//! `always`, `after=N` (the first N such operations succeed, every later
//! one fails: a disk that dies) or `p=F` (each fails with probability F,
//! from a fixed seed). A failing operation returns EIO, as a real disk
//! does. Example: `SHEEP_INJECT=fsync:after=100,read:p=0.01`.

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
}

impl Faults {
    /// Parses a plan (see the module documentation).
    pub fn parse(plan: &str) -> Result<Faults, String> {
        let mut rules = Vec::new();
        for item in plan.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad =
                || format!("bad fault '{item}' (expected read|write|fsync:always|after=N|p=F)");
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
        })
    }

    /// The plan in this process's environment, if any.
    pub fn from_env() -> Result<Faults, String> {
        match std::env::var(ENV) {
            Ok(plan) => Faults::parse(&plan),
            Err(_) => Ok(Faults::default()),
        }
    }

    /// EIO if an operation of kind `op` is to fail now.
    pub fn check(&self, op: Op) -> std::io::Result<()> {
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
        let f = Faults::parse("fsync:after=2, read:always").unwrap();
        assert!(f.check(Op::Write).is_ok());
        assert!(f.check(Op::Read).is_err());
        assert!(f.check(Op::Fsync).is_ok());
        assert!(f.check(Op::Fsync).is_ok());
        assert!(f.check(Op::Fsync).is_err());
        assert!(f.check(Op::Fsync).is_err());
        let p = Faults::parse("write:p=0.5").unwrap();
        let failed = (0..1000).filter(|_| p.check(Op::Write).is_err()).count();
        assert!((400..600).contains(&failed), "{failed}");
        assert!(Faults::parse("").unwrap().check(Op::Read).is_ok());
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
