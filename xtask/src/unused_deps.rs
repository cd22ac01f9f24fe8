//! `cargo xtask unused-deps` (and a step of `ci`): every dependency a workspace crate declares is named in its code.
//!
//! No tool is downloaded and nothing is compiled: for each member, the `[dependencies]`, `[build-dependencies]` and
//! `[dev-dependencies]` tables of its `Cargo.toml` (also `[target.'cfg(..)'.*]`) are read line by line, and each
//! dependency's crate name (`-` becomes `_`) must appear as a whole word in the crate's Rust files:
//! - a `[dependencies]` entry in `src/` outside `#[cfg(test)]` modules (the text from the first `#[cfg(test)]`
//!   line that opens a `mod` to the end of the file is test code) or in `build.rs`; one named only in tests is
//!   reported as "only used by tests: make it a dev-dependency";
//! - a `[build-dependencies]` entry in `build.rs`;
//! - a `[dev-dependencies]` entry anywhere: `src/` (test modules, doctests), `tests/`, `benches/`, `examples/`.
//!
//! Plain `//` comments do not count; doc comments do (their code blocks are doctests). A crate's dependency on
//! itself (to turn on its own features in its tests) is skipped. Folders that are workspaces of their own
//! (`fuzz/`) are not read.
//!
//! Dependencies that are used without their name appearing go in [`ALLOWED`], each with its reason.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

use crate::workspace;

/// Dependencies whose use the word search cannot see: (crate, dependency, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    // None today. An entry needs a reason, e.g. a dependency declared only to turn on a feature of a transitive one.
];

/// Packages whose library is named otherwise than the package (`md-5` is `md5` in code).
const LIB_NAMES: &[(&str, &str)] = &[("md-5", "md5")];

/// Which table a dependency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Build,
    Dev,
}

/// A dependency as the manifest declares it: its key (the name code uses, after `-` to `_`) and its table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Declared {
    name: String,
    kind: Kind,
}

/// Where a Rust file sits in its crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `src/**.rs`: library or binary code, with test modules inside.
    Src,
    /// `build.rs`.
    Build,
    /// `tests/`, `benches/`, `examples/`.
    Test,
}

/// One finding: a declared dependency the code does not use where it should.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    name: String,
    kind: Kind,
    /// A normal dependency named only in test code.
    only_in_tests: bool,
}

/// The package name and the declared dependencies of a `Cargo.toml` text.
fn parse_manifest(text: &str) -> (Option<String>, Vec<Declared>) {
    let mut package = None;
    let mut section = String::new();
    let mut declared = Vec::new();
    for raw in text.lines() {
        let line = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.trim().to_owned();
            // `[dependencies.foo]`: a dependency declared as a table of its own.
            if let Some((table, name)) = split_dependency_table(&section) {
                declared.push(Declared { name: name.to_owned(), kind: table });
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim();
        if section == "package" && key == "name" {
            package = Some(value.trim().trim_matches('"').to_owned());
            continue;
        }
        let Some(kind) = dependency_table(&section) else { continue };
        // `foo = ..` or `foo.workspace = true`; continuation lines of multi-line arrays start with `"` or `]`.
        let name = key.split('.').next().unwrap_or(key).trim().trim_matches('"');
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            declared.push(Declared { name: name.to_owned(), kind });
        }
    }
    (package, declared)
}

/// The kind of a dependency table header (`dependencies`, `target.'cfg(unix)'.dev-dependencies`), or `None`.
fn dependency_table(section: &str) -> Option<Kind> {
    let last = section.rsplit('.').next().unwrap_or(section);
    match last {
        "dependencies" => Some(Kind::Normal),
        "build-dependencies" => Some(Kind::Build),
        "dev-dependencies" => Some(Kind::Dev),
        _ => None,
    }
}

/// `dependencies.foo` as (Normal, "foo"); `None` for any other header.
fn split_dependency_table(section: &str) -> Option<(Kind, &str)> {
    let (table, name) = section.rsplit_once('.')?;
    if name.contains('\'') || name.contains(')') {
        return None; // `target.'cfg(..)'` is not a dependency name
    }
    Some((dependency_table(table)?, name))
}

/// The name code uses for a dependency key.
fn code_name(key: &str) -> String {
    let lib = LIB_NAMES.iter().find(|(package, _)| *package == key).map_or(key, |(_, lib)| lib);
    lib.replace('-', "_")
}

