//! os-dedup end to end: the removed set agrees with datatrove 0.10.1's MinHash pipeline run from
//! the venv on the same corpus; planted near-duplicates are found; array stages give the same
//! bytes as one process, whatever the worker count, and a lost part re-runs alone; bad input,
//! existing outputs and signals are handled as everywhere.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use openseek_tests::{run_python, run_tool, tool};

fn corpus(dir: &Path, args: &[&str]) {
    let mut all = vec![dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run_python("dedup_corpus.py", &all);
}

fn ids(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect()
}

fn dedup(args: &[&str]) -> std::process::Output {
    let mut all = vec!["minhash", "--quiet"];
    all.extend_from_slice(args);
    run_tool("os-dedup", &all)
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "os-dedup failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap())).collect()
}

#[test]
fn removed_set_agrees_with_datatrove() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("corpus"), dir.path().join("dedup"));
    corpus(&input, &["--files", "3", "--docs", "150", "--seed", "7"]);
    ok(dedup(&["--output", out.to_str().unwrap(), input.to_str().unwrap()]));
    let all: BTreeSet<String> = ids(&input).into_iter().collect();
    let ours: BTreeSet<String> = all.difference(&ids(&out).into_iter().collect()).cloned().collect();
    let printed = run_python("datatrove_minhash.py", &[input.to_str().unwrap(), dir.path().join("datatrove").to_str().unwrap()]);
    let theirs: BTreeSet<String> = serde_json::from_str::<Vec<String>>(printed.trim()).unwrap().into_iter().collect();
    let common = ours.intersection(&theirs).count() as f64;
    let f1 = 2.0 * common / (ours.len() + theirs.len()).max(1) as f64;
    eprintln!("removed: os-dedup {}, datatrove {}, in common {common}, F1 {f1:.4}", ours.len(), theirs.len());
    assert!(theirs.len() > 20, "the corpus must plant duplicates datatrove finds ({})", theirs.len());
    assert!(f1 >= 0.99, "F1 {f1}: only os-dedup {:?}, only datatrove {:?}", ours.difference(&theirs).collect::<Vec<_>>(), theirs.difference(&ours).collect::<Vec<_>>());
    // The intermediate files are datatrove's formats: a band's sorted signatures and duplicate pairs.
    for (ours, theirs) in [
        ("dedup.work/signatures/bucket_003/00001.minhash.sig", "datatrove/signatures/bucket_003/00001.minhash.sig"),
        ("dedup.work/buckets/00007_00.dups", "datatrove/buckets/00007_00.dups"),
    ] {
        assert!(std::fs::read(dir.path().join(ours)).unwrap() == std::fs::read(dir.path().join(theirs)).unwrap(), "{ours} differs from {theirs}");
    }
}

#[test]
fn planted_duplicates_are_found_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("corpus"), dir.path().join("dedup"));
    // One word in 200 changed: every copy is far above the LSH threshold.
    // English only: datatrove's English splitter sees unspaced Chinese as few long words, so a
    // one-word edit there changes most shingles.
    corpus(&input, &["--files", "2", "--docs", "200", "--seed", "3", "--edit-every", "200", "--dup-rate", "0.25", "--zh-rate", "0"]);
    ok(dedup(&["--output", out.to_str().unwrap(), input.to_str().unwrap()]));
    let mut groups = std::collections::BTreeMap::<String, usize>::new();
    let mut planted = 0;
    for path in std::fs::read_dir(&input).unwrap() {
        for line in std::fs::read_to_string(path.unwrap().path()).unwrap().lines() {
            let doc: serde_json::Value = serde_json::from_str(line).unwrap();
            let group = doc["dup_of"].as_str().unwrap_or(doc["id"].as_str().unwrap()).to_string();
            planted += usize::from(!doc["dup_of"].is_null());
            *groups.entry(group).or_default() += 1;
        }
    }
    let kept = ids(&out);
    assert!(planted > 50);
    assert_eq!(kept.len(), groups.len(), "one document per planted group must be kept ({planted} copies planted)");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("dedup.json")).unwrap()).unwrap();
    assert_eq!(manifest["removed"], planted);
    assert_eq!(manifest["config"]["num_buckets"], 14);
    assert!(manifest["provenance"]["version"].is_string());
    assert!(!manifest["clusters"]["examples"].as_array().unwrap().is_empty());
}

#[test]
fn array_stages_and_worker_counts_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus");
    corpus(&input, &["--files", "3", "--docs", "80", "--seed", "5"]);
    let glob = format!("{}/*.jsonl", input.display());
    let one = dir.path().join("one");
    ok(dedup(&["--workers", "1", "--output", one.to_str().unwrap(), &glob]));
    let three = dir.path().join("three");
    ok(dedup(&["--workers", "3", "--output", three.to_str().unwrap(), &glob]));
    assert!(tree_bytes(&one) == tree_bytes(&three), "outputs differ between 1 and 3 workers");

    // Stage by stage as a 2-task array; part 1's signatures are "killed" (never ran).
    let arr = dir.path().join("array");
    let work = dir.path().join("work");
    let stage = |name: &str, shard: Option<(usize, usize)>| {
        let (i, n) = shard.map(|(i, n)| (i.to_string(), n.to_string())).unwrap_or_default();
        let mut args = vec!["--stage", name, "--work", work.to_str().unwrap(), "--output", arr.to_str().unwrap(), "--workers", "2"];
        if shard.is_some() {
            args.extend(["--shard-index", &i, "--num-shards", &n]);
        }
        args.push(&glob);
        dedup(&args)
    };
    ok(stage("signatures", Some((0, 2))));
    let early = stage("buckets", Some((0, 2)));
    assert_eq!(early.status.code(), Some(66), "{}", String::from_utf8_lossy(&early.stderr));
    assert!(String::from_utf8_lossy(&early.stderr).contains("part(s) 1"), "{}", String::from_utf8_lossy(&early.stderr));
    let before = std::fs::metadata(work.join("signatures/00000.done")).unwrap().modified().unwrap();
    ok(stage("signatures", Some((1, 2))));
    ok(stage("signatures", Some((0, 2)))); // finished parts are skipped, not redone
    assert_eq!(std::fs::metadata(work.join("signatures/00000.done")).unwrap().modified().unwrap(), before);
    ok(stage("buckets", Some((0, 2))));
    ok(stage("buckets", Some((1, 2))));
    ok(stage("clusters", None));
    ok(stage("filter", Some((1, 2))));
    assert!(!dir.path().join("array.json").exists(), "the manifest waits for every part");
    ok(stage("filter", Some((0, 2))));
    assert!(dir.path().join("array.json").exists());
    assert!(tree_bytes(&one) == tree_bytes(&arr), "the array run differs from the single-process run");
}

