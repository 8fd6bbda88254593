//! The shape of the code, checked: no source file too long to read, and no
//! import circle between modules (docs/decisions.md 25 and 26).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 6] = ["proto", "client", "agent", "proxy", "bench", "tests"];
/// Longest source file under a crate's `src/` (the e2e suites in
/// `tests/tests/` are lists of scenarios, and are not held to it).
const LINES_MAX: usize = 500;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path within its crate: `api/mod.rs` is `api`,
/// `api/gate.rs` is `api::gate`, `lib.rs` and `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The modules `text` (of module `me`) names, `depth` segments deep. Test
/// modules are left out: a test may reach anywhere.
fn references(me: &[String], text: &str, depth: usize) -> BTreeSet<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // `super` of `a::b` (a/b.rs) is `a`; of `a` (a/mod.rs) the root.
    let parent = me[..me.len().saturating_sub(1)].to_vec();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        for (at, _) in text.match_indices(prefix) {
            if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = text[at + prefix.len()..].chars().take_while(|&c| ident(c)).collect();
            let segs: Vec<String> = path
                .split("::")
                .take_while(|s| s.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
                .map(str::to_string)
                .collect();
            let mut full = base.clone();
            full.extend(segs);
            full.truncate(depth);
            if !full.is_empty() {
                out.insert(full.join("::"));
            }
        }
    }
    out
}

/// Strongly connected components with more than one module.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(v: &str, g: &BTreeMap<String, BTreeSet<String>>, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(v.to_string()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, out);
        }
        out.push(v.to_string());
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in graph {
        for w in ws {
            reversed.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for v in graph.keys() {
        visit(v, graph, &mut seen, &mut order);
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for v in order.iter().rev() {
        let mut component = Vec::new();
        visit(v, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            found.push(component);
        }
    }
    found
}

#[test]
fn no_source_file_is_too_long() {
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        sources(&workspace().join(krate).join("src"), &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            if lines > LINES_MAX {
                long.push(format!("{} ({lines} lines)", f.strip_prefix(workspace()).unwrap().display()));
            }
        }
    }
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

#[test]
fn no_import_circles_between_modules() {
    let mut found = Vec::new();
    for krate in CRATES {
        let src = workspace().join(krate).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        for depth in [1, 2] {
            let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for f in &files {
                let module = module_of(&src, f);
                // The crate root, and test modules in their own files
                // (`#[cfg(test)] mod tests;`): a test may reach anywhere.
                if module.is_empty() || module.last().is_some_and(|m| m == "tests") {
                    continue;
                }
                let mut me = module.clone();
                me.truncate(depth);
                let me = me.join("::");
                let text = std::fs::read_to_string(f).unwrap();
                for target in references(&module, &text, depth) {
                    // A module and its own parent or children are one unit.
                    let related = target == me
                        || me.starts_with(&format!("{target}::"))
                        || target.starts_with(&format!("{me}::"));
                    if !related {
                        graph.entry(me.clone()).or_default().insert(target);
                    }
                }
            }
            for circle in circles(&graph) {
                found.push(format!("{krate}: {}", circle.join(" <-> ")));
            }
        }
    }
    assert!(found.is_empty(), "import circles: {found:?}");
}

/// Library code returns typed errors (a `thiserror` enum or struct a
/// caller can match on), never a bare `String`; binaries may print what
/// they like.
#[test]
fn library_code_has_typed_errors() {
    let mut found = Vec::new();
    for krate in ["proto", "client", "agent", "proxy"] {
        let src = workspace().join(krate).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        for f in files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let binary = rel == "main.rs" || rel == "cli.rs" || rel.starts_with("cli/");
            if binary || rel.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (n, line) in code.lines().enumerate() {
                let line = line.split("//").next().unwrap_or_default();
                if line.contains("Result<") && line.contains(", String>") || line.contains("anyhow::") {
                    found.push(format!("{krate}/src/{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "untyped errors in library code: {found:#?}");
}

#[test]
fn the_circle_finder_finds_circles() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
            .collect();
    assert_eq!(circles(&graph), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    let me = ["api".to_string(), "gate".to_string()];
    let refs = references(&me, "use super::reply::ApiError;\nuse crate::app::App;\nx::crate::not", 2);
    assert_eq!(refs, BTreeSet::from(["api::reply".to_string(), "app".to_string()]));
}
