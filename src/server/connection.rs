//! One client connection: HTTP/1 served on a connection thread, each request sent to the
//! proxy or to the warp routes, its homeserver connection driven beside it, and a
//! graceful end when the server drains.

use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::lingering::LingeringBody;
use crate::service::proxy::ConnectionState;
use crate::service::Services;

/// Who answers a request: the proxy directly, or the warp routes.
enum Target<R> {
    Proxy(Arc<Services>, ConnectionState),
    Routes(R),
}

/// Serves the connection `stream` until it ends, or until `draining` (then the request
/// in flight finishes first); `slot` is its place among `mux.max_connections`.
pub(super) async fn serve<R>(
    stream: std::net::TcpStream,
    http: hyper::server::conn::http1::Builder,
    routes: R,
    services: Arc<Services>,
    draining: CancellationToken,
    slot: OwnedSemaphorePermit,
) where
    R: hyper::service::Service<
            hyper::Request<LingeringBody>,
            Response = warp::reply::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    R::Future: Send + 'static,
{
    let for_request = services.clone();
    // The driver runs in this connection's task, beside it.
    let (proxy_state, upstream_driver) = ConnectionState::new();
    let handler =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // Cloning the warp routes costs more than a proxied request's own work:
            // only the requests that use them pay for it.
            let target = if crate::api::is_proxied(request.uri().path()) {
                Target::Proxy(for_request.clone(), proxy_state.clone())
            } else {
                Target::Routes(routes.clone())
            };
            async move {
                match target {
                    Target::Proxy(services, state) => {
                        let request = request.map(LingeringBody::new);
                        Ok::<_, Infallible>(crate::api::proxy(services, request, state).await)
                    }
                    Target::Routes(routes) => {
                        if let Some(pending) =
                            crate::api::PendingUpgrade::from_request(&mut request)
                        {
                            request.extensions_mut().insert(pending);
                        }
                        let request = request.map(LingeringBody::new);
                        let response = hyper::service::Service::call(&routes, request).await?;
                        Ok(crate::api::boxed(response))
                    }
                }
            }
        });

    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve a connection");
            return;
        }
    };
    let connection = http
        .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
        .with_upgrades();
    // An upgraded connection ends here too, handing its socket to the websocket
    // session: a bridge's websocket does not hold a slot.
    let _slot = slot;
    let mut connection = std::pin::pin!(connection);
    let mut upstream = std::pin::pin!(upstream_driver.run());
    // Biased: the connection is what wakes the task nearly every time.
    let ended = tokio::select! {
        biased;
        ended = connection.as_mut() => ended,
        never = upstream.as_mut() => match never {},
        () = draining.cancelled() => {
            // Finishes the request in flight, then closes.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                ended = connection.as_mut() => ended,
                never = upstream.as_mut() => match never {},
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
