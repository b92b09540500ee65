//! The command-line grammar. Flags mirror the reference CLI so its users type the same things.

use std::path::PathBuf;

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
            // A list setting's flag is repeatable; each use adds one entry.
            let action = if setting.list {
                clap::ArgAction::Append
            } else {
                clap::ArgAction::Set
            };
            cmd = cmd.arg(
                clap::Arg::new(f.long)
                    .long(f.long)
                    .global(true)
                    .value_name(f.value_name)
                    .action(action)
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
        let Some(f) = setting.flag else { continue };
        let values: Vec<String> = deepest
            .try_get_many::<String>(f.long)
            .ok()
            .flatten()
            .or_else(|| matches.get_many::<String>(f.long))
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        if values.is_empty() {
            continue;
        }
        let name = format!("--{}", f.long);
        cli.global.provider_flags.push(if setting.list {
            FlagValue::new(setting.key, name, values)
        } else {
            FlagValue::new(setting.key, name, values[0].clone())
        });
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
    Run(Box<RunArgs>),
    /// Show a lease's box
    Status(StatusArgs),
    /// Release a box and drop its claim
    Stop(StopArgs),
    /// List boxes
    List(ListArgs),
    /// Pause a box: files (and on E2B, running processes) kept, no compute billed
    Pause(LeaseArgs),
    /// Wake a paused box (run --id also does, saying so)
    Resume(LeaseArgs),
    /// Snapshot a box (prints the snapshot id); `snapshot list`, `snapshot delete ID`
    Snapshot(SnapshotArgs),
    /// Make new leases whose boxes start as copies of one box
    Fork(ForkArgs),
    /// The URL of a port on a box, with the headers a request needs
    Url(UrlArgs),
    /// Box-seconds running and paused, per lease and repository, as recorded here
    Usage(JsonArgs),
    /// An interactive login shell on a box (or one program: shell ID -- htop), over a PTY
    Shell(ShellArgs),
    /// Drop claims whose box is gone, finish leases whose creation broke, remove stale files
    /// (a dry run unless --yes)
    Cleanup(CleanupArgs),
    /// Fetch files or directories from a lease's box
    Download(DownloadArgs),
    /// Show the output of a detached run (`run --detach`)
    Logs(LogsArgs),
    /// Wait for a detached run to end; exits with its exit code
    Wait(RunRefArgs),
    /// Stop a detached run's whole process tree
    Kill(RunRefArgs),
    /// List detached runs and their state
    Runs(RunsArgs),
    /// List a lease's workspaces with their last sync; `workspaces rm ID NAME` removes one
    Workspaces(WorkspacesArgs),
    /// Run one suite across many boxes at once: sync once, fork, one verdict
    Shard(Box<ShardArgs>),
    /// Check that runs can work here: config layers, API key, endpoints, template, git,
    /// workdir rules; each failure names its fix (exit 1 when a check fails)
    Doctor(DoctorArgs),
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

/// `workspaces ID [--json]` or `workspaces rm ID NAME` (a lease is never called `rm`).
#[derive(Debug, Args)]
pub struct WorkspacesArgs {
    /// ID (lease id, slug or provider id), or: rm ID NAME
    #[arg(value_name = "ID | rm ID NAME", num_args = 1..=3, required = true)]
    pub words: Vec<String>,
    /// Print them as JSON on stdout
    #[arg(long)]
    pub json: bool,
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
    /// Start the box from this snapshot (id or name) instead of an empty one
    #[arg(long, value_name = "SNAPSHOT")]
    pub from_snapshot: Option<String>,
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
    /// Start the new box from this snapshot (id or name); only what differs is synced
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "id")]
    pub from_snapshot: Option<String>,
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
    /// Sync, then stop: the box is left ready for later runs (a box this run makes is kept)
    #[arg(long, conflicts_with_all = ["no_sync", "detach"])]
    pub sync_only: bool,
    /// When to release a box this run makes: success, failure, always (the default) or never
    #[arg(long, value_name = "WHEN", conflicts_with_all = ["keep", "keep_on_failure"])]
    pub stop_after: Option<String>,
    /// Write the lease handle (lease id, slug, provider, sandbox id) as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub lease_output: Option<PathBuf>,
    /// Upload this local script and run it on the box (its shebang, else bash); words after
    /// `--` are its arguments
    #[arg(long, value_name = "FILE", conflicts_with = "script_stdin")]
    pub script: Option<PathBuf>,
    /// Read the script to run from standard input
    #[arg(long)]
    pub script_stdin: bool,
    /// Also write the command's stdout to FILE
    #[arg(long, value_name = "FILE")]
    pub capture_stdout: Option<PathBuf>,
    /// Also write the command's stderr to FILE
    #[arg(long, value_name = "FILE")]
    pub capture_stderr: Option<PathBuf>,
    /// Keep the capture files only when the command fails
    #[arg(long)]
    pub capture_on_fail: bool,
    /// Do not stream the command's output (captured output is still written)
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// After the command, fetch REMOTE (relative to the workdir unless absolute; a file or a
    /// directory) to LOCAL (repeatable)
    #[arg(long, value_name = "REMOTE=LOCAL")]
    pub download: Vec<String>,
    /// After the command, fetch the workdir's files matching GLOB into --artifact-dir,
    /// keeping their relative paths (repeatable; `**` crosses directories)
    #[arg(long, value_name = "GLOB")]
    pub artifact_glob: Vec<String>,
    /// Where --artifact-glob and --junit files go [default: .crabbox/artifacts/<lease>/]
    #[arg(long, value_name = "DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Fail (exit 6) when PATH is not on the box after the command (repeatable)
    #[arg(long, value_name = "PATH")]
    pub require_artifact: Vec<String>,
    /// Fetch the JUnit XML reports matching GLOB and print a summary (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub junit: Vec<String>,
    /// Start the command in the background on the box, print its run id and return
    #[arg(long)]
    pub detach: bool,
    /// Stop the command's whole process tree after this long (e.g. 10m) and exit 124
    /// [config: timeout]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Sync and run in this workspace of the box, a tree of its own beside the others
    /// (default main, the workdir) [config: workspace, env: CRABBOX_WORKSPACE]
    #[arg(long, value_name = "NAME")]
    pub workspace: Option<String>,
    /// Print the run's outcome (exit code, timings, sync, artifacts, JUnit summary) as JSON
    /// on stdout at the end
    #[arg(long)]
    pub json: bool,
    /// The command to run (with --script: the script's arguments)
    #[arg(
        last = true,
        required_unless_present_any = ["script", "script_stdin", "sync_only"],
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The lease: id, slug, sandbox id
    pub id: String,
    /// Path on the box: relative to the workdir unless absolute; a file or a directory
    pub remote: String,
    /// Where to put it
    pub local: PathBuf,
    /// Fetch from this workspace of the box (default: main)
    #[arg(long)]
    pub workspace: Option<String>,
    /// Print what was fetched as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id `run --detach` printed (or a unique prefix of 6+ characters)
    pub run: String,
    /// Keep printing until the run ends
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct RunRefArgs {
    /// The run id `run --detach` printed (or a unique prefix of 6+ characters)
    pub run: String,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only the runs on this lease's box
    #[arg(long)]
    pub id: Option<String>,
    /// Print the runs as JSON on stdout
    #[arg(long)]
    pub json: bool,
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

/// A command on one lease's box.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Lease id, slug or sandbox id
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print the outcome as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: Option<SnapshotCommand>,
    /// The box to snapshot: lease id, slug or sandbox id
    #[arg(value_name = "ID", required = true)]
    pub id: Option<String>,
    /// A name for the snapshot (usable wherever its id is)
    #[arg(long)]
    pub name: Option<String>,
    /// Print the snapshot as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List the provider's snapshots
    List(JsonArgs),
    /// Delete a snapshot
    Delete {
        /// Snapshot id
        #[arg(value_name = "SNAPSHOT")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The box to copy: lease id, slug or sandbox id
    #[arg(value_name = "ID")]
    pub id: String,
    /// How many new boxes (1..20)
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Print the new leases as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UrlArgs {
    /// Lease id, slug or sandbox id
    #[arg(value_name = "ID")]
    pub id: String,
    /// The port on the box
    #[arg(value_name = "PORT")]
    pub port: u16,
    /// Print the URL and headers as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Lease id, slug or sandbox id
    #[arg(value_name = "ID")]
    pub id: String,
    /// A program to run instead of the login shell
    #[arg(last = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print as JSON on stdout
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

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON on stdout
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

#[derive(Debug, Args)]
pub struct ShardArgs {
    /// How many shards (each on its own box); capped by shard.maxCount (default 20)
    #[arg(long)]
    pub count: u32,
    /// Sync to this warm lease and fork it (default: a new box)
    #[arg(long)]
    pub id: Option<String>,
    /// Start the source box from this snapshot
    #[arg(long, conflicts_with = "id")]
    pub from_snapshot: Option<String>,
    /// Stop the other shards at the first failure
    #[arg(long)]
    pub fail_fast: bool,
    /// Only lifecycle lines: not the shards' output
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Fetch each shard's JUnit XML reports matching GLOB and merge them into one verdict
    /// (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub junit: Vec<String>,
    /// Where each shard's reports go (<DIR>/<index>/...) [default: .crabbox/artifacts/shards/]
    #[arg(long, value_name = "DIR")]
    pub artifact_dir: Option<std::path::PathBuf>,
    /// Keep every shard's box
    #[arg(long)]
    pub keep: bool,
    /// Join the command words raw, as shell source
    #[arg(long)]
    pub shell: bool,
    /// Also hand this local environment variable to each shard's command (repeatable)
    #[arg(long = "allow-env", value_name = "NAME")]
    pub allow_env: Vec<String>,
    /// Print the verdict as JSON on stdout at the end
    #[arg(long)]
    pub json: bool,
    /// The command template: {{index}} (1-based), {{total}}, {{lease}}, {{slug}} are
    /// substituted per shard
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}
