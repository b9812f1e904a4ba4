//! Disk space is checked before a download starts, so a fetch of many GB fails in a second
//! with what is needed and what is free, not hours later with a full disk.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use openseek_common::size::human;
use openseek_common::{ExitCode, Failure};

/// Bytes available to an unprivileged user on the filesystem holding `path` (its nearest
/// existing ancestor).
pub fn available_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Fail when `needed` bytes (plus a 1% / 64 MiB margin) do not fit in `available`.
pub fn check(needed: u64, available: Option<u64>, dir: &Path) -> Result<(), Failure> {
    let Some(available) = available else { return Ok(()) };
    let margin = (needed / 100).clamp(64 << 20, 4 << 30);
    if needed > 0 && needed.saturating_add(margin) > available {
        return Err(Failure::new(
            ExitCode::IoErr,
            format!(
                "not enough disk space in {}: this fetch needs {} more (plus a {} margin) but only {} is free; \
                 free space or choose another --local-dir / HF_HOME",
                dir.display(),
                human(needed),
                human(margin),
                human(available)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_check() {
        let d = Path::new("/x");
        assert!(check(1 << 30, Some(2 << 30), d).is_ok());
        let e = check(10 << 30, Some(2 << 30), d).unwrap_err();
        assert_eq!(e.code, ExitCode::IoErr);
        assert!(e.message.contains("not enough disk space in /x"), "{}", e.message);
        assert!(check(0, Some(0), d).is_ok());
        assert!(check(5, None, d).is_ok());
        assert!(available_bytes(Path::new("/tmp/definitely/not/here")).is_some());
    }
}