/// The text of a Rust file without its plain `//` comments (doc comments `///` and `//!` stay).
fn strip_plain_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut kept = line;
        let mut from = 0;
        while let Some(at) = line[from..].find("//") {
            let at = from + at;
            let rest = &line[at..];
            if rest.starts_with("///") || rest.starts_with("//!") {
                break; // a doc comment: the rest of the line is docs
            }
            // `"http://.."`: inside a string if an odd number of quotes precede it on this line.
            if line[..at].matches('"').count() % 2 == 1 {
                from = at + 2;
                continue;
            }
            kept = &line[..at];
            break;
        }
        out.push_str(kept);
        out.push('\n');
    }
    out
}

/// The (non-test, test) parts of a `src/` file: test code starts at the first `#[cfg(test)]` line followed by a
/// `mod` line.
fn split_test_modules(text: &str) -> (&str, &str) {
    let mut offset = 0;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let next = next.trim_start();
                if next.starts_with("mod ") || next.starts_with("pub mod ") || next.starts_with("pub(crate) mod ") {
                    return text.split_at(offset);
                }
            }
        }
        offset += line.len() + 1;
    }
    (text, "")
}

/// Whether `word` appears in `text` with no identifier character on either side.
fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return true;
        }
        from = end;
    }
    false
}

/// The findings for one crate: its manifest and its Rust files with their roles.
fn check_crate(manifest: &str, files: &[(Role, String)]) -> Vec<Finding> {
    let (package, declared) = parse_manifest(manifest);
    let mut main_code = String::new();
    let mut build_code = String::new();
    let mut test_code = String::new();
    for (role, text) in files {
        let text = strip_plain_comments(text);
        match role {
            Role::Src => {
                let (code, tests) = split_test_modules(&text);
                main_code.push_str(code);
                test_code.push_str(tests);
            }
            Role::Build => build_code.push_str(&text),
            Role::Test => test_code.push_str(&text),
        }
    }
    let mut findings: Vec<Finding> = Vec::new();
    for dep in declared {
        if package.as_deref() == Some(dep.name.as_str()) {
            continue;
        }
        let word = code_name(&dep.name);
        let finding = match dep.kind {
            Kind::Normal if mentions(&main_code, &word) || mentions(&build_code, &word) => None,
            Kind::Normal => Some(mentions(&test_code, &word)),
            Kind::Build => (!mentions(&build_code, &word)).then_some(false),
            Kind::Dev => {
                (![&main_code, &build_code, &test_code].iter().any(|code| mentions(code, &word))).then_some(false)
            }
        };
        if let Some(only_in_tests) = finding {
            let finding = Finding { name: dep.name, kind: dep.kind, only_in_tests };
            if !findings.contains(&finding) {
                findings.push(finding);
            }
        }
    }
    findings
}

