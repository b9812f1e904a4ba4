//! os-filter end to end: Gopher's rules decide as datatrove 0.10.1's filters do and t2s converts
//! as OpenCC's own package does (both run from the venv); decontamination finds benchmark
//! questions from ../shared/eval-dev planted in a corpus; fastText language identification gives
//! fastText's own predictions (tiny models trained by its package in the test) and keeps what
//! datatrove's LanguageFilter keeps; score thresholds, word lists, worker counts, array parts, bad
//! input and existing outputs.

use std::collections::BTreeMap;
use std::path::Path;

use openseek_filter::fasttext::{FastTextModel, Prediction};
use openseek_tests::{run_python, run_tool, shared};
use serde_json::{json, Value};

fn filter(args: &[&str]) -> std::process::Output {
    let mut all = vec!["--quiet"];
    all.extend_from_slice(args);
    run_tool("os-filter", &all)
}

fn ok(out: std::process::Output) {
    assert!(out.status.success(), "os-filter failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_jsonl(path: &Path, docs: &[Value]) {
    std::fs::write(path, docs.iter().map(|d| d.to_string() + "\n").collect::<String>()).unwrap();
}

#[test]
fn gopher_rules_and_t2s_agree_with_datatrove_and_opencc() {
    let dir = tempfile::tempdir().unwrap();
    run_python("dedup_corpus.py", &[dir.path().join("c").to_str().unwrap(), "--files", "1", "--docs", "150", "--seed", "11", "--words", "70"]);
    let mut docs = records(&dir.path().join("c/part-0000.jsonl"));
    let extra = [
        "The same line again and again\n".repeat(6) + "and one other line that is different from the rest of the lines here",
        "First paragraph of text here.\n\nSecond paragraph.\n\nFirst paragraph of text here.\n\nThird one with more words in it to be long enough.".to_string(),
        "- item one\n- item two\n- item three\n- item four of the list\n".repeat(4),
        "word ".repeat(80),
        "He said ... and then ... and so ... the end of it ... more of the and to of with that have be the story goes on ...".to_string(),
        "#hash #tags #everywhere the and of to with that have be in a text which is otherwise short enough".to_string(),
        "開放中文轉換是完全由 Rust 實現的。頭髮乾燥，後來發現這個軟體很好用。".to_string(),
    ];
    for (i, text) in extra.iter().enumerate() {
        docs.push(json!({ "id": format!("extra-{i}"), "text": text }));
    }
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &docs);
    let peers: BTreeMap<String, Value> = run_python("datatrove_filters.py", &[input.to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect();
    for (rule, peer_key) in [("gopher_repetition", "gopher_repetition"), ("gopher_quality", "gopher_quality"), ("traditional_to_simplified", "t2s")] {
        let recipe = dir.path().join(format!("{rule}.toml"));
        std::fs::write(&recipe, format!("[[filter]]\nkind = \"{rule}\"\n")).unwrap();
        let out = dir.path().join(rule);
        ok(filter(&["--recipe", recipe.to_str().unwrap(), "--output", out.to_str().unwrap(), input.to_str().unwrap()]));
        let kept: BTreeMap<String, Value> = records(&out.join("in.jsonl")).into_iter().map(|v| (v["id"].as_str().unwrap().to_string(), v)).collect();
        let mut dropped = 0;
        for (id, peer) in &peers {
            if peer_key == "t2s" {
                assert_eq!(kept[id]["text"], peer["t2s"], "t2s of {id}");
                continue;
            }
            let peer_drops = !peer[peer_key].is_null();
            dropped += usize::from(peer_drops);
            assert_eq!(!kept.contains_key(id), peer_drops, "{rule} on {id}: datatrove says {}", peer[peer_key]);
        }
        if peer_key != "t2s" {
            assert!(dropped > 3 && dropped < peers.len(), "{rule}: the corpus must exercise the rule ({dropped} dropped)");
            // The reasons are datatrove's.
            let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join(format!("{rule}.json"))).unwrap()).unwrap();
            let mut ours = BTreeMap::<String, u64>::new();
            for (reason, n) in manifest["counts"][0]["reasons"].as_object().unwrap() {
                ours.insert(reason.clone(), n.as_u64().unwrap());
            }
            let mut theirs = BTreeMap::<String, u64>::new();
            for peer in peers.values().filter(|p| !p[peer_key].is_null()) {
                *theirs.entry(peer[peer_key].as_str().unwrap().to_string()).or_default() += 1;
            }
            assert_eq!(ours, theirs, "{rule}: reasons");
        }
    }
}

