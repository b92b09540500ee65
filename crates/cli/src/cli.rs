//! The command-line grammar. Flags mirror the reference CLI so its users type the same things.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use crabbox_core::config::{FlagValue, Setting};

#[derive(Debug, Parser)]
#[command(
    name = "crabbox",
    version,
    about = "Warm a box, sync the working tree, run the suite."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts. Each provider's settings add their own flags (`--e2b-*`),
/// from its config section, when the command line is built ([`command`]).
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Provider to use: local (default) or e2b [env: CRABBOX_PROVIDER]
    #[arg(long, global = true)]
    pub provider: Option<String>,
    /// Lease time-to-live, e.g. 90m, 2h [env: CRABBOX_TTL]
    #[arg(long, global = true)]
    pub ttl: Option<String>,
    /// Idle timeout, e.g. 30m [env: CRABBOX_IDLE_TIMEOUT]
    #[arg(long, global = true)]
    pub idle_timeout: Option<String>,
    /// Machine class (providers with machine sizes only; refused for local and e2b)
    #[arg(long, global = true, value_name = "CLASS")]
    pub class: Option<String>,
    /// Machine type (providers with machine sizes only; refused for local and e2b)
    #[arg(long = "type", global = true, value_name = "TYPE")]
    pub machine_type: Option<String>,
    /// Values of the providers' flags, as config layers.
    #[arg(skip)]
    pub provider_flags: Vec<FlagValue>,
}

/// The full grammar: the derived one plus every registered provider's flags.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for setting in provider_settings() {
        if let Some(f) = setting.flag {
            cmd = cmd.arg(
                clap::Arg::new(f.long)
                    .long(f.long)
                    .global(true)
                    .value_name(f.value_name)
                    .help(f.help),
            );
        }
    }
    cmd
}

/// Parses the process's arguments (exiting with usage on error, as clap does).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Global flags are propagated to the subcommand's matches; read them from the deepest.
    let mut deepest = &matches;
    while let Some((_, sub)) = deepest.subcommand() {
        deepest = sub;
    }
    for setting in provider_settings() {
        if let Some(f) = setting.flag {
            let value = deepest
                .try_get_one::<String>(f.long)
                .ok()
                .flatten()
                .or_else(|| matches.get_one::<String>(f.long));
            if let Some(v) = value {
                cli.global.provider_flags.push(FlagValue::new(
                    setting.key,
                    format!("--{}", f.long),
                    v.clone(),
                ));
            }
        }
    }
    cli
}

fn provider_settings() -> Vec<Setting> {
    crate::registry::registry()
        .sections()
        .into_iter()
        .flat_map(|s| s.settings.iter().copied())
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lease a box to reuse; prints its lease id
    Warmup(WarmupArgs),
    /// Sync the working tree to a box and run a command there
    Run(RunArgs),
    /// Show a lease's box
    Status(StatusArgs),
    /// Release a box and drop its claim
    Stop(StopArgs),
    /// List boxes
    List(ListArgs),
    /// Drop claims whose box is gone, finish leases whose creation broke, remove stale files
    /// (a dry run unless --yes)
    Cleanup(CleanupArgs),
    /// Inspect configuration
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Serve the Model Context Protocol (stdio; --http for Streamable HTTP) so that coding
    /// agents drive boxes through tool calls
    Mcp(McpArgs),
    /// Print shell completions
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Serve Streamable HTTP at http://ADDR/mcp instead of stdio (e.g. 127.0.0.1:8765)
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Allow --http on an address other machines can reach (anyone reaching it runs
    /// commands with your credentials)
    #[arg(long, requires = "http")]
    pub allow_remote: bool,
}

#[derive(Debug, Args)]
pub struct WarmupArgs {
    /// Slug for the new lease (default: derived from the lease id)
    #[arg(long)]
    pub slug: Option<String>,
    /// Print the box as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Reuse a warm box: lease id, slug, sandbox id or e2b_<sandboxID>
    #[arg(long)]
    pub id: Option<String>,
    /// Slug for a new lease
    #[arg(long)]
    pub slug: Option<String>,
    /// Keep the box after the run
    #[arg(long)]
    pub keep: bool,
    /// Keep the box if the command fails
    #[arg(long, conflicts_with = "keep")]
    pub keep_on_failure: bool,
    /// Do not sync the working tree
    #[arg(long)]
    pub no_sync: bool,
    /// Join the command words raw, as shell source (so `&&` and pipes work)
    #[arg(long)]
    pub shell: bool,
    /// Print phase timings as one JSON line on stderr at the end
    #[arg(long)]
    pub timing_json: bool,
    /// Send the whole tree again instead of only what changed since the last sync
    #[arg(long, conflicts_with = "no_sync")]
    pub full_resync: bool,
    /// Compare files by content hash instead of size and mtime (slower; for trees whose mtimes
    /// cannot be trusted)
    #[arg(long, conflicts_with = "no_sync")]
    pub checksum: bool,
    /// Sync even past the size guardrails [env: CRABBOX_SYNC_ALLOW_LARGE=1]
    #[arg(long)]
    pub force_sync_large: bool,
    /// Also hand this local environment variable to the command (repeatable); unlike
    /// env.allow in a repository config, it may name a secret (*_KEY, *_TOKEN, ...), but
    /// never crabbox's own API key
    #[arg(long = "allow-env", value_name = "NAME")]
    pub allow_env: Vec<String>,
    /// The command to run
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lease id, slug or sandbox id (default: the one lease this machine holds)
    #[arg(long)]
    pub id: Option<String>,
    /// Wait until the box is ready
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "5m")]
    pub wait_timeout: String,
    /// Print as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Lease id, slug or sandbox id
    #[arg(value_name = "ID", required_unless_present = "id")]
    pub target: Option<String>,
    /// Same as the positional ID
    #[arg(long, conflicts_with = "target")]
    pub id: Option<String>,
    /// Release a crabbox box this machine holds no claim for
    #[arg(long)]
    pub reclaim: bool,
    /// Print the outcome as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Do it (without this, only say what would be done)
    #[arg(long)]
    pub yes: bool,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved configuration and where each value came from
    Show {
        /// Print as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Print the path of every config file that was read
    Files,
}
