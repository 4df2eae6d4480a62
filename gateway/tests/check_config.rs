//! Runs the real `creditgate-gateway check-config` binary on the config crate's example and
//! on its many-errors fixture, and checks what ops see: stdout, stderr and the exit status.

use std::path::PathBuf;
use std::process::{Command, Output};

use creditgate_config::PricingConfig;

/// A file of the workspace, by its path from the workspace root.
fn workspace_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn check_config(file: &PathBuf) -> Output {
    Command::new(env!("CARGO_BIN_EXE_creditgate-gateway"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run creditgate-gateway")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

#[test]
fn a_good_config_prints_one_summary_line_and_exits_0() {
    let file = workspace_file("config/examples/quickstart.toml");
    let summary = PricingConfig::load(&file)
        .expect("quickstart is valid")
        .summary();

    let output = check_config(&file);

    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(
        text(&output.stdout),
        format!("ok: {}: {summary}\n", file.display())
    );
    assert_eq!(text(&output.stderr), "");
}

#[test]
fn a_bad_config_prints_every_error_and_exits_1() {
    let file = workspace_file("config/tests/fixtures/invalid/many_errors.toml");
    let expected: Vec<String> = PricingConfig::load(&file)
        .expect_err("many_errors is invalid")
        .messages();
    assert!(expected.len() > 2, "the fixture should have several errors");

    let output = check_config(&file);

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let (summary, errors) = lines.split_last().expect("some output");
    assert_eq!(errors, expected.as_slice());
    assert_eq!(
        *summary,
        format!("{} error(s) in {}", expected.len(), file.display())
    );

    // Pin a couple of exact lines, so a change of the format is noticed here too.
    let path = file.display();
    for line in [
        format!(r#"{path}:8: features.chat.credit_type: unknown credit type "ai" (known: api)"#),
        format!(r#"{path}:16: customers.acme.plan: unknown plan "gold" (no plans are defined)"#),
    ] {
        assert!(
            errors.contains(&line.as_str()),
            "missing {line:?} in:\n{stderr}"
        );
    }
}

#[test]
fn an_unreadable_config_exits_1() {
    let file = workspace_file("config/tests/fixtures/invalid/does_not_exist.toml");

    let output = check_config(&file);

    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!("{}: cannot read the file: ", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!("\n1 error(s) in {}\n", file.display())),
        "{stderr}"
    );
}
