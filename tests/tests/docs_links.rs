//! Every Markdown file of the repository links only inside the repository: each relative link
//! names a file or directory that exists (and, into a Markdown file, a heading that exists),
//! no link climbs out of the repository root, and no text names a path of a developer's
//! machine. A reader of a fresh clone never follows a dead link.
//!
//! Reads the files as text; needs no binary and no network. Links with a scheme (`https:`,
//! `mailto:`) are not fetched.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Prefixes of absolute paths that only exist on someone's machine, never in a checkout: home
/// directories and the build machine's work directory (spelled in two parts, so that a search
/// of the sources for machine paths finds none here).
const MACHINE_PATHS: [&str; 4] = [concat!("/wo", "rk/"), "/home/", "/root/", "/Users/"];

/// Directories never searched for Markdown when git cannot list the tracked files.
const SKIPPED_DIRS: [&str; 3] = ["target", ".git", "node_modules"];

/// The repository root: the parent of this package's directory.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the repository")
        .to_path_buf()
}

/// The repository's Markdown files, relative to `root`: the tracked ones when git can list
/// them, otherwise every `*.md` below `root` outside build and VCS directories.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root)
        .output();
    if let Ok(out) = listed
        && out.status.success()
        && !out.stdout.is_empty()
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .filter(|p| root.join(p).is_file())
            .collect();
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    found
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                walk(root, &path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path.strip_prefix(root).expect("below root").to_path_buf());
        }
    }
}

/// A link as written: the line it is on and its target.
struct Link {
    line: usize,
    target: String,
}

/// The link targets of a Markdown text: inline links and images `[text](target "title")`,
/// reference definitions `[label]: target`, and HTML `href="…"` / `src="…"`; outside fenced
/// code blocks and code spans.
fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    let mut fence: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(open) = &fence {
            if trimmed.starts_with(open.as_str()) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(trimmed[..3].to_string());
            continue;
        }
        let prose = without_code_spans(line);
        let mut push = |target: &str| {
            found.push(Link {
                line: i + 1,
                target: target.to_string(),
            })
        };
        for target in inline_targets(&prose) {
            push(&target);
        }
        if let Some(target) = reference_definition(&prose) {
            push(&target);
        }
        for attr in ["href=\"", "src=\""] {
            let mut rest = prose.as_str();
            while let Some(at) = rest.find(attr) {
                rest = &rest[at + attr.len()..];
                if let Some(end) = rest.find('"') {
                    push(&rest[..end]);
                }
            }
        }
    }
    found
}

/// `line` with every code span (`` `…` ``) blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The targets of `](target)` in `prose`, without a title or angle brackets.
fn inline_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let mut depth = 0usize;
        let end = rest
            .char_indices()
            .find(|&(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth == 0 => true,
                ')' => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
            .map_or(rest.len(), |(i, _)| i);
        let inside = rest[..end].trim();
        let target = match inside.strip_prefix('<') {
            Some(angled) => angled.split('>').next().unwrap_or_default(),
            None => inside.split_whitespace().next().unwrap_or_default(),
        };
        targets.push(target.to_string());
        rest = &rest[end..];
    }
    targets
}

/// The target of a reference definition `[label]: target` on this line, if it is one.
fn reference_definition(prose: &str) -> Option<String> {
    let line = prose.trim_start();
    let rest = line.strip_prefix('[')?;
    let close = rest.find("]:")?;
    if close == 0 || rest[..close].contains('[') {
        return None;
    }
    let target = rest[close + 2..].split_whitespace().next()?;
    Some(target.trim_matches(|c| c == '<' || c == '>').to_string())
}

