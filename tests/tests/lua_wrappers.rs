//! The OpenResty module's platform wrappers (Kong, APISIX), which cannot run here (no Kong or
//! APISIX packages): every Lua file of `lua-compat/` must compile (`luajit -bl`), and each
//! wrapper's schema must declare exactly the module's options (`creditgate.DEFAULTS` plus
//! the options without a default), so a new option cannot be forgotten in one of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn lua_compat() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lua-compat")
}

fn read(relative: &str) -> String {
    let path = lua_compat().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lua_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("lua-compat dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            lua_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "lua") {
            out.push(path);
        }
    }
}

/// The `name = …` keys of the Lua table literal that starts at `start` in `text`, one per
/// line, up to the table's closing line `end`.
fn option_names(text: &str, start: &str, end: &str, line_prefix: &str) -> BTreeSet<String> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let body = &text[from + start.len()..];
    let body = &body[..body
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} not found"))];
    body.lines()
        .filter_map(|line| line.trim_start().strip_prefix(line_prefix))
        .filter_map(|rest| rest.split([' ', '=']).next())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_lua_file_of_the_module_and_its_wrappers_compiles() {
    let luajit = creditgate_testkit_which("luajit");
    let mut files = Vec::new();
    for dir in ["openresty", "kong", "apisix", "lua"] {
        lua_files(&lua_compat().join(dir), &mut files);
    }
    assert!(files.len() >= 15, "{files:?}");
    for file in files {
        let out = Command::new(&luajit)
            .arg("-bl")
            .arg(&file)
            .output()
            .expect("running luajit");
        assert!(
            out.status.success(),
            "{} does not compile: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn creditgate_testkit_which(binary: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{binary}` is not installed; run `.ci/run` (or `apt-get install -y luajit2`)")
        })
}

#[test]
fn kong_and_apisix_schemas_declare_exactly_the_modules_options() {
    let module = option_names(
        &read("openresty/lib/creditgate/init.lua"),
        "_M.DEFAULTS = {",
        "\n}",
        "",
    );
    assert!(
        module.contains("pricing_file") && module.contains("redis_port"),
        "{module:?}"
    );
    let kong = option_names(
        &read("kong/plugins/creditgate/schema.lua"),
        "type = \"record\",\n            fields = {",
        "\n            },",
        "{ ",
    );
    let apisix = option_names(
        &read("apisix/plugins/creditgate.lua"),
        "properties = {",
        "\n    },",
        "",
    );
    assert_eq!(
        kong, module,
        "Kong's schema.lua against creditgate.DEFAULTS"
    );
    assert_eq!(
        apisix, module,
        "APISIX's schema against creditgate.DEFAULTS"
    );
}
