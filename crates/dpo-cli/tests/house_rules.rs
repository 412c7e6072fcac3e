//! The house rules that the compiler does not check, checked on the sources of every crate:
//! layer crates depend only on layers below them; inside a crate no modules import each other
//! in a circle; library functions fit on a screen (80 lines as `cargo fmt` writes them).
//!
//! Modules are source files; a file's imports are the modules its `crate::a::b` and
//! `super::x` paths name outside comments and test modules: a child naming its parent module
//! imports it, a module using its own children does not (`lib.rs` declaring the crate's modules
//! and handing their items on is their parent, not their importer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer crates, bottom to top; a crate may depend on those of a lower layer only.
const LAYERS: [(&str, usize); 7] = [
    ("dpo-runtime", 0),
    ("dpo-kernels", 0),
    ("dpo-model", 1),
    ("dpo-data", 2),
    ("dpo-train", 3),
    ("dpo-align", 4),
    ("dpo-cli", 5),
];

/// The longest a library function may be, in lines.
const MAX_FUNCTION_LINES: usize = 80;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn layer(name: &str) -> Option<usize> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// The `.rs` files under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a source file: comments blanked (line by line) and `#[cfg(test)]` modules cut.
fn code(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut skip_depth: Option<i64> = None;
    let mut test_attr = false;
    for raw in text.lines() {
        let line = strip_comment(raw);
        if let Some(depth) = skip_depth.as_mut() {
            *depth += braces(&line);
            if *depth <= 0 {
                skip_depth = None;
            }
            out.push(String::new());
            continue;
        }
        let t = line.trim();
        if t == "#[cfg(test)]" {
            test_attr = true;
        } else if test_attr && t.starts_with("mod ") && t.ends_with('{') {
            skip_depth = Some(braces(&line));
            test_attr = false;
            out.push(String::new());
            continue;
        } else if !t.starts_with("#[") && !t.is_empty() {
            test_attr = false;
        }
        out.push(line);
    }
    out
}

/// `line` without a `//` comment and with string literals emptied (a crude lexer: enough for
/// this project's code).
fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = false;
                out.push('"');
            }
            continue;
        }
        if c == '"' {
            in_str = true;
            out.push('"');
        } else if c == '\'' && chars.peek().is_some_and(|&n| n == '{' || n == '}') {
            chars.next();
            out.push_str("' '");
        } else if c == '/' && chars.peek() == Some(&'/') {
            break;
        } else {
            out.push(c);
        }
    }
    out
}

fn braces(line: &str) -> i64 {
    line.chars()
        .map(|c| {
            if c == '{' {
                1
            } else if c == '}' {
                -1
            } else {
                0
            }
        })
        .sum()
}

/// A file's module path in its crate (`src/loss/pairwise.rs` → `loss::pairwise`; `lib.rs` and
/// `main.rs` → ``).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let parts: Vec<&str> =
        parts.iter().map(String::as_str).filter(|p| *p != "mod" && *p != "lib" && *p != "main").collect();
    parts.join("::")
}

/// The modules a file's paths name: `crate::a::b::Item` is module `a::b` when that is a file,
/// else `a`; `super::x` likewise from the file's parent module; `crate::{a, b::C}` both.
fn imports(module: &str, lines: &[String], modules: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
    let text = lines.join("\n");
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            for path in paths(rest) {
                let path: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                // the base itself (an item of the crate root, or of the parent) unless a longer
                // prefix of the path is a module
                let mut best = Some(base.clone());
                for n in 1..=path.len() {
                    let m = path[..n].join("::");
                    let m = if base.is_empty() { m } else { format!("{base}::{m}") };
                    if modules.contains(&m) {
                        best = Some(m);
                    }
                }
                let descendant = |m: &String| !module.is_empty() && m.starts_with(&format!("{module}::"));
                let own = |m: &String| m == module || descendant(m) || (module.is_empty() && !m.is_empty());
                if let Some(m) = best.filter(|m| !own(m)) {
                    out.insert(m);
                }
            }
        }
    }
    out
}

