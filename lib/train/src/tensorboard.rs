//! TensorBoard event files, written directly: TFRecord framing (u64 length, masked CRC32C of the
//! length, the record, masked CRC32C of the record) around hand-encoded `tensorflow.Event`
//! protobufs. The first event carries `file_version = "brain.Event:2"`; each later one a
//! `Summary` of scalar values (`simple_value`) at a step.

use openseek_common::Failure;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, ((field << 3) | 2) as u64);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }.
fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        e.push(0x10);
        varint(&mut e, step as u64);
    }
    body(&mut e);
    e
}

/// Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2 }.
fn summary(values: &[(String, f32)]) -> Vec<u8> {
    let mut s = vec![];
    for (tag, v) in values {
        let mut value = vec![];
        bytes_field(&mut value, 1, tag.as_bytes());
        value.push(0x15);
        value.extend_from_slice(&v.to_le_bytes());
        bytes_field(&mut s, 1, &value);
    }
    s
}

pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created), named as TensorFlow names them.
    pub fn create(dir: &Path) -> Result<EventWriter, Failure> {
        std::fs::create_dir_all(dir).map_err(|e| Failure::io_at(dir, "cannot create the TensorBoard directory", &e))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}.{}", now.as_secs(), std::process::id(), now.subsec_nanos()));
        let file = File::create(&path).map_err(|e| Failure::io_at(&path, "cannot create", &e))?;
        let mut w = EventWriter { path, out: BufWriter::new(file) };
        let first = event(now.as_secs_f64(), 0, |e| bytes_field(e, 3, b"brain.Event:2"));
        w.record(&first)?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<(), Failure> {
        let len = (data.len() as u64).to_le_bytes();
        let io = |e: std::io::Error| Failure::io(format!("{}: cannot write: {e}", self.path.display()));
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out.write_all(&buf).map_err(io)
    }

    /// One event with scalar values at `step`.
    pub fn scalars(&mut self, step: i64, wall_time: f64, values: &[(String, f32)]) -> Result<(), Failure> {
        let data = event(wall_time, step, |e| bytes_field(e, 5, &summary(values)));
        self.record(&data)
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.out.flush().map_err(|e| Failure::io(format!("{}: cannot write: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn records_are_framed_and_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(7, 1.5, &[("loss".into(), 2.5)]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut at = 0;
        let mut records = vec![];
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc(data));
            records.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(records.len(), 2);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        // step 7 as a varint after the wall time, the tag and 2.5f32 in the summary.
        assert_eq!(&records[1][9..11], &[0x10, 7]);
        assert!(records[1].windows(4).any(|w| w == b"loss"));
        assert!(records[1].windows(4).any(|w| w == 2.5f32.to_le_bytes()));
    }
}
