//! `creditgate-gateway check-config` on every invalid fixture of the config crate and on
//! its examples, as CI and ops run it before a rollout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use creditgate_testkit::{GATEWAY_BIN, cargo_bin};

fn workspace_dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn check_config(file: &Path) -> Output {
    std::process::Command::new(cargo_bin(GATEWAY_BIN))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("running creditgate-gateway check-config")
}

#[test]
fn every_invalid_fixture_exits_1_and_prints_its_errors() {
    let files = toml_files(&workspace_dir("config/tests/fixtures/invalid"));
    assert!(files.len() > 10, "fixtures found: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let out = check_config(file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = format!("error(s) in {}", file.display());
        let errors = stderr.lines().filter(|l| !l.is_empty()).count();
        if out.status.code() != Some(1) || !stderr.contains(&summary) || errors < 2 {
            failures.push(format!(
                "{}: exit {:?}, stderr:\n{stderr}",
                file.display(),
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_examples_exit_0() {
    let files = toml_files(&workspace_dir("config/examples"));
    assert_eq!(files.len(), 2, "examples found: {files:?}");
    for file in &files {
        let out = check_config(file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: stdout {stdout} stderr {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("ok: "), "{stdout}");
    }
}
