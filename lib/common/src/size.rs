//! Byte sizes as users write them on the command line: `5GB`, `500MB`, `2GiB`, `1.5 GB`, `4096`.

use crate::Failure;

/// Bytes in `text` (decimal KB/MB/GB, binary KiB/MiB/GiB, B or none; any case; fractions allowed);
/// `flag` names the option in the error.
pub fn parse_size(text: &str, flag: &str) -> Result<u64, Failure> {
    let t = text.trim().to_ascii_uppercase();
    let units = [("GIB", 1u64 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000), ("B", 1)];
    let (number, unit) = units.iter().find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim().to_string(), *m))).unwrap_or((t.clone(), 1));
    number
        .parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0 && v.is_finite())
        .map(|v| (v * unit as f64) as u64)
        .ok_or_else(|| Failure::usage(format!("{flag} {text:?}: give a size like 5GB or 500MB")))
}

/// Memory this process can still take without swapping: `MemAvailable` of /proc/meminfo (Linux);
/// None where that cannot be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` for people: "3.20 GB", "512.0 MB", "12.0 kB", "17 B".
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_decimal_and_binary_units() {
        assert_eq!(parse_size("5GB", "--x").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2 GiB", "--x").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5mb", "--x").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096", "--x").unwrap(), 4096);
        assert!(available_memory().is_some_and(|m| m > 1 << 20), "/proc/meminfo is read");
        assert_eq!(human(3_200_000_000), "3.20 GB");
        assert_eq!(human(17), "17 B");
        for bad in ["", "GB", "-1GB", "0", "five"] {
            let err = parse_size(bad, "--shard-size").unwrap_err();
            assert!(err.to_string().contains("--shard-size"), "{err}");
        }
    }
}
