//! The tool calls in flight, so that the server can wait for them: a call that arrives while a
//! cancelled run is still stopping its command waits until it has (so it sees the box as the
//! cancel left it), and the server does not exit while a run is still releasing its box.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Calls running, and each run's cancel token.
#[derive(Debug)]
pub(crate) struct InFlight {
    active: watch::Sender<usize>,
    runs: watch::Sender<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            active: watch::Sender::new(0),
            runs: watch::Sender::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        }
    }
}

/// Held while a call runs; uncounts it when dropped, whatever path the call took.
pub(crate) struct Counted<'a>(&'a watch::Sender<usize>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Held while a run runs; forgets it when dropped.
pub(crate) struct Run<'a> {
    runs: &'a watch::Sender<BTreeMap<u64, CancellationToken>>,
    id: u64,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.runs.send_modify(|r| {
            r.remove(&self.id);
        });
    }
}

impl InFlight {
    /// A tool call is running.
    pub fn call(&self) -> Counted<'_> {
        self.active.send_modify(|n| *n += 1);
        Counted(&self.active)
    }

    /// A run is going, stopped by `cancel`. Registered before the run awaits anything: a
    /// cancel notification is handled before any later request, so a later call sees it.
    pub fn run(&self, cancel: CancellationToken) -> Run<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.runs.send_modify(|r| {
            r.insert(id, cancel);
        });
        Run {
            runs: &self.runs,
            id,
        }
    }

    /// Waits until every run that was cancelled has ended, at most `budget`.
    pub async fn wait_stopped(&self, budget: Duration) -> bool {
        let mut rx = self.runs.subscribe();
        let done = rx.wait_for(|runs| runs.values().all(|c| !c.is_cancelled()));
        tokio::time::timeout(budget, done)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until no call is running, at most `budget`.
    pub async fn wait_idle(&self, budget: Duration) -> bool {
        let mut rx = self.active.subscribe();
        tokio::time::timeout(budget, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn idle_once_the_last_call_ends() {
        let f = Arc::new(InFlight::default());
        assert!(f.wait_idle(Duration::ZERO).await);
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let g = f.clone();
        let call = tokio::spawn(async move {
            let _c = g.call();
            held_tx.send(()).unwrap();
            release_rx.await.unwrap();
        });
        held_rx.await.unwrap();
        assert!(!f.wait_idle(Duration::from_millis(20)).await);
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.wait_idle(Duration::from_secs(30)).await })
        };
        release_tx.send(()).unwrap();
        call.await.unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn a_call_waits_for_a_cancelled_run_not_for_a_running_one() {
        let f = InFlight::default();
        let going = CancellationToken::new();
        let _going = f.run(going.clone());
        // A run that was not cancelled is no reason to wait.
        assert!(f.wait_stopped(Duration::ZERO).await);
        let cancelled = CancellationToken::new();
        let stopping = f.run(cancelled.clone());
        cancelled.cancel();
        // Seen at once, before the run's own task has noticed its cancel.
        assert!(!f.wait_stopped(Duration::from_millis(20)).await);
        drop(stopping);
        assert!(f.wait_stopped(Duration::ZERO).await);
    }
}
