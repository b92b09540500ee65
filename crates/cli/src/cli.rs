//! The command-line grammar. Flags mirror the reference CLI so its users type the same things.

use clap::{Args, Parser, Subcommand};

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

/// Flags every command accepts.
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
    /// E2B template [env: CRABBOX_E2B_TEMPLATE]
    #[arg(long, global = true, value_name = "TEMPLATE")]
    pub e2b_template: Option<String>,
    /// Workdir inside the sandbox; relative paths are under the user's home [env: CRABBOX_E2B_WORKDIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub e2b_workdir: Option<String>,
    /// Sandbox user (template default `user`) [env: CRABBOX_E2B_USER]
    #[arg(long, global = true, value_name = "USER")]
    pub e2b_user: Option<String>,
    /// E2B API URL [env: CRABBOX_E2B_API_URL, E2B_API_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub e2b_api_url: Option<String>,
    /// E2B domain [env: CRABBOX_E2B_DOMAIN, E2B_DOMAIN]
    #[arg(long, global = true, value_name = "DOMAIN")]
    pub e2b_domain: Option<String>,
    /// One envd base URL for every sandbox [env: CRABBOX_E2B_SANDBOX_URL, E2B_SANDBOX_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub e2b_sandbox_url: Option<String>,
    /// Machine class (providers with machine sizes only; refused for local and e2b)
    #[arg(long, global = true, value_name = "CLASS")]
    pub class: Option<String>,
    /// Machine type (providers with machine sizes only; refused for local and e2b)
    #[arg(long = "type", global = true, value_name = "TYPE")]
    pub machine_type: Option<String>,
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
    /// Inspect configuration
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print shell completions
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
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
