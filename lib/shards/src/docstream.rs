//! The token document stream: how `os-tokenize --output -` hands documents to `os-pack` (or any
//! reader) through a pipe. A stream that was cut short is detected, never mistaken for a whole one.
//!
//! Layout, all little-endian:
//! ```text
//! header   8 bytes magic "OSTOKDOC", u32 version (= 1), u32 vocab_size (0 if unknown)
//! record   u32 n (n < 0xFFFF_FFFF), then n × u32 token ids      -- one per document, in order
//! trailer  u32 0xFFFF_FFFF, u64 document count, u64 token count -- marks a complete stream
//! ```

use std::io::{self, Read, Write};

use openseek_common::Failure;

pub const MAGIC: &[u8; 8] = b"OSTOKDOC";
pub const VERSION: u32 = 1;
const END_MARKER: u32 = u32::MAX;

/// Writes documents to a stream; `finish` writes the trailer that marks the stream complete.
pub struct DocStreamWriter<W: Write> {
    out: W,
    documents: u64,
    tokens: u64,
}

impl<W: Write> DocStreamWriter<W> {
    pub fn new(mut out: W, vocab_size: u32) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&vocab_size.to_le_bytes())?;
        Ok(DocStreamWriter { out, documents: 0, tokens: 0 })
    }

    pub fn write_document(&mut self, tokens: &[u32]) -> io::Result<()> {
        let n = u32::try_from(tokens.len())
            .ok()
            .filter(|&n| n != END_MARKER)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "document longer than 2^32-2 tokens"))?;
        self.out.write_all(&n.to_le_bytes())?;
        let mut bytes = Vec::with_capacity(tokens.len() * 4);
        for t in tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        self.out.write_all(&bytes)?;
        self.documents += 1;
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    /// Write the trailer and flush; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&END_MARKER.to_le_bytes())?;
        self.out.write_all(&self.documents.to_le_bytes())?;
        self.out.write_all(&self.tokens.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads documents from a stream; `next_document` returns `Ok(None)` only after a valid trailer.
pub struct DocStreamReader<R: Read> {
    input: R,
    /// Name of the input for error messages ("stdin", a path).
    source: String,
    vocab_size: u32,
    documents: u64,
    tokens: u64,
    done: bool,
}

impl<R: Read> DocStreamReader<R> {
    pub fn new(mut input: R, source: &str) -> Result<Self, Failure> {
        let mut header = [0u8; 16];
        read_exact_or(&mut input, &mut header, source, "the stream header")?;
        if &header[..8] != MAGIC {
            return Err(Failure::data(format!(
                "{source}: not a token document stream (magic {:?}, expected \"OSTOKDOC\"); produce one with `os-tokenize --output -`",
                String::from_utf8_lossy(&header[..8])
            )));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(Failure::data(format!("{source}: token document stream version {version}, this tool reads version {VERSION}")));
        }
        let vocab_size = u32::from_le_bytes(header[12..16].try_into().unwrap());
        Ok(DocStreamReader { input, source: source.to_string(), vocab_size, documents: 0, tokens: 0, done: false })
    }

    /// Vocabulary size the producer declared (0 if unknown).
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// Read the next document into `tokens` (cleared first). `Ok(false)` at the verified end.
    pub fn next_document(&mut self, tokens: &mut Vec<u32>) -> Result<bool, Failure> {
        tokens.clear();
        if self.done {
            return Ok(false);
        }
        let mut word = [0u8; 4];
        read_exact_or(&mut self.input, &mut word, &self.source, "a document header")?;
        let n = u32::from_le_bytes(word);
        if n == END_MARKER {
            let mut trailer = [0u8; 16];
            read_exact_or(&mut self.input, &mut trailer, &self.source, "the stream trailer")?;
            let documents = u64::from_le_bytes(trailer[..8].try_into().unwrap());
            let token_count = u64::from_le_bytes(trailer[8..].try_into().unwrap());
            if documents != self.documents || token_count != self.tokens {
                return Err(Failure::data(format!(
                    "{}: stream trailer says {documents} documents / {token_count} tokens, but {} / {} were read",
                    self.source, self.documents, self.tokens
                )));
            }
            self.done = true;
            return Ok(false);
        }
        let mut bytes = vec![0u8; n as usize * 4];
        read_exact_or(&mut self.input, &mut bytes, &self.source, "a document's tokens")?;
        tokens.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())));
        self.documents += 1;
        self.tokens += n as u64;
        Ok(true)
    }

    /// (documents, tokens) read so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.documents, self.tokens)
    }
}

fn read_exact_or(input: &mut impl Read, buf: &mut [u8], source: &str, what: &str) -> Result<(), Failure> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Failure::data(format!(
                "{source}: the token document stream ended while reading {what}, before its end marker: the producer stopped early (check its error)"
            ))
        } else {
            Failure::io(format!("{source}: cannot read the token document stream: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(docs: &[Vec<u32>]) -> Vec<u8> {
        let mut w = DocStreamWriter::new(Vec::new(), 1000).unwrap();
        for d in docs {
            w.write_document(d).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let docs = vec![vec![1, 2, 3], vec![], vec![999; 1000]];
        let bytes = stream(&docs);
        let mut r = DocStreamReader::new(&bytes[..], "test").unwrap();
        assert_eq!(r.vocab_size(), 1000);
        let mut got = Vec::new();
        let mut doc = Vec::new();
        while r.next_document(&mut doc).unwrap() {
            got.push(doc.clone());
        }
        assert_eq!(got, docs);
        assert_eq!(r.counts(), (3, 1003));
    }

    #[test]
    fn truncated_stream_is_an_error_at_every_cut() {
        let bytes = stream(&[vec![1, 2, 3], vec![4]]);
        for cut in 0..bytes.len() {
            let result = DocStreamReader::new(&bytes[..cut], "cut").and_then(|mut r| {
                let mut doc = Vec::new();
                while r.next_document(&mut doc)? {}
                Ok(())
            });
            let err = result.expect_err(&format!("cut at {cut} must fail"));
            assert!(err.message.contains("cut"), "{}", err.message);
        }
    }

    #[test]
    fn wrong_magic_is_explained() {
        let err = DocStreamReader::new(&b"{\"text\": \"hello\"}"[..], "stdin").err().unwrap();
        assert!(err.message.contains("not a token document stream"), "{}", err.message);
    }
}
