//! Fault injection for the end-to-end tests (cargo feature `fault-injection`, which `make test`
//! builds os-train with): `OPENSEEK_TRAIN_FAULT=NAME:STEP` makes the named fault happen at that
//! step (`nan-grad-at-step`: a NaN gradient; `kill-during-save`: SIGKILL in the middle of a
//! checkpoint). Without the feature nothing is read and no fault can happen.

/// Whether the fault `name` is asked for at `step`.
#[cfg(feature = "fault-injection")]
pub fn at(name: &str, step: u64) -> bool {
    std::env::var("OPENSEEK_TRAIN_FAULT")
        .ok()
        .and_then(|f| f.strip_prefix(name).and_then(|r| r.strip_prefix(':')).and_then(|s| s.parse::<u64>().ok()))
        == Some(step)
}

#[cfg(not(feature = "fault-injection"))]
pub fn at(_name: &str, _step: u64) -> bool {
    false
}
