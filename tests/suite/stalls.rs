//! Peers that stall: a push bridge that never answers, a websocket peer that is gone
//! without closing, a homeserver that takes its time, slow and idle clients, more clients
//! than the connection cap. None of them delays another bridge, each stuck one is
//! detected, and shutdown still ends in time with no task left behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longer than a stopping server may take (requests' deadline, then blocking work's).
const STOP_BOUND: Duration = Duration::from_secs(20);

/// Stops the server, which must end within [`STOP_BOUND`] whatever its peers do.
async fn stop_in_time(server: TestServer) {
    tokio::time::timeout(STOP_BOUND, server.stop())
        .await
        .expect("shutdown ended in time");
}

fn join(prefix: &str, room: &str) -> Value {
    json!({"type": "m.room.member", "room_id": room, "sender": "@alice:example.test",
           "state_key": format!("@_alice_{prefix}_bot:example.test"),
           "event_id": format!("$join-{prefix}"), "content": {"membership": "join"}})
}

fn message(room: &str, n: usize) -> Value {
    json!({"type": "m.room.message", "room_id": room, "sender": "@bob:example.test",
           "event_id": format!("${room}-{n}"), "content": {"msgtype": "m.text", "body": "hi"}})
}

async fn status(server: &TestServer, bridge: &str) -> Value {
    server
        .root_get(&format!("/_matrix/asmux/appservice/{bridge}/status"))
        .await
        .body
}

/// Polls the bridge's status (bounded) until `done` holds; the status then.
async fn status_until(server: &TestServer, bridge: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = status(server, bridge).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{bridge} never reached the expected status: {last}");
}

/// `GET url` with the bridge's token, as a future that owns what it needs.
fn get_as(url: String, registration: &Value) -> impl std::future::Future<Output = Option<Reply>> {
    let token = registration["as_token"].as_str().unwrap().to_owned();
    async move { try_send("GET", &url, Some(&token), None).await }
}

