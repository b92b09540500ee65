//! What every command needs: the resolved config, the chosen provider, and a reporter.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crabbox_core::config::{flag, FlagValue, LoadedConfig};
use crabbox_core::engine::Engine;
use crabbox_core::events::Reporter;
use crabbox_core::frontend::{self, Invocation};
use crabbox_core::hint::Hint;
use crabbox_core::provider::ProviderContext;
use crabbox_core::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::GlobalArgs;

/// The flags that are config settings, as config layers.
pub fn flag_layers(g: &GlobalArgs) -> Vec<FlagValue> {
    let mut flags = Vec::new();
    let mut add = |key: &'static str, name: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            flags.push(flag(key, name, v.clone()));
        }
    };
    add("provider", "--provider", &g.provider);
    add("ttl", "--ttl", &g.ttl);
    add("idleTimeout", "--idle-timeout", &g.idle_timeout);
    flags.extend(g.provider_flags.iter().cloned());
    flags
}

pub fn load_config(g: &GlobalArgs, extra: Vec<FlagValue>) -> Result<LoadedConfig> {
    let mut flags = flag_layers(g);
    flags.extend(extra);
    let inv = Invocation::from_process(flags)?;
    let cfg = frontend::load_config(&crate::registry::registry(), &inv)?;
    for w in &cfg.warnings {
        eprintln!("crabbox: warning: {w}");
    }
    Ok(cfg)
}

/// The configured provider alone (no claims, no engine), as `doctor` checks it.
pub fn provider(cfg: &LoadedConfig) -> Result<Box<dyn crabbox_core::provider::Provider>> {
    let ctx = ProviderContext {
        state_dir: crabbox_core::paths::state_dir()?,
        caller_env: std::env::vars().collect(),
        reporter: reporter(),
    };
    crate::registry::registry().build(cfg, &ctx)
}

/// The engine over the configured provider; refuses flags the provider cannot honour,
/// before any work.
pub fn engine(cfg: &LoadedConfig, g: &GlobalArgs) -> Result<Engine> {
    let env = std::env::vars().collect();
    let engine = frontend::engine(&crate::registry::registry(), cfg, &env, reporter())?;
    engine.refuse_machine_sizes(&[
        ("--class", g.class.as_deref()),
        ("--type", g.machine_type.as_deref()),
    ])?;
    Ok(engine)
}

/// The process's one reporter: commands and the provider (waits before a retry) share it, so
/// a status line never tears a progress bar.
pub fn reporter() -> Arc<TermReporter> {
    static REPORTER: OnceLock<Arc<TermReporter>> = OnceLock::new();
    REPORTER
        .get_or_init(|| Arc::new(TermReporter::new(false)))
        .clone()
}

/// Status lines on stderr; a progress bar on a TTY once a transfer has taken a moment.
pub struct TermReporter {
    tty: bool,
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
    started: Mutex<Option<Instant>>,
}

/// How long a transfer runs before it earns a progress bar.
const BAR_DELAY: Duration = Duration::from_millis(400);

impl TermReporter {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
            bar: Mutex::new(None),
            started: Mutex::new(None),
        }
    }
}

impl Reporter for TermReporter {
    fn status(&self, message: &str) {
        if self.quiet {
            return;
        }
        let bar = self.bar.lock().unwrap();
        match bar.as_ref() {
            Some(b) => b.suspend(|| eprintln!("crabbox: {message}")),
            None => eprintln!("crabbox: {message}"),
        }
    }

    fn hint(&self, hint: &Hint) {
        self.status(&format!("hint: {}", crate::render::hint(hint)));
    }

    fn progress(&self, phase: &str, done: u64, total: Option<u64>) {
        if self.quiet || !self.tty {
            return;
        }
        let started = *self
            .started
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        if started.elapsed() < BAR_DELAY {
            return;
        }
        let mut bar = self.bar.lock().unwrap();
        let b = bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total.unwrap_or(0));
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(phase.to_string());
            b
        });
        if let Some(t) = total {
            b.set_length(t);
        }
        b.set_position(done);
    }

    fn finish_progress(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
        *self.started.lock().unwrap() = None;
    }
}

/// Writes command output straight through to our stdout and stderr, flushing each chunk.
pub struct StdioSink;

impl crabbox_core::events::OutputSink for StdioSink {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        o.write_all(chunk)?;
        o.flush()
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        e.write_all(chunk)?;
        e.flush()
    }
}