#[test]
fn decontamination_finds_planted_benchmark_questions() {
    let dir = tempfile::tempdir().unwrap();
    run_python("dedup_corpus.py", &[dir.path().join("c").to_str().unwrap(), "--files", "1", "--docs", "60", "--seed", "2"]);
    let mut docs = records(&dir.path().join("c/part-0000.jsonl"));
    let eval = shared("eval-dev");
    let first_line = |rel: &str| -> Value { serde_json::from_str(std::fs::read_to_string(eval.join(rel)).unwrap().lines().nth(3).unwrap()).unwrap() };
    let gsm8k = first_line("gsm8k/test.jsonl")["question"].as_str().unwrap().to_string();
    let mmlu = first_line("mmlu/test/high_school_geography.jsonl")["question"].as_str().unwrap().to_string();
    let cmmlu_csv = std::fs::read_to_string(eval.join("cmmlu/test/agronomy.csv")).unwrap();
    let cmmlu = cmmlu_csv.lines().nth(2).unwrap().split(',').nth(1).unwrap().to_string();
    assert!(cmmlu.chars().count() >= 13, "{cmmlu}");
    let planted = [
        ("planted-gsm8k", format!("Homework help forum.\n{gsm8k}\nAnyone know the answer?")),
        ("planted-mmlu", format!("Study notes: {} -- review this before the exam.", mmlu.to_uppercase())),
        ("planted-cmmlu", format!("今天复习农学。{cmmlu}，答案是什么？")),
    ];
    for (i, (id, text)) in planted.iter().enumerate() {
        docs.insert(10 + 15 * i, json!({ "id": id, "text": text }));
    }
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &docs);
    let recipe = dir.path().join("decon.toml");
    std::fs::write(&recipe, format!("[[filter]]\nkind = \"decontaminate\"\ndata = \"{}\"\n", eval.display())).unwrap();
    let out = dir.path().join("out");
    ok(filter(&["--recipe", recipe.to_str().unwrap(), "--output", out.to_str().unwrap(), input.to_str().unwrap()]));
    let kept: Vec<String> = records(&out.join("in.jsonl")).iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(kept.len(), docs.len() - planted.len(), "exactly the planted documents are dropped");
    assert!(planted.iter().all(|(id, _)| !kept.contains(&id.to_string())));
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
    let examples: Vec<String> = manifest["counts"][0]["dropped_examples"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap().to_string()).collect();
    for (example, source) in examples.iter().zip(["gsm8k/test.jsonl", "mmlu/test/high_school_geography.jsonl", "cmmlu/test/agronomy.csv"]) {
        assert!(example.ends_with(source), "{example} should name {source}");
    }
    assert_eq!(manifest["filters"][0]["parameters"]["n"], 13);

    // Flagging keeps them, marked.
    std::fs::write(&recipe, format!("[[filter]]\nkind = \"decontaminate\"\naction = \"flag\"\ndata = \"{}\"\n", eval.display())).unwrap();
    let flagged = dir.path().join("flagged");
    ok(filter(&["--recipe", recipe.to_str().unwrap(), "--output", flagged.to_str().unwrap(), input.to_str().unwrap()]));
    let marked: Vec<String> = records(&flagged.join("in.jsonl")).iter().filter(|v| v.get("decontaminate").is_some()).map(|v| v["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(marked, ["planted-gsm8k", "planted-mmlu", "planted-cmmlu"]);
}

#[test]
fn scores_word_lists_parts_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<Value> = (0..40).map(|i| json!({ "id": format!("d{i}"), "text": format!("document {i} mentions {} here", if i % 7 == 0 { "BadWord" } else { "nothing" }) })).collect();
    for (name, part) in [("a.jsonl", &docs[..25]), ("b.jsonl", &docs[25..])] {
        write_jsonl(&dir.path().join(name), part);
    }
    let scores: Vec<Value> = (0..40).filter(|i| i % 10 != 3).map(|i| json!({ "id": format!("d{i}"), "ppl": i as f64 })).collect();
    write_jsonl(&dir.path().join("scores.jsonl"), &scores);
    std::fs::write(dir.path().join("words.txt"), "# listed\nbadword\n").unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(&recipe, "[[filter]]\nkind = \"word_list\"\npath = \"words.txt\"\n\n[[filter]]\nkind = \"score\"\npath = \"scores.jsonl\"\nscore_key = \"ppl\"\nmax = 30\nmissing = \"drop\"\n").unwrap();
    let glob = format!("{}/*.jsonl", dir.path().display());
    let inputs = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    let (a, b) = (inputs[0].to_str().unwrap(), inputs[1].to_str().unwrap());
    let one = dir.path().join("one");
    ok(filter(&["--workers", "1", "--recipe", recipe.to_str().unwrap(), "--output", one.to_str().unwrap(), a, b]));
    let kept: Vec<String> = ["a.jsonl", "b.jsonl"].iter().flat_map(|f| records(&one.join(f))).map(|v| v["id"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..40).filter(|i| i % 7 != 0 && i % 10 != 3 && *i <= 30).map(|i| format!("d{i}")).collect();
    assert_eq!(kept, expected);
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join("one.json")).unwrap()).unwrap();
    assert_eq!(manifest["counts"][1]["reasons"]["no_score"], 4);
    assert_eq!(manifest["counts"][0]["dropped"], 6);

    // Two array parts, 3 workers: the same bytes.
    let arr = dir.path().join("arr");
    for i in ["1", "0"] {
        ok(filter(&["--workers", "3", "--shard-index", i, "--num-shards", "2", "--recipe", recipe.to_str().unwrap(), "--output", arr.to_str().unwrap(), a, b]));
    }
    for f in ["a.jsonl", "b.jsonl"] {
        assert_eq!(std::fs::read(one.join(f)).unwrap(), std::fs::read(arr.join(f)).unwrap());
    }
    let again = filter(&["--recipe", recipe.to_str().unwrap(), "--output", one.to_str().unwrap(), a, b]);
    assert_eq!(again.status.code(), Some(73));

    // A bad record names its file and line; a bad recipe is a configuration error.
    std::fs::write(dir.path().join("c.jsonl"), "{\"id\": \"x\", \"text\": \"fine\"}\n{\"id\": \"y\"}\n").unwrap();
    let bad = filter(&["--recipe", recipe.to_str().unwrap(), "--output", dir.path().join("bad").to_str().unwrap(), &glob]);
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("c.jsonl: line 2"), "{}", String::from_utf8_lossy(&bad.stderr));
    std::fs::write(&recipe, "[[filter]]\nkind = \"no_such_rule\"\n").unwrap();
    let wrong = filter(&["--recipe", recipe.to_str().unwrap(), "--output", dir.path().join("w").to_str().unwrap(), a]);
    assert_eq!(wrong.status.code(), Some(78), "{}", String::from_utf8_lossy(&wrong.stderr));
}

