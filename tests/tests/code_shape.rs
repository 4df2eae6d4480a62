//! The shape of the library code, read from the source as text: every library function fits
//! on a screen (data tables excepted, each with its reason), the sidecar's files import each
//! other without cycles, and only the sidecar's CLI imports from the CLI.
//!
//! These are structure rules, not behaviour: the tests read `.rs` files and build nothing.
//! Code inside `#[cfg(test)]` modules and files is not library code and is not measured.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The library source trees whose functions are measured.
const LIBRARY_ROOTS: [&str; 4] = ["config/src", "lua-compat/src", "gateway/src", "sidecar/src"];

/// The longest a library function may be, in lines from `fn` to its closing brace.
const MAX_FUNCTION_LINES: usize = 80;

/// Functions allowed to be longer for good: data tables, which read best in one piece.
/// `(file, function, reason)`; the file relative to the repository root.
const DATA_TABLES: &[(&str, &str, &str)] = &[];

/// The sidecar's library source, whose import graph is checked.
const SIDECAR_SRC: &str = "sidecar/src";

/// The repository root: the parent of this package's directory.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the repository")
        .to_path_buf()
}

/// Every `.rs` file below `dir`, relative to `root`, sorted.
fn rust_files(root: &Path, dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root.join(dir), &mut found);
    let mut files: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .expect("below root")
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------
// Reading Rust as text

/// `src` with comments removed and every string, byte string, raw string and char literal
/// replaced by an empty one (`""`, `' '`), line breaks kept, so that braces, `fn`, `use`
/// and paths can be found by plain scanning and line numbers still match.
fn code_only(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_is_ident = i > 0 && ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = skip_block_comment(&chars, i, &mut out);
        } else if let Some(end) = raw_string_end(&chars, i).filter(|_| !prev_is_ident) {
            out.push_str("\"\"");
            keep_line_breaks(&chars[i..end], &mut out);
            i = end;
        } else if c == '"' {
            let end = quoted_end(&chars, i, '"');
            out.push_str("\"\"");
            keep_line_breaks(&chars[i..end], &mut out);
            i = end;
        } else if c == '\'' && is_char_literal(&chars, i) {
            out.push_str("' '");
            i = quoted_end(&chars, i, '\'');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Skips the (possibly nested) block comment starting at `i`; returns the index after it.
fn skip_block_comment(chars: &[char], mut i: usize, out: &mut String) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            if chars[i] == '\n' {
                out.push('\n');
            }
            i += 1;
        }
    }
    i
}

