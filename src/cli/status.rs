//! `asmux status`: one line per bridge with its connection, queue and last reported
//! state, from the running server (or from the data directory when it is stopped).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::backend::Backend;
use crate::config::Config;
use crate::service::bridge_requests::BridgeStatus;
use crate::store::now_ms;
use crate::store::reserve::{self, DiskReport};

pub async fn print(config: &Config, json: bool) -> Result<ExitCode> {
    let backend = Backend::open(config)?;
    let mut bridges = backend.statuses().await?;
    bridges.sort_by(|a, b| (&a.owner, &a.prefix).cmp(&(&b.owner, &b.prefix)));
    let disk = reserve::inspect(&config.data_dir(), config.disk_reserve_bytes()).ok();
    let mut out = std::io::stdout().lock();
    if json {
        let doc = serde_json::json!({
            "running": backend.server().is_some(),
            "disk": disk,
            "bridges": bridges,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let connected = bridges.iter().filter(|b| b.connected).count();
    let queued: u64 = bridges.iter().map(|b| b.queue_depth).sum();
    match backend.server() {
        Some(base) => writeln!(
            out,
            "asmux is running ({base}): {} bridges, {connected} connected, {queued} transactions queued",
            bridges.len()
        )?,
        None => writeln!(
            out,
            "asmux is not running (read {}): {} bridges, {queued} transactions queued",
            config.data_dir().display(),
            bridges.len()
        )?,
    }
    if let Some(disk) = &disk {
        writeln!(out, "{}", disk_line(disk))?;
    }
    if bridges.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<[String; 6]> = bridges.iter().map(|b| row(b, now)).collect();
    let header = [
        "BRIDGE",
        "MODE",
        "CONNECTED",
        "QUEUED",
        "LAST DELIVERY",
        "STATE",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn disk_line(disk: &DiskReport) -> String {
    let available = mib(disk.available_bytes);
    if disk.short {
        format!(
            "disk: NEARLY FULL, {available} free, reserve released: new homeserver transactions \
             are refused until {} are free",
            mib(disk.reserve_bytes.saturating_mul(2))
        )
    } else if disk.reserve_in_place {
        format!(
            "disk: {available} free, {} reserve in place",
            mib(disk.reserve_bytes)
        )
    } else {
        format!("disk: {available} free")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn row(b: &BridgeStatus, now: u64) -> [String; 6] {
    let mode = if b.push { "push" } else { "websocket" };
    let connected = match (b.push, b.connected, b.connected_since, b.unreachable_since) {
        (_, false, _, Some(since)) => {
            format!("unreachable for {}", duration(now.saturating_sub(since)))
        }
        (true, _, _, _) => "-".to_owned(),
        (false, true, Some(since), _) => format!(
            "yes, v{} for {}",
            b.protocol.unwrap_or_default(),
            duration(now.saturating_sub(since))
        ),
        (false, true, None, _) => "yes".to_owned(),
        (false, false, _, None) => "no".to_owned(),
    };
    let queued = match b.oldest_queued_age_ms {
        Some(age) if b.queue_depth > 0 => {
            format!("{} (oldest {})", b.queue_depth, duration(age))
        }
        _ => b.queue_depth.to_string(),
    };
    let last = b
        .last_delivery
        .map(|t| format!("{} ago", duration(now.saturating_sub(t))))
        .unwrap_or_else(|| "-".to_owned());
    let state = b
        .bridge_state
        .as_ref()
        .and_then(|s| s.get("state_event"))
        .and_then(|s| s.as_str())
        .unwrap_or("-")
        .to_owned();
    [
        format!("{}/{}", b.owner, b.prefix),
        mode.to_owned(),
        connected,
        queued,
        last,
        state,
    ]
}

/// `42s`, `7m`, `3h`, `12d`: coarse, like people read uptimes.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_coarse() {
        assert_eq!(duration(999), "0s");
        assert_eq!(duration(59_000), "59s");
        assert_eq!(duration(120_000), "2m");
        assert_eq!(duration(7_200_000), "2h");
        assert_eq!(duration(3 * 86_400_000), "3d");
    }
}
