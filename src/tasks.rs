//! The tasks of one server. Every task asmux starts (connections, websocket sessions,
//! delivery workers, reports, timers) belongs to a [`Tasks`]; stopping it cancels them
//! all and waits for them, so nothing of a server is left running once it has stopped.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of tasks that end together. Clones share the set.
///
/// Its tasks run on the runtime it was made in (the server's main one), whichever thread
/// spawns them: background work started by a request stays off the connection threads
/// (see `server::threads`). [`Tasks::spawn_on`] chooses the runtime instead.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    home: Option<Handle>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            home: Handle::try_current().ok(),
        }
    }
}

impl Tasks {
    /// Runs `task` until it ends or the set is stopped, whichever comes first: at its
    /// next await once the set is stopped (at once if it already is).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        match &self.home {
            Some(home) => self.spawn_on(home, task),
            None => self.spawn_here(task),
        }
    }

    /// As [`Tasks::spawn`], on `runtime`.
    pub fn spawn_on(
        &self,
        runtime: &Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let cancel = self.cancel.clone();
        self.tracker.spawn_on(
            async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = task => {}
                }
            },
            runtime,
        )
    }

    /// As [`Tasks::spawn`], on the calling thread's runtime: for a task that belongs beside
    /// a connection's socket.
    pub fn spawn_here(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.spawn_on(&Handle::current(), task)
    }

    /// Runs blocking work (disk scans, fsyncs) on tokio's blocking threads, so async
    /// threads keep routing meanwhile. It cannot be cancelled: stopping waits for it.
    pub fn spawn_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        match &self.home {
            Some(home) => self.tracker.spawn_blocking_on(work, home),
            None => self.tracker.spawn_blocking(work),
        }
    }

    /// Runs blocking work off the async threads and waits for its result; `None` if it
    /// panicked.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        match self.spawn_blocking(work).await {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::error!(error = %e, "blocking work failed");
                None
            }
        }
    }

    /// Tasks that have not ended yet.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Cancels every task and waits until all have ended, at most `deadline`; false if
    /// blocking work was still running then.
    pub async fn stop(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !ended {
            tracing::warn!(
                running = self.running(),
                "blocking work still running at the shutdown deadline"
            );
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_cancels_waiting_tasks_and_waits_for_them() {
        let tasks = Tasks::default();
        let (started, mut running) = tokio::sync::mpsc::channel::<()>(1);
        let forever = tasks.spawn(async move {
            let _alive = started;
            std::future::pending::<()>().await;
        });
        assert_eq!(tasks.running(), 1);
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert!(forever.await.is_ok());
        assert_eq!(tasks.running(), 0);
        // The task's state was dropped: its sender is gone.
        assert!(running.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_task_spawned_after_stopping_does_not_run() {
        let tasks = Tasks::default();
        assert!(tasks.stop(Duration::from_secs(1)).await);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        tasks
            .spawn(async move {
                tokio::task::yield_now().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            })
            .await
            .unwrap();
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn stopping_waits_for_blocking_work_up_to_the_deadline() {
        let tasks = Tasks::default();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        tasks.spawn_blocking(move || {
            let _ = wait.recv();
        });
        assert!(!tasks.stop(Duration::from_millis(50)).await);
        assert_eq!(tasks.running(), 1);
        release.send(()).unwrap();
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
    }
}
