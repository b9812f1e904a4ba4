//! Exit codes (BSD sysexits) and the error type the binaries turn into a message and a code.

use std::fmt;

/// The sysexits codes the tools use. Slurm requeue logic keys on `TempFail` (75).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// 64: the command line was wrong.
    Usage = 64,
    /// 65: input data was malformed (bad JSON, corrupt shard, ...).
    DataErr = 65,
    /// 66: an input file does not exist or cannot be read.
    NoInput = 66,
    /// 69: a service or feature is unavailable (e.g. a tool not built yet).
    Unavailable = 69,
    /// 70: an internal error: a bug.
    Software = 70,
    /// 73: an output file could not be created.
    CantCreat = 73,
    /// 74: an I/O error while reading or writing.
    IoErr = 74,
    /// 75: temporary failure; the job may be retried (signals, requeue).
    TempFail = 75,
    /// 78: a configuration file is wrong.
    Config = 78,
}

/// An error meant for the person running the tool: what went wrong, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Usage, message)
    }
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ExitCode::DataErr, message)
    }
    pub fn no_input(message: impl Into<String>) -> Self {
        Self::new(ExitCode::NoInput, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ExitCode::IoErr, message)
    }
    pub fn cant_create(message: impl Into<String>) -> Self {
        Self::new(ExitCode::CantCreat, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Config, message)
    }
    pub fn software(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Software, message)
    }

    /// An I/O error on `path`, classified: a missing input is `NoInput`, the rest `IoErr`.
    pub fn io_at(path: &std::path::Path, what: &str, err: &std::io::Error) -> Self {
        let code = match err.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => ExitCode::NoInput,
            _ => ExitCode::IoErr,
        };
        Self::new(code, format!("{}: {what}: {err}", path.display()))
    }

    /// Prefix the message with context, keeping the code.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Failure { code: self.code, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Print `tool: error: message` on stderr and exit with the failure's code.
pub fn exit_with(tool: &str, failure: &Failure) -> ! {
    eprintln!("{tool}: error: {}", failure.message);
    std::process::exit(failure.code as i32)
}

/// Run a tool's main, turning a `Failure` into its message and exit code.
pub fn run_main(tool: &str, main: impl FnOnce() -> Result<(), Failure>) -> ! {
    match main() {
        Ok(()) => std::process::exit(0),
        Err(failure) => exit_with(tool, &failure),
    }
}

/// Parse the command line: `--help` and `--version` print and exit 0; a bad command line prints
/// clap's message and exits 64 (EX_USAGE), not clap's own 2.
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(ExitCode::Usage as i32)
        }
        Err(e) => e.exit(),
    }
}