/// The anchors GitHub gives the headings of a Markdown text (lower case, punctuation
/// dropped, spaces as hyphens, `-1`, `-2`, … for repeats), plus explicit `id="…"` and
/// `name="…"` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        for attr in ["id=\"", "name=\""] {
            if let Some(at) = line.find(attr) {
                let rest = &line[at + attr.len()..];
                if let Some(end) = rest.find('"') {
                    seen.insert(rest[..end].to_string());
                }
            }
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(trimmed[hashes..].trim().trim_end_matches('#').trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// GitHub's anchor for a heading's text: link targets dropped (`[a](b)` counts as `a`),
/// lower case, letters, digits, `-` and `_` kept, spaces as hyphens, the rest dropped.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(at) = rest.find("](") {
        text.push_str(&rest[..at]);
        rest = &rest[at + 2..];
        rest = rest.find(')').map_or("", |end| &rest[end + 1..]);
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// `path` (relative to the root) with `.` and `..` folded; `None` when it climbs out.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `%20` and friends decoded, as a browser does before resolving a link.
fn percent_decoded(target: &str) -> String {
    let bytes = target.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is wrong with `target`, a link in the Markdown file `file` (relative to `root`).
fn broken_link(root: &Path, file: &Path, target: &str) -> Option<String> {
    if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path_part, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let path_part = percent_decoded(path_part);
    if path_part.starts_with('/') {
        return Some("an absolute path; link relative to this file instead".to_string());
    }
    let resolved = if path_part.is_empty() {
        file.to_path_buf()
    } else {
        let joined = file.parent().unwrap_or(Path::new("")).join(&path_part);
        match normalize(&joined) {
            Some(p) => p,
            None => return Some("leaves the repository".to_string()),
        }
    };
    let on_disk = root.join(&resolved);
    if !on_disk.exists() {
        return Some(format!("{} does not exist", resolved.display()));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if on_disk.extension().is_some_and(|e| e == "md") {
        let text = fs::read_to_string(&on_disk).unwrap_or_default();
        if !anchors(&text).contains(&percent_decoded(anchor).to_lowercase()) {
            return Some(format!("no heading #{anchor} in {}", resolved.display()));
        }
    }
    None
}

#[test]
fn every_relative_link_in_the_markdown_files_resolves_inside_the_repository() {
    let root = repo_root();
    let files = markdown_files(&root);
    assert!(!files.is_empty(), "no Markdown files found below {root:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(root.join(file)).expect("read a Markdown file");
        for link in links(&text) {
            if let Some(why) = broken_link(&root, file, &link.target) {
                problems.push(format!(
                    "{}:{}: ({}): {why}",
                    file.display(),
                    link.line,
                    link.target
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} broken links in {} Markdown files:\n{}",
        problems.len(),
        files.len(),
        problems.join("\n")
    );
}

#[test]
fn no_markdown_file_names_a_path_of_a_developers_machine() {
    let root = repo_root();
    let mut problems = Vec::new();
    for file in markdown_files(&root) {
        let text = fs::read_to_string(root.join(&file)).expect("read a Markdown file");
        for (i, line) in text.lines().enumerate() {
            for prefix in MACHINE_PATHS {
                if line.contains(prefix) {
                    problems.push(format!("{}:{}: names {prefix}…", file.display(), i + 1));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "paths of a developer's machine in the docs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_checker_reads_links_anchors_and_escapes_as_github_does() {
    let text = "# Failure model\n## The `hold`'s life\n## Failure model\n\
                See [a](docs/a.md#x \"title\"), ![img](<pic one.svg>) and `[not](code)`.\n\
                [ref]: ../outside.md\n```\n[fenced](nowhere.md)\n```\n";
    let targets: Vec<String> = links(text).into_iter().map(|l| l.target).collect();
    assert_eq!(targets, ["docs/a.md#x", "pic one.svg", "../outside.md"]);
    let found = anchors(text);
    for anchor in ["failure-model", "the-holds-life", "failure-model-1"] {
        assert!(found.contains(anchor), "{anchor} not in {found:?}");
    }
    assert_eq!(
        normalize(Path::new("docs/../README.md")),
        Some("README.md".into())
    );
    assert_eq!(normalize(Path::new("../shared/ARCHITECTURE.md")), None);
    assert_eq!(percent_decoded("a%20b.md"), "a b.md");
}
