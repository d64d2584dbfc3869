//! Time, as the object service sees it.
//!
//! The gateway's retry deadline, the waits for a newer epoch and the
//! recovery pass's pacing all ask a [`Clock`] rather than the system, so a
//! component test can run a minute of retries in microseconds and decide
//! exactly when time passes ([`SteppingClock`]).

use futures::future::BoxFuture;
use std::future::Future;
use std::time::{Duration, Instant};

/// A source of time and of timed waits.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    /// Completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The real clock (tokio's timers; a simulation pauses them, and time
/// then passes only when every task waits).
pub struct SystemClock;

impl Clock for SystemClock {
    /// Tokio's clock: the system's, unless a test runtime paused it.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Runs `f` for at most `d` on `clock`; None if the time ran out first.
pub async fn timeout<F: Future>(clock: &dyn Clock, d: Duration, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = f => Some(r),
        _ = clock.sleep(d) => None,
    }
}

/// A clock for tests in which every sleep passes at once: it advances the
/// time by the sleep's length and yields to the other tasks once. Retries
/// and timeouts then run their full course without real waiting, and
/// their count is exact.
#[cfg(test)]
pub struct SteppingClock {
    start: Instant,
    elapsed_us: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Default for SteppingClock {
    fn default() -> Self {
        SteppingClock {
            start: Instant::now(),
            elapsed_us: Default::default(),
        }
    }
}

#[cfg(test)]
impl SteppingClock {
    /// Time passed on this clock since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(self.elapsed_us.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
impl Clock for SteppingClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.elapsed_us
            .fetch_add(d.as_micros() as u64, std::sync::atomic::Ordering::SeqCst);
        Box::pin(tokio::task::yield_now())
    }
}
