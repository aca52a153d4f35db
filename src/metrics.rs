//! Prometheus metrics on `metrics.listen`: the original's counters, queue gauges computed
//! at scrape time, and process metrics read from /proc.

use prometheus_client::encoding::{text, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub r#type: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    pub owner: String,
    pub bridge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeTypeLabels {
    pub owner: String,
    pub bridge: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub bridge: String,
    pub method: String,
    pub endpoint: String,
}

/// The two counters of one kind of proxied request; received minus handled is the
/// number in flight.
#[derive(Clone)]
pub struct RequestCounters {
    pub received: Counter,
    pub handled: Counter,
}

/// A metric family exposed with its HELP and TYPE lines before it has any sample, so
/// that dashboards and alert rules find every family from the first scrape
/// (prometheus-client leaves out families without samples).
#[derive(Debug)]
struct Described(Box<dyn Metric>);

impl EncodeMetric for Described {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Every metric asmux keeps.
pub struct Metrics {
    registry: Registry,
    pub received_events: Family<TypeLabels, Counter>,
    pub dropped_events: Family<DropLabels, Counter>,
    pub accepted_events: Family<BridgeTypeLabels, Counter>,
    pub successful_events: Family<BridgeLabels, Counter>,
    pub failed_events: Family<BridgeLabels, Counter>,
    pub connected_websockets: Family<BridgeLabels, Gauge>,
    pub requests_received: Family<RequestLabels, Counter>,
    pub requests_handled: Family<RequestLabels, Counter>,
    /// Homeserver transactions answered 500 because they could not be stored.
    pub failed_transactions: Counter,
    /// Bytes still writable on the data directory's filesystem.
    pub disk_available_bytes: Gauge,
    /// 1 while the disk reserve is released and new transactions are refused.
    pub disk_short: Gauge,
    queue_depth: Family<BridgeLabels, Gauge>,
    queue_oldest_age: Family<BridgeLabels, Gauge>,
    unreachable_since: Family<BridgeLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            received_events: Family::default(),
            dropped_events: Family::default(),
            accepted_events: Family::default(),
            successful_events: Family::default(),
            failed_events: Family::default(),
            connected_websockets: Family::default(),
            requests_received: Family::default(),
            requests_handled: Family::default(),
            failed_transactions: Counter::default(),
            disk_available_bytes: Gauge::default(),
            disk_short: Gauge::default(),
            queue_depth: Family::default(),
            queue_oldest_age: Family::default(),
            unreachable_since: Family::default(),
            registry: Registry::default(),
        };
        let families: [(&str, &str, Box<dyn Metric>); 14] = [
            ("asmux_received_events", "Events received from the homeserver", Box::new(m.received_events.clone())),
            ("asmux_dropped_events", "Events routed to no bridge", Box::new(m.dropped_events.clone())),
            ("asmux_accepted_events", "Events queued for a bridge", Box::new(m.accepted_events.clone())),
            ("asmux_successful_events", "Events delivered and acknowledged", Box::new(m.successful_events.clone())),
            ("asmux_failed_events", "Events given up on", Box::new(m.failed_events.clone())),
            ("asmux_connected_websockets", "Connected websocket bridges", Box::new(m.connected_websockets.clone())),
            ("asmux_requests_received", "Client-server requests from bridges", Box::new(m.requests_received.clone())),
            ("asmux_requests_handled", "Client-server requests answered", Box::new(m.requests_handled.clone())),
            (
                "asmux_failed_transactions",
                "Homeserver transactions answered 500 because they could not be stored (the homeserver retries them)",
                Box::new(m.failed_transactions.clone()),
            ),
            (
                "asmux_disk_available_bytes",
                "Bytes asmux may still write on the filesystem of its data directory",
                Box::new(m.disk_available_bytes.clone()),
            ),
            (
                "asmux_disk_short",
                "1 while the disk is nearly full: the reserve is released and new transactions are refused",
                Box::new(m.disk_short.clone()),
            ),
            ("asmux_queue_depth", "Queued sub-transactions per bridge", Box::new(m.queue_depth.clone())),
            ("asmux_queue_oldest_age_seconds", "Age of the oldest queued sub-transaction", Box::new(m.queue_oldest_age.clone())),
            (
                "asmux_bridge_unreachable_since_seconds",
                "Unix time since when the bridge cannot be reached (0 when it can)",
                Box::new(m.unreachable_since.clone()),
            ),
        ];
        let mut registry = Registry::default();
        for (name, help, metric) in families {
            registry.register(name, help, Described(metric));
        }
        let version = ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        registry.register("asmux_build", "The running asmux", Info::new(vec![version]));
        Metrics { registry, ..m }
    }
}

