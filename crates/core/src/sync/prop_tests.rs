//! Property tests of the sync's parsers and path handling (the `fuzz/` targets' properties,
//! run by CI): `is_safe_relative`, the record's format, the ops' format, the plan's ops over
//! any scan, and extraction of arbitrary or damaged archives.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path};

use proptest::prelude::*;

use super::*;

/// Bits of paths, the awkward ones included.
fn pathish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "é", ".", "..", "/", "\0", "..."]),
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9_.é-]{1,4}".prop_filter("a real name", |s| s != "." && s != "..")
}

fn safe_path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..4).prop_map(|s| s.join("/"))
}

fn op(letter: u8, path: String) -> SyncOp {
    match letter % 4 {
        0 => SyncOp::Clear(path),
        1 => SyncOp::EnsureDir(path),
        2 => SyncOp::ClearIfDir(path),
        _ => SyncOp::Delete(path),
    }
}

/// `encode_all`'s output read back as the scripts on a box read it.
fn decode_ops(bytes: &[u8]) -> Vec<(u8, String)> {
    let Some(body) = bytes.strip_suffix(b"\0") else {
        assert!(bytes.is_empty(), "ops end with NUL");
        return Vec::new();
    };
    body.split(|b| *b == 0)
        .map(|raw| {
            let (letter, path) = raw.split_first().expect("a letter");
            (*letter, String::from_utf8(path.to_vec()).expect("UTF-8"))
        })
        .collect()
}

fn letter_and_path(op: &SyncOp) -> (u8, &str) {
    match op {
        SyncOp::Clear(p) => (b'c', p),
        SyncOp::EnsureDir(p) => (b'p', p),
        SyncOp::ClearIfDir(p) => (b'u', p),
        SyncOp::Delete(p) => (b'x', p),
    }
}

fn remote_tree() -> impl Strategy<Value = RemoteTree> {
    let kind = prop::sample::select(vec![
        RemoteKind::File,
        RemoteKind::Dir,
        RemoteKind::Symlink,
        RemoteKind::Other,
    ]);
    let entry = (kind, 0u64..4, 0i128..4).prop_map(|(kind, size, mtime_ns)| RemoteEntry {
        kind,
        mode: 0o644,
        size,
        mtime_ns,
        link_target: None,
        sha256: None,
    });
    let any_path = prop_oneof![pathish(), safe_path()];
    let set = prop::collection::btree_set(any_path.clone(), 0..6);
    (
        any::<bool>(),
        proptest::option::of((set.clone(), set.clone())),
        set,
        prop::collection::btree_map(any_path, entry, 0..8),
    )
        .prop_map(|(exists, record, scanned, entries)| RemoteTree {
            exists,
            record: record.map(|(paths, dirs)| SyncRecord { paths, dirs }),
            scanned,
            entries,
            state: None,
        })
}

