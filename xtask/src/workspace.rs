//! The workspace's members, read from the manifests (no `cargo metadata`, no TOML parser: the manifests here are
//! plain enough for line reading).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// The workspace members' folders, from the root manifest's `members` (`dir/*` globs expanded).
pub(crate) fn members(root: &Path) -> Result<Vec<PathBuf>> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).context("reading the root Cargo.toml")?;
    let start = manifest.find("members").context("no `members` in the root Cargo.toml")?;
    let list = &manifest[start..];
    let list = &list[list.find('[').context("`members` is not a list")? + 1..];
    let list = &list[..list.find(']').context("`members` is not closed")?];
    let mut dirs = Vec::new();
    for entry in list.split(',').map(|e| e.trim().trim_matches('"')).filter(|e| !e.is_empty()) {
        if let Some(parent) = entry.strip_suffix("/*") {
            let mut found: Vec<PathBuf> = fs::read_dir(root.join(parent))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("Cargo.toml").is_file())
                .collect();
            found.sort();
            dirs.extend(found);
        } else {
            dirs.push(root.join(entry));
        }
    }
    Ok(dirs)
}

/// The package names of the members that are not `publish = false`, and of those that are.
pub(crate) fn publishable(root: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (mut published, mut unpublished) = (Vec::new(), Vec::new());
    for dir in members(root)? {
        let manifest = fs::read_to_string(dir.join("Cargo.toml"))?;
        let (name, publish) = package_name_and_publish(&manifest);
        let name = name.with_context(|| format!("no package name in {}", dir.display()))?;
        if publish {
            published.push(name);
        } else {
            unpublished.push(name);
        }
    }
    Ok((published, unpublished))
}

/// The `[package]` table's `name`, and whether it lacks `publish = false`.
fn package_name_and_publish(manifest: &str) -> (Option<String>, bool) {
    let (mut name, mut publish, mut in_package) = (None, true, false);
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.split('#').next().unwrap_or(value).trim();
        match (in_package, key.trim()) {
            (true, "name") => name = Some(value.trim_matches('"').to_owned()),
            (true, "publish") => publish = value != "false",
            _ => {}
        }
    }
    (name, publish)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_and_publish() {
        let cases = [
            ("[package]\nname = \"a\"\n", Some("a"), true),
            ("[package]\nname = \"b\"\npublish = false # test helpers\n", Some("b"), false),
            ("[package]\nname = \"c\"\n[dependencies]\nname = \"x\"\npublish = false\n", Some("c"), true),
            ("[dependencies]\nx = 1\n", None, true),
        ];
        for (manifest, name, publish) in cases {
            assert_eq!(package_name_and_publish(manifest), (name.map(str::to_owned), publish), "{manifest:?}");
        }
    }

    #[test]
    fn lists_this_workspace() {
        let root = crate::project_root();
        let (published, unpublished) = publishable(&root).expect("workspace");
        assert!(published.iter().any(|p| p == "kinesis-consumer"), "{published:?}");
        for private in ["xtask", "kc-integration", "kc-test-support", "kc-examples"] {
            assert!(unpublished.iter().any(|p| p == private), "{private} in {unpublished:?}");
        }
    }
}
