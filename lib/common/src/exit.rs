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

/// An error meant for the person running the tool: what went wrong, and the exit code; the error
/// that caused it, if any, stays attached (`std::error::Error::source`), so wrapping a failure in
/// context never loses which file or call it came from.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), source: None }
    }

    /// Attach the error that caused this failure.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
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
        Self::new(code, format!("{}: {what}: {err}", path.display())).with_source(std::io::Error::new(err.kind(), err.to_string()))
    }

    /// Prefix the message with context, keeping the code.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Failure { code: self.code, message: format!("{context}: {}", self.message), source: self.source }
    }

    /// The messages of the causes not already part of this failure's message, outermost first.
    pub fn causes(&self) -> Vec<String> {
        let mut out = vec![];
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let text = e.to_string();
            if !self.message.contains(&text) {
                out.push(text);
            }
            next = e.source();
        }
        out
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Print `tool: error: message` on stderr and exit with the failure's code.
pub fn exit_with(tool: &str, failure: &Failure) -> ! {
    eprintln!("{tool}: error: {}", failure.message);
    for cause in failure.causes() {
        eprintln!("{tool}:   caused by: {cause}");
    }
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
    parse_args_with(T::command())
}

/// [`parse_args`] with the tool's command changed at run time first (e.g. help text generated
/// from a config struct): `parse_args_with(Cli::command().after_help(text))`.
pub fn parse_args_with<T: clap::FromArgMatches>(command: clap::Command) -> T {
    match command.try_get_matches().and_then(|m| T::from_arg_matches(&m)) {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(ExitCode::Usage as i32)
        }
        Err(e) => e.exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_failure_keeps_its_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let f = Failure::io_at(std::path::Path::new("/x/y"), "cannot read", &io).context("shard 3");
        assert_eq!(f.code, ExitCode::NoInput);
        assert_eq!(f.message, "shard 3: /x/y: cannot read: no such file");
        assert_eq!(std::error::Error::source(&f).unwrap().to_string(), "no such file");
        assert!(f.causes().is_empty(), "the cause is already in the message");
        let parse = "x".parse::<u32>().unwrap_err();
        let f = Failure::data("config.json: bad size").with_source(parse).context("model");
        assert_eq!(f.causes(), ["invalid digit found in string"]);
    }
}