impl BridgeLabels {
    pub fn new(owner: &str, prefix: &str) -> BridgeLabels {
        BridgeLabels {
            owner: owner.to_owned(),
            bridge: prefix.to_owned(),
        }
    }
}

/// One bridge's gauges, read at scrape time.
pub struct BridgeSample {
    pub labels: BridgeLabels,
    pub queue_depth: u64,
    pub oldest_queued_age_seconds: u64,
    /// Unix seconds; 0 when reachable.
    pub unreachable_since_seconds: u64,
}

/// A path with its identifiers replaced by `{}`, so that labels stay few:
/// `/_matrix/client/v3/rooms/{}/send/m.room.message/{}`. Every distinct label set is a
/// series kept for the life of the process, so what a client chooses (transaction IDs,
/// state keys, media IDs, server names) must never become a label.
pub fn endpoint(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out = String::with_capacity(path.len());
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        let back = |n: usize| i.checked_sub(n).map(|j| segments[j]);
        // `send/{type}/{txnId}`, `state/{type}/{stateKey}`, `redact/{eventId}/{txnId}`,
        // `download/{server}/{mediaId}` and the like.
        let chosen_by_client = matches!(
            back(2),
            Some("send" | "sendToDevice" | "state" | "redact" | "download" | "thumbnail")
        ) || matches!(back(1), Some("download" | "thumbnail"));
        if segment.is_empty() || (!chosen_by_client && is_api_word(segment)) {
            out.push_str(segment);
        } else {
            out.push_str("{}");
        }
    }
    out
}

/// Whether a path segment is a word of the API (`rooms`, `v3`, `createRoom`,
/// `m.room.message`, `org.matrix.msc3202`) rather than an identifier.
fn is_api_word(segment: &str) -> bool {
    let version = segment.len() <= 3
        && matches!(segment.as_bytes().first(), Some(b'v' | b'r'))
        && segment[1..].bytes().all(|b| b.is_ascii_digit());
    // Capitals only inside a camel-case word: device IDs are capitals throughout.
    segment.len() <= 40
        && matches!(segment.as_bytes().first(), Some(b'a'..=b'z' | b'_'))
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b))
        && (version || segment.contains("msc") || !segment.bytes().any(|b| b.is_ascii_digit()))
}

impl Metrics {
    /// The counters of requests with `labels`, created on first use.
    pub fn request_counters(&self, labels: &RequestLabels) -> RequestCounters {
        RequestCounters {
            received: self.requests_received.get_or_create(labels).clone(),
            handled: self.requests_handled.get_or_create(labels).clone(),
        }
    }

    /// The text exposition, with the per-bridge gauges from `bridges` and process metrics
    /// read now.
    pub fn render(&self, bridges: &[BridgeSample]) -> String {
        self.queue_depth.clear();
        self.queue_oldest_age.clear();
        self.unreachable_since.clear();
        for sample in bridges {
            let gauges = [
                (&self.queue_depth, sample.queue_depth),
                (&self.queue_oldest_age, sample.oldest_queued_age_seconds),
                (&self.unreachable_since, sample.unreachable_since_seconds),
            ];
            for (family, value) in gauges {
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                family.get_or_create(&sample.labels).set(value);
            }
        }
        let mut out = String::new();
        let encoded = text::encode_registry(&mut out, &self.registry)
            .map(|()| out.push_str(&process_metrics()))
            .and_then(|()| text::encode_eof(&mut out));
        if encoded.is_err() {
            tracing::error!("cannot encode metrics");
        }
        out
    }
}

