//! The command line: `serve`, the set-up commands, `status`, and the `bridge` and
//! `backup` commands, which work on the data directory or through the running server.

mod args;
mod backend;
mod backup;
mod bridge;
mod doctor;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::config::{Config, LogFormat};
use crate::operator::{import_original, setup};
use crate::server::shutdown;
use crate::store::{self, Store};
pub use args::Cli;
use args::{ChecklistFormat, Command, ServeArgs};

/// The config file used when `-c` is not given and it exists.
const SYSTEM_CONFIG: &str = "/etc/asmux/config.toml";

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("asmux: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config_path = cli.config.unwrap_or_else(default_config_path);
    match cli.command {
        Command::Serve(args) => serve(&config_path, args),
        Command::GenerateRegistration { registration } => {
            setup::generate_registration(&config_path, &registration)?;
            println!(
                "Wrote new tokens to {} and the registrations to {} and {}.",
                config_path.display(),
                registration.display(),
                setup::double_puppet_registration_path(&registration).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::InitConfig {
            homeserver,
            data_dir,
        } => {
            if config_path.exists() {
                bail!(
                    "{} already exists; asmux never replaces a config",
                    config_path.display()
                );
            }
            let registration = setup::init_config(
                &config_path,
                &homeserver.domain,
                &homeserver.homeserver_url,
                data_dir.as_deref(),
            )?;
            print_first_run(&config_path, &registration);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => check_config(&config_path),
        Command::Status { json } => {
            let config = Config::load(&config_path)?;
            init_logging(&config, true);
            runtime()?.block_on(status::print(&config, json))
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "asmux", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(command) => backup::run(&config_path, command),
        Command::Doctor {
            registration,
            format,
        } => {
            let registration =
                registration.unwrap_or_else(|| doctor::default_registration(&config_path));
            let checks = runtime()?.block_on(doctor::run(&config_path, &registration));
            doctor::print(&checks, matches!(format, ChecklistFormat::Json))
        }
        Command::Compact { data_dir } => backup::compact(&config_path, data_dir),
        Command::ImportConfig { old, output } => import_config(&old, output.as_deref()),
        Command::ImportOriginal {
            database,
            data_dir,
            dry_run,
            force,
        } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => Config::load(&config_path)?.data_dir(),
            };
            import_original(&import_original::Options {
                database,
                data_dir,
                dry_run,
                force,
            })
        }
        Command::Bridge(command) => {
            let config = Config::load(&config_path)?;
            init_logging(&config, true);
            runtime()?.block_on(bridge::run(config, command))
        }
    }
}

fn default_config_path() -> PathBuf {
    if Path::new(SYSTEM_CONFIG).exists() {
        PathBuf::from(SYSTEM_CONFIG)
    } else {
        PathBuf::from("config.toml")
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config_path: &Path, args: ServeArgs) -> Result<ExitCode> {
    if !config_path.exists() {
        let registration = setup::init_config(
            config_path,
            &args.homeserver.domain,
            &args.homeserver.homeserver_url,
            None,
        )?;
        print_first_run(config_path, &registration);
    }
    let config = Config::load(config_path)?;
    let problems = config.serve_problems();
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("asmux: {}: {problem}", config_path.display());
        }
        return Ok(ExitCode::from(2));
    }
    let config = setup::ensure_shared_secret(config)?;
    init_logging(&config, false);
    for warning in config.warnings() {
        tracing::warn!("{}: {warning}", config_path.display());
    }
    let store = Arc::new(Store::open_with_reserve(
        &config.data_dir(),
        config.disk_reserve_bytes(),
    )?);
    let stopped_store = store.clone();
    let served = runtime()?.block_on(async move {
        let signal = shutdown::on_signal().context("cannot install signal handlers")?;
        crate::server::start(config, store)?.run(signal).await
    });
    if let Err(e) = &served {
        if stopped_store.has_write_failed() {
            // Dropping sled's trees flushes them, and sled 0.34 waits forever for a flush
            // after a failed write: leave without running destructors. Everything
            // acknowledged was flushed before it was acknowledged.
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

fn import_config(old: &Path, output: Option<&Path>) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(old).with_context(|| format!("cannot read {}", old.display()))?;
    let imported = crate::operator::import_config::translate(&text)
        .with_context(|| format!("cannot translate {}", old.display()))?;
    match output {
        Some(path) => {
            if path.exists() {
                bail!(
                    "{} already exists; asmux never replaces a config",
                    path.display()
                );
            }
            setup::write_atomically(path, imported.toml.as_bytes(), setup::CONFIG_MODE)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("Wrote {}.", path.display());
        }
        None => print!("{}", imported.toml),
    }
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn import_original(options: &import_original::Options) -> Result<ExitCode> {
    let plan = runtime()?
        .block_on(import_original::run(options))
        .context("nothing was imported")?;
    let dir = options.data_dir.display();
    if options.dry_run {
        println!("Dry run: the database can be imported; nothing was written.");
        if store::replace::holds_anything(&options.data_dir) {
            println!("{dir} is not empty: the import will need --force to replace it.");
        }
    } else {
        println!("Imported into {dir}:");
    }
    print!("{}", plan.summary());
    Ok(ExitCode::SUCCESS)
}

fn print_first_run(config: &Path, registration: &Path) {
    let registration =
        std::fs::canonicalize(registration).unwrap_or_else(|_| registration.to_owned());
    let double_puppet = setup::double_puppet_registration_path(&registration);
    eprintln!(
        "Wrote a new configuration to {} and the homeserver registrations to {} and {}.\n\
         Check homeserver.domain and homeserver.address in the config, then add to Synapse's homeserver.yaml:\n\n\
         \x20 app_service_config_files:\n\
         \x20   - {}\n\
         \x20   - {}\n\
         \x20 experimental_features:\n\
         \x20   msc2409_to_device_messages_enabled: true\n\
         \x20   msc3202_transaction_extensions: true\n\n\
         and restart Synapse. The management API secret is mux.shared_secret in the config.\n",
        config.display(),
        registration.display(),
        double_puppet.display(),
        registration.display(),
        double_puppet.display(),
    );
}

fn check_config(path: &Path) -> Result<ExitCode> {
    let config = Config::load(path)?;
    for warning in config.warnings() {
        println!("{}: warning: {warning}", path.display());
    }
    let problems = config.serve_problems();
    if problems.is_empty() {
        println!("{}: OK", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    for problem in problems {
        println!("{}: {problem}", path.display());
    }
    Ok(ExitCode::FAILURE)
}

/// Logs to stderr; under systemd (JOURNAL_STREAM set) without timestamps, since the
/// journal adds its own. CLI commands only log warnings unless RUST_LOG says otherwise.
pub fn init_logging(config: &Config, quiet: bool) {
    let level = if quiet {
        "warn"
    } else {
        config.logging.level.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match (
        config.logging.format,
        std::env::var_os("JOURNAL_STREAM").is_some(),
    ) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Pretty, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Pretty, false) => builder.try_init(),
    };
    // Only fails when a subscriber is already installed (tests); keep that one.
    let _ = result;
}
