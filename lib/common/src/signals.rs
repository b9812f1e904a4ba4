//! Stop requests from the outside: SIGTERM (Slurm's end of time or `scancel`), SIGUSR1 (Slurm's
//! `--signal` warning) and SIGINT (Ctrl-C) set a flag that long loops poll, so a tool can stop at a
//! safe point, clean up or checkpoint, and exit 75 for Slurm to requeue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::{ExitCode, Failure};

static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Install the handlers (once per process; later calls are no-ops) and return the watcher.
pub fn watch() -> StopSignal {
    let received = RECEIVED.get_or_init(|| {
        let received = Arc::new(AtomicUsize::new(0));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGUSR1] {
            // Registration only fails for forbidden signals, which these are not.
            let _ = signal_hook::flag::register_usize(signal, received.clone(), signal as usize);
        }
        received
    });
    StopSignal { received: received.clone() }
}

#[derive(Clone)]
pub struct StopSignal {
    received: Arc<AtomicUsize>,
}

/// The stop signal this process received so far, if [`watch`] installed the handlers: for waits
/// deep inside a library (the rendezvous store's) that have no [`StopSignal`] handed to them.
pub fn received() -> Option<&'static str> {
    RECEIVED.get().and_then(|r| name(r.load(Ordering::Relaxed)))
}

fn name(signal: usize) -> Option<&'static str> {
    match signal {
        0 => None,
        s if s == signal_hook::consts::SIGTERM as usize => Some("SIGTERM"),
        s if s == signal_hook::consts::SIGINT as usize => Some("SIGINT"),
        s if s == signal_hook::consts::SIGUSR1 as usize => Some("SIGUSR1"),
        _ => Some("a signal"),
    }
}

impl StopSignal {
    /// The signal received so far, if any.
    pub fn received(&self) -> Option<&'static str> {
        name(self.received.load(Ordering::Relaxed))
    }

    /// `Err(TempFail)` once a stop was requested; `what_happens` says what the tool did about it.
    pub fn check(&self, what_happens: &str) -> Result<(), Failure> {
        match self.received() {
            None => Ok(()),
            Some(name) => Err(Failure::new(ExitCode::TempFail, format!("stopped by {name}: {what_happens}"))),
        }
    }
}