/// Resident memory, CPU time, open files and start time of this process, from /proc.
fn process_metrics() -> String {
    let mut out = String::new();
    // The kernel counts CPU time in clock ticks (100 a second on most, not all, kernels).
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name, which may contain spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split(' ').collect())
            .unwrap_or_default();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (field(11) + field(12)) / ticks;
        out.push_str(&format!(
            "# HELP process_cpu_seconds Total user and system CPU time.\n# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total {cpu}\n"
        ));
        if let Ok(uptime) = std::fs::read_to_string("/proc/uptime") {
            let boot = uptime
                .split(' ')
                .next()
                .and_then(|u| u.parse::<f64>().ok())
                .unwrap_or(0.0);
            let now = crate::clock::now_ms() as f64 / 1000.0;
            let started = now - boot + field(19) / ticks;
            out.push_str(&format!(
                "# HELP process_start_time_seconds Start time of the process since the epoch.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {started:.0}\n"
            ));
        }
    }
    // VmRSS is in kB whatever the page size (16 KiB on some ARM kernels).
    if let Some(rss) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            rss * 1024
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!(
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_described_before_any_event() {
        let text = Metrics::default().render(&[]);
        for (family, kind) in [
            ("asmux_received_events", "counter"),
            ("asmux_dropped_events", "counter"),
            ("asmux_accepted_events", "counter"),
            ("asmux_successful_events", "counter"),
            ("asmux_failed_events", "counter"),
            ("asmux_connected_websockets", "gauge"),
            ("asmux_requests_received", "counter"),
            ("asmux_requests_handled", "counter"),
            ("asmux_failed_transactions", "counter"),
            ("asmux_queue_depth", "gauge"),
            ("asmux_queue_oldest_age_seconds", "gauge"),
            ("asmux_bridge_unreachable_since_seconds", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} in\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} in\n{text}"
            );
        }
        let build = format!(
            "asmux_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
    }

    #[test]
    fn endpoints_hide_identifiers() {
        assert_eq!(
            endpoint("/_matrix/client/v3/rooms/!abc:example.test/send/m.room.message/txn-1"),
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}"
        );
        assert_eq!(
            endpoint("/_matrix/client/v3/sync"),
            "/_matrix/client/v3/sync"
        );
        assert_eq!(
            endpoint("/_matrix/media/v3/download/example.test/abcd"),
            "/_matrix/media/v3/download/{}/{}"
        );
        // Transaction IDs and state keys a client makes of lowercase letters and digits.
        assert_eq!(
            endpoint("/_matrix/client/v3/rooms/!r:e.test/send/m.room.message/m1701.0"),
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}"
        );
        assert_eq!(
            endpoint("/_matrix/client/r0/rooms/!r:e.test/state/m.room.member/bot"),
            "/_matrix/client/r0/rooms/{}/state/m.room.member/{}"
        );
        assert_eq!(
            endpoint("/_matrix/client/v3/rooms/!r:e.test/state/m.room.name/"),
            "/_matrix/client/v3/rooms/{}/state/m.room.name/"
        );
        assert_eq!(
            endpoint("/_matrix/client/v3/sendToDevice/m.room.encrypted/abc"),
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/{}"
        );
        assert_eq!(
            endpoint("/_matrix/client/unstable/org.matrix.msc3202/sync"),
            "/_matrix/client/unstable/org.matrix.msc3202/sync"
        );
        assert_eq!(
            endpoint("/_matrix/client/v1/media/download/e.test/abc"),
            "/_matrix/client/v1/media/download/{}/{}"
        );
        assert_eq!(
            endpoint("/_matrix/client/v3/user/12345/filter"),
            "/_matrix/client/v3/user/{}/filter"
        );
        assert_eq!(
            endpoint("/_matrix/client/v3/profile/@a:b/displayname"),
            "/_matrix/client/v3/profile/{}/displayname"
        );
    }
}
