//! End-to-end tests of os-tokenize: every input format, the real OpenSeek tokenizer, exact
//! document order for any worker count, the stream output, job-array shards, and bad input
//! failing with file and line while leaving nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_shards::docstream::DocStreamReader;
use openseek_shards::indexed::IndexedDataset;
use openseek_tests::{run_python, run_tool, shared};
use openseek_tokenizer::Tokenizer;

fn openseek_tokenizer_dir() -> PathBuf {
    shared("tokenizers/openseek")
}

/// Deterministic mixed documents: English, Chinese, code, digits, whitespace runs, a special token.
fn sample_texts(n: usize) -> Vec<String> {
    let pieces = [
        "The quick brown fox jumps over the lazy dog.",
        "深度学习模型在大规模数据上进行预训练。",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "Numbers: 3.14159, 2,718 and 1e-9;   spaces\t\ttabs\r\nCRLF",
        "naïve café — “quotes” and emoji 🚀🔥",
        "<|endoftext|> inside text",
        "   leading and trailing   ",
    ];
    (0..n)
        .map(|i| {
            let k = 1 + i % 5;
            (0..k).map(|j| pieces[(i * 7 + j * 3) % pieces.len()]).collect::<Vec<_>>().join(" ") + &format!(" #{i}")
        })
        .collect()
}

fn write_jsonl(path: &Path, texts: &[String]) {
    let mut f = std::fs::File::create(path).unwrap();
    for (i, t) in texts.iter().enumerate() {
        writeln!(f, "{}", serde_json::json!({"id": i, "text": t, "meta": {"source": "test"}})).unwrap();
    }
}

fn read_documents(prefix: &Path) -> Vec<Vec<u32>> {
    let ds = IndexedDataset::open(prefix).unwrap();
    (0..ds.num_documents())
        .map(|d| ds.document_sequences(d).flat_map(|s| ds.sequence(s).to_vec_u32()).collect())
        .collect()
}

fn expected(tok: &Tokenizer, texts: &[String], wrap: bool) -> Vec<Vec<u32>> {
    texts
        .iter()
        .map(|t| {
            let mut ids = Vec::new();
            if wrap {
                ids.push(tok.bos_id().unwrap());
            }
            ids.extend(tok.encode(t));
            if wrap {
                ids.push(tok.eos_id().unwrap());
            }
            ids
        })
        .collect()
}

fn assert_ok(out: &std::process::Output) {
    assert!(out.status.success(), "exit {:?}\nstderr: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
}

fn prefix_files(prefix: &Path) -> Vec<PathBuf> {
    ["bin", "idx", "json"].iter().map(|e| PathBuf::from(format!("{}.{e}", prefix.display()))).collect()
}

fn dir_is_clean(dir: &Path, prefix_name: &str) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(prefix_name))
        .collect();
    assert!(left.is_empty(), "a failed run left files behind: {left:?}");
}

