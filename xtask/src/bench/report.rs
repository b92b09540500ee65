//! The bench's figures: a table for people, JSON for machines.

use serde_json::json;

use super::measure::{median, Samples};

/// One figure of a table.
pub struct Figure {
    pub id: &'static str,
    pub label: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// How the value reads in the table, with what it was computed from.
    pub shown: String,
    /// The value must be at most this.
    pub target: Option<f64>,
}

impl Figure {
    pub fn pass(&self) -> Option<bool> {
        self.target.map(|t| self.value <= t)
    }

    fn target_shown(&self) -> String {
        match self.target {
            None => "-".into(),
            Some(t) if self.unit == "%" => format!("<= {t}%"),
            Some(t) if self.unit == "x" => format!("<= {t:.2}x"),
            Some(t) => format!("<= {t} {}", self.unit),
        }
    }
}

/// The targets, for the 20,000-file repository.
pub struct Targets {
    pub full_vs_baseline: Option<f64>,
    pub warm_edit_pct: Option<f64>,
    pub nochange_ms: Option<f64>,
    pub rss_mb: Option<f64>,
}

pub const TARGETS: Targets = Targets {
    full_vs_baseline: Some(0.30),
    warm_edit_pct: Some(2.0),
    nochange_ms: Some(50.0),
    rss_mb: Some(100.0),
};

pub fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

/// The figures measured from `s`.
pub fn figures(s: &Samples, targets: &Targets) -> Vec<Figure> {
    let base: Vec<f64> = s.baseline.iter().map(|b| b.total_ms()).collect();
    let full_wall: Vec<f64> = s.full.iter().map(|f| f.sync_wall_ms).collect();
    let full_sync: Vec<f64> = s.full.iter().map(|f| f.sync_ms).collect();
    let (base, full_wall, full_sync) = (median(&base), median(&full_wall), median(&full_sync));
    let warm = median(&s.warm_edit_sync_ms);
    let (with, without) = (median(&s.nochange_wall_ms), median(&s.nosync_wall_ms));
    let overhead = median(&s.nochange_overhead_ms);
    let edit_overhead = median(&s.warm_edit_overhead_ms);
    let renamed = median(&s.warm_rename_sync_ms);
    let renamed_pct = renamed / full_sync * 100.0;
    let ratio = full_wall / base;
    let pct = warm / full_sync * 100.0;
    let edit_wall_pct = edit_overhead / full_wall * 100.0;
    vec![
        Figure {
            id: "full_sync_vs_baseline",
            label: "full sync vs tar|gzip -6, upload, tar -xzf",
            value: ratio,
            unit: "x",
            shown: format!("{ratio:.2}x ({full_wall:.0} / {base:.0} ms)"),
            target: targets.full_vs_baseline,
        },
        Figure {
            id: "warm_edit_vs_full_sync",
            label: "warm sync after a one-file edit vs full sync",
            value: pct,
            unit: "%",
            shown: format!("{pct:.1}% ({warm:.0} / {full_sync:.0} ms)"),
            target: targets.warm_edit_pct,
        },
        Figure {
            id: "warm_edit_run_vs_full_sync",
            label: "  the same, whole run over --no-sync (wall)",
            value: edit_wall_pct,
            unit: "%",
            shown: format!("{edit_wall_pct:.1}% ({edit_overhead:.0} / {full_wall:.0} ms)"),
            target: None,
        },
        Figure {
            id: "warm_rename_vs_full_sync",
            label: "  the same edit saved by rename",
            value: renamed_pct,
            unit: "%",
            shown: format!("{renamed_pct:.1}% ({renamed:.0} / {full_sync:.0} ms)"),
            target: None,
        },
        Figure {
            id: "nochange_overhead_ms",
            label: "warm run, no change: overhead over --no-sync",
            value: overhead,
            unit: "ms",
            shown: format!("{overhead:.0} ms (runs {with:.0} / {without:.0} ms)"),
            target: targets.nochange_ms,
        },
    ]
}

/// Peak RSS: of the crabbox process itself (`own_kib`, its `VmHWM`), and for the record the
/// largest of crabbox and the processes it ran, such as git (`max_kib`, from `wait4`).
pub fn rss_figure(
    id: &'static str,
    label: &'static str,
    own_kib: u64,
    max_kib: u64,
    tree_bytes: u64,
    target: Option<f64>,
) -> Figure {
    // A run too short to be sampled falls back on the wait4 figure.
    let kib = if own_kib > 0 { own_kib } else { max_kib };
    let v = mb(kib as f64 * 1024.0);
    Figure {
        id,
        label,
        value: v,
        unit: "MB",
        shown: format!(
            "{v:.1} MB ({:.0} MB tree; any process {:.1})",
            mb(tree_bytes as f64),
            mb(max_kib as f64 * 1024.0)
        ),
        target,
    }
}

