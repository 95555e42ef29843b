//! The one-way layers, checked against the source: every `crate::NAME`
//! path in a file under `src/` is an edge from the file's top-level module
//! to `NAME`, and the edges below must not exist. Compiled for tests only
//! (`lib.rs`).
//!
//! ```text
//! main / cli  →  app  →  web  →  maintenance  →  store  →  probes  →  sample, analysis
//! ```
//!
//! Paths across top-level modules are written from `crate::` (as the whole
//! crate does), so the check reads those, `use crate::{a, b::c}` groups
//! included; comment lines are skipped. `main.rs` is the binary above every
//! layer and names the library as `upkeep::`, so it has no edges here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(from, to)`: `from` must never name `to`.
const FORBIDDEN: &[(&str, &str)] = &[
    // The store owns every table of the history file, ledger SQL included.
    ("store", "maintenance"),
    ("store", "web"),
    ("store", "app"),
    ("store", "report"),
    ("store", "alerts"),
    // Alerts sit beside maintenance: below the web, above the store.
    ("alerts", "web"),
    ("alerts", "app"),
    ("alerts", "cli"),
    ("alerts", "report"),
    // `[history]` is the store's own (`store::config`); the root composes it.
    ("store", "config"),
    // Connections shared by probes and tasks know neither.
    ("clients", "config"),
    ("clients", "maintenance"),
    ("clients", "store"),
    ("clients", "web"),
    ("clients", "app"),
    ("maintenance", "web"),
    ("maintenance", "app"),
    ("maintenance", "cli"),
    ("maintenance", "report"),
    ("web", "app"),
    // CLI output is the top layer's; the web layer has its own.
    ("web", "report"),
    ("web", "cli"),
    // Each seam keeps its config types in its own folder.
    ("probes", "config"),
    ("probes", "store"),
    ("probes", "web"),
    ("probes", "maintenance"),
];

/// Modules at the bottom: they may name only the modules listed.
const ONLY: &[(&str, &[&str])] = &[
    ("sample", &[]),
    ("fmt", &["sample"]),
    ("analysis", &["sample"]),
];

// Rules still broken while a move is under way. The change that mends one
// deletes it here: the test fails while a rule that holds stays listed.
const PENDING: &[(&str, &str)] = &[];

/// The top-level module a file under `src/` belongs to: `web/page/mod.rs`
/// and `web/mod.rs` are `web`, `report.rs` is `report`.
fn top_module(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .expect("a file under src/")
        .as_os_str()
        .to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// The top-level modules one file names as `crate::NAME`.
fn named_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| [l, "\n"])
        .collect();
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `my_crate::` is another word.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => names.extend(group_heads(group)),
            None => names.extend(ident(rest)),
        }
    }
    names
}

/// The first name of each item of a `{a, b::c, d::{e, f}}` group, `group`
/// starting just after its `{` (it may run over several lines).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 1;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                item_start = false;
                heads.extend(ident(&group[i..]));
            }
            _ => {}
        }
    }
    heads
}

/// The identifier `s` starts with, if any.
fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(from, to)` → the files (relative to `src/`) that make the edge.
fn edges() -> BTreeMap<(String, String), BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(&src).expect("under src/");
        if relative == Path::new("main.rs") {
            continue;
        }
        let from = top_module(relative);
        let source = std::fs::read_to_string(&path).expect("a source file is text");
        for to in named_modules(&source) {
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    edges
}

#[test]
fn layers_point_one_way() {
    let edges = edges();
    let files = |from: &str, to: &str| edges.get(&(from.to_string(), to.to_string()));
    let mut problems = Vec::new();
    for &(from, to) in FORBIDDEN {
        match (files(from, to), PENDING.contains(&(from, to))) {
            (Some(f), false) => problems.push(format!("{from} → {to}: {f:?}")),
            (None, true) => problems.push(format!(
                "{from} → {to} holds now: delete it from PENDING in src/layers.rs"
            )),
            _ => {}
        }
    }
    for &(from, allowed) in ONLY {
        for ((f, to), by) in &edges {
            if f == from && !allowed.contains(&to.as_str()) {
                problems.push(format!("{from} → {to} (may name only {allowed:?}): {by:?}"));
            }
        }
    }
    for pending in PENDING {
        assert!(FORBIDDEN.contains(pending), "{pending:?} is not a rule");
    }
    assert!(
        problems.is_empty(),
        "layers broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn use_groups_and_paths_name_their_first_module() {
    let source = "use crate::web::Shared;\n\
                  use crate::{app, store::{Reader, writer::Writer},\n    fmt::rfc3339};\n\
                  // crate::report in a comment is no edge\n\
                  let x = crate::sample::now_ms(); // my_crate::x is another word\n";
    assert_eq!(
        named_modules(source),
        ["app", "fmt", "sample", "store", "web"]
            .map(String::from)
            .into()
    );
    assert_eq!(top_module(Path::new("web/page/mod.rs")), "web");
    assert_eq!(top_module(Path::new("report.rs")), "report");
}