/// The end (exclusive) of a raw string `r"…"`, `r#"…"#`, `br#"…"#` starting at `i`, if one
/// starts there.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(chars.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"'
            && chars[j + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// The end (exclusive) of the literal quoted by `quote` starting at `i`, honouring escapes.
fn quoted_end(chars: &[char], i: usize, quote: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    chars.len()
}

/// Whether the `'` at `i` opens a char literal (`'x'`, `'\n'`, `'\u{1F600}'`) rather than
/// a lifetime or label (`'a`, `'static`).
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

fn keep_line_breaks(chars: &[char], out: &mut String) {
    out.extend(chars.iter().filter(|c| **c == '\n'));
}

/// The name of the function whose signature starts this (code-only) line, if one does:
/// `[pub[(…)]] [const] [async] [unsafe] [extern ""] fn name`.
fn fn_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    if let Some(r) = rest.strip_prefix("pub") {
        rest = r.trim_start();
        if rest.starts_with('(') {
            rest = rest[rest.find(')')? + 1..].trim_start();
        } else if r.len() == rest.len() {
            return None; // `pubx`
        }
    }
    for qualifier in ["const ", "async ", "unsafe ", "extern \"\" "] {
        if let Some(r) = rest.strip_prefix(qualifier) {
            rest = r.trim_start();
        }
    }
    let name: String = rest
        .strip_prefix("fn ")?
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `Some(name)` when this (code-only) line declares a file module: `[pub…] mod name;`.
fn file_mod(line: &str) -> Option<String> {
    let t = line.trim();
    let t = t
        .strip_prefix("pub(crate) ")
        .or(t.strip_prefix("pub "))
        .unwrap_or(t);
    let name = t.strip_prefix("mod ")?.strip_suffix(';')?.trim();
    name.chars()
        .all(|c| c.is_alphanumeric() || c == '_')
        .then(|| name.to_string())
}

/// One source file read for the rules: its code-only lines with the lines of
/// `#[cfg(test)]` items blanked, and the file modules it declares under `#[cfg(test)]`.
struct LibrarySource {
    lines: Vec<String>,
    test_file_mods: Vec<String>,
}

/// Reads `src` as library code: blanks every item under `#[cfg(test)]` (an inline module or
/// a function, up to its closing brace) and collects `#[cfg(test)] mod name;` declarations.
fn library_source(src: &str) -> LibrarySource {
    let code = code_only(src);
    let mut lines: Vec<String> = code.lines().map(str::to_string).collect();
    let mut test_file_mods = Vec::new();
    let mut pending_test = false;
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim().to_string();
        if t.starts_with("#[cfg(test)]") {
            pending_test = true;
            lines[i].clear();
            i += 1;
            continue;
        }
        if !pending_test || t.is_empty() || t.starts_with("#[") {
            i += 1;
            continue;
        }
        pending_test = false;
        if let Some(name) = file_mod(&t) {
            test_file_mods.push(name);
            lines[i].clear();
            i += 1;
            continue;
        }
        // Blank the item up to the brace that closes the first one it opens (or its `;`).
        let mut depth = 0i32;
        let mut opened = false;
        while i < lines.len() {
            for c in lines[i].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let ends = (opened && depth <= 0) || (!opened && lines[i].trim_end().ends_with(';'));
            lines[i].clear();
            i += 1;
            if ends {
                break;
            }
        }
    }
    LibrarySource {
        lines,
        test_file_mods,
    }
}

/// The module directory of a file's child modules: `dir/` for `lib.rs`, `main.rs` and
/// `mod.rs`, `dir/name/` for `dir/name.rs`.
fn child_module_dir(file: &str) -> String {
    let path = Path::new(file);
    let dir = path
        .parent()
        .map_or(String::new(), |p| p.display().to_string());
    let stem = path
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    if ["lib", "main", "mod"].contains(&stem.as_str()) {
        dir
    } else {
        format!("{dir}/{stem}")
    }
}

/// The library files below `dir` with their sources, without the files that are test
/// modules (declared `#[cfg(test)] mod name;`) and everything below them.
fn library_files(root: &Path, dir: &str) -> BTreeMap<String, LibrarySource> {
    let mut files = BTreeMap::new();
    let mut test_prefixes = Vec::new();
    for file in rust_files(root, dir) {
        let src = fs::read_to_string(root.join(&file)).expect("read a source file");
        let source = library_source(&src);
        let child_dir = child_module_dir(&file);
        for name in &source.test_file_mods {
            test_prefixes.push(format!("{child_dir}/{name}.rs"));
            test_prefixes.push(format!("{child_dir}/{name}/"));
        }
        files.insert(file, source);
    }
    files.retain(|file, _| !test_prefixes.iter().any(|p| file.starts_with(p.as_str())));
    files
}

// ---------------------------------------------------------------------------------------
// Function length

/// A function longer than the limit: file, name, first line, length in lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LongFunction {
    file: String,
    name: String,
    line: usize,
    lines: usize,
}

