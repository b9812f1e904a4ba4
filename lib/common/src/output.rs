//! The one rule for outputs, shared by every tool: whatever stops a tool from creating its output
//! (no permission, a parent that is a file, a read-only disk, an output that already exists and
//! no `--force`) is exit 73 (`CantCreat`) with the message `PATH: cannot create output: WHY`.
//! Errors while writing bytes into an output already created (a full disk) stay 74 (`IoErr`).
//!
//! Tools call `create_dir` for output directories, `cannot_create` for any other creation
//! failure (files, renames into place), and `refuse_existing` before writing.

use std::path::Path;

use crate::Failure;

/// The failure for an output that cannot be created: exit 73, naming the path and the reason.
pub fn cannot_create(path: &Path, why: impl std::fmt::Display) -> Failure {
    Failure::cant_create(format!("{}: cannot create output: {why}", path.display()))
}

/// Create an output directory and its parents; any failure is `cannot_create`.
pub fn create_dir(dir: &Path) -> Result<(), Failure> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| cannot_create(dir, e))
}

/// Refuse outputs that already exist unless `force`: the first existing path is named, exit 73.
pub fn refuse_existing<P: AsRef<Path>>(paths: &[P], force: bool) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    match paths.iter().map(AsRef::as_ref).find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(cannot_create(p, "it already exists; pass --force to replace it")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitCode;

    #[test]
    fn every_output_problem_is_73_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A parent that is a file.
        let e = create_dir(&file.join("sub")).unwrap_err();
        assert_eq!(e.code, ExitCode::CantCreat);
        assert!(e.message.contains("cannot create output"), "{}", e.message);
        // The path itself is a file.
        let e = create_dir(&file).unwrap_err();
        assert_eq!(e.code, ExitCode::CantCreat);
        assert!(e.message.starts_with(&file.display().to_string()), "{}", e.message);
        // An existing output without --force.
        let e = refuse_existing(&[dir.path().join("absent"), file.clone()], false).unwrap_err();
        assert_eq!(e.code, ExitCode::CantCreat);
        assert!(e.message.starts_with(&file.display().to_string()) && e.message.contains("--force"), "{}", e.message);
        refuse_existing(std::slice::from_ref(&file), true).unwrap();
        refuse_existing(&[dir.path().join("absent")], false).unwrap();
        create_dir(&dir.path().join("x/y")).unwrap();
        assert!(dir.path().join("x/y").is_dir());
    }
}