/// A TCP peer that accepts connections and reads what arrives but never answers.
struct SilentPeer {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl SilentPeer {
    async fn start() -> SilentPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 65536];
                    let mut counted = false;
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if !counted && buf[..n].starts_with(b"PUT ") {
                            counted = true;
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        SilentPeer { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_for_requests(&self, n: usize) {
        for _ in 0..500 {
            if self.requests.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the silent peer got no request");
    }
}

/// Connects to asmux and returns when the server closes the connection: the instant it
/// did. `send` is written first, then `dribble` one byte every 100 ms.
async fn closed_by_server(addr: std::net::SocketAddr, send: &[u8], dribble: &[u8]) -> Instant {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(send).await.unwrap();
    let mut buf = vec![0; 4096];
    let mut dribble = dribble.iter();
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(byte) = dribble.next() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return Instant::now();
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_bridge_that_never_answers_delays_no_other_bridge() {
    let hs = Stub::homeserver().await;
    let server =
        TestServer::start_with(&hs, "max_pdu_age_seconds = 0\npush_timeout_seconds = 5").await;
    let silent = SilentPeer::start().await;
    let healthy = Stub::bridge().await;
    provision(
        &server,
        "alice",
        "stuck",
        json!({"push": true, "address": silent.url()}),
    )
    .await;
    provision(
        &server,
        "alice",
        "healthy",
        json!({"push": true, "address": healthy.url()}),
    )
    .await;
    let setup = json!({"events": [join("stuck", "!stuck"), join("healthy", "!healthy")]});
    assert_eq!(hs_transaction(&server, "0", &setup).await.status, 200);
    healthy.wait_for_transactions(1).await;
    silent.wait_for_requests(1).await;

    // While the stuck bridge's first push hangs, every transaction reaches the other.
    let mut slowest = Duration::ZERO;
    for n in 1..=20 {
        let started = Instant::now();
        let body = json!({"events": [message("!stuck", n), message("!healthy", n)]});
        assert_eq!(
            hs_transaction(&server, &n.to_string(), &body).await.status,
            200
        );
        healthy.wait_for_transactions(1 + n).await;
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("push bridge beside a hung one: slowest transaction-to-delivery {slowest:?}");
    let stuck = status(&server, "alice/stuck").await;
    assert!(
        stuck["unreachable_since"].is_null(),
        "all of that happened within the hung push's timeout: {stuck}"
    );

    // Its push times out: reported unreachable, nothing dropped.
    let stuck = status_until(&server, "alice/stuck", |s| {
        !s["unreachable_since"].is_null()
    })
    .await;
    assert_eq!(stuck["queue_depth"], 21, "{stuck}");
    assert!(status(&server, "alice/healthy").await["unreachable_since"].is_null());
    stop_in_time(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_gone_without_a_word_is_detected_by_its_missing_pong() {
    let hs = Stub::homeserver().await;
    let server =
        TestServer::start_with(&hs, "max_pdu_age_seconds = 0\nwebsocket_ping_seconds = 1").await;
    let gone = provision(&server, "alice", "gone", json!({"push": false})).await;
    let live = provision(&server, "alice", "live", json!({"push": false})).await;
    let setup = json!({"events": [join("gone", "!gone"), join("live", "!live")]});
    assert_eq!(hs_transaction(&server, "0", &setup).await.status, 200);
    let mut live_ws = WsBridge::connect(&server, live["as_token"].as_str().unwrap(), 3).await;
    live_ws.receive_events(1).await;
    // Never read again: its pings go unanswered, as with a peer whose network vanished
    // (the kernel still takes the bytes, nothing comes back).
    let _half_open = ws_connect(&server, gone["as_token"].as_str().unwrap(), 3)
        .await
        .unwrap();
    status_until(&server, "alice/gone", |s| s["connected"] == true).await;

    let body = json!({"events": [message("!gone", 1), message("!live", 1)]});
    assert_eq!(hs_transaction(&server, "1", &body).await.status, 200);
    assert_eq!(event_ids(&live_ws.receive_events(1).await), ["$!live-1"]);

    // The live bridge keeps reading (which answers the pings) until the other is dropped.
    let gone = loop {
        match live_ws.next_event(Duration::from_millis(100)).await {
            WsEvent::Timeout => {}
            other => panic!("the live bridge got {other:?}"),
        }
        let gone = status(&server, "alice/gone").await;
        if gone["connected"] == false {
            break gone;
        }
    };
    assert!(!gone["unreachable_since"].is_null(), "{gone}");
    assert!(gone["queue_depth"].as_u64().unwrap() >= 1, "kept: {gone}");
    assert_eq!(status(&server, "alice/live").await["connected"], true);
    stop_in_time(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_homeserver_answer_holds_up_only_the_request_waiting_for_it() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let slow = provision(&server, "alice", "slow", json!({"push": false})).await;
    let other = provision(&server, "alice", "other", json!({"push": false})).await;
    let setup = json!({"events": [join("other", "!other")]});
    assert_eq!(hs_transaction(&server, "0", &setup).await.status, 200);
    let mut other_ws = WsBridge::connect(&server, other["as_token"].as_str().unwrap(), 3).await;
    other_ws.receive_events(1).await;

    let held = "/_matrix/client/v3/joined_rooms";
    hs.hold(held);
    let waiting = tokio::spawn(get_as(server.url(held), &slow));
    while hs.requests_to(held).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let reply = send(
        "GET",
        &server.url("/_matrix/client/v3/pushrules/"),
        other["as_token"].as_str(),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = json!({"events": [message("!other", 1)]});
    assert_eq!(hs_transaction(&server, "1", &body).await.status, 200);
    assert_eq!(event_ids(&other_ws.receive_events(1).await), ["$!other-1"]);
    eprintln!(
        "beside a held homeserver request: a proxied request and a delivery took {:?}",
        started.elapsed()
    );
    assert!(!waiting.is_finished(), "the held request is still waiting");

    hs.release(held);
    let answered = waiting.await.unwrap().expect("answered");
    assert_eq!(answered.status, 200, "{}", answered.text);
    assert_eq!(answered.body["path"], held);
    stop_in_time(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_after_the_header_timeout() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start_with(
        &hs,
        "max_pdu_age_seconds = 0\nheader_read_timeout_seconds = 1",
    )
    .await;
    let started = Instant::now();
    // Slowloris: a request line, then a header one byte at a time, never finished.
    let dribbling = closed_by_server(
        server.addr,
        b"GET /_matrix/client/versions HTTP/1.1\r\n",
        &[b'X'; 100],
    );
    // Connected, silent.
    let silent = closed_by_server(server.addr, b"", b"");
    // One request answered, then idle on keep-alive.
    let idle = closed_by_server(
        server.addr,
        b"GET /_matrix/client/versions HTTP/1.1\r\nhost: asmux\r\n\r\n",
        b"",
    );
    let (dribbling, silent, idle) = tokio::time::timeout(
        Duration::from_secs(15),
        futures_util::future::join3(dribbling, silent, idle),
    )
    .await
    .expect("every slow or idle connection was closed");
    for (what, at) in [("dribbling", dribbling), ("silent", silent), ("idle", idle)] {
        eprintln!("{what} connection closed after {:?}", at - started);
    }
    // The dribbling client sent a byte every 100 ms: only the deadline can have ended it,
    // not a pause.
    assert!(dribbling - started >= Duration::from_millis(900));
    let reply = send("GET", &server.url("/_matrix/client/versions"), None, None).await;
    assert_eq!(reply.status, 200, "the server still answers");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start_with(
        &hs,
        "max_pdu_age_seconds = 0\nmax_connections = 2\nheader_read_timeout_seconds = 1",
    )
    .await;
    // Two silent connections take both slots until the header timeout closes them.
    let first = tokio::spawn(closed_by_server(server.addr, b"", b""));
    let second = tokio::spawn(closed_by_server(server.addr, b"", b""));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = send("GET", &server.url("/_matrix/client/versions"), None, None).await;
    let answered = Instant::now();
    assert_eq!(reply.status, 200, "{}", reply.text);
    let freed = first.await.unwrap().min(second.await.unwrap());
    assert!(
        answered >= freed,
        "the third connection was served only once a slot was free ({:?} early)",
        freed - answered
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_in_time_with_every_kind_of_stuck_peer() {
    let hs = Stub::homeserver().await;
    let server =
        TestServer::start_with(&hs, "max_pdu_age_seconds = 0\npush_timeout_seconds = 3600").await;
    let silent = SilentPeer::start().await;
    let push = provision(
        &server,
        "alice",
        "push",
        json!({"push": true, "address": silent.url()}),
    )
    .await;
    let ws = provision(&server, "alice", "ws", json!({"push": false})).await;
    let setup = json!({"events": [join("push", "!push"), join("ws", "!ws")]});
    assert_eq!(hs_transaction(&server, "0", &setup).await.status, 200);
    silent.wait_for_requests(1).await;
    let _unread_socket = ws_connect(&server, ws["as_token"].as_str().unwrap(), 3)
        .await
        .unwrap();
    let held = "/_matrix/client/v3/joined_rooms";
    hs.hold(held);
    let waiting = tokio::spawn(get_as(server.url(held), &push));
    while hs.requests_to(held).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut slowloris = TcpStream::connect(server.addr).await.unwrap();
    slowloris
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\n")
        .await
        .unwrap();

    let started = Instant::now();
    stop_in_time(server).await;
    eprintln!("shutdown with stuck peers took {:?}", started.elapsed());
    assert!(
        waiting.await.unwrap().is_none(),
        "the request still held by the homeserver at the deadline was cut"
    );
}
