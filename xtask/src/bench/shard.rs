//! The shard figure: a suite of 16 tasks that each sleep 1 s and write a JUnit file, run by
//! one `crabbox run` and by `crabbox shard --count 8` (two tasks a shard), side by side.

use std::path::Path;

use super::gen::git;
use super::measure::median;
use super::proc::Crabbox;
use super::report::Figure;
use crate::Result;

pub const TASKS: u32 = 16;
pub const SHARDS: u32 = 8;
pub const TARGET: f64 = 0.25;

/// `task.sh N`: one task of the suite.
const TASK: &str = "#!/bin/sh\nsleep 1\nmkdir -p reports\nprintf '<testsuite name=\"suite\"><testcase classname=\"suite\" name=\"task-%s\" time=\"1\"/></testsuite>' \"$1\" > \"reports/task-$1.xml\"\n";

/// A small repository holding the suite.
pub fn repo(dir: &Path) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("task.sh"), TASK).map_err(|e| e.to_string())?;
    for i in 0..50 {
        std::fs::write(dir.join(format!("src-{i}.txt")), format!("source {i}\n"))
            .map_err(|e| e.to_string())?;
    }
    git(dir, &["init", "-q"])?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "suite"])
}

pub struct ShardSamples {
    pub one_run_ms: Vec<f64>,
    pub shard_ms: Vec<f64>,
    pub uploads: Vec<f64>,
    pub tests: Vec<f64>,
}

/// Measures `rounds` of each, alternating.
pub fn measure(crabbox: &Crabbox, rounds: usize) -> Result<ShardSamples> {
    let mut s = ShardSamples {
        one_run_ms: Vec::new(),
        shard_ms: Vec::new(),
        uploads: Vec::new(),
        tests: Vec::new(),
    };
    let all = format!("for i in $(seq 1 {TASKS}); do sh task.sh $i; done");
    let per_shard =
        format!("for i in $(seq {{{{index}}}} {SHARDS} {TASKS}); do sh task.sh $i; done");
    for round in 0..rounds {
        let one = crabbox.run(&["run", "--shell", "--", &all])?;
        s.one_run_ms.push(one.wall_ms);
        let sharded = crabbox.run(&[
            "shard",
            "--count",
            &SHARDS.to_string(),
            "--shell",
            "--quiet",
            "--junit",
            "reports/*.xml",
            "--json",
            "--",
            &per_shard,
        ])?;
        let out = String::from_utf8_lossy(&sharded.stdout);
        let at = out.find('{').ok_or("shard --json printed no verdict")?;
        let v: serde_json::Value =
            serde_json::from_str(&out[at..]).map_err(|e| format!("shard --json: {e}"))?;
        s.shard_ms.push(sharded.wall_ms);
        s.uploads.push(v["uploads"].as_f64().unwrap_or(f64::NAN));
        s.tests.push(v["junit"]["tests"].as_f64().unwrap_or(0.0));
        eprintln!(
            "xtask: bench: shard round {}/{rounds}: one run {:.0} ms, shard --count {SHARDS} {:.0} ms, {} upload(s), {} tests",
            round + 1,
            one.wall_ms,
            sharded.wall_ms,
            v["uploads"],
            v["junit"]["tests"]
        );
    }
    Ok(s)
}

pub fn figures(s: &ShardSamples) -> Vec<Figure> {
    let (one, sharded) = (median(&s.one_run_ms), median(&s.shard_ms));
    let ratio = sharded / one;
    let uploads = s.uploads.iter().cloned().fold(0.0, f64::max);
    let tests = s.tests.iter().cloned().fold(f64::INFINITY, f64::min);
    vec![
        Figure {
            id: "shard_vs_one_run",
            label: "shard --count 8 vs one run of all 16 tasks",
            value: ratio,
            unit: "x",
            shown: format!("{ratio:.2}x ({sharded:.0} / {one:.0} ms)"),
            target: Some(TARGET),
        },
        Figure {
            id: "shard_uploads",
            label: "uploads of the tree per shard run",
            value: uploads,
            unit: "",
            shown: format!("{uploads:.0}"),
            target: Some(1.0),
        },
        Figure {
            id: "shard_junit_tests",
            label: "JUnit cases merged (of 16)",
            value: tests,
            unit: "",
            shown: format!("{tests:.0}"),
            target: None,
        },
    ]
}
