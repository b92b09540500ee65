//! `cargo xtask bench`: crabbox's sync against the targets, through the real release
//! binary (`crabbox run --timing-json`), with the baseline measured side by side in the same run.
//!
//! For a generated, committed repository (20,000 files / 200 MB, where the targets apply, and
//! 3,000 files / 30 MB so small repositories don't regress; see `gen`), on the E2B provider
//! against the local emulator and on the local provider:
//!
//! - full sync vs the baseline: `git ls-files -z | tar --null -T - -cf - | gzip -6` into a file,
//!   uploaded through envd's `POST /files` (on a local box: already there), `tar -xzf` on the box
//!   into a new directory; pack + upload + extract. crabbox's side is a first sync into a fresh
//!   box: the run's wall time minus creating, running on and releasing the box (so, like the
//!   baseline, it includes listing the files);
//! - a warm sync after a one-file edit vs a full sync (`syncMs` against `syncMs`), after one
//!   uncounted warm run (the first after a box's first sync reads the box whole, once); and,
//!   with no target, the same edit's whole run over a `--no-sync` run paired with it (before
//!   or after it in turn) against the full sync's wall time (`syncMs` starts once the box is
//!   reached, and the local stat pass before it);
//! - a warm run with no change: the wall time of `run --id L -- true` minus that of
//!   `run --id L --no-sync -- true` (the median of 2N+1 adjacent pairs' differences);
//! - the peak RSS of the crabbox process syncing a 1 GB tree (100,000 files, one round;
//!   `--no-large` skips it).
//!
//! Medians of N rounds (`--rounds N` or `CRABBOX_BENCH_ROUNDS`, default 5); baseline and full
//! sync rounds are interleaved, and dirty pages are written out before each timed step.
//! `--sizes 20000,3000` picks the repositories (`none`: only the 1 GB tree), `--provider
//! e2b|local|all`, `--json` prints one JSON object on stdout instead of the tables, `--check`
//! fails when a figure misses its target, `--generate DIR` only generates the repositories
//! (`DIR/repo-<files>`) for profiling by hand. Everything lives in a temporary directory, removed
//! at the end.

use std::path::Path;
use std::time::Instant;

use crate::{step, Result};

mod gen;
mod measure;
mod proc;
mod report;
mod shard;

use measure::{crabbox_for, Provider, Upload};
use report::{Table, TARGETS};

const USAGE: &str = "usage: cargo xtask bench [--rounds N] [--provider e2b|local|all] [--sizes 20000,3000] [--no-large] [--no-shard|--only-shard] [--json] [--check] [--generate DIR]";
/// The repository the targets are set for; other sizes are 10 kB a file too.
const MAIN_FILES: usize = 20_000;
const BYTES_PER_FILE: u64 = 10_000;
const SEED: u64 = 0x00c0_ffee;

struct Options {
    rounds: usize,
    e2b: bool,
    local: bool,
    large: bool,
    sizes: Vec<usize>,
    json: bool,
    check: bool,
    /// The shard figure (`--no-shard` skips it, `--only-shard` measures nothing else).
    shard: bool,
    only_shard: bool,
    /// Only generate the repositories under this directory, for profiling by hand.
    generate: Option<std::path::PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let rounds = match std::env::var("CRABBOX_BENCH_ROUNDS") {
            Ok(v) => v
                .parse()
                .map_err(|_| format!("CRABBOX_BENCH_ROUNDS={v:?} is not a number"))?,
            Err(_) => 5,
        };
        let mut o = Self {
            rounds,
            e2b: true,
            local: true,
            large: true,
            sizes: vec![MAIN_FILES, 3_000],
            json: false,
            check: false,
            shard: true,
            only_shard: false,
            generate: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--rounds" => {
                    let v = it.next().ok_or(USAGE)?;
                    o.rounds = v
                        .parse()
                        .map_err(|_| format!("--rounds {v:?} is not a number"))?;
                }
                "--provider" => match it.next().map(String::as_str) {
                    Some("e2b") => (o.e2b, o.local) = (true, false),
                    Some("local") => (o.e2b, o.local) = (false, true),
                    Some("all") => (o.e2b, o.local) = (true, true),
                    _ => return Err(USAGE.into()),
                },
                "--no-large" => o.large = false,
                "--sizes" => {
                    let v = it.next().ok_or(USAGE)?;
                    o.sizes = v
                        .split(',')
                        .filter(|s| !s.is_empty() && *s != "none")
                        .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n >= 100))
                        .collect::<Option<_>>()
                        .ok_or(format!(
                            "--sizes {v:?}: file counts of at least 100, comma-separated"
                        ))?;
                }
                "--json" => o.json = true,
                "--no-shard" => o.shard = false,
                "--only-shard" => o.only_shard = true,
                "--check" => o.check = true,
                "--generate" => o.generate = Some(it.next().ok_or(USAGE)?.into()),
                _ => return Err(USAGE.into()),
            }
        }
        if o.rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        Ok(o)
    }
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn generate(dir: &Path, files: usize, bytes: u64) -> Result<gen::Repo> {
    let t = Instant::now();
    let repo = gen::generate(
        dir,
        gen::Spec {
            files,
            bytes,
            seed: SEED ^ files as u64,
        },
    )?;
    eprintln!(
        "xtask: bench: generated and committed {files} files, {:.0} MB in {:.1}s",
        report::mb(bytes as f64),
        t.elapsed().as_secs_f64()
    );
    Ok(repo)
}

