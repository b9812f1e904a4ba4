//! The part of an os-mix recipe that os-fetch needs: `[source]` (repo, repo_type, revision),
//! `data_root`, and every `prefix` in `[[datasets]]` and `[[stages.datasets]]`, deduplicated,
//! turned into the `.bin` + `.idx` paths to fetch. Parsing is os-mix's (`openseek_mix::recipe`),
//! so both tools read a recipe the same way.

use std::path::{Path, PathBuf};

use openseek_common::Failure;

use crate::repo::{RepoRef, RepoType};

/// What `os-fetch --recipe` fetches.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeNeeds {
    /// `[source]`, if the recipe has one.
    pub source: Option<(RepoRef, String)>,
    /// `data_root` resolved against the recipe's directory.
    pub data_root: Option<PathBuf>,
    /// Prefixes in first-seen order, deduplicated.
    pub prefixes: Vec<String>,
    /// `<prefix>.bin`, `<prefix>.idx` for each prefix.
    pub files: Vec<String>,
}

fn check_prefix(prefix: &str, recipe: &Path) -> Result<(), Failure> {
    let bad = prefix.is_empty()
        || prefix.starts_with('/')
        || prefix.contains('\\')
        || prefix.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Failure::config(format!(
            "{}: prefix `{prefix}` must be a relative path inside the repo (no leading `/`, `..`, or empty parts)",
            recipe.display()
        )));
    }
    if prefix.ends_with(".bin") || prefix.ends_with(".idx") {
        return Err(Failure::config(format!(
            "{}: prefix `{prefix}` must not end in .bin or .idx: write the shard prefix without extension",
            recipe.display()
        )));
    }
    Ok(())
}

/// Parse `path` (.toml, .yaml/.yml, .json).
pub fn load(path: &Path) -> Result<RecipeNeeds, Failure> {
    let raw = openseek_mix::recipe::load(path)?;
    let mut prefixes: Vec<String> = Vec::new();
    for d in raw.datasets.iter().chain(raw.stages.iter().flat_map(|s| s.datasets.iter())) {
        check_prefix(&d.prefix, path)?;
        if !prefixes.contains(&d.prefix) {
            prefixes.push(d.prefix.clone());
        }
    }
    if prefixes.is_empty() {
        return Err(Failure::config(format!("{}: the recipe names no dataset prefix ([[datasets]] or [[stages.datasets]])", path.display())));
    }
    let source = match raw.source {
        Some(s) => {
            let kind = RepoType::parse(s.repo_type.as_deref().unwrap_or("dataset")).map_err(|e| e.context(path.display()))?;
            Some((RepoRef::new(&s.repo, kind).map_err(|e| e.context(path.display()))?, s.revision.unwrap_or_else(|| "main".into())))
        }
        None => None,
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let data_root = raw.data_root.map(|r| {
        let p = PathBuf::from(r);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    });
    let files = prefixes.iter().flat_map(|p| [format!("{p}.bin"), format!("{p}.idx")]).collect();
    Ok(RecipeNeeds { source, data_root, prefixes, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn toml_yaml_json_agree() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            dir.path(),
            "r.toml",
            r#"name = "x"
seq_len = 4096
total_samples = 10
data_root = "data/root"
[source]
repo = "BAAI/OpenSeek-Pretrain-100B"
[[datasets]]
prefix = "a/part_1_text_document"
weight = 1.0
[[stages]]
name = "s1"
tokens = 1e9
[[stages.datasets]]
prefix = "b/part_2_text_document"
weight = 0.5
[[stages.datasets]]
prefix = "a/part_1_text_document"
weight = 0.5
"#,
        );
        let yaml = write(
            dir.path(),
            "r.yaml",
            "data_root: /abs/root\nsource:\n  repo: BAAI/OpenSeek-Pretrain-100B\n  repo_type: dataset\n  revision: v1\ndatasets:\n  - prefix: a/part_1_text_document\n    weight: 1\nstages:\n  - datasets:\n      - prefix: b/part_2_text_document\n",
        );
        let json = write(
            dir.path(),
            "r.json",
            r#"{"datasets":[{"prefix":"a/part_1_text_document","weight":1}],"stages":[{"datasets":[{"prefix":"b/part_2_text_document"}]}]}"#,
        );
        let t = load(&toml).unwrap();
        let y = load(&yaml).unwrap();
        let j = load(&json).unwrap();
        assert_eq!(t.prefixes, vec!["a/part_1_text_document", "b/part_2_text_document"]);
        assert_eq!(t.files, vec![
            "a/part_1_text_document.bin",
            "a/part_1_text_document.idx",
            "b/part_2_text_document.bin",
            "b/part_2_text_document.idx"
        ]);
        assert_eq!(y.files, t.files);
        assert_eq!(j.files, t.files);
        assert_eq!(t.data_root, Some(dir.path().join("data/root")));
        assert_eq!(y.data_root, Some(PathBuf::from("/abs/root")));
        let (repo, rev) = t.source.unwrap();
        assert_eq!((repo.id.as_str(), repo.kind, rev.as_str()), ("BAAI/OpenSeek-Pretrain-100B", RepoType::Dataset, "main"));
        assert_eq!(y.source.unwrap().1, "v1");
        assert!(j.source.is_none() && j.data_root.is_none());
    }

    #[test]
    fn bad_recipes_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&write(dir.path(), "a.toml", "[[datasets]]\nprefix = \"../x\"\n")).unwrap_err();
        assert!(e.message.contains("relative path"), "{}", e.message);
        let e = load(&write(dir.path(), "b.toml", "[[datasets]]\nprefix = \"x.bin\"\n")).unwrap_err();
        assert!(e.message.contains("without extension"), "{}", e.message);
        let e = load(&write(dir.path(), "c.toml", "seq_len = 8\n")).unwrap_err();
        assert!(e.message.contains("no dataset prefix"), "{}", e.message);
        let e = load(&write(dir.path(), "d.txt", "")).unwrap_err();
        assert!(e.message.contains("must end in .toml"), "{}", e.message);
        let e = load(&write(dir.path(), "e.toml", "[[datasets]\n")).unwrap_err();
        assert!(e.message.contains("TOML parse error") && e.message.contains("e.toml"), "{}", e.message);
    }
}