/// Our prediction of one line equals fastText's: the same labels in the same order (up to ties of
/// equal probability) with probabilities within 1e-5.
fn assert_same_predictions(ours: &[Prediction], theirs: &Value, all: &Value, what: &str) {
    let (labels, probs) = (theirs[0].as_array().unwrap(), theirs[1].as_array().unwrap());
    assert_eq!(ours.len(), labels.len(), "{what}: {ours:?} vs {theirs}");
    let all_probs: BTreeMap<&str, f64> = all[0].as_array().unwrap().iter().zip(all[1].as_array().unwrap()).map(|(l, p)| (l.as_str().unwrap(), p.as_f64().unwrap())).collect();
    for (i, ours) in ours.iter().enumerate() {
        let expected = probs[i].as_f64().unwrap();
        assert!((ours.probability as f64 - expected).abs() < 1e-5, "{what}: probability {i}: {} vs {expected}", ours.probability);
        if ours.label != labels[i].as_str().unwrap() {
            // Only a tie may change the order.
            assert!((all_probs[ours.label] - expected).abs() < 1e-7, "{what}: label {i} is {} where fastText has {}", ours.label, labels[i]);
        }
    }
}

#[test]
fn language_identification_agrees_with_fasttext_and_datatrove() {
    let dir = tempfile::tempdir().unwrap();
    let peer: Value = serde_json::from_str(&run_python("fasttext_lid.py", &[dir.path().to_str().unwrap()])).unwrap();
    let lines: Vec<&str> = peer["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    for (name, path) in peer["models"].as_object().unwrap() {
        let model = FastTextModel::load(Path::new(path.as_str().unwrap())).unwrap();
        assert_eq!(model.quantized, name == "ftz");
        for (k, top) in [("-1", None), ("2", Some(2))] {
            for (i, line) in lines.iter().enumerate() {
                let all = &peer["predictions"][name]["-1"][i];
                assert_same_predictions(&model.predict(line, top), &peer["predictions"][name][k][i], all, &format!("{name} k={k} line {i} {line:?}"));
            }
        }
    }

    // os-filter keeps what datatrove's LanguageFilter keeps, with the hierarchical-softmax model.
    let docs = peer["documents"].as_array().unwrap();
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, docs);
    for (keep, verdicts) in [("keep = [\"en\", \"de\"]\n", "en,de"), ("", "none")] {
        let recipe = dir.path().join("lang.toml");
        std::fs::write(&recipe, format!("[[filter]]\nkind = \"language\"\nmodel = \"hs.bin\"\n{keep}")).unwrap();
        let out = dir.path().join(format!("out-{verdicts}"));
        ok(filter(&["--recipe", recipe.to_str().unwrap(), "--output", out.to_str().unwrap(), input.to_str().unwrap()]));
        let kept: Vec<Value> = records(&out.join("docs.jsonl")).iter().map(|v| v["id"].clone()).collect();
        let expected: Vec<Value> = docs.iter().zip(peer["datatrove"][verdicts].as_array().unwrap()).filter(|(_, v)| v.as_bool().unwrap()).map(|(d, _)| d["id"].clone()).collect();
        assert_eq!(kept, expected, "keep {verdicts}");
        assert!(expected.len() > 5 && expected.len() < docs.len(), "keep {verdicts}: the documents must exercise the filter");
        let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join(format!("out-{verdicts}.json"))).unwrap()).unwrap();
        let counts = &manifest["counts"][0];
        assert_eq!(counts["dropped"].as_u64().unwrap() as usize, docs.len() - expected.len());
        let reasons = counts["reasons"].as_object().unwrap();
        assert_eq!(reasons.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), counts["dropped"].as_u64().unwrap());
        if verdicts == "en,de" {
            assert!(reasons.contains_key("language_fr") && reasons.contains_key("language_zh"), "{reasons:?}");
        }
        assert_eq!(manifest["filters"][0]["parameters"]["loss"], "HierarchicalSoftmax");
    }

    // Flagging keeps every document and marks the rejected ones with the language found.
    std::fs::write(dir.path().join("flag.toml"), "[[filter]]\nkind = \"language\"\nmodel = \"softmax.ftz\"\nkeep = [\"zh\"]\nmin_score = 0.9\naction = \"flag\"\n").unwrap();
    let flagged = dir.path().join("flagged");
    ok(filter(&["--recipe", dir.path().join("flag.toml").to_str().unwrap(), "--output", flagged.to_str().unwrap(), input.to_str().unwrap()]));
    let marked = records(&flagged.join("docs.jsonl"));
    assert_eq!(marked.len(), docs.len());
    assert!(marked.iter().any(|d| d["language"]["language"] == "en") && marked.iter().any(|d| d.get("language").is_none()));

    // Bad model files: named, exit 65 (not a model) or 66 (missing); an unknown language is a recipe error.
    let good = std::fs::read(dir.path().join("softmax.bin")).unwrap();
    let cases: [(&str, Vec<u8>, i32, &str); 3] = [
        ("truncated.bin", good[..good.len() / 2].to_vec(), 65, "truncated"),
        ("magic.bin", [&[0u8; 4][..], &good[4..]].concat(), 65, "magic"),
        ("version.bin", [&good[..4], &99i32.to_le_bytes()[..], &good[8..]].concat(), 65, "version 99"),
    ];
    for (name, bytes, code, why) in cases {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        std::fs::write(dir.path().join("bad.toml"), format!("[[filter]]\nkind = \"language\"\nmodel = \"{name}\"\n")).unwrap();
        let out = filter(&["--recipe", dir.path().join("bad.toml").to_str().unwrap(), "--output", dir.path().join("bad").to_str().unwrap(), input.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(stderr.contains(name) && stderr.contains(why), "{name}: {stderr}");
    }
    for (spec, code, why) in [("model = \"missing.bin\"", 66, "missing.bin"), ("model = \"hs.bin\"\nkeep = [\"xx\"]", 78, "\"xx\"")] {
        std::fs::write(dir.path().join("bad.toml"), format!("[[filter]]\nkind = \"language\"\n{spec}\n")).unwrap();
        let out = filter(&["--recipe", dir.path().join("bad.toml").to_str().unwrap(), "--output", dir.path().join("bad").to_str().unwrap(), input.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{spec}: {stderr}");
        assert!(stderr.contains(why), "{spec}: {stderr}");
    }
    assert!(!dir.path().join("bad.json").exists());
}
