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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_decimal_and_binary_units() {
        assert_eq!(parse_size("5GB", "--x").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2 GiB", "--x").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5mb", "--x").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096", "--x").unwrap(), 4096);
        for bad in ["", "GB", "-1GB", "0", "five"] {
            let err = parse_size(bad, "--shard-size").unwrap_err();
            assert!(err.to_string().contains("--shard-size"), "{err}");
        }
    }
}