/// One table: a repository, a provider, its figures and the raw medians behind them.
pub struct Table {
    pub title: String,
    pub provider: &'static str,
    pub files: usize,
    pub bytes: u64,
    pub figures: Vec<Figure>,
    pub extra: serde_json::Value,
}

pub fn print_table(t: &Table) {
    println!("\n{}", t.title);
    let label = t.figures.iter().map(|f| f.label.len()).max().unwrap_or(0);
    let shown = t.figures.iter().map(|f| f.shown.len()).max().unwrap_or(0);
    println!(
        "  {:<label$}  {:<shown$}  {:<10}  result",
        "figure", "measured", "target"
    );
    for f in &t.figures {
        let result = match f.pass() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        };
        println!(
            "  {:<label$}  {:<shown$}  {:<10}  {result}",
            f.label,
            f.shown,
            f.target_shown()
        );
    }
}

pub fn table_json(t: &Table) -> serde_json::Value {
    json!({
        "title": t.title,
        "provider": t.provider,
        "files": t.files,
        "bytes": t.bytes,
        "figures": t.figures.iter().map(|f| json!({
            "id": f.id,
            "label": f.label,
            "value": (f.value * 1000.0).round() / 1000.0,
            "unit": f.unit,
            "target": f.target,
            "pass": f.pass(),
        })).collect::<Vec<_>>(),
        "medians": t.extra,
    })
}

/// The raw medians behind a table, for the JSON output.
pub fn medians(s: &Samples) -> serde_json::Value {
    let m = |v: Vec<f64>| (median(&v) * 10.0).round() / 10.0;
    json!({
        "baselineMs": m(s.baseline.iter().map(|b| b.total_ms()).collect()),
        "baselinePackMs": m(s.baseline.iter().map(|b| b.pack_ms).collect()),
        "baselineUploadMs": m(s.baseline.iter().map(|b| b.upload_ms).collect()),
        "baselineExtractMs": m(s.baseline.iter().map(|b| b.extract_ms).collect()),
        "baselineArchiveBytes": m(s.baseline.iter().map(|b| b.archive_bytes as f64).collect()),
        "fullSyncWallMs": m(s.full.iter().map(|f| f.sync_wall_ms).collect()),
        "fullSyncMs": m(s.full.iter().map(|f| f.sync_ms).collect()),
        "fullWireBytes": m(s.full.iter().map(|f| f.wire_bytes as f64).collect()),
        "fullPeakRssKiB": s.full.iter().map(|f| f.own_rss_kib).max(),
        "fullPeakRssAnyProcessKiB": s.full.iter().map(|f| f.max_rss_kib).max(),
        "warmEditSyncMs": m(s.warm_edit_sync_ms.clone()),
        "warmEditSentFiles": m(s.warm_edit_sent_files.clone()),
        "warmEditOverheadMs": m(s.warm_edit_overhead_ms.clone()),
        "warmRenameSyncMs": m(s.warm_rename_sync_ms.clone()),
        "noChangeWallMs": m(s.nochange_wall_ms.clone()),
        "noSyncWallMs": m(s.nosync_wall_ms.clone()),
        "noChangeOverheadMs": m(s.nochange_overhead_ms.clone()),
        "noChangeSyncMs": m(s.nochange_sync_ms.clone()),
        "rounds": s.full.len(),
    })
}

pub const NO_TARGETS: Targets = Targets {
    full_vs_baseline: None,
    warm_edit_pct: None,
    nochange_ms: None,
    rss_mb: None,
};

/// What the figures were computed from, under a table.
pub fn print_notes(t: &Table) {
    let m = &t.extra;
    if m.get("baselineMs").is_none() {
        return;
    }
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  baseline {:.0} ms = pack {:.0} + upload {:.0} + extract {:.0}, archive {:.1} MB; \
         crabbox full sync sent {:.1} MB (syncMs {:.0}); warm edit sent {:.0} file(s); \
         no-change syncMs {:.0}",
        f("baselineMs"),
        f("baselinePackMs"),
        f("baselineUploadMs"),
        f("baselineExtractMs"),
        mb(f("baselineArchiveBytes")),
        mb(f("fullWireBytes")),
        f("fullSyncMs"),
        f("warmEditSentFiles"),
        f("noChangeSyncMs"),
    );
}