#[test]
fn bad_input_existing_outputs_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // Distinct words (digits would all normalise to 0 and make the documents duplicates).
    let word = |n: usize| (0..3).map(|k| (b'a' + ((n / 26usize.pow(k)) % 26) as u8) as char).collect::<String>();
    let good = (0..30).map(|i| format!("{{\"text\": \"{}\"}}", (0..12).map(|k| word(i * 12 + k)).collect::<Vec<_>>().join(" "))).collect::<Vec<_>>();
    let mut lines = good.clone();
    lines.insert(7, "{\"text\": broken".to_string());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let failed = dedup(&["--output", out.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(65));
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(message.contains("in.jsonl: line 8") && message.contains("--on-error skip"), "{message}");
    assert!(!out.join("in.jsonl").exists() && !dir.path().join("out.json").exists());

    ok(dedup(&["--on-error", "skip", "--output", out.to_str().unwrap(), input.to_str().unwrap()]));
    let kept = std::fs::read_to_string(out.join("in.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 30);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
    assert_eq!(manifest["parts"][0]["skipped"]["invalid_json"], 1);
    assert_eq!(manifest["parts"][0]["skipped_examples"][0]["location"].as_str().unwrap(), format!("{}: line 8", input.display()));

    let again = dedup(&["--on-error", "skip", "--output", out.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(73), "{}", String::from_utf8_lossy(&again.stderr));
    ok(dedup(&["--force", "--on-error", "skip", "--output", out.to_str().unwrap(), input.to_str().unwrap()]));

    // A signal while reading: exit 75, nothing written that looks finished, no temporaries.
    let fifo = dir.path().join("slow.jsonl");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sig_out = dir.path().join("sig");
    let mut child = Command::new(tool("os-dedup"))
        .args(["minhash", "--quiet", "--workers", "1", "--output", sig_out.to_str().unwrap(), fifo.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = dir.path().join("sig.work/job.json");
    let started = std::time::Instant::now();
    while !job.exists() {
        assert!(started.elapsed().as_secs() < 30, "os-dedup did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    {
        use std::io::Write;
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let line = format!("{}\n", good[0]);
        for _ in 0..100_000 {
            if writer.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!dir.path().join("sig.work/signatures/00000.done").exists());
    let leftovers: Vec<_> = walk(&dir.path().join("sig.work")).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn exact_documents_and_repeated_spans() {
    let dir = tempfile::tempdir().unwrap();
    let boiler = "Subscribe to our newsletter for weekly updates, privacy policy and terms of use apply to all readers.";
    let docs = [
        "The first story is about a river that runs through the old town.".to_string(),
        format!("A second story about mountains and snow. {boiler}"),
        "THE FIRST STORY is about a river, that runs through the old town!".to_string(),
        format!("Third text on forests full of birds and deer. {boiler} End."),
        boiler.to_string(),
        "Fourth is unique as well and mentions nothing repeated.".to_string(),
    ];
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, docs.iter().enumerate().map(|(i, t)| format!("{}\n", serde_json::json!({"id": i, "text": t}))).collect::<String>()).unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["exact", "--quiet"];
        all.extend_from_slice(args);
        run_tool("os-dedup", &all)
    };
    let out = dir.path().join("docs-out");
    ok(run(&["--output", out.to_str().unwrap(), input.to_str().unwrap()]));
    let kept: Vec<serde_json::Value> = std::fs::read_to_string(out.join("docs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<u64> = kept.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 3, 4, 5], "document 2 is document 0 after normalisation");

    let spans = dir.path().join("spans-out");
    ok(run(&["--mode", "substrings", "--min-bytes", "40", "--output", spans.to_str().unwrap(), input.to_str().unwrap()]));
    let kept: Vec<serde_json::Value> = std::fs::read_to_string(spans.join("docs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let texts: Vec<&str> = kept.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts[1], docs[1], "the first occurrence stays");
    // The repeat shared with document 1 is ". " + the boilerplate.
    assert_eq!(texts[3], "Third text on forests full of birds and deer End.");
    assert_eq!(kept.len(), 5, "the document that was only the repeated span is dropped");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("spans-out.json")).unwrap()).unwrap();
    assert_eq!(manifest["removed_bytes"], 2 * boiler.len() + 2);
    assert_eq!(manifest["edited"], 1);
    assert_eq!(manifest["dropped"], 1);
    let again = run(&["--mode", "substrings", "--output", spans.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(73));
}
