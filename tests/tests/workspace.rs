//! The workspace's declarations checked against its code: the minimum Rust version it states
//! covers the newest standard-library APIs the code calls, and every dependency it declares is
//! used (workspace-wide and per crate).

use std::path::{Path, PathBuf};

use openseek_tests::{root, run_tool};

/// Every `.rs` file under `dir` (skipping build outputs).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The member crates: their directories.
fn members() -> Vec<PathBuf> {
    let mut dirs = vec![root().join("tests"), root().join("kernels")];
    for group in ["lib", "bins"] {
        for entry in std::fs::read_dir(root().join(group)).unwrap().flatten() {
            if entry.path().join("Cargo.toml").is_file() {
                dirs.push(entry.path());
            }
        }
    }
    dirs.sort();
    dirs
}

/// The dependency names of the `[section]` tables of a Cargo.toml (`name = …`, `name.workspace = …`).
fn dependencies(toml: &str, sections: &[&str]) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = sections.contains(&line);
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some(key) = line.split(['=', '.']).next() {
                names.push(key.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

#[test]
fn rust_version_covers_the_apis_the_code_calls() {
    let manifest = read(&root().join("Cargo.toml"));
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version").map(|v| v.trim_start_matches([' ', '=']).trim().trim_matches('"').to_string()))
        .expect("the workspace states a rust-version");
    let version = |v: &str| -> (u32, u32) {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap_or(0))
    };
    // A call and the release that made it stable.
    let apis = [
        (".try_lock()", "1.89", "File::try_lock"),
        (".is_multiple_of(", "1.87", "unsigned is_multiple_of"),
        (".is_none_or(", "1.82", "Option::is_none_or"),
        ("repeat_n(", "1.82", "iter::repeat_n"),
        ("path::absolute(", "1.79", "std::path::absolute"),
    ];
    let mut files = Vec::new();
    for dir in members() {
        rust_files(&dir, &mut files);
    }
    let mut needed = ("1.0".to_string(), String::new());
    for file in &files {
        let text = read(file);
        for (call, since, what) in apis {
            if text.contains(call) && version(since) > version(&needed.0) {
                needed = (since.to_string(), format!("{what} in {}", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(
        version(&declared) >= version(&needed.0),
        "Cargo.toml says rust-version = {declared:?} but the code needs {} ({})",
        needed.0,
        needed.1
    );
}

#[test]
fn every_declared_dependency_is_used() {
    // Used without being named in Rust code, with the reason.
    let unnamed = [("torch-sys", "a direct dependency so that build.rs receives DEP_TCH_LIBTORCH_LIB")];
    let mut problems = Vec::new();
    let mut used_from_workspace = std::collections::BTreeSet::new();
    for dir in members() {
        let toml = read(&dir.join("Cargo.toml"));
        for line in toml.lines().filter(|l| l.contains("workspace = true")) {
            used_from_workspace.insert(line.split(['=', '.']).next().unwrap().trim().to_string());
        }
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let code: String = files.iter().map(|f| read(f)).collect();
        for dep in dependencies(&toml, &["[dependencies]", "[dev-dependencies]", "[build-dependencies]"]) {
            if unnamed.iter().any(|(name, _)| *name == dep) {
                continue;
            }
            let ident = dep.replace('-', "_");
            if ![format!("{ident}::"), format!("use {ident}"), format!("extern crate {ident}"), format!("{ident}!")].iter().any(|p| code.contains(p)) {
                problems.push(format!("{} declares {dep} but its code never uses it", dir.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    for dep in dependencies(&read(&root().join("Cargo.toml")), &["[workspace.dependencies]"]) {
        if !used_from_workspace.contains(&dep) {
            problems.push(format!("the workspace declares {dep} but no crate takes it"));
        }
    }
    assert!(problems.is_empty(), "unused dependencies:\n  {}", problems.join("\n  "));
}

#[test]
fn every_data_tool_names_its_output_output_or_o() {
    for (tool, args) in [
        ("os-tokenize", &["--help"][..]),
        ("os-mix", &["--help"]),
        ("os-pack", &["--help"]),
        ("os-soup", &["--help"]),
        ("os-shards", &["merge", "--help"]),
        ("os-megatron2hf", &["--help"]),
        ("os-demo-data", &["--help"]),
        ("os-fetch", &["--help"]),
        ("os-plot", &["--help"]),
    ] {
        let out = run_tool(tool, args);
        let help = String::from_utf8_lossy(&out.stdout);
        let named = help.contains("-o, --output") || (help.contains("-o, --local-dir") && help.contains("--output"));
        assert!(out.status.success() && named, "{tool} {args:?} does not take -o / --output:\n{help}");
    }
}
