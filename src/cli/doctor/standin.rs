//! The doctor's stand-in for a stopped asmux: it holds asmux's listening address for the
//! duration of the checks and answers the homeserver's MSC2659 ping, so the round trip
//! through the registration's URL is checked whether or not asmux runs.

use std::time::Duration;

use http::{Method, Request, StatusCode};

use super::Doctor;
use crate::cli::backend::local_url;
use crate::http_client::full_body;
use crate::secret::Secret;

/// How long the stand-in waits after a failed accept (out of descriptors, say) before
/// it accepts again, instead of spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Who holds asmux's listening address.
pub(super) enum Listener {
    /// Nobody: the doctor holds it and answers pings until dropped.
    Doctor(tokio::task::JoinHandle<()>),
    /// The asmux server.
    Asmux,
    /// Something the doctor cannot use.
    Unusable,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Doctor(task) = self {
            task.abort();
        }
    }
}

impl Doctor {
    /// Binds the listener if it is free (the server is stopped), else checks that asmux
    /// is what holds it.
    pub(super) async fn listener(&mut self) -> Listener {
        let addr = self.config.listen_addr();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                self.report.ok(
                    "listener",
                    format!(
                        "{addr} is free: asmux is not running (the doctor answers there meanwhile)"
                    ),
                );
                let hs_token = self.config.appservice.hs_token.clone();
                Listener::Doctor(tokio::spawn(answer_pings(listener, hs_token)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let url = format!("{}/_matrix/asmux/appservices", local_url(addr));
                let token = self.config.mux.shared_secret.clone();
                match self.call(Method::GET, &url, Some(&token), None).await {
                    Ok((StatusCode::OK, body)) if body["appservices"].is_array() => {
                        self.report
                            .ok("listener", format!("{addr} is held by asmux (running)"));
                        Listener::Asmux
                    }
                    _ => {
                        self.report.fail(
                            "listener",
                            format!("{addr} is held by another program (or an asmux with another shared secret)"),
                            "stop that program, or give asmux another mux.port",
                        );
                        Listener::Unusable
                    }
                }
            }
            Err(e) => {
                self.report.fail(
                    "listener",
                    format!("cannot listen on {addr}: {e}"),
                    "use a port above 1024 or start asmux with CAP_NET_BIND_SERVICE (the package's unit has it)",
                );
                Listener::Unusable
            }
        }
    }
}

/// Answers the homeserver's MSC2659 ping (with asmux's hs_token) while asmux is stopped.
async fn answer_pings(listener: tokio::net::TcpListener, hs_token: Secret) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let hs_token = hs_token.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let authorized = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(crate::secret::bearer)
                .is_some_and(|t| hs_token.matches(t));
            let (status, body) = match (request.uri().path(), authorized) {
                ("/_matrix/app/v1/ping", true) => (StatusCode::OK, "{}"),
                ("/_matrix/app/v1/ping", false) => (
                    StatusCode::FORBIDDEN,
                    r#"{"errcode":"M_FORBIDDEN","error":"Bad hs_token"}"#,
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"errcode":"M_UNKNOWN","error":"asmux is not running (asmux doctor holds its address)"}"#,
                ),
            };
            let response = http::Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(full_body(body));
            async move { response }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
