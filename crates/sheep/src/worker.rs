//! Background work as workers under one supervisor.
//!
//! Every long-running duty of a node (recovery, reclaim of unreferenced
//! objects, merging peers' VDI tables) is a [`Worker`]: it does its work in
//! steps, each ending in a [`WorkerState`] that tells the supervisor what
//! to do next (step again, pause, or wait for work). Keeping the loop in
//! one place gives every worker the same status reporting (`dog node
//! worker`) and the same failure rule: the supervisor owns every task
//! handle, and a panic in any worker (or in the event loop) stops the
//! node loudly rather than leaving it serving with a frozen view.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a step left the worker doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is ready: step again at once.
    Busy,
    /// More work, but not before this pause (clients first, backoff).
    Throttled(Duration),
    /// Nothing to do until [`Worker::wait_for_work`] returns.
    Idle,
}

impl WorkerState {
    /// The wire code of `dog node worker`.
    pub fn code(self) -> u32 {
        match self {
            WorkerState::Idle => sd_proto::worker_state::IDLE,
            WorkerState::Busy => sd_proto::worker_state::BUSY,
            WorkerState::Throttled(_) => sd_proto::worker_state::THROTTLED,
        }
    }
}

/// Progress counters a worker reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub errors: u64,
}

/// A background duty, driven step by step by the [`Supervisor`].
pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;
    /// Progress of the current work.
    fn progress(&self) -> Progress;
    /// Does one unit of work.
    fn step(&mut self) -> impl Future<Output = WorkerState> + Send;
    /// Returns once there may be work again.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;
}

/// A worker's last reported state, as `dog node worker` shows it.
#[derive(Clone, Debug)]
pub struct WorkerReport {
    pub name: &'static str,
    pub state: WorkerState,
    pub progress: Progress,
}

/// Owns the handles of the node's workers and critical tasks.
#[derive(Default)]
pub struct Supervisor {
    reports: Mutex<Vec<Arc<Mutex<WorkerReport>>>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Supervisor {
    /// Holds the supervisor's locks (for the test that no request waits
    /// for them).
    #[cfg(test)]
    pub fn hold(&self) -> impl Sized + '_ {
        (self.reports.lock().unwrap(), self.tasks.lock().unwrap())
    }

    /// Runs `w` until the node stops.
    pub fn spawn<W: Worker>(self: &Arc<Self>, mut w: W) {
        let report = Arc::new(Mutex::new(WorkerReport {
            name: w.name(),
            state: WorkerState::Idle,
            progress: w.progress(),
        }));
        self.reports.lock().unwrap().push(report.clone());
        let name = w.name();
        self.task(name, async move {
            let mut state = WorkerState::Busy;
            loop {
                match state {
                    WorkerState::Busy => {}
                    WorkerState::Throttled(d) => tokio::time::sleep(d).await,
                    WorkerState::Idle => w.wait_for_work().await,
                }
                state = w.step().await;
                *report.lock().unwrap() = WorkerReport {
                    name,
                    state,
                    progress: w.progress(),
                };
            }
        });
    }

    /// Runs a task the node cannot live without (the event loop, a
    /// listener): if it panics, the node stops at once, loudly.
    pub fn task(
        self: &Arc<Self>,
        name: &'static str,
        f: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(f);
        self.tasks.lock().unwrap().push(handle.abort_handle());
        tokio::spawn(async move {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    let e = e.into_panic();
                    let what = e
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!("{name} panicked: {what}");
                    tracing::error!("{name} panicked; stopping this node");
                    eprintln!("sheep: {name} panicked; stopping this node");
                    std::process::exit(70);
                }
            }
        });
    }

    /// Stops every worker and task (the node is leaving).
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// The last report of every worker, in start order.
    pub fn reports(&self) -> Vec<WorkerReport> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    /// Counts to `total` in steps of one, pausing after each.
    struct Counter {
        done: u64,
        total: u64,
        more: Arc<Notify>,
    }

    impl Worker for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn progress(&self) -> Progress {
            Progress {
                done: self.done,
                total: self.total,
                errors: 0,
            }
        }
        async fn step(&mut self) -> WorkerState {
            if self.done == self.total {
                return WorkerState::Idle;
            }
            self.done += 1;
            WorkerState::Throttled(Duration::from_millis(1))
        }
        async fn wait_for_work(&mut self) {
            self.more.notified().await;
            self.total += 2;
        }
    }

    #[tokio::test]
    async fn workers_step_until_idle_and_report() {
        let sup = Arc::new(Supervisor::default());
        let more = Arc::new(Notify::new());
        sup.spawn(Counter {
            done: 0,
            total: 3,
            more: more.clone(),
        });
        let wait_for = |done: u64, state: WorkerState| {
            let sup = sup.clone();
            async move {
                for _ in 0..1000 {
                    let r = &sup.reports()[0];
                    if r.progress.done == done && r.state == state {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                panic!("worker did not reach {done} {state:?}: {:?}", sup.reports());
            }
        };
        wait_for(3, WorkerState::Idle).await;
        more.notify_one();
        wait_for(5, WorkerState::Idle).await;
        assert_eq!(sup.reports()[0].name, "counter");
        assert_eq!(sup.reports()[0].progress.total, 5);
    }
}