#[test]
fn every_input_format_in_order_with_the_openseek_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let texts = sample_texts(60);
    let chunks: Vec<&[String]> = texts.chunks(10).collect();
    // jsonl, gz, zst, json array, json-lines-in-.json, parquet
    write_jsonl(&d.join("a.jsonl"), chunks[0]);
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(d.join("b.jsonl.gz")).unwrap(), flate2::Compression::default());
    for t in chunks[1] {
        writeln!(gz, "{}", serde_json::json!({"text": t})).unwrap();
    }
    gz.finish().unwrap();
    let mut zst = zstd::Encoder::new(std::fs::File::create(d.join("c.jsonl.zst")).unwrap(), 3).unwrap();
    for t in chunks[2] {
        writeln!(zst, "{}", serde_json::json!({"text": t})).unwrap();
    }
    zst.finish().unwrap();
    let array: Vec<_> = chunks[3].iter().map(|t| serde_json::json!({"text": t, "n": 1})).collect();
    std::fs::write(d.join("d.json"), serde_json::to_string_pretty(&array).unwrap()).unwrap();
    write_jsonl(&d.join("e.json"), chunks[4]);
    write_jsonl(&d.join("f.src"), chunks[5]);
    run_python("write_parquet.py", &[d.join("f.src").to_str().unwrap(), d.join("f.parquet").to_str().unwrap(), "--row-group-size", "3"]);
    std::fs::write(d.join("g.txt"), "a plain text document\nwith two lines\n").unwrap();

    let prefix = d.join("out/tok");
    let glob = format!("{}/*.*[!c]", d.display()); // every file but f.src
    let out = run_tool(
        "os-tokenize",
        &["--tokenizer", openseek_tokenizer_dir().to_str().unwrap(), "--wrap-docs", "--output", prefix.to_str().unwrap(), "--quiet", &glob],
    );
    assert_ok(&out);

    let tok = Tokenizer::load(&openseek_tokenizer_dir()).unwrap();
    let mut all = texts.clone();
    all.push("a plain text document\nwith two lines\n".to_string());
    let docs = read_documents(&prefix);
    assert_eq!(docs.len(), all.len());
    assert_eq!(docs, expected(&tok, &all, true));
    assert_eq!(docs[0][0], 151849);
    assert_eq!(*docs[0].last().unwrap(), 151850);
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.dtype().name(), "int32", "vocab 151851 needs int32 (Megatron's rule)");

    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{}.json", prefix.display())).unwrap()).unwrap();
    assert_eq!(manifest["documents"], all.len());
    assert_eq!(manifest["tokens"].as_u64().unwrap(), docs.iter().map(|d| d.len() as u64).sum::<u64>());
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 7);
    let first = &manifest["inputs"][0];
    assert!(first["path"].as_str().unwrap().ends_with("a.jsonl"));
    let bytes = std::fs::read(d.join("a.jsonl")).unwrap();
    assert_eq!(first["bytes"], bytes.len());
    assert_eq!(first["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    let gz_bytes = std::fs::read(d.join("b.jsonl.gz")).unwrap();
    assert_eq!(manifest["inputs"][1]["sha256"].as_str().unwrap(), sha256_hex(&gz_bytes), "compressed inputs hash the file on disk");
    assert_eq!(manifest["tokenizer"]["vocab_size"], 151851);
    assert_eq!(manifest["provenance"]["tool"], "os-tokenize");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    out.stdin.as_ref().unwrap().write_all(bytes).unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8(o.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn output_is_identical_for_any_worker_count_and_the_stream_matches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let texts = sample_texts(3000);
    write_jsonl(&d.join("in.jsonl"), &texts);
    let tokdir = openseek_tokenizer_dir();
    let mut outputs = Vec::new();
    for workers in ["1", "2", "3"] {
        let prefix = d.join(format!("w{workers}"));
        assert_ok(&run_tool(
            "os-tokenize",
            &["--tokenizer", tokdir.to_str().unwrap(), "--workers", workers, "--quiet", "--output", prefix.to_str().unwrap(), d.join("in.jsonl").to_str().unwrap()],
        ));
        outputs.push((std::fs::read(format!("{}.bin", prefix.display())).unwrap(), std::fs::read(format!("{}.idx", prefix.display())).unwrap()));
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "the worker count changed the output");

    let out = run_tool("os-tokenize", &["--tokenizer", tokdir.to_str().unwrap(), "--quiet", "--output", "-", d.join("in.jsonl").to_str().unwrap()]);
    assert_ok(&out);
    let mut reader = DocStreamReader::new(&out.stdout[..], "stdout").unwrap();
    assert_eq!(reader.vocab_size(), 151851);
    let mut docs = Vec::new();
    let mut doc = Vec::new();
    while reader.next_document(&mut doc).unwrap() {
        docs.push(doc.clone());
    }
    assert_eq!(docs, read_documents(&d.join("w1")));
}

#[test]
fn stdin_input_and_job_array_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let texts = sample_texts(50);
    for (i, chunk) in texts.chunks(10).enumerate() {
        write_jsonl(&d.join(format!("p{i}.jsonl")), chunk);
    }
    let tokdir = openseek_tokenizer_dir();
    let tok = Tokenizer::load(&tokdir).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let mut union = Vec::new();
    for k in 0..2 {
        let prefix = out_dir.path().join(format!("shard{k}"));
        assert_ok(&run_tool(
            "os-tokenize",
            &[
                "--tokenizer", tokdir.to_str().unwrap(), "--quiet", "--output", prefix.to_str().unwrap(),
                "--shard-index", &k.to_string(), "--num-shards", "2", d.to_str().unwrap(),
            ],
        ));
        union.push(read_documents(&prefix));
    }
    // files p0 p2 p4 go to shard 0, p1 p3 to shard 1
    let chunks: Vec<Vec<String>> = texts.chunks(10).map(|c| c.to_vec()).collect();
    let shard0: Vec<String> = [0, 2, 4].iter().flat_map(|&i| chunks[i].clone()).collect();
    let shard1: Vec<String> = [1, 3].iter().flat_map(|&i| chunks[i].clone()).collect();
    assert_eq!(union[0], expected(&tok, &shard0, false));
    assert_eq!(union[1], expected(&tok, &shard1, false));

    let prefix = out_dir.path().join("stdin");
    let mut child = std::process::Command::new(openseek_tests::tool("os-tokenize"))
        .args(["--tokenizer", tokdir.to_str().unwrap(), "--quiet", "--output", prefix.to_str().unwrap(), "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(&std::fs::read(d.join("p0.jsonl")).unwrap()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(read_documents(&prefix), expected(&tok, &chunks[0], false));
}

#[test]
fn bad_records_fail_with_file_and_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tokdir = openseek_tokenizer_dir();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("notjson", b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{not json}\n".to_vec(), "line 3"),
        ("nokey", b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n".to_vec(), "line 2"),
        ("utf8", b"{\"text\": \"ok\"}\n{\"text\": \"bad \xff byte\"}\n".to_vec(), "line 2"),
        ("empty", b"{\"text\": \"\"}\n".to_vec(), "line 1"),
        ("null", b"\n{\"text\": null}\n".to_vec(), "line 2"),
    ];
    for (name, content, location) in &cases {
        let input = d.join(format!("{name}.jsonl"));
        std::fs::write(&input, content).unwrap();
        let prefix = d.join(format!("out_{name}"));
        let out = run_tool("os-tokenize", &["--tokenizer", tokdir.to_str().unwrap(), "--quiet", "--output", prefix.to_str().unwrap(), input.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(65), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{name}.jsonl: {location}")), "{name}: message should name file and {location}: {err}");
        dir_is_clean(d, &format!("out_{name}"));
        for p in prefix_files(&prefix) {
            assert!(!p.exists());
        }
    }
    // skip mode: the good records are kept, the bad ones counted by reason
    let all: Vec<String> = cases.iter().map(|(n, _, _)| d.join(format!("{n}.jsonl")).to_string_lossy().to_string()).collect();
    let prefix = d.join("skipped");
    let mut args = vec!["--tokenizer", tokdir.to_str().unwrap(), "--quiet", "--on-error", "skip", "--output", prefix.to_str().unwrap()];
    args.extend(all.iter().map(|s| s.as_str()));
    assert_ok(&run_tool("os-tokenize", &args));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{}.json", prefix.display())).unwrap()).unwrap();
    assert_eq!(manifest["documents"], 4);
    let skipped = &manifest["skipped"];
    assert_eq!(skipped["invalid_json"], 1);
    assert_eq!(skipped["missing_key"], 1);
    assert_eq!(skipped["invalid_utf8"], 1);
    assert_eq!(skipped["empty_document"], 1);
    assert_eq!(skipped["not_a_string"], 1);
    assert_eq!(manifest["skipped_examples"].as_array().unwrap().len(), 5);
}

#[test]
fn usage_errors_and_existing_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tokdir = openseek_tokenizer_dir();
    write_jsonl(&d.join("in.jsonl"), &sample_texts(3));
    let prefix = d.join("o");
    let args = |extra: &[&str]| {
        let mut a = vec!["--tokenizer", tokdir.to_str().unwrap(), "--quiet", "--output", prefix.to_str().unwrap()];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| run_tool("os-tokenize", &a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(run(args(&[d.join("missing.jsonl").to_str().unwrap()])).status.code(), Some(66));
    assert_eq!(run(args(&[&format!("{}/*.parquet", d.display())])).status.code(), Some(66));
    assert_ok(&run(args(&[d.join("in.jsonl").to_str().unwrap()])));
    let again = run(args(&[d.join("in.jsonl").to_str().unwrap()]));
    assert_eq!(again.status.code(), Some(73), "an existing output is not replaced silently");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_ok(&run(args(&["--force", d.join("in.jsonl").to_str().unwrap()])));
    let bad_tok = run_tool("os-tokenize", &["--tokenizer", d.to_str().unwrap(), "--output", prefix.to_str().unwrap(), d.join("in.jsonl").to_str().unwrap()]);
    assert!(matches!(bad_tok.status.code(), Some(65 | 66)), "{}", String::from_utf8_lossy(&bad_tok.stderr));
}

#[test]
fn os_tokenize_does_not_link_libtorch() {
    let out = std::process::Command::new("ldd").arg(openseek_tests::tool("os-tokenize")).output().expect("ldd is needed for this test");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(!libs.is_empty(), "ldd printed nothing");
    assert!(!libs.contains("torch") && !libs.contains("libcuda"), "os-tokenize links libtorch/CUDA:\n{libs}");
}

#[test]
fn a_json_file_of_lines_reports_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.json");
    std::fs::write(&input, "{\"text\": \"a\"}\n{\"text\": 3}\n").unwrap();
    let out = run_tool(
        "os-tokenize",
        &["--tokenizer", openseek_tokenizer_dir().to_str().unwrap(), "--quiet", "--output", dir.path().join("o").to_str().unwrap(), input.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.json: line 2: the \"text\" field is a number"), "{err}");
}

#[test]
fn sigterm_stops_with_75_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("interrupted");
    let mut child = std::process::Command::new(openseek_tests::tool("os-tokenize"))
        .args(["--tokenizer", openseek_tokenizer_dir().to_str().unwrap(), "--quiet", "--output", prefix.to_str().unwrap(), "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Some records arrive, then the producer stalls with the pipe open (a slow upstream). The
    // signal goes once the handlers are installed and the output's temporaries exist (however
    // long that takes on a loaded machine).
    let mut stdin = child.stdin.take().unwrap();
    for t in sample_texts(100) {
        writeln!(stdin, "{}", serde_json::json!({"text": t})).unwrap();
    }
    stdin.flush().unwrap();
    openseek_tests::wait_until_it_catches_sigterm(&mut child);
    let temporary = dir.path().join(format!(".interrupted.bin.tmp-{}", child.id()));
    let start = std::time::Instant::now();
    while !temporary.exists() {
        assert!(start.elapsed().as_secs() < 120 && child.try_wait().unwrap().is_none(), "os-tokenize did not start writing");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGTERM"));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "an interrupted run left files: {left:?}");
}

#[test]
fn stale_temporaries_empty_inputs_workers_surrogates_and_unwritable_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = openseek_tokenizer_dir();
    let tok = tok.to_str().unwrap();
    write_jsonl(&d.join("in.jsonl"), &sample_texts(5));
    let input = d.join("in.jsonl");
    let input = input.to_str().unwrap();
    let prefix = d.join("o");
    let o = prefix.to_str().unwrap();

    // A run killed outright (SIGKILL) left its temporaries: the next run of the same output removes them.
    let stale = d.join(".o.bin.tmp-4194999"); // a pid above the kernel's limit: no such process
    std::fs::write(&stale, vec![7u8; 4096]).unwrap();
    let other = d.join(".other.bin.tmp-4194999");
    std::fs::write(&other, b"x").unwrap();
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "-o", o, input]);
    assert_ok(&out);
    assert!(!stale.exists(), "the stale temporary of this output is removed");
    assert!(other.exists(), "another output's temporary is left alone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed 1 temporary file(s)"), "{}", String::from_utf8_lossy(&out.stderr));

    // An empty input is an error, not an empty shard; beside others it is a warning.
    std::fs::write(d.join("empty.jsonl"), b"").unwrap();
    let empty = d.join("empty.jsonl");
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "-q", "-o", d.join("e").to_str().unwrap(), empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no documents in"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(prefix_files(&d.join("e")).iter().all(|p| !p.exists()));
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "-q", "-o", d.join("f").to_str().unwrap(), empty.to_str().unwrap(), input]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty.jsonl holds no documents"), "{}", String::from_utf8_lossy(&out.stderr));

    // --workers 0 is a usage error, not a silent single worker.
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "--workers", "0", "-o", d.join("w").to_str().unwrap(), input]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));

    // A lone surrogate escape is named as such, with its column.
    std::fs::write(d.join("sur.jsonl"), "{\"text\": \"fine\"}\n{\"text\": \"a\\ud800 b\"}\n").unwrap();
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "-q", "-o", d.join("s").to_str().unwrap(), d.join("sur.jsonl").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sur.jsonl: line 2") && err.contains("lone UTF-16 surrogate escape \\ud800 at column 12"), "{err}");

    // An output that cannot be created (its parent is a file) is 73 "cannot create output".
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "-q", "-o", d.join("in.jsonl/x").to_str().unwrap(), input]);
    assert_eq!(out.status.code(), Some(73), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create output"), "{}", String::from_utf8_lossy(&out.stderr));

    // --skip-empty-shard: a job-array task past the number of files writes nothing and succeeds.
    let out = run_tool("os-tokenize", &["--tokenizer", tok, "-q", "--shard-index", "2", "--num-shards", "3", "--skip-empty-shard", "-o", d.join("p2").to_str().unwrap(), input]);
    assert_ok(&out);
    assert!(prefix_files(&d.join("p2")).iter().all(|p| !p.exists()));
}

#[test]
fn os_demo_data_refuses_to_overwrite_and_reports_the_vocabulary_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--output", o, "--documents", "60", "--vocab-size", "6000"];
        args.extend_from_slice(extra);
        run_tool("os-demo-data", &args)
    };
    let first = run(&[]);
    assert_ok(&first);
    let made = Tokenizer::load(&out.join("tokenizer")).unwrap().vocab_size();
    assert!(made < 6000, "60 documents cannot give 6000 tokens: {made}");
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(said.contains(&format!("tokenizer ({made} tokens; --vocab-size 6000 asked for more")), "{said}");
    let again = run(&[]);
    assert_eq!(again.status.code(), Some(73), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_ok(&run(&["--force"]));
}
