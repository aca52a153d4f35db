//! The doctor's checklist: one line per check, printed as text or JSON.

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Worth knowing, not broken.
    Warn,
    Fail,
    /// Could not be checked (what it depends on failed, or nothing can tell).
    Skip,
}

/// One line of the checklist.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Default)]
pub(super) struct Report(pub(super) Vec<Check>);

impl Report {
    fn add(
        &mut self,
        check: &str,
        outcome: Outcome,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            check: check.to_owned(),
            outcome,
            detail: detail.into(),
            fix,
        });
    }
    pub(super) fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Outcome::Ok, detail, None);
    }
    pub(super) fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Outcome::Fail, detail, Some(fix.into()));
    }
    pub(super) fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Outcome::Warn, detail, Some(fix.into()));
    }
    pub(super) fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Outcome::Skip, detail, None);
    }
}

/// Prints the checklist (or JSON); exit status 0 only when nothing failed.
pub fn print(checks: &[Check], json: bool) -> Result<std::process::ExitCode> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "checks": checks }))?
        );
    } else {
        for check in checks {
            let mark = match check.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "--  ",
            };
            println!("[{mark}] {}: {}", check.check, check.detail);
            if let Some(fix) = &check.fix {
                println!("       fix: {fix}");
            }
        }
    }
    let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
