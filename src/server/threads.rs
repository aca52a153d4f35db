//! The threads that serve connections: one single-threaded runtime per core, each
//! connection kept on one of them from its first byte to its last (a bridge's websocket
//! session included).
//!
//! A proxied request wakes the bridge's connection, the homeserver connection beside it
//! and the handler; on tokio's work-stealing runtime each wake-up may run on another core
//! than the socket's event, and the profile showed a fifth of the proxy's time in that
//! scheduling. On a thread of its own a connection's sockets, timers and tasks share one
//! event loop, as in nginx's workers. Background work (delivery workers, reports,
//! maintenance, blocking disk work) stays on the main runtime: see [`crate::tasks`].

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a connection thread's tasks may take to end once the server has stopped.
/// They have been cancelled by then; this only bounds a task that ignores it.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Running connection threads; connections are handed to them in turn. Dropping this
/// stops them too, without waiting.
pub struct ConnectionThreads {
    threads: Vec<Thread>,
    next: usize,
}

struct Thread {
    runtime: Handle,
    /// Dropping it ends the thread.
    _stop: oneshot::Sender<()>,
    joined: JoinHandle<()>,
}

impl ConnectionThreads {
    /// Starts one thread per core the process may use (its CPU affinity and cgroup
    /// quota count).
    pub fn start() -> std::io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (0..count)
            .map(|index| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                let joined = std::thread::Builder::new()
                    .name(format!("asmux-conn-{index}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                        runtime.shutdown_timeout(STOP_DEADLINE);
                    })?;
                Ok(Thread {
                    runtime: handle,
                    _stop: stop,
                    joined,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { threads, next: 0 })
    }

    /// The runtime of the thread whose turn it is.
    pub fn next(&mut self) -> &Handle {
        let index = self.next % self.threads.len();
        self.next = self.next.wrapping_add(1);
        &self.threads[index].runtime
    }

    /// Ends the threads and waits for them.
    pub async fn stop(self) {
        let joined: Vec<_> = self
            .threads
            .into_iter()
            .map(|thread| thread.joined)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in joined {
                let _ = thread.join();
            }
        })
        .await;
    }
}