/// The functions of one file longer than `max` lines, by counting braces from each `fn`
/// line to the brace that closes its body; declarations without a body are skipped.
fn long_functions(file: &str, source: &LibrarySource, max: usize) -> Vec<LongFunction> {
    struct Open {
        name: String,
        line: usize,
        depth: i32,
        has_body: bool,
    }
    let mut long = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    let mut depth = 0i32;
    // Parentheses and brackets open: a `;` inside them (`[u8; 32]`) ends no declaration.
    let mut nesting = 0i32;
    for (i, line) in source.lines.iter().enumerate() {
        if let Some(name) = fn_name(line) {
            open.push(Open {
                name,
                line: i,
                depth,
                has_body: false,
            });
        }
        for c in line.chars() {
            match c {
                '{' => {
                    if let Some(top) = open.last_mut().filter(|f| f.depth == depth) {
                        top.has_body = true;
                    }
                    depth += 1;
                }
                '}' => {
                    depth -= 1;
                    while open.last().is_some_and(|f| f.depth == depth && f.has_body) {
                        let f = open.pop().expect("an open function");
                        if i - f.line + 1 > max {
                            long.push(LongFunction {
                                file: file.to_string(),
                                name: f.name,
                                line: f.line + 1,
                                lines: i - f.line + 1,
                            });
                        }
                    }
                }
                '(' | '[' => nesting += 1,
                ')' | ']' => nesting -= 1,
                ';' if nesting == 0
                    && open.last().is_some_and(|f| f.depth == depth && !f.has_body) =>
                {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    long
}

#[test]
fn no_library_function_is_longer_than_a_screen() {
    let root = repo_root();
    let mut long = Vec::new();
    for dir in LIBRARY_ROOTS {
        for (file, source) in library_files(&root, dir) {
            long.extend(long_functions(&file, &source, MAX_FUNCTION_LINES));
        }
    }
    let is_table = |f: &LongFunction| {
        DATA_TABLES
            .iter()
            .any(|(file, name, _)| *file == f.file && *name == f.name)
    };
    let stale_tables: Vec<_> = DATA_TABLES
        .iter()
        .filter(|(file, name, _)| !long.iter().any(|f| f.file == *file && f.name == *name))
        .collect();
    assert!(
        stale_tables.is_empty(),
        "DATA_TABLES entries that are no longer long functions (remove them): {stale_tables:?}"
    );
    let mut offenders: Vec<_> = long.iter().filter(|f| !is_table(f)).collect();
    offenders.sort_by_key(|f| std::cmp::Reverse(f.lines));
    assert!(
        offenders.is_empty(),
        "library functions over {MAX_FUNCTION_LINES} lines (split them, or list a data table in \
         DATA_TABLES with its reason):\n{}",
        offenders
            .iter()
            .map(|f| format!("{:5} {}:{} {}", f.lines, f.file, f.line, f.name))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_function_measure_skips_strings_comments_declarations_and_tests() {
    let src = r##"
fn short() {
    let s = "{ not a brace";
    let r = r#"} neither"#;
    let c = '{';
    let l: &'static str = "x"; // } nor this
    /* { nor /* nested */ this */
}
trait T {
    fn declared(&self);
    fn declared_over_lines(
        &self,
    ) -> u32;
}
pub(crate) async fn long_one(key: [u8; 32]) {
    a();
    b();
    c();
    d();
    e();
    f();
    g();
}
#[cfg(test)]
mod tests {
    fn long_test() {
        a();
        b();
        c();
        d();
        e();
        f();
        g();
    }
}
"##;
    let source = library_source(src);
    // `short` is 7 lines, `long_one` 9, `long_test` 9 but in a test module.
    let long = long_functions("x.rs", &source, 8);
    let names: Vec<&str> = long.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["long_one"], "{long:?}");
    assert_eq!(long[0].lines, 9);
    assert_eq!(
        fn_name("    pub(super) const unsafe fn f<T>() {"),
        Some("f".into())
    );
    assert_eq!(fn_name("    let f = |x| x; // fn not"), None);
}

// ---------------------------------------------------------------------------------------
// The sidecar's import graph

/// The module path (below `crate`) of a library file: `lib.rs` → `[]`, `a/mod.rs` → `[a]`,
/// `a/b.rs` → `[a, b]`.
fn module_path(file: &str) -> Vec<String> {
    let rel = file
        .strip_prefix(SIDECAR_SRC)
        .unwrap_or(file)
        .trim_start_matches('/')
        .trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// Every path a file's code names from its own crate, as absolute module segments: the
/// leaves of each `use crate::…` / `use super::…` / `use self::…` tree, and `crate::a::b`,
/// `super::x` written inline.
fn crate_paths(source: &LibrarySource, here: &[String]) -> Vec<Vec<String>> {
    let code = source.lines.join("\n");
    let mut paths = Vec::new();
    let mut rest_of_code = String::with_capacity(code.len());
    // `use` statements first (their trees have groups), then inline paths in the rest.
    let mut rest = code.as_str();
    while let Some(at) = find_keyword(rest, "use") {
        rest_of_code.push_str(&rest[..at]);
        let stmt_end = rest[at..].find(';').map_or(rest.len(), |e| at + e + 1);
        let tree = &rest[at + 3..stmt_end].trim_end_matches(';');
        for leaf in use_tree_leaves(tree) {
            if let Some(abs) = absolute(&leaf, here) {
                paths.push(abs);
            }
        }
        rest = &rest[stmt_end..];
    }
    rest_of_code.push_str(rest);
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = rest_of_code[from..].find(start).map(|a| a + from) {
            from = at + start.len();
            let before = rest_of_code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
                continue;
            }
            let path = inline_path(&rest_of_code[at..]);
            if let Some(abs) = absolute(&path, here) {
                paths.push(abs);
            }
        }
    }
    paths
}

/// The path at the start of `code`: `a::b::c` up to the first segment followed by anything
/// but `::` (`crate::a::f(x)` is `crate::a::f`).
fn inline_path(code: &str) -> Vec<String> {
    let mut path = Vec::new();
    for seg in code.split("::") {
        let name: String = seg
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        let whole = name.len() == seg.len();
        path.push(name);
        if !whole {
            break;
        }
    }
    path
}

/// The offset of the keyword `word` as a whole word in `code`, if it occurs.
fn find_keyword(code: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = code[from..].find(word).map(|a| a + from) {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The leaf paths of a use tree: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`; `as`
/// renames and `*` / `self` leaves name their parent.
fn use_tree_leaves(tree: &str) -> Vec<Vec<String>> {
    fn parse(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let mut path = prefix.to_vec();
            path.extend(segments(&tree[..open]));
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            for part in split_top_level(inner) {
                parse(part, &path, out);
            }
        } else if !tree.is_empty() {
            let mut path = prefix.to_vec();
            path.extend(segments(tree.split(" as ").next().unwrap_or(tree)));
            out.push(path);
        }
    }
    let mut out = Vec::new();
    parse(tree, &[], &mut out);
    out
}

/// The `::`-separated names of a path, without `*`, `self` and empty parts.
fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "*" && *s != "self")
        .map(str::to_string)
        .collect()
}

/// `inner` split at the commas that are not inside braces.
fn split_top_level(inner: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
}

/// `path` as absolute module segments when it starts at `crate`, `super` or `self` (seen
/// from the module `here`); `None` for paths into other crates.
fn absolute(path: &[String], here: &[String]) -> Option<Vec<String>> {
    let first = path.first()?;
    let (mut abs, mut rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.to_vec(), &path[1..]),
        "super" => (here.to_vec(), path),
        _ => return None,
    };
    while let Some(seg) = rest.first().filter(|s| *s == "super") {
        let _ = seg;
        abs.pop();
        rest = &rest[1..];
    }
    abs.extend(rest.iter().cloned());
    Some(abs)
}

/// The file a module path lands in: the longest prefix of `path` that is a file's module.
fn file_of<'a>(path: &[String], modules: &'a BTreeMap<Vec<String>, String>) -> Option<&'a str> {
    (0..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n]))
        .map(String::as_str)
}

/// The sidecar's library files (not `main.rs`: the binary is its own crate) and, for each,
/// the files its code names.
fn sidecar_import_graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = library_files(root, SIDECAR_SRC);
    files.remove(&format!("{SIDECAR_SRC}/main.rs"));
    files.retain(|f, _| !f.starts_with(&format!("{SIDECAR_SRC}/bin/")));
    let modules: BTreeMap<Vec<String>, String> =
        files.keys().map(|f| (module_path(f), f.clone())).collect();
    let mut graph = BTreeMap::new();
    for (file, source) in &files {
        let here = module_path(file);
        let targets: BTreeSet<String> = crate_paths(source, &here)
            .iter()
            .filter_map(|p| file_of(p, &modules))
            .filter(|target| target != file)
            .map(str::to_string)
            .collect();
        graph.insert(file.clone(), targets);
    }
    graph
}

/// The strongly connected components of `graph` with more than one file: its cycles.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn finish<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a str>,
    ) {
        if !seen.insert(node) {
            return;
        }
        for next in graph.get(node).into_iter().flatten() {
            finish(next, graph, seen, order);
        }
        order.push(node);
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for node in graph.keys() {
        finish(node, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph {
        for to in tos {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut components = Vec::new();
    for node in order.into_iter().rev() {
        if assigned.contains(node) {
            continue;
        }
        let mut component = Vec::new();
        finish(node, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            components.push(component.into_iter().map(str::to_string).collect());
        }
    }
    components
}

#[test]
fn the_sidecars_files_import_each_other_without_cycles() {
    let graph = sidecar_import_graph(&repo_root());
    assert!(graph.len() > 10, "too few sidecar files found: {graph:?}");
    let new_cycles = cycles(&graph);
    let describe = |cycle: &BTreeSet<String>| {
        cycle
            .iter()
            .map(|f| {
                let into: Vec<&str> = graph[f]
                    .iter()
                    .filter(|t| cycle.contains(*t))
                    .map(String::as_str)
                    .collect();
                format!("  {f} -> {}", into.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        new_cycles.is_empty(),
        "import cycles between the sidecar's files (each file, then the files of its cycle it \
         imports):\n{}",
        new_cycles
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn only_the_sidecars_cli_imports_from_the_cli() {
    let graph = sidecar_import_graph(&repo_root());
    let cli = format!("{SIDECAR_SRC}/cli");
    let importers: Vec<String> = graph
        .iter()
        .filter(|(file, _)| !file.starts_with(&format!("{cli}/")) && **file != format!("{cli}.rs"))
        .filter_map(|(file, targets)| {
            let from_cli: Vec<&str> = targets
                .iter()
                .filter(|t| t.starts_with(&format!("{cli}/")) || **t == format!("{cli}.rs"))
                .map(String::as_str)
                .collect();
            (!from_cli.is_empty()).then(|| format!("  {file} -> {}", from_cli.join(", ")))
        })
        .collect();
    assert!(
        importers.is_empty(),
        "library modules importing from the CLI (the CLI sits on top; move what they need \
         below it):\n{}",
        importers.join("\n")
    );
}

#[test]
fn the_import_reader_expands_use_trees_and_resolves_relative_paths() {
    let leaves = use_tree_leaves(" crate::{a::{b, c as d}, e::*, f}");
    let joined: Vec<String> = leaves.iter().map(|l| l.join("::")).collect();
    assert_eq!(
        joined,
        ["crate::a::b", "crate::a::c", "crate::e", "crate::f"]
    );
    let here = vec!["api".to_string(), "admin".to_string(), "grants".to_string()];
    let path: Vec<String> = ["super", "super", "control", "X"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        absolute(&path, &here),
        Some(["api", "control", "X"].map(String::from).to_vec())
    );
    let source = library_source(
        "use crate::ledger::{Ledger, entry::Entry};\nfn f() { crate::cli::run(); \"crate::no\"; }\n",
    );
    let found: Vec<String> = crate_paths(&source, &[])
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        found,
        ["ledger::Ledger", "ledger::entry::Entry", "cli::run"]
    );
    assert_eq!(
        module_path("sidecar/src/api/admin/mod.rs"),
        ["api", "admin"]
    );
}