/// The paths at the start of `rest` (what follows `crate::`): one path, or each path of a
/// `{a, b::{C, D}}` list (nested lists by their first segment).
fn paths(rest: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    if !rest.starts_with('{') {
        return vec![rest.split(|c: char| !ident(c)).next().unwrap_or("").to_string()];
    }
    let (mut depth, mut end) = (0, rest.len());
    for (i, c) in rest.char_indices() {
        depth += match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        };
        if depth == 0 {
            end = i;
            break;
        }
    }
    let inner = &rest[1..end];
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items.iter().map(|p| p.trim().split(|c: char| !ident(c)).next().unwrap_or("").to_string()).collect()
}

/// The circles of a directed graph (its strongly connected components of more than one node).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|k| (k, reach(k))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for k in graph.keys() {
        if !reaches[k].contains(k) || out.iter().any(|c| c.contains(k)) {
            continue;
        }
        out.push(graph.keys().filter(|m| reaches[k].contains(*m) && reaches[*m].contains(k)).cloned().collect());
    }
    out
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let mut checked = 0;
    for (name, level) in LAYERS {
        let manifest = std::fs::read_to_string(crates_dir().join(name).join("Cargo.toml")).unwrap();
        let deps = manifest.split("\n[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
        for line in deps.lines() {
            let dep = line.split(['=', '.', ' ']).next().unwrap().trim();
            if let Some(l) = layer(dep) {
                assert!(l < level, "{name} (layer {level}) depends on {dep} (layer {l}): imports go downward only");
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} dependencies between layer crates found");
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let mut found = Vec::new();
    let mut edges = 0;
    for (name, _) in LAYERS {
        let src = crates_dir().join(name).join("src");
        let files = sources(&src);
        let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
        let mut graph = BTreeMap::new();
        for f in &files {
            let m = module_of(&src, f);
            let i = imports(&m, &code(f), &modules);
            edges += i.len();
            if std::env::var_os("HOUSE_RULES_SHOW").is_some() {
                eprintln!("{name} {m} -> {i:?}");
            }
            graph.insert(m, i);
        }
        for c in circles(&graph) {
            found.push(format!("{name}: {}", c.join(" <-> ")));
        }
    }
    assert!(edges > 100, "only {edges} imports between modules found: has the layout changed?");
    assert!(found.is_empty(), "modules that import each other in a circle:\n{}", found.join("\n"));
}

#[test]
fn library_functions_fit_on_a_screen() {
    let mut long = Vec::new();
    let mut functions = 0;
    for (name, _) in LAYERS.iter().filter(|(n, _)| *n != "dpo-cli") {
        for f in sources(&crates_dir().join(name).join("src")) {
            let lines = code(&f);
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
                let t = t.strip_prefix("pub(super) ").unwrap_or(t);
                let t = t.strip_prefix("unsafe ").unwrap_or(t);
                if !t.starts_with("fn ") {
                    continue;
                }
                let (mut depth, mut opened, mut end) = (0i64, false, None);
                for (j, l) in lines.iter().enumerate().skip(i) {
                    if !opened && l.contains(';') && !l.contains('{') {
                        break; // a declaration without a body
                    }
                    depth += braces(l);
                    opened |= l.contains('{');
                    if opened && depth <= 0 {
                        end = Some(j);
                        break;
                    }
                }
                if let Some(end) = end {
                    functions += 1;
                    let n = end - i + 1;
                    if n > MAX_FUNCTION_LINES {
                        long.push(format!("{}:{} {n} lines", f.strip_prefix(crates_dir()).unwrap().display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(functions > 800, "only {functions} functions found");
    assert!(long.is_empty(), "functions over {MAX_FUNCTION_LINES} lines:\n{}", long.join("\n"));
}
