//! Single-thread throughput of the tokenizer, side by side with references on the same text:
//! this crate's tiktoken mode, the same BPE behind the fancy-regex pre-tokenizer (what tiktoken
//! runs), and the huggingface mode (`tokenizers` crate) when a tokenizer.json is given.
//!
//! cargo run --release -p openseek-tokenizer --example tok_throughput -- \
//!     TOKENIZER_DIR [--hf TOKENIZER_JSON] [--rounds N] [--no-reference] [--threads N] FILE...
//!
//! FILE: `.jsonl` (every string value of a line is one document) or plain text (paragraphs split
//! on blank lines). All ids are checked equal across the implementations.

use std::path::PathBuf;
use std::time::Instant;

use openseek_tokenizer::pretok::PATTERN;
use openseek_tokenizer::Tokenizer;

fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn documents(files: &[PathBuf]) -> Vec<String> {
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if f.extension().is_some_and(|e| e == "jsonl") {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                let mut parts = Vec::new();
                strings(&v, &mut parts);
                docs.push(parts.join("\n"));
            }
        } else {
            docs.extend(text.split("\n\n").map(str::to_string));
        }
    }
    docs
}

fn measure(
    name: &str,
    docs: &[String],
    rounds: usize,
    mut encode: impl FnMut(&str, &mut Vec<u32>),
) -> Vec<Vec<u32>> {
    let bytes: usize = docs.iter().map(String::len).sum();
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        ids.clear();
        let t = Instant::now();
        for d in docs {
            let mut v = Vec::new();
            encode(d, &mut v);
            ids.push(v);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let tokens: usize = ids.iter().map(Vec::len).sum();
    println!(
        "{name:<34} {:>8.2} MB/s {:>10.0} tokens/s  ({bytes} bytes, {tokens} tokens, best of {rounds}: {best:.3} s)",
        bytes as f64 / best / 1e6,
        tokens as f64 / best
    );
    ids
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: tok_throughput TOKENIZER_DIR [--hf TOKENIZER_JSON] [--rounds N] [--no-reference] [--threads N] FILE..."));
    let mut hf_path = None;
    let mut rounds = 3;
    let mut files = Vec::new();
    let mut reference = true;
    let mut threads = 0usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hf" => hf_path = Some(PathBuf::from(args.next().expect("--hf needs a path"))),
            "--no-reference" => reference = false,
            "--threads" => {
                threads = args
                    .next()
                    .expect("--threads needs N")
                    .parse()
                    .expect("--threads N")
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .expect("--rounds needs N")
                    .parse()
                    .expect("--rounds N")
            }
            _ => files.push(PathBuf::from(a)),
        }
    }
    let docs = documents(&files);
    let t0 = Instant::now();
    let tok = Tokenizer::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    println!("load: {:.3} s", t0.elapsed().as_secs_f64());
    assert_eq!(
        tok.kind(),
        "tiktoken",
        "TOKENIZER_DIR must hold a *.tiktoken rank file"
    );

    let ours = measure(
        "openseek-tokenizer (tiktoken mode)",
        &docs,
        rounds,
        |d, v| tok.encode_into(d, v),
    );
    // Where the time goes: the pre-tokenizer alone (pieces counted, not encoded).
    measure("  of which: pre-tokenizer only", &docs, rounds, |d, v| {
        let text = openseek_tokenizer::tiktoken::nfc(d);
        v.push(tok.tiktoken_pieces(&text).unwrap().count() as u32);
    });

    // The reference: the same NFC, specials and BPE, with pieces from fancy-regex on the pattern.
    if reference {
        let re = fancy_regex::Regex::new(PATTERN).unwrap();
        let reference = measure(
            "fancy-regex pre-tokenizer + same BPE",
            &docs,
            rounds,
            |d, v| {
                let text = openseek_tokenizer::tiktoken::nfc(d);
                for m in re.find_iter(&text) {
                    tok.bpe_piece(m.unwrap().as_str(), v);
                }
            },
        );
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            // Documents with special-token strings or non-NFC text take other routes; compare the rest.
            if !docs[i].contains("<|") && a != b {
                panic!("document {i}: ids differ between our pre-tokenizer and fancy-regex");
            }
        }
    }

    if threads > 0 {
        // Documents dealt round-robin to N threads sharing one &Tokenizer.
        let bytes: usize = docs.iter().map(String::len).sum();
        let mut best = f64::INFINITY;
        let mut tokens = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            tokens = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|k| {
                        let (tok, docs) = (&tok, &docs);
                        s.spawn(move || {
                            let mut v = Vec::new();
                            let mut n = 0;
                            for d in docs.iter().skip(k).step_by(threads) {
                                v.clear();
                                tok.encode_into(d, &mut v);
                                n += v.len();
                            }
                            n
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .sum::<usize>()
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{:<34} {:>8.2} MB/s {:>10.0} tokens/s  ({tokens} tokens, best of {rounds}: {best:.3} s)",
            format!("tiktoken mode, {threads} threads"),
            bytes as f64 / best / 1e6,
            tokens as f64 / best
        );
    }

    if let Some(p) = hf_path {
        let hf = Tokenizer::load(&p).unwrap_or_else(|e| panic!("{e}"));
        let theirs = measure(
            "tokenizers crate (huggingface mode)",
            &docs,
            rounds,
            |d, v| hf.encode_into(d, v),
        );
        assert_eq!(
            ours, theirs,
            "huggingface mode ids differ from tiktoken mode"
        );
    }
}
