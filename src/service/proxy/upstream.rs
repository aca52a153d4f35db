//! A homeserver connection for each bridge connection, run by the bridge connection's own
//! task.
//!
//! Through the pooled client, each proxied request went from the bridge connection's task
//! to the pool's connection task and its answer came back: two task hand-offs, often
//! between worker threads, plus the pool's bookkeeping, on the path of every request. A
//! bridge connection serves one request at a time, so one homeserver connection is all it
//! needs; when the server's connection task also drives that connection, a request and
//! its answer never leave the task (figures in `benches/PROFILE.md`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hyper::client::conn::http1::SendRequest;
use tokio::sync::mpsc;

use crate::http_client::{error_chain, Body, HttpClient, RequestError, RunningConnection};

/// The homeserver connection of one bridge connection, given to each of its requests.
#[derive(Clone)]
pub struct Upstream {
    /// The sender of the open connection, between requests.
    idle: Arc<Mutex<Option<SendRequest<Body>>>>,
    /// New connections, to the [`UpstreamDriver`] that runs them.
    opened: mpsc::UnboundedSender<RunningConnection>,
}

/// Runs the connections an [`Upstream`] opens; polled by the task that serves the bridge
/// connection, beside it.
pub struct UpstreamDriver {
    opened: mpsc::UnboundedReceiver<RunningConnection>,
}

/// An [`Upstream`] and its driver.
pub fn upstream() -> (Upstream, UpstreamDriver) {
    let (opened, receiver) = mpsc::unbounded_channel();
    let upstream = Upstream {
        idle: Arc::default(),
        opened,
    };
    (upstream, UpstreamDriver { opened: receiver })
}

impl Upstream {
    /// Sends `request` (origin-form URI, `Host` set) on this bridge connection's
    /// homeserver connection, opening one to `origin` when there is none or it closed.
    /// A request the old connection could not take (the homeserver closed it while idle)
    /// goes out once more on a new one.
    pub async fn send(
        &self,
        client: &HttpClient,
        origin: &http::Uri,
        request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, RequestError> {
        let mut request = request;
        let mut reused = self.take_open().await;
        loop {
            let retry_allowed = reused.is_some();
            let mut sender = match reused.take() {
                Some(sender) => sender,
                None => self.open(client, origin).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    *self.lock() = Some(sender);
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if retry_allowed => request = unsent,
                    _ => return Err(RequestError::Connect(error_chain(&failed.into_error()))),
                },
            }
        }
    }

    /// The open connection's sender once it can take a request; `None` when it closed.
    async fn take_open(&self) -> Option<SendRequest<Body>> {
        let mut sender = self.lock().take()?;
        sender.ready().await.ok()?;
        Some(sender)
    }

    async fn open(
        &self,
        client: &HttpClient,
        origin: &http::Uri,
    ) -> Result<SendRequest<Body>, RequestError> {
        let (mut sender, connection) = client.connect(origin).await?;
        // The driver lives as long as the bridge connection, which holds this upstream.
        let _ = self.opened.send(connection);
        // Ready once the driver has polled the new connection; one the homeserver
        // closed at once fails here instead of with the request.
        sender
            .ready()
            .await
            .map_err(|e| RequestError::Connect(error_chain(&e)))?;
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<Body>>> {
        crate::sync::lock(&self.idle)
    }
}

impl UpstreamDriver {
    /// Runs the newest connection until it closes; a newer one replaces it (the upstream
    /// opens one only when the previous one can take no more requests). Never ends: the
    /// caller stops polling when the bridge connection ends.
    pub async fn run(mut self) -> Infallible {
        let mut current: Option<RunningConnection> = None;
        loop {
            tokio::select! {
                Some(next) = self.opened.recv() => current = Some(next),
                () = async { current.as_mut().expect("guarded").await }, if current.is_some() => {
                    current = None;
                }
                else => return std::future::pending().await,
            }
        }
    }
}