fn manifest_of(paths: BTreeSet<String>) -> SyncManifest {
    SyncManifest {
        entries: paths
            .into_iter()
            .map(|path| SyncEntry {
                path,
                kind: EntryKind::File,
                mode: 0o644,
                size: 1,
                mtime_ns: 1,
                link_target: None,
            })
            .collect(),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_safe_path_has_only_real_names(path in prop_oneof![pathish(), safe_path()]) {
        let reference = !path.is_empty()
            && !path.starts_with('/')
            && !path.contains('\0')
            && path.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
        prop_assert_eq!(is_safe_relative(&path), reference, "{:?}", path);
        if is_safe_relative(&path) {
            prop_assert!(Path::new(&path).components().all(|c| matches!(c, Component::Normal(_))));
        }
    }

    #[test]
    fn safe_paths_join_safely_and_any_escape_makes_them_unsafe(a in safe_path(), b in safe_path()) {
        prop_assert!(is_safe_relative(&a));
        let joined = format!("{a}/{b}");
        prop_assert!(is_safe_relative(&joined), "{:?}", joined);
        for bad in [
            format!("/{a}"),
            format!("../{a}"),
            format!("{a}/.."),
            format!("{a}/./{b}"),
            format!("{a}//{b}"),
            format!("{a}/"),
            format!("{a}\0{b}"),
        ] {
            prop_assert!(!is_safe_relative(&bad), "{:?}", bad);
        }
    }

    #[test]
    fn a_record_round_trips(
        paths in prop::collection::btree_set("[^\u{0}]{0,12}", 0..8),
        dirs in prop::collection::btree_set("[^\u{0}]{0,12}", 0..8),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let record = SyncRecord { paths, dirs };
        prop_assert_eq!(SyncRecord::decode(&record.encode()), record);
        let decoded = SyncRecord::decode(&bytes);
        prop_assert_eq!(SyncRecord::decode(&decoded.encode()), decoded);
    }

    #[test]
    fn ops_on_safe_paths_encode_one_entry_each(
        ops in prop::collection::vec((any::<u8>(), safe_path()), 0..10),
    ) {
        let ops: Vec<SyncOp> = ops.into_iter().map(|(l, p)| op(l, p)).collect();
        let decoded = decode_ops(&SyncOp::encode_all(&ops));
        let want: Vec<(u8, String)> = ops
            .iter()
            .map(letter_and_path)
            .map(|(l, p)| (l, p.to_string()))
            .collect();
        prop_assert_eq!(decoded, want);
    }

    #[test]
    fn a_plan_of_safe_paths_has_only_safe_ops_whatever_the_box_says(
        paths in prop::collection::btree_set(safe_path(), 0..8),
        remote in remote_tree(),
        delete in any::<bool>(),
        resend_all in any::<bool>(),
    ) {
        let manifest = manifest_of(paths);
        let plan = SyncPlan::new(
            &manifest,
            &remote,
            PlanOptions { delete, resend_all, hashes: None },
        );
        for (letter, path) in decode_ops(&SyncOp::encode_all(&plan.ops)) {
            prop_assert!(is_safe_relative(&path), "op {} on {:?}", letter as char, path);
        }
        prop_assert_eq!(decode_ops(&SyncOp::encode_all(&plan.ops)).len(), plan.ops.len());
    }
}

/// A box's workdir as the sync scripts see it: each path a file (its content), a symlink or a
/// directory; every directory on the way to an entry is one.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    File(String),
    Link(String),
    Dir,
}

type Box_ = std::collections::BTreeMap<String, Node>;

fn node_of(e: &SyncEntry) -> Node {
    match &e.link_target {
        Some(t) => Node::Link(t.clone()),
        None => Node::File(format!("{}@{}:{:o}", e.size, e.mtime_ns, e.mode)),
    }
}

fn put(b: &mut Box_, path: &str, node: Node) {
    for dir in ancestors(path) {
        b.insert(dir.to_string(), Node::Dir);
    }
    b.insert(path.to_string(), node);
}

fn remove_tree(b: &mut Box_, path: &str) {
    let under = format!("{path}/");
    b.retain(|p, _| p != path && !p.starts_with(&under));
}

fn parents_real(b: &Box_, path: &str) -> bool {
    ancestors(path).all(|d| b.get(d) == Some(&Node::Dir))
}

