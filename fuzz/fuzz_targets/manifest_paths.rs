//! Path safety of the sync: `is_safe_relative`, the sync record's format, the ops' format for
//! scripts on the box, the parser of the box's scan, and the plan made from such a scan.
//!
//! Checks: no panic; `is_safe_relative` true means no `..` or `.`, no leading `/`, no NUL, no
//! empty segment; a decoded record re-encodes to itself; ops over safe paths encode to one
//! entry each, each naming its path; a plan from a manifest of safe paths against any scan
//! the parser accepts has only ops on safe paths.

#![no_main]

use std::collections::BTreeMap;
use std::path::{Component, Path};

use arbitrary::Arbitrary;
use crabbox_core::sync::{
    is_safe_relative, EntryKind, PlanOptions, SyncEntry, SyncManifest, SyncOp, SyncPlan, SyncRecord,
};
use crabbox_provider_e2b::scan;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    path: String,
    record: Vec<u8>,
    ops: Vec<(u8, String)>,
    scan: Vec<u8>,
    files: Vec<(String, bool, u64, i64, u16)>,
    delete: bool,
    resend_all: bool,
    checksum: bool,
}

/// Asserts what `is_safe_relative(path)` promises.
fn check_safe(path: &str) {
    if !is_safe_relative(path) {
        return;
    }
    assert!(!path.is_empty() && !path.starts_with('/') && !path.contains('\0'));
    for seg in path.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{path:?}");
    }
    assert!(
        Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{path:?}"
    );
}

fn op(letter: u8, path: String) -> SyncOp {
    match letter % 4 {
        0 => SyncOp::Clear(path),
        1 => SyncOp::EnsureDir(path),
        2 => SyncOp::ClearIfDir(path),
        _ => SyncOp::Delete(path),
    }
}

/// `encode_all`'s output read back as a script on the box reads it.
fn decode_ops(bytes: &[u8]) -> Vec<(u8, String)> {
    let Some(body) = bytes.strip_suffix(b"\0") else {
        assert!(bytes.is_empty(), "ops end with NUL");
        return Vec::new();
    };
    body.split(|b| *b == 0)
        .map(|raw| {
            let (letter, path) = raw.split_first().expect("every op has a letter");
            (
                *letter,
                String::from_utf8(path.to_vec()).expect("UTF-8 paths"),
            )
        })
        .collect()
}

fn check_encoded(ops: &[SyncOp]) {
    let decoded = decode_ops(&SyncOp::encode_all(ops));
    assert_eq!(decoded.len(), ops.len(), "one entry per op");
    for ((letter, path), op) in decoded.iter().zip(ops) {
        let (want, p) = match op {
            SyncOp::Clear(p) => (b'c', p),
            SyncOp::EnsureDir(p) => (b'p', p),
            SyncOp::ClearIfDir(p) => (b'u', p),
            SyncOp::Delete(p) => (b'x', p),
        };
        assert_eq!((*letter, path), (want, p));
        assert!(is_safe_relative(path), "an unsafe op path {path:?}");
    }
}

fuzz_target!(|input: Input| {
    check_safe(&input.path);

    let record = SyncRecord::decode(&input.record);
    for p in record.paths.iter().chain(&record.dirs) {
        assert!(!p.contains('\0'));
        check_safe(p);
    }
    assert_eq!(SyncRecord::decode(&record.encode()), record);

    let all: Vec<SyncOp> = input.ops.iter().map(|(l, p)| op(*l, p.clone())).collect();
    let _ = SyncOp::encode_all(&all);
    let safe: Vec<SyncOp> = input
        .ops
        .into_iter()
        .filter(|(_, p)| is_safe_relative(p))
        .map(|(l, p)| op(l, p))
        .collect();
    check_encoded(&safe);

    let Ok(tree) = scan::parse(&input.scan) else {
        return;
    };
    let mut entries: BTreeMap<String, SyncEntry> = BTreeMap::new();
    for (path, link, size, mtime, mode) in input.files {
        if !is_safe_relative(&path) {
            continue;
        }
        entries.insert(
            path.clone(),
            SyncEntry {
                path,
                kind: if link {
                    EntryKind::Symlink
                } else {
                    EntryKind::File
                },
                mode: u32::from(mode),
                size,
                mtime_ns: i128::from(mtime),
                link_target: link.then(|| "target".to_string()),
            },
        );
    }
    let manifest = SyncManifest {
        entries: entries.into_values().collect(),
        ..Default::default()
    };
    let hashes: BTreeMap<String, String> = manifest
        .entries
        .iter()
        .map(|e| (e.path.clone(), "00".repeat(32)))
        .collect();
    let plan = SyncPlan::new(
        &manifest,
        &tree,
        PlanOptions {
            delete: input.delete,
            resend_all: input.resend_all,
            hashes: input.checksum.then_some(&hashes),
        },
    );
    check_encoded(&plan.ops);
    assert!(plan.send.iter().all(|e| manifest.entries.contains(e)));
    assert_eq!(plan.full, !tree.exists);
});