/// Every `.rs` file under `dir`, skipping folders that hold a `Cargo.toml` of their own (fuzz workspaces).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if !path.join("Cargo.toml").is_file() {
                rust_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for dir in workspace::members(root)? {
        let manifest = fs::read_to_string(dir.join("Cargo.toml"))?;
        let mut files = Vec::new();
        for (sub, role) in
            [("src", Role::Src), ("tests", Role::Test), ("benches", Role::Test), ("examples", Role::Test)]
        {
            let mut paths = Vec::new();
            rust_files(&dir.join(sub), &mut paths)?;
            for path in paths {
                files.push((role, fs::read_to_string(&path)?));
            }
        }
        if dir.join("build.rs").is_file() {
            files.push((Role::Build, fs::read_to_string(dir.join("build.rs"))?));
        }
        let crate_name = parse_manifest(&manifest).0.unwrap_or_else(|| dir.display().to_string());
        for finding in check_crate(&manifest, &files) {
            if ALLOWED.iter().any(|(krate, dep, _)| *krate == crate_name && *dep == finding.name) {
                continue;
            }
            let table = match finding.kind {
                Kind::Normal => "dependencies",
                Kind::Build => "build-dependencies",
                Kind::Dev => "dev-dependencies",
            };
            let what = if finding.only_in_tests {
                "only used by tests: make it a dev-dependency"
            } else {
                "not used: remove it"
            };
            problems.push(format!("{crate_name}: [{table}] {}: {what}", finding.name));
        }
    }
    if problems.is_empty() {
        println!("every declared dependency is used");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    bail!(
        "{} unused dependencies (a dependency used without its name in the code goes in xtask/src/unused_deps.rs, ALLOWED)",
        problems.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[package]
name = "kc-demo"
version.workspace = true

[features]
tls = ["dep:rustls"] # not a dependency table

[dependencies]
bytes.workspace = true
md-5.workspace = true
thiserror = "2" # only in a test module below
tokio = { workspace = true, features = [
    "rt",
] }
unused-one.workspace = true
rustls = { workspace = true, optional = true }

[dependencies.table-form]
version = "1"

[build-dependencies]
prost-build = "0.14"

[dev-dependencies]
kc-demo = { path = ".", features = ["tls"] }
proptest.workspace = true
criterion.workspace = true
dev-unused = "1"

[target.'cfg(unix)'.dependencies]
libc = "0.2"
"#;

    fn findings(files: &[(Role, &str)]) -> Vec<(String, Kind, bool)> {
        let files: Vec<(Role, String)> = files.iter().map(|(role, text)| (*role, (*text).to_owned())).collect();
        check_crate(MANIFEST, &files).into_iter().map(|f| (f.name, f.kind, f.only_in_tests)).collect()
    }

    #[test]
    fn reads_every_dependency_table() {
        let (package, declared) = parse_manifest(MANIFEST);
        assert_eq!(package.as_deref(), Some("kc-demo"));
        let names: Vec<(&str, Kind)> = declared.iter().map(|d| (d.name.as_str(), d.kind)).collect();
        assert_eq!(
            names,
            [
                ("bytes", Kind::Normal),
                ("md-5", Kind::Normal),
                ("thiserror", Kind::Normal),
                ("tokio", Kind::Normal),
                ("unused-one", Kind::Normal),
                ("rustls", Kind::Normal),
                ("table-form", Kind::Normal),
                ("prost-build", Kind::Build),
                ("kc-demo", Kind::Dev),
                ("proptest", Kind::Dev),
                ("criterion", Kind::Dev),
                ("dev-unused", Kind::Dev),
                ("libc", Kind::Normal),
            ]
        );
    }

    #[test]
    fn reports_what_the_code_does_not_name() {
        let lib = "\
use bytes::Bytes; // md5 in a plain comment does not count
/// ```
/// let _ = criterion::black_box(1);
/// ```
pub fn f(b: Bytes) -> md5::Digest { let _ = \"http://x\"; md5::compute(b) } // table_form
#[cfg(feature = \"tls\")]
fn g() -> rustls::Error { todo() }
pub fn t() -> tokio::task::JoinHandle<()> { libc_free(); table_form::x() }
fn libc_free() { libc::free() }

#[cfg(test)]
mod tests {
    #[derive(thiserror::Error)]
    struct E;
}
";
        let test = "use proptest::prelude::*; fn build() { let _ = kc_demo::f; } // dev_unused";
        let build = "fn main() { prost_build::compile(); }";
        assert_eq!(
            findings(&[(Role::Src, lib), (Role::Test, test), (Role::Build, build)]),
            [
                ("thiserror".to_owned(), Kind::Normal, true),
                ("unused-one".to_owned(), Kind::Normal, false),
                ("dev-unused".to_owned(), Kind::Dev, false),
            ]
        );
    }

    #[test]
    fn a_build_dependency_counts_only_in_build_rs() {
        let lib = "pub fn f() { prost_build::x(); bytes::x(); md5::x(); thiserror::x(); tokio::x(); unused_one::x(); \
                   rustls::x(); table_form::x(); libc::x(); proptest::x(); criterion::x(); dev_unused::x(); }";
        assert_eq!(findings(&[(Role::Src, lib)]), [("prost-build".to_owned(), Kind::Build, false)]);
    }

    #[test]
    fn words_match_whole_identifiers_only() {
        assert!(mentions("use bytes::Bytes;", "bytes"));
        assert!(!mentions("use bytes_ext::Bytes;", "bytes"));
        assert!(!mentions("my_bytes::x()", "bytes"));
        assert!(mentions("x\nbytes", "bytes"));
    }

    #[test]
    fn plain_comments_are_dropped_and_docs_kept() {
        assert_eq!(
            strip_plain_comments("a // b\n/// c\n//! d\nlet u = \"http://h\"; // e\n"),
            "a \n/// c\n//! d\nlet u = \"http://h\"; \n"
        );
    }
}
