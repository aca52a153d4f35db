//! 200 MB uploads and downloads stream through the proxy: the real asmux process grows by
//! less than 32 MB (peak RSS from /proc), so bodies are never held in memory.

// The harness of the suite; this test is its own process (it measures its memory) and
// uses a part of it.
#[allow(dead_code, unused_imports)]
#[path = "suite/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::BodyExt;

const SIZE: usize = 200 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const MAX_GROWTH_KB: u64 = 32 * 1024;

/// A field of /proc/PID/status in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_without_buffering() {
    let hs = Stub::homeserver().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text(&hs.url(), port)).unwrap();
    let process = Process::serve(&config, port).await;
    let pid = process.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let reg = send(
        "PUT",
        &format!("{base}/_matrix/asmux/appservice/alice/whatsapp"),
        Some(SHARED_SECRET),
        Some("{}"),
    )
    .await
    .body;
    let token = reg["as_token"].as_str().unwrap().to_owned();
    // Warm up the connection pools and allocator before the baseline.
    send(
        "GET",
        &format!("{base}/_matrix/client/versions"),
        Some(&token),
        None,
    )
    .await;
    let baseline = status_kb(pid, "VmRSS:");

    let client = asmux::http_client::HttpClient::new().unwrap();
    let chunk = Bytes::from(vec![42u8; CHUNK]);
    let upload = futures_util::stream::iter(
        (0..SIZE / CHUNK)
            .map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let body = BodyExt::boxed(
        http_body_util::StreamBody::new(upload)
            .map_err(|e| Box::new(e) as asmux::http_client::BoxError),
    );
    let request = http::Request::post(format!("{base}/_matrix/media/v3/upload?filename=big.bin"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-length", SIZE.to_string())
        .body(body)
        .unwrap();
    let response = client
        .send_buffered(request, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer["size"], SIZE, "the homeserver got every byte");

    let request = http::Request::get(format!(
        "{base}/_matrix/media/v3/download/example.test/big?size={SIZE}"
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(asmux::http_client::full_body(""))
    .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], SIZE.to_string());
    let mut stream = response.into_body().into_data_stream();
    let mut received = 0;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, SIZE, "every byte came back");

    let peak = status_kb(pid, "VmHWM:");
    let growth = peak.saturating_sub(baseline);
    eprintln!("rss baseline {baseline} kB, peak {peak} kB");
    assert!(
        growth < MAX_GROWTH_KB,
        "asmux grew by {growth} kB (baseline {baseline} kB, peak {peak} kB)"
    );
}
