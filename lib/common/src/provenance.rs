//! What every output records about who made it: tool name and version, the command line,
//! host and time.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub tool: String,
    pub version: String,
    pub command_line: Vec<String>,
    pub host: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
}

impl Provenance {
    /// Provenance of the running process; `version` is the calling crate's `CARGO_PKG_VERSION`.
    pub fn capture(tool: &str, version: &str) -> Self {
        Provenance {
            tool: tool.to_string(),
            version: version.to_string(),
            command_line: std::env::args().collect(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_default(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}
