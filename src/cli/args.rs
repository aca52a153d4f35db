//! The command line's grammar: commands, their arguments and help texts (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::operator::bridge_config;

/// asmux: many Matrix bridges behind one application service registration.
#[derive(Debug, Parser)]
#[command(name = "asmux", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: /etc/asmux/config.toml if it exists, else ./config.toml]
    #[arg(short, long, global = true, value_name = "PATH", env = "ASMUX_CONFIG")]
    pub(super) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
pub(super) enum BackupCommand {
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
pub(super) struct ServeArgs {
    #[command(flatten)]
    pub(super) homeserver: HomeserverArgs,
}

/// The homeserver a new config points at.
#[derive(Debug, Args)]
pub(super) struct HomeserverArgs {
    /// Homeserver server name written into a new config
    #[arg(long, default_value = "localhost")]
    pub(super) domain: String,
    /// Homeserver URL written into a new config
    #[arg(long, value_name = "URL", default_value = "http://localhost:8008")]
    pub(super) homeserver_url: String,
}

#[derive(Debug, Subcommand)]
pub(super) enum BridgeCommand {
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
pub(super) enum Format {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum ChecklistFormat {
    Text,
    Json,
}