/// The ops and sends of a plan laid over `b` as the commit script and `cp -al` do; `Err` where
/// they would fail.
fn apply_model(b: &mut Box_, plan: &SyncPlan) -> std::result::Result<(), String> {
    for op in &plan.ops {
        match op {
            SyncOp::Clear(p) if parents_real(b, p) => remove_tree(b, p),
            SyncOp::EnsureDir(p) => {
                for at in ancestors(&format!("{p}/x")) {
                    if matches!(b.get(at), Some(Node::File(_) | Node::Link(_))) {
                        b.remove(at);
                    }
                }
            }
            SyncOp::ClearIfDir(p) if parents_real(b, p) && b.get(p) == Some(&Node::Dir) => {
                remove_tree(b, p)
            }
            SyncOp::Delete(p)
                if parents_real(b, p)
                    && matches!(b.get(p), Some(Node::File(_) | Node::Link(_))) =>
            {
                b.remove(p);
                let mut dir = parent(p);
                while !dir.is_empty() && !b.keys().any(|k| k.starts_with(&format!("{dir}/"))) {
                    b.remove(dir);
                    dir = parent(dir);
                }
            }
            _ => {}
        }
    }
    for e in &plan.send {
        for dir in ancestors(&e.path) {
            match b.get(dir) {
                None => {
                    b.insert(dir.to_string(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => return Err(format!("cp: {dir} is not a directory")),
            }
        }
        if b.get(&e.path) == Some(&Node::Dir) {
            return Err(format!("cp: cannot overwrite directory {}", e.path));
        }
        b.insert(e.path.clone(), node_of(e));
    }
    Ok(())
}

/// A valid tree: no entry on the way to another.
fn tree_of(entries: Vec<(String, u8)>) -> SyncManifest {
    let paths: BTreeSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    let mut out: Vec<SyncEntry> = entries
        .iter()
        .filter(|(p, _)| !ancestors(p).any(|d| paths.contains(d)))
        .map(|(path, v)| SyncEntry {
            path: path.clone(),
            kind: if v % 4 == 3 {
                EntryKind::Symlink
            } else {
                EntryKind::File
            },
            mode: if v % 2 == 0 { 0o644 } else { 0o755 },
            size: u64::from(v % 3),
            mtime_ns: i128::from(v % 5),
            link_target: (v % 4 == 3).then(|| format!("t{}", v % 2)),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    SyncManifest {
        entries: out,
        ..Default::default()
    }
}

/// Short paths over a tiny alphabet: trees that collide (a file where a directory was).
fn colliding_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..4).prop_map(|s| s.join("/"))
}

fn colliding_tree() -> impl Strategy<Value = SyncManifest> {
    prop::collection::vec((colliding_path(), any::<u8>()), 0..8).prop_map(tree_of)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A box that holds `prev`'s files (and whatever a command left beside them) ends up
    /// holding `now`'s after the plan from `prev` to `now`, files crabbox never synced kept
    /// where nothing synced goes.
    #[test]
    fn a_plan_from_the_last_sync_makes_the_box_hold_the_new_tree(
        prev in colliding_tree(),
        now in colliding_tree(),
        extras in prop::collection::vec((colliding_path(), any::<bool>()), 0..4),
        delete in any::<bool>(),
    ) {
        let mut b = Box_::new();
        for e in &prev.entries {
            put(&mut b, &e.path, node_of(e));
        }
        // Build outputs a command left: only where they fit beside the synced files.
        let synced: Vec<&str> = prev.paths().chain(now.paths()).collect();
        let mut kept = Vec::new();
        for (path, dir) in extras {
            let clashes = synced.iter().any(|s| {
                *s == path || s.starts_with(&format!("{path}/")) || path.starts_with(&format!("{s}/"))
            });
            let fits = ancestors(&path).all(|d| matches!(b.get(d), None | Some(Node::Dir)));
            if !clashes && fits && !b.contains_key(&path) {
                put(&mut b, &path, if dir { Node::Dir } else { Node::File("built".into()) });
                kept.push(path);
            }
        }
        let plan = SyncPlan::delta(prev.entries.iter().map(KeptEntry::from), &now, delete);
        let same_paths = SyncRecord::of(&prev).paths == SyncRecord::of(&now).paths;
        prop_assert_eq!(plan.keeps_record, same_paths);
        if !same_paths {
            prop_assert_eq!(plan.record.clone(), SyncRecord::of(&now));
        }
        apply_model(&mut b, &plan).map_err(TestCaseError::fail)?;
        for e in &now.entries {
            prop_assert_eq!(b.get(&e.path), Some(&node_of(e)), "{}", e.path);
        }
        let now_paths: BTreeSet<&str> = now.paths().collect();
        for e in &prev.entries {
            let stays = now_paths.contains(e.path.as_str())
                || now_paths.iter().any(|n| n.starts_with(&format!("{}/", e.path)));
            if delete && !stays {
                prop_assert!(
                    !matches!(b.get(&e.path), Some(Node::File(_) | Node::Link(_))),
                    "{} deleted", e.path
                );
            }
        }
        for path in kept {
            // A build output under a directory emptied by deletions may go with it only if
            // it was no directory's sole content; it is otherwise where it was.
            let under_removed = ancestors(&path).any(|d| !b.contains_key(d));
            prop_assert!(b.contains_key(&path) || under_removed, "{} kept", path);
        }
    }
}

// Extraction touches the filesystem: fewer cases.

const CANARY: &[u8] = b"outside the destination";

/// Extracts `archive` into `tmp/inner` beside `tmp/outside/canary` and checks that nothing
/// outside `inner` changed and `inner` is still a directory.
fn extract_and_check(archive: &[u8], codec: Codec) -> std::result::Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("inner");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&inner).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("canary"), CANARY).unwrap();
    let result = extract_archive_with(archive, codec, &inner);
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    prop_assert!(std::fs::symlink_metadata(&inner).unwrap().is_dir());
    prop_assert_eq!(names(tmp.path()), ["inner", "outside"]);
    prop_assert_eq!(names(&outside), ["canary"]);
    prop_assert_eq!(std::fs::read(outside.join("canary")).unwrap(), CANARY);
    if let Ok(written) = result {
        for p in written {
            prop_assert!(
                Path::new(&p)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                "{:?}",
                p
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Item {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
}

/// A stored tar of `entries`, names written raw (so `..` and `/` get in), then damaged.
fn raw_tar(entries: &[(String, Item)], damage: &[(usize, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, item) in entries {
        let mut h = tar::Header::new_gnu();
        let name = name.as_bytes();
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        let data: &[u8] = match item {
            Item::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                data
            }
            Item::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            Item::Symlink(target) | Item::HardLink(target) => {
                h.set_entry_type(if matches!(item, Item::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                let t = target.as_bytes();
                let n = t.len().min(99);
                h.as_old_mut().linkname[..n].copy_from_slice(&t[..n]);
                &[]
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    for (at, byte) in damage {
        let i = at % out.len();
        out[i] = *byte;
    }
    out
}

fn item() -> impl Strategy<Value = Item> {
    let target = prop_oneof![
        Just("../outside".to_string()),
        Just("..".to_string()),
        Just("/".to_string()),
        Just(".".to_string()),
        pathish(),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Item::File),
        Just(Item::Dir),
        target.clone().prop_map(Item::Symlink),
        target.prop_map(Item::HardLink),
    ]
}

fn entry_name() -> impl Strategy<Value = String> {
    prop_oneof![
        pathish(),
        safe_path(),
        Just(".".to_string()),
        Just("l/canary".to_string()),
        Just("l".to_string()),
    ]
}

fn compress(codec: Codec, raw: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Stored => raw.to_vec(),
        Codec::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(raw).unwrap();
            gz.finish().unwrap()
        }
        Codec::Zstd => zstd::stream::encode_all(raw, 1).unwrap(),
    }
}

fn codec() -> impl Strategy<Value = Codec> {
    prop::sample::select(vec![Codec::Stored, Codec::Gzip, Codec::Zstd])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn extracting_arbitrary_bytes_never_panics_nor_writes_outside(
        bytes in prop::collection::vec(any::<u8>(), 0..1500),
        codec in codec(),
    ) {
        extract_and_check(&bytes, codec)?;
    }

    #[test]
    fn extracting_a_hostile_or_damaged_tar_never_writes_outside(
        entries in prop::collection::vec((entry_name(), item()), 0..6),
        damage in prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        codec in codec(),
    ) {
        let raw = raw_tar(&entries, &damage);
        extract_and_check(&compress(codec, &raw), codec)?;
    }
}

#[test]
fn a_write_through_a_link_out_of_the_destination_leaves_the_canary() {
    // A shape the hostile-tar strategy reaches only rarely, pinned.
    let entries = [
        ("l".to_string(), Item::Symlink("../outside".into())),
        ("l/canary".to_string(), Item::File(b"x".to_vec())),
    ];
    extract_and_check(&raw_tar(&entries, &[]), Codec::Stored).unwrap();
}
