//! The one-way import rule of `src/lib.rs`: a module names only modules below it (or the
//! foundations). Read from the source text, so it also covers `use` inside functions.

use std::path::Path;

/// Top-level modules from the top down; a module may name those after it.
const LAYERS: &[&str] = &[
    "cli", "server", "api", "service", "operator", "error", "store", "matrix",
];
/// Usable by every layer; they name nothing above `matrix` themselves.
const FOUNDATIONS: &[&str] = &[
    "clock",
    "config",
    "secret",
    "http_client",
    "metrics",
    "sync",
    "tasks",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

/// The top-level module a source file belongs to.
fn module_of(path: &Path, src: &Path) -> String {
    let relative = path.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// Every `crate::x` named in `text`.
fn named_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        // `asmux::` from outside is not a `crate::` path; skip `$crate::` too.
        if text[..i].ends_with('$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            // `crate::{a, b}`
            let group = rest.trim_start_matches('{');
            let end = group.find('}').unwrap_or(group.len());
            out.extend(
                group[..end]
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or("").to_owned()),
            );
        } else {
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_flow_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    let mut violations = Vec::new();
    for path in &paths {
        let module = module_of(path, &src);
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for named in named_modules(&text) {
            if named == module || FOUNDATIONS.contains(&named.as_str()) {
                continue;
            }
            let allowed = match (rank(&module), rank(&named)) {
                (Some(own), Some(other)) => other > own,
                // A foundation may only name `matrix`.
                (None, Some(other)) => LAYERS[other] == "matrix",
                (_, None) => false,
            };
            if !allowed {
                violations.push(format!("{} names crate::{named}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_nested_paths() {
    assert_eq!(
        named_modules("use crate::{config, store::Bridge};\nlet x = crate::sync::lock(&m);"),
        ["config", "store", "sync"]
    );
}
