//! The command line: `serve`, the set-up commands, `status`, and the `bridge` and
//! `backup` commands, which work on the data directory or through the running server.

mod backend;
mod doctor;
mod status;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, LogFormat};
use crate::operator::registration::BridgeRegistration;
use crate::operator::setup;
use crate::operator::{bridge_config, import_original};
use crate::server::shutdown;
use crate::service::management::{BridgeRef, ProvisionRequest};
use crate::store::{self, Store};
use backend::Backend;

/// The config file used when `-c` is not given and it exists.
const SYSTEM_CONFIG: &str = "/etc/asmux/config.toml";

/// asmux: many Matrix bridges behind one application service registration.
#[derive(Debug, Parser)]
#[command(name = "asmux", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/asmux/config.toml if it exists, else ./config.toml]
    #[arg(short, long, global = true, value_name = "PATH", env = "ASMUX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. Without a config file, writes a new one (with generated secrets)
    /// and the homeserver registration next to it first.
    Serve(ServeArgs),
    /// Generate asmux's appservice tokens, save them in the config and write the
    /// registration file for the homeserver.
    GenerateRegistration {
        /// Where to write the registration
        #[arg(short, long, value_name = "PATH", default_value = "registration.yaml")]
        registration: PathBuf,
    },
    /// Write a first configuration with generated secrets, and the homeserver
    /// registration beside it. Refuses to replace an existing config.
    InitConfig {
        #[command(flatten)]
        homeserver: HomeserverArgs,
        /// The data directory written into the config
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
    /// Check the configuration and report every problem.
    CheckConfig,
    /// Summarise every bridge: connection, queue depth and last reported state.
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check the setup from the outside: config, data directory, listener, homeserver,
    /// both directions of the registration and every bridge, with a fix for each failure.
    Doctor {
        /// The registration file the homeserver loads [default: registration.yaml next to
        /// the config]
        #[arg(short, long, value_name = "PATH")]
        registration: Option<PathBuf>,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        format: ChecklistFormat,
    },
    /// Provision and inspect bridges.
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// Single-file backups of the whole database.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Rewrite the database compactly, giving back the disk space sled does not (the
    /// server must be stopped; needs room for a second copy while it runs).
    Compact {
        /// The data directory to compact [default: mux.data_dir of the config]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Translate the config.yaml of mautrix-asmux (the original) into asmux's config,
    /// keeping its tokens, and list every key without an equivalent.
    ImportConfig {
        /// The original's config.yaml
        old: PathBuf,
        /// Where to write the new config (refused if it exists); standard output if not
        /// given
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Import the PostgreSQL database of mautrix-asmux (the original) into a new data
    /// directory: every user, bridge and room, with their UUIDs and tokens.
    ImportOriginal {
        /// The original's database, as a postgres:// URL or libpq's key=value form
        #[arg(
            long,
            value_name = "URL",
            env = "ASMUX_ORIGINAL_DATABASE",
            hide_env_values = true
        )]
        database: String,
        /// The data directory to fill [default: mux.data_dir of the config]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Read and check everything, write nothing
        #[arg(long)]
        dry_run: bool,
        /// Replace a non-empty data directory
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Write a backup (through the running server when it holds the database).
    Create {
        /// The backup file to write (mode 0600)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Check a backup file end to end.
    Verify { file: PathBuf },
    /// Restore a backup into a data directory (the server must be stopped).
    Restore {
        file: PathBuf,
        /// The data directory to restore into [default: mux.data_dir of the config]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Replace a non-empty data directory
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    homeserver: HomeserverArgs,
}

/// The homeserver a new config points at.
#[derive(Debug, Args)]
struct HomeserverArgs {
    /// Homeserver server name written into a new config
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Homeserver URL written into a new config
    #[arg(long, value_name = "URL", default_value = "http://localhost:8008")]
    homeserver_url: String,
}

#[derive(Debug, Subcommand)]
enum BridgeCommand {
    /// Provision a bridge (or update an existing one) and print its registration.
    Create {
        owner: String,
        prefix: String,
        /// The bridge connects to asmux over a websocket (no address needed)
        #[arg(long, conflicts_with = "address")]
        websocket: bool,
        /// Base URL asmux pushes transactions to
        #[arg(long, value_name = "URL")]
        address: Option<String>,
        /// Localpart suffix of the bridge bot
        #[arg(long)]
        bot: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
    },
    /// List bridges.
    List,
    /// Show one bridge: OWNER PREFIX, OWNER/PREFIX or UUID.
    Show {
        #[arg(num_args = 1..=2, required = true, value_name = "BRIDGE")]
        bridge: Vec<String>,
    },
    /// Delete a bridge, its queue and its room ownerships: OWNER PREFIX, OWNER/PREFIX or UUID.
    Delete {
        #[arg(num_args = 1..=2, required = true, value_name = "BRIDGE")]
        bridge: Vec<String>,
    },
    /// Drop everything queued for a bridge, on purpose (a push bridge that is gone for
    /// good is otherwise retried until queue_retention_days): OWNER PREFIX, OWNER/PREFIX
    /// or UUID.
    ClearQueue {
        #[arg(num_args = 1..=2, required = true, value_name = "BRIDGE")]
        bridge: Vec<String>,
    },
    /// Print the `homeserver:` and `appservice:` blocks of a mautrix bridge's config
    /// that connect it to asmux (websocket or push, as the bridge was provisioned).
    Config {
        owner: String,
        prefix: String,
        /// The framework the bridge is built on
        #[arg(long, value_enum)]
        flavor: bridge_config::Flavor,
    },
    /// Print the registration a bridge needs (the same the management API returns).
    ExportRegistration {
        owner: String,
        prefix: String,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        /// Write to this file (mode 0600) instead of standard output
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChecklistFormat {
    Text,
    Json,
}

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
        Command::Backup(command) => backup_command(&config_path, command),
        Command::Doctor {
            registration,
            format,
        } => {
            let registration =
                registration.unwrap_or_else(|| doctor::default_registration(&config_path));
            let checks = runtime()?.block_on(doctor::run(&config_path, &registration));
            doctor::print(&checks, matches!(format, ChecklistFormat::Json))
        }
        Command::Compact { data_dir } => {
            let dir = match data_dir {
                Some(dir) => dir,
                None => Config::load(&config_path)?.data_dir(),
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
            runtime()?.block_on(bridge_command(config, command))
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

async fn bridge_command(config: Config, command: BridgeCommand) -> Result<ExitCode> {
    let backend = Backend::open(&config)?;
    let mut out = std::io::stdout().lock();
    match command {
        BridgeCommand::Create {
            owner,
            prefix,
            websocket,
            address,
            bot,
            format,
        } => {
            let target = BridgeRef::name(&owner, &prefix);
            let request = ProvisionRequest {
                push: Some(!websocket),
                address: address.or(websocket.then(String::new)),
                bot,
                ..ProvisionRequest::default()
            };
            let (registration, created) = backend.provision(&target, &request).await?;
            eprintln!(
                "{} bridge {owner}/{prefix} ({})",
                if created { "Created" } else { "Updated" },
                registration.id
            );
            write_registration(&mut out, &registration, format)?;
        }
        BridgeCommand::List => {
            let bridges = backend.list().await?;
            writeln!(
                out,
                "{:<36}  {:<32}  {:<9}  ADDRESS",
                "ID", "BRIDGE", "MODE"
            )?;
            for b in bridges {
                let name = format!("{}/{}", b.owner, b.prefix);
                let mode = if b.push { "push" } else { "websocket" };
                writeln!(
                    out,
                    "{:<36}  {:<32}  {:<9}  {}",
                    b.id, name, mode, b.address
                )?;
            }
        }
        BridgeCommand::Show { bridge } => {
            let registration = backend.registration(&bridge_ref(&bridge)?).await?;
            let user_ns = registration
                .namespaces
                .users
                .first()
                .map(|n| n.regex.as_str())
                .unwrap_or("");
            writeln!(out, "id:         {}", registration.id)?;
            writeln!(
                out,
                "bot:        @{}:{}",
                registration.sender_localpart, config.homeserver.domain
            )?;
            writeln!(out, "namespace:  {user_ns}")?;
            let mode = if registration.url.is_empty() {
                "websocket (or push without address)".to_owned()
            } else {
                format!("push to {}", registration.url)
            };
            writeln!(out, "delivery:   {mode}")?;
        }
        BridgeCommand::Delete { bridge } => {
            let target = bridge_ref(&bridge)?;
            backend.delete(&target).await?;
            writeln!(out, "Deleted bridge {}", bridge.join("/"))?;
        }
        BridgeCommand::ClearQueue { bridge } => {
            let target = bridge_ref(&bridge)?;
            let dropped = backend.clear_queue(&target).await?;
            writeln!(
                out,
                "Dropped {dropped} queued transactions of {}",
                bridge.join("/")
            )?;
        }
        BridgeCommand::Config {
            owner,
            prefix,
            flavor,
        } => {
            let registration = backend
                .registration(&BridgeRef::name(&owner, &prefix))
                .await?;
            let block = bridge_config::render(flavor, &config, &owner, &prefix, &registration)
                .map_err(anyhow::Error::msg)?;
            out.write_all(block.as_bytes())?;
        }
        BridgeCommand::ExportRegistration {
            owner,
            prefix,
            format,
            output,
        } => {
            let registration = backend
                .registration(&BridgeRef::name(&owner, &prefix))
                .await?;
            match output {
                Some(path) => {
                    let mut buf = Vec::new();
                    write_registration(&mut buf, &registration, format)?;
                    setup::write_atomically(&path, &buf, 0o600)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "Wrote the registration of {owner}/{prefix} to {}",
                        path.display()
                    );
                }
                None => write_registration(&mut out, &registration, format)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn backup_command(config_path: &Path, command: BackupCommand) -> Result<ExitCode> {
    use crate::store::backup;
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

/// `OWNER PREFIX`, `OWNER/PREFIX` or `UUID`.
fn bridge_ref(args: &[String]) -> Result<BridgeRef> {
    let target = match args {
        [owner, prefix] => Ok(BridgeRef::name(owner, prefix)),
        [one] => match one.split_once('/') {
            Some((owner, prefix)) => Ok(BridgeRef::name(owner, prefix)),
            None => BridgeRef::id(one),
        },
        _ => bail!("name a bridge as OWNER PREFIX, OWNER/PREFIX or UUID"),
    };
    Ok(target?)
}

fn write_registration(
    out: &mut impl Write,
    registration: &BridgeRegistration,
    format: Format,
) -> Result<()> {
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(registration)?,
        Format::Json => serde_json::to_string_pretty(registration)? + "\n",
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}