pub fn run(root: &Path, args: &[String]) -> Result {
    let o = Options::parse(args)?;
    if let Some(dir) = &o.generate {
        for &files in &o.sizes {
            let repo = generate(
                &dir.join(format!("repo-{files}")),
                files,
                files as u64 * BYTES_PER_FILE,
            )?;
            eprintln!("xtask: bench: {}", repo.root.display());
        }
        return Ok(());
    }
    let started = Instant::now();
    // Separate builds, so each binary has the features it has when built alone.
    step(
        root,
        "release build",
        "cargo",
        &["build", "--release", "-p", "crabbox"],
        &[],
    )?;
    if o.e2b {
        step(
            root,
            "release build (emulator)",
            "cargo",
            &["build", "--release", "-p", "e2b-emulator"],
            &[],
        )?;
    }
    let release = crate::target_dir(root)?.join("release");
    let bin = release.join("crabbox");
    let tmp = tempfile::Builder::new()
        .prefix("crabbox-bench-")
        .tempdir()
        .map_err(io)?;

    let emulator = if o.e2b {
        match proc::Emulator::start(
            &release.join("e2b-emulator"),
            &tmp.path().join("emulator.log"),
        ) {
            Ok(e) => Some(e),
            Err(e) if o.local => {
                eprintln!("xtask: bench: skipping the e2b provider: {e}");
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let providers = |repo: &gen::Repo, tag: &str| -> Vec<Provider> {
        let mut out = Vec::new();
        if let Some(emulator) = &emulator {
            let home = tmp.path().join(format!("home-e2b-{tag}"));
            out.push(Provider {
                name: "e2b",
                crabbox: crabbox_for(&bin, repo, &home, emulator.env()),
                upload: Upload::Envd(emulator),
                scratch: home.join("scratch"),
            });
        }
        if o.local {
            let home = tmp.path().join(format!("home-local-{tag}"));
            out.push(Provider {
                name: "local",
                crabbox: crabbox_for(
                    &bin,
                    repo,
                    &home,
                    vec![("CRABBOX_PROVIDER".into(), "local".into())],
                ),
                upload: Upload::None,
                scratch: home.join("scratch"),
            });
        }
        out
    };

    let mut tables: Vec<Table> = Vec::new();
    if o.shard || o.only_shard {
        if let Some(emulator) = &emulator {
            let dir = tmp.path().join("repo-shard");
            shard::repo(&dir)?;
            let home = tmp.path().join("home-e2b-shard");
            let repo = gen::Repo::at(&dir);
            let c = crabbox_for(&bin, &repo, &home, emulator.env());
            let samples = shard::measure(&c, o.rounds.min(3))?;
            tables.push(Table {
                title: format!(
                    "e2b provider, local emulator | shard: {} tasks of 1 s, {} shards | median of {} rounds",
                    shard::TASKS,
                    shard::SHARDS,
                    samples.shard_ms.len()
                ),
                provider: "e2b",
                files: 0,
                bytes: 0,
                figures: shard::figures(&samples),
                extra: serde_json::json!({
                    "oneRunMs": samples.one_run_ms,
                    "shardMs": samples.shard_ms,
                }),
            });
        }
    }
    let sizes = if o.only_shard {
        Vec::new()
    } else {
        o.sizes.clone()
    };
    for &files in &sizes {
        let dir = tmp.path().join(format!("repo-{files}"));
        let repo = generate(&dir, files, files as u64 * BYTES_PER_FILE)?;
        for p in providers(&repo, &files.to_string()) {
            let samples = p.measure(&repo, o.rounds)?;
            let targets = if files == MAIN_FILES {
                &TARGETS
            } else {
                &report::NO_TARGETS
            };
            let mut figures = report::figures(&samples, targets);
            let peak =
                |f: fn(&measure::FullSample) -> u64| samples.full.iter().map(f).max().unwrap_or(0);
            figures.push(report::rss_figure(
                "peak_rss_mb",
                "peak RSS of a full sync (this tree)",
                peak(|f| f.own_rss_kib),
                peak(|f| f.max_rss_kib),
                repo.bytes,
                None,
            ));
            tables.push(Table {
                title: format!(
                    "{} | {} files, {:.0} MB ({} binary assets, {:.0} MB) | median of {} rounds",
                    match p.name {
                        "e2b" => "e2b provider, local emulator",
                        _ => "local provider",
                    },
                    repo.files,
                    report::mb(repo.bytes as f64),
                    repo.asset_files,
                    report::mb(repo.asset_bytes as f64),
                    o.rounds
                ),
                provider: p.name,
                files: repo.files,
                bytes: repo.bytes,
                figures,
                extra: report::medians(&samples),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(io)?;
    }
    if o.large && !o.only_shard {
        let dir = tmp.path().join("repo-large");
        let repo = generate(&dir, 100_000, 1_000_000_000)?;
        for p in providers(&repo, "large") {
            let f = p.peak_rss(&repo)?;
            let figure = report::rss_figure(
                "peak_rss_1gb_mb",
                "peak RSS syncing a 1 GB tree",
                f.own_rss_kib,
                f.max_rss_kib,
                repo.bytes,
                TARGETS.rss_mb,
            );
            match tables
                .iter_mut()
                .find(|t| t.provider == p.name && t.files == MAIN_FILES)
            {
                Some(t) => t.figures.push(figure),
                None => tables.push(Table {
                    title: format!("{} | {} files, 1 GB | one round", p.name, repo.files),
                    provider: p.name,
                    files: repo.files,
                    bytes: repo.bytes,
                    figures: vec![figure],
                    extra: serde_json::json!({
                        "fullSyncWallMs": f.sync_wall_ms,
                        "fullSyncMs": f.sync_ms,
                    }),
                }),
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io)?;
    }
    let emulator_place = emulator.as_ref().map(|e| {
        if e.in_memory {
            "the emulator keeps its sandboxes' files in memory (/dev/shm), as fresh as a real box's disk"
        } else {
            "the emulator keeps its sandboxes' files on this machine's disk (/dev/shm had no room)"
        }
    });
    drop(emulator);

    let failed = tables
        .iter()
        .flat_map(|t| &t.figures)
        .any(|f| f.pass() == Some(false));
    let elapsed = started.elapsed().as_secs_f64();
    if o.json {
        let out = serde_json::json!({
            "rounds": o.rounds,
            "seconds": elapsed.round(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "emulatorSandboxes": emulator_place,
            "pass": !failed,
            "tables": tables.iter().map(report::table_json).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        for t in &tables {
            report::print_table(t);
            report::print_notes(t);
        }
        println!(
            "\nbaseline: git ls-files -z | tar --null -T - -cf - | gzip -6 > file, upload it (e2b: envd POST /files), tar -xzf on the box.\n\
             full sync: a first sync into a fresh box (run wall time minus creating, running on and releasing the box).\n\
             Targets are the issue's, set for 20,000 files; other sizes carry none (compare them across runs).\n\
             {}{:.0}s on {} CPUs.",
            emulator_place.map(|p| format!("{p}.\n")).unwrap_or_default(),
            elapsed,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
    }
    if o.check && failed {
        return Err("some figures miss their targets".into());
    }
    Ok(())
}
