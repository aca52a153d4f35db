//! The shipped Grafana dashboard and Prometheus alert rules: they parse, and every metric
//! they query is one asmux exposes.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn monitoring(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/monitoring")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The sample names a fresh server's exposition announces: counters get `_total`, info
/// metrics `_info`, as the text format names their samples.
fn exposed() -> BTreeSet<String> {
    let text = asmux::metrics::Metrics::default().render(&[]);
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            "info" => format!("{name}_info"),
            _ => name.to_owned(),
        })
        .collect()
}

/// The metric names a PromQL expression uses: identifiers starting with `asmux_` or
/// `process_` (label names and functions never do).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = ["asmux_", "process_"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn assert_known(exprs: &[String], exposed: &BTreeSet<String>, what: &str) {
    assert!(!exprs.is_empty(), "{what} has no queries");
    for expr in exprs {
        let names = metrics_in(expr);
        assert!(!names.is_empty(), "{what}: {expr} queries no asmux metric");
        for name in names {
            let known = exposed.contains(&name)
                || ["process_resident_memory_bytes", "process_cpu_seconds_total"]
                    .contains(&name.as_str());
            assert!(
                known,
                "{what}: {expr} queries {name}, which asmux does not expose"
            );
        }
    }
}

#[test]
fn the_dashboard_queries_only_metrics_asmux_exposes() {
    let dashboard: Value = serde_json::from_str(&monitoring("grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let exposed = exposed();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let exprs: Vec<String> = (panel["targets"].as_array().unwrap().iter())
            .map(|t| t["expr"].as_str().unwrap().to_owned())
            .collect();
        assert_known(&exprs, &exposed, title);
    }
    // Every asmux family appears on the dashboard somewhere.
    let all: String = panels.iter().map(|p| p["targets"].to_string()).collect();
    for name in exposed.iter().filter(|n| n.starts_with("asmux_")) {
        assert!(all.contains(name.as_str()), "{name} is on no panel");
    }
}

#[test]
fn the_alert_rules_parse_and_query_only_metrics_asmux_exposes() {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&monitoring("prometheus-alerts.yml")).unwrap();
    let exposed = exposed();
    let groups = rules["groups"].as_sequence().unwrap();
    let mut alerts = 0;
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
    {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            ["critical", "warning", "info"].contains(&rule["labels"]["severity"].as_str().unwrap()),
            "{name}: severity"
        );
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{name}: summary"
        );
        let expr = rule["expr"].as_str().unwrap().to_owned();
        // `up` is Prometheus's own.
        if name != "AsmuxDown" {
            assert_known(&[expr], &exposed, name);
        }
        alerts += 1;
    }
    assert!(alerts >= 5, "{alerts} alerts");
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metrics_in("sum by (owner) (rate(asmux_failed_events_total[5m])) > process_x"),
        ["asmux_failed_events_total", "process_x"]
    );
    assert!(metrics_in("up == 0").is_empty());
}

/// Prometheus's own checker (Debian's `prometheus` package, installed by scripts/test)
/// accepts the shipped rules, and refuses a broken copy: it really checks PromQL.
#[test]
#[ignore = "needs promtool (Debian's prometheus)"]
fn promtool_accepts_the_alert_rules() {
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/monitoring/prometheus-alerts.yml");
    let check = |path: &Path| {
        std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(path)
            .output()
            .expect(
                "promtool is not installed (Debian package prometheus); scripts/test installs it",
            )
    };
    let out = check(&rules);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let broken = tempfile::NamedTempFile::new().unwrap();
    let text = monitoring("prometheus-alerts.yml");
    let first_expr = text.find("expr:").unwrap();
    let mut damaged = text.clone();
    damaged.insert_str(first_expr + "expr:".len(), " sum(");
    std::fs::write(broken.path(), damaged).unwrap();
    assert!(!check(broken.path()).status.success());
}
