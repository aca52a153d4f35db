//! `asmux backup ...` and `asmux compact`: whole-database copies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::args::BackupCommand;
use super::backend::Backend;
use super::{init_logging, runtime};
use crate::config::Config;
use crate::store;

pub(super) fn run(config_path: &Path, command: BackupCommand) -> Result<ExitCode> {
    use store::backup;
    let print = |what: &str, path: &Path, summary: &backup::Summary| {
        let records: u64 = summary.trees.iter().map(|(_, n)| n).sum();
        println!(
            "{what} {}: asmux {}, schema {}, {records} records",
            path.display(),
            summary.header.asmux_version,
            summary.header.schema_version
        );
        for (tree, count) in &summary.trees {
            println!("  {tree}: {count}");
        }
    };
    match command {
        BackupCommand::Verify { file } => {
            let summary = backup::verify(&file)
                .with_context(|| format!("{} is not a usable backup", file.display()))?;
            print("Verified", &file, &summary);
        }
        BackupCommand::Create { output } => {
            let config = Config::load(config_path)?;
            init_logging(&config, true);
            let summary =
                runtime()?.block_on(async { Backend::open(&config)?.backup(&output).await })?;
            print("Wrote", &output, &summary);
        }
        BackupCommand::Restore {
            file,
            data_dir,
            force,
        } => {
            let dir = match data_dir {
                Some(dir) => dir,
                None => Config::load(config_path)?.data_dir(),
            };
            let summary = backup::restore(&file, &dir, force).with_context(|| {
                format!("cannot restore {} into {}", file.display(), dir.display())
            })?;
            print(
                &format!("Restored into {}:", dir.display()),
                &file,
                &summary,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `asmux compact`: rewrites the database compactly, with the server stopped.
pub(super) fn compact(config_path: &Path, data_dir: Option<PathBuf>) -> Result<ExitCode> {
    let dir = match data_dir {
        Some(dir) => dir,
        None => Config::load(config_path)?.data_dir(),
    };
    let done = store::replace::compact(&dir)
        .with_context(|| format!("cannot compact {}", dir.display()))?;
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    println!(
        "Compacted {}: {} records, {:.1} MiB -> {:.1} MiB",
        dir.display(),
        done.records,
        mib(done.bytes_before),
        mib(done.bytes_after)
    );
    Ok(ExitCode::SUCCESS)
}
