//! `crabbox shard --count N -- <command template>`: one suite across N boxes, one verdict.

use std::sync::{Arc, Mutex};

use crabbox_core::engine::{ShardOutcome, ShardRequest};
use crabbox_core::events::{DiscardOutput, OutputSink};
use crabbox_core::plan::{plan_run, RunOptions};
use crabbox_core::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, ShardArgs};
use crate::context::{self, StdioSink};

pub async fn run(g: &GlobalArgs, a: ShardArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    let cancel = CancellationToken::new();
    let opts = RunOptions {
        id: a.id.clone(),
        command: a.command.clone(),
        shell: a.shell,
        allow_env: a.allow_env.clone(),
        ..RunOptions::default()
    };
    let plan = plan_run(&cfg, &std::env::vars().collect(), opts, cancel.clone()).await?;
    for w in &plan.warnings {
        eprintln!("crabbox: warning: {w}");
    }
    let r = plan.request;
    let req = ShardRequest {
        id: a.id,
        from_snapshot: a.from_snapshot,
        fail_fast: a.fail_fast,
        keep: a.keep,
        junit: a.junit,
        artifact_dir: a.artifact_dir,
        ..ShardRequest::of_run(r, a.count, cfg.core.shard.max_count, cancel.clone())
    };
    let shard_plan = engine.shard_plan(&req)?;
    eprintln!(
        "crabbox: shard: {} shards on {} from {}{} (cap {}, shard.maxCount)",
        shard_plan.count,
        shard_plan.provider,
        shard_plan.source,
        if shard_plan.forked {
            ": synced once, then forked"
        } else {
            ": each shard synced on its own (the provider cannot fork)"
        },
        shard_plan.max_count
    );
    super::run::watch_signals(cancel);
    let out: Arc<Mutex<dyn OutputSink>> = if a.quiet {
        Arc::new(Mutex::new(DiscardOutput))
    } else {
        Arc::new(Mutex::new(StdioSink))
    };
    let outcome = engine.shard(&req, out, reporter.as_ref()).await?;
    eprint!("{}", render(&outcome));
    if a.json {
        super::print_json(&outcome);
    }
    Ok(outcome.exit_code)
}

/// The verdict: a table per shard, totals, and each failed test with its shard.
fn render(o: &ShardOutcome) -> String {
    let mut s = String::from("crabbox: shard  lease             exit  time     tests\n");
    for r in &o.shards {
        let exit = match (r.exit_code, &r.error) {
            (Some(c), _) => c.to_string(),
            (None, Some(e)) if e == "stopped" => "stopped".into(),
            (None, _) => "error".into(),
        };
        let tests = r
            .junit
            .as_ref()
            .map(|j| format!("{} ({} failed)", j.tests, j.failed + j.errors))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "crabbox: {:>2}/{:<2}  {:<16}  {:<4}  {:>6.1}s  {tests}\n",
            r.index,
            o.plan.count,
            r.lease_id,
            exit,
            r.duration_ms as f64 / 1000.0
        ));
        if let Some(e) = r.error.as_ref().filter(|e| *e != "stopped") {
            s.push_str(&format!("crabbox:        {e}\n"));
        }
    }
    if let Some(j) = &o.junit {
        s.push_str(&format!(
            "crabbox: tests: {} passed, {} failed, {} errors, {} skipped of {}\n",
            j.passed, j.failed, j.errors, j.skipped, j.tests
        ));
    }
    for (index, f) in &o.failed_cases {
        let who = if f.classname.is_empty() {
            f.name.clone()
        } else {
            format!("{}.{}", f.classname, f.name)
        };
        s.push_str(&format!(
            "crabbox:   [{index}/{}] {} {who}: {}\n",
            o.plan.count,
            f.kind.to_uppercase(),
            f.message.lines().next().unwrap_or("")
        ));
    }
    let passed = o.shards.iter().filter(|r| r.exit_code == Some(0)).count();
    s.push_str(&format!(
        "crabbox: shard: {passed} of {} shards passed; suite time {:.1}s in {:.1}s of wall clock; \
         the tree went over the wire {} time{}; exit {}\n",
        o.plan.count,
        o.suite_ms as f64 / 1000.0,
        o.wall_ms as f64 / 1000.0,
        o.uploads,
        if o.uploads == 1 { "" } else { "s" },
        o.exit_code
    ));
    s
}
