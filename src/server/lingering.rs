//! Request bodies that are read to their end even when the handler refused them unread.
//!
//! A route that answers before reading the body (413 for a body over its limit, 401 for a
//! bad token) leaves the rest of the body in the socket. hyper then closes the
//! connection, and closing a socket with unread data makes the kernel send a reset, which
//! can reach the client before it has read the answer: it sees "connection reset" instead
//! of the Matrix error. As nginx's lingering close does, the rest is read and dropped for
//! a few seconds after the answer, so the answer arrives and the connection stays usable.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long the rest of a refused body is read before the connection is given up.
const LINGER: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end, is read to its end in the background.
pub struct LingeringBody(Option<Incoming>);

impl LingeringBody {
    pub fn new(body: Incoming) -> Self {
        LingeringBody(Some(body))
    }
}

impl Body for LingeringBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut().0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take().filter(|body| !body.is_end_stream()) else {
            return;
        };
        // On the connection's own thread; no runtime means the server is gone already.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
            });
        }
    }
}
