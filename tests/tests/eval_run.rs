//! os-eval run and sweep end to end on CPU: a tiny random DeepSeek-V3 with OpenSeek's tokenizer
//! (`tests/python/eval_reference.py make`) over the real rows of `shared/eval-dev`.
//! Log-likelihoods and predictions equal transformers' (one forward per request, as lighteval's
//! HF backend); results.json, the table and details.h5 (read with h5py) have the documented
//! structure; a run resumes from its task records; sweeps are idempotent and locked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use openseek_eval::{build_requests, read_docs, Item, Options, Task};
use openseek_tests::{run_python, run_tool, shared, tool};
use openseek_tokenizer::Tokenizer;
use serde_json::Value;

const SUBJECTS: [&str; 3] = ["mmlu:abstract_algebra", "cmmlu:agronomy", "ceval:computer_network"];

/// The tiny model and the data directory, made once for all tests of this file.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static FIXTURE: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        run_python("eval_reference.py", &["make", model.to_str().unwrap(), "--tokenizer", shared("tokenizers/openseek").to_str().unwrap()]);
        let data = data_dir(tmp.path());
        (tmp, model, data)
    })
}

/// A model folder of symlinks to `model`'s files; `config_suffix` appended to a copied
/// config.json makes another model as far as hashes go.
fn link_model(dir: &Path, model: &Path, config_suffix: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name == "config.json" {
            let text = std::fs::read_to_string(&p).unwrap() + config_suffix;
            std::fs::write(dir.join(name), text).unwrap();
        } else {
            std::os::unix::fs::symlink(&p, dir.join(name)).unwrap();
        }
    }
}

/// eval-dev as a data directory with every split under the name os-eval looks for: GSM8K's
/// train slice as `train.jsonl`, ARC's validation rows as its test split.
fn data_dir(root: &Path) -> PathBuf {
    let dev = shared("eval-dev");
    let data = root.join("data");
    std::fs::create_dir_all(data.join("gsm8k")).unwrap();
    std::fs::create_dir_all(data.join("arc")).unwrap();
    for e in std::fs::read_dir(&dev).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if name != "gsm8k" && name != "arc" {
            std::os::unix::fs::symlink(&p, data.join(name)).unwrap();
        }
    }
    std::os::unix::fs::symlink(dev.join("gsm8k/test.jsonl"), data.join("gsm8k/test.jsonl")).unwrap();
    std::os::unix::fs::symlink(dev.join("gsm8k/train_first50.jsonl"), data.join("gsm8k/train.jsonl")).unwrap();
    for sub in ["ARC-Easy", "ARC-Challenge"] {
        std::os::unix::fs::symlink(dev.join(format!("arc/{sub}_validation.jsonl")), data.join(format!("arc/{sub}_test.jsonl"))).unwrap();
    }
    data
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn os_eval(args: &[&str]) -> std::process::Output {
    let o = run_tool("os-eval", args);
    assert!(o.status.success(), "os-eval {args:?} failed ({:?}): {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
    o
}

fn record(out: &Path, task: &str) -> Value {
    read_json(&out.join("tasks").join(format!("{}.json", task.replace(':', "__"))))
}

#[test]
fn run_scores_like_transformers_and_writes_results_table_and_details() {
    let (_, model, data) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let tasks = format!("hellaswag,arc,piqa,{},commonsense_qa,triviaqa,winogrande,openbookqa,gsm8k,siqa,boolq", SUBJECTS.join(","));
    let o = os_eval(&["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", &tasks, "--limit", "3", "--output", out.to_str().unwrap(), "--device", "cpu"]);
    let printed = String::from_utf8_lossy(&o.stdout);

    // results.json: every task, the 12 columns in the seeds' order, their mean.
    let r = read_json(&out.join("results.json"));
    let columns: Vec<&str> = r["table"]["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, openseek_eval::table::COLUMNS.to_vec());
    let values: Vec<f64> = r["table"]["columns"].as_array().unwrap().iter().map(|c| c["value"].as_f64().unwrap()).collect();
    let mean = r["table"]["mean"].as_f64().unwrap();
    assert!((mean - values.iter().sum::<f64>() / 12.0).abs() < 1e-9);
    assert!(printed.contains(&format!("Mean           {mean:>6.2}")), "{printed}");
    for (name, t) in r["tasks"].as_object().unwrap() {
        assert_eq!(t["n"], 3, "{name}");
        assert!(t["value"].as_f64().unwrap() >= 0.0 && t["stderr"].is_number(), "{name}: {t}");
        let metric = t["metric"].as_str().unwrap();
        assert_eq!(t["value"], t["metrics"][metric]["value"], "{name}");
    }
    assert_eq!(r["tasks"]["commonsense_qa"]["metric"], "acc");
    assert_eq!(r["tasks"]["gsm8k"]["metric"], "quasi_exact_match");
    assert_eq!(r["tasks"].as_object().unwrap().len(), 14);
    // ARC(Average) is the mean of its two tasks, ×100.
    let arc = (r["tasks"]["arc:easy"]["value"].as_f64().unwrap() + r["tasks"]["arc:challenge"]["value"].as_f64().unwrap()) * 50.0;
    assert!((values[1] - arc).abs() < 1e-9);
    assert_eq!(r["seeds"]["fewshot"], 42);
    assert_eq!(r["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(r["tool"]["tool"], "os-eval");
    assert!(r["timings"]["total_seconds"].as_f64().unwrap() > 0.0);

    // Log-likelihoods equal transformers' on the same requests (built by openseek-eval, which the
    // request tests check against lighteval's goldens); predictions are the same.
    let tok = Tokenizer::load(model).unwrap();
    let mut lines = String::new();
    let mut ours = Vec::new();
    for name in ["hellaswag", "arc:easy", "winogrande", "mmlu:abstract_algebra", "cmmlu:agronomy"] {
        let task = Task::parse_list(name).unwrap().remove(0);
        let items = build_requests(&task, data, &tok, &Options { limit: Some(3), ..Options::default() }).unwrap();
        let rec = record(&out, name);
        for (item, ri) in items.iter().zip(rec["items"].as_array().unwrap()) {
            let Item::Choice(c) = item else { panic!("{name}") };
            let lp: Vec<f64> = ri["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(lp.len(), c.requests.len());
            for req in &c.requests {
                lines.push_str(&serde_json::json!({"context": req.context_ids, "continuation": req.continuation_ids}).to_string());
                lines.push('\n');
            }
            ours.push((name, lp, ri["prediction"].as_u64().unwrap() as usize, c.gold.clone()));
        }
    }
    let reqs = tmp.path().join("requests.jsonl");
    let refs = tmp.path().join("reference.jsonl");
    std::fs::write(&reqs, lines).unwrap();
    run_python("eval_reference.py", &["loglik", model.to_str().unwrap(), reqs.to_str().unwrap(), refs.to_str().unwrap()]);
    let theirs: Vec<f64> = std::fs::read_to_string(&refs).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["logprob"].as_f64().unwrap()).collect();
    let mut k = 0;
    let mut worst = 0f64;
    for (name, lp, pred, _) in &ours {
        let t = &theirs[k..k + lp.len()];
        k += lp.len();
        for (a, b) in lp.iter().zip(t) {
            worst = worst.max((a - b).abs());
        }
        assert_eq!(*pred, openseek_eval::metrics::argmax(t), "{name}: prediction differs from transformers' ({lp:?} vs {t:?})");
    }
    assert_eq!(k, theirs.len());
    assert!(worst < 1e-3, "log-likelihoods differ from transformers by {worst}");
    eprintln!("os-eval vs transformers on {k} requests: max |Δ log-likelihood| = {worst:.2e}");

    // details.h5 read with h5py holds the same items.
    let dump: Value = serde_json::from_str(&run_python("eval_reference.py", &["h5dump", out.join("details.h5").to_str().unwrap()])).unwrap();
    assert_eq!(dump["attrs"]["model_sha256"], r["model"]["sha256"]);
    assert_eq!(dump["attrs"]["harness"], "lighteval");
    assert_eq!(dump["groups"].as_object().unwrap().len(), 14);
    let hs = &dump["groups"]["hellaswag"];
    let rec = record(&out, "hellaswag");
    assert_eq!(hs["attrs"]["metric"], "acc_norm");
    assert_eq!(hs["attrs"]["value"], rec["value"]);
    let d = &hs["datasets"];
    assert_eq!(d["choice_offsets"], serde_json::json!([0, 4, 8, 12]));
    let items = rec["items"].as_array().unwrap();
    assert_eq!(d["query"][0], items[0]["query"]);
    assert_eq!(d["choices"][5], items[1]["choices"][1]);
    assert_eq!(d["logprobs"][5], items[1]["logprobs"][1]);
    assert_eq!(d["prediction_norm"][2], items[2]["prediction_norm"]);
    assert_eq!(d["gold"][2], items[2]["gold"][0]);
    let g = &dump["groups"]["gsm8k"]["datasets"];
    assert!(g["query"][0].as_str().unwrap().starts_with("Question: "));
    assert_eq!(g["generated"].as_array().unwrap().len(), 3);
    assert_eq!(g["gold_offsets"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(dump["groups"]["triviaqa"]["datasets"]["quasi_exact_match"].as_array().unwrap().len(), 3);
}

#[test]
fn a_run_resumes_from_its_task_records() {
    let (_, base, data) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    link_model(&model, base, "");
    let out = tmp.path().join("out");
    let args = ["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", "piqa,openbookqa", "--limit", "3", "--output", out.to_str().unwrap(), "--device", "cpu"];
    os_eval(&args);
    // As if killed after piqa: openbookqa's record and the results are gone; piqa's record is
    // marked so that reuse shows.
    let piqa = out.join("tasks/piqa.json");
    let mut rec = read_json(&piqa);
    rec["value"] = serde_json::json!(0.123);
    std::fs::write(&piqa, rec.to_string()).unwrap();
    std::fs::remove_file(out.join("tasks/openbookqa.json")).unwrap();
    std::fs::remove_file(out.join("results.json")).unwrap();
    let o = os_eval(&args);
    assert!(String::from_utf8_lossy(&o.stderr).contains("(1 from earlier records)"));
    let r = read_json(&out.join("results.json"));
    assert_eq!(r["tasks"]["piqa"]["value"], 0.123);
    assert!(out.join("tasks/openbookqa.json").is_file());
    // Other request conventions do not reuse the records either.
    let mut lm = args.to_vec();
    lm.extend(["--harness", "lm-eval"]);
    let o = os_eval(&lm);
    assert!(String::from_utf8_lossy(&o.stderr).contains("(0 from earlier records)"));
    assert_eq!(read_json(&out.join("results.json"))["harness"], "lm-eval");
    // Another model (different hash) does not reuse the records.
    std::fs::remove_dir_all(&model).unwrap();
    link_model(&model, base, "\n");
    os_eval(&args);
    assert_ne!(read_json(&out.join("results.json"))["tasks"]["piqa"]["value"], 0.123);
}

#[test]
fn sigterm_stops_between_tasks_with_75_and_the_run_resumes() {
    let (_, model, data) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = ["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", "piqa,openbookqa,siqa,winogrande,arc,commonsense_qa,boolq,hellaswag", "--limit", "2", "--output", out.to_str().unwrap(), "--device", "cpu"];
    let child = Command::new(tool("os-eval")).args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let first = out.join("tasks/piqa.json");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no task record after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(err.contains("SIGTERM") && err.contains("run again to resume"), "{err}");
    assert!(!out.join("results.json").exists());
    let done = std::fs::read_dir(out.join("tasks")).unwrap().count();
    assert!((1..9).contains(&done), "{done} records");
    let o = os_eval(&args);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("({done} from earlier records)")));
    assert_eq!(read_json(&out.join("results.json"))["tasks"].as_object().unwrap().len(), 9);
}

#[test]
fn missing_split_or_column_fails_naming_the_file() {
    let (_, model, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("piqa")).unwrap();
    std::fs::create_dir_all(data.join("hellaswag")).unwrap();
    std::fs::write(data.join("hellaswag/validation.jsonl"), "{\"ctx_a\": \"x\", \"label\": 0}\n").unwrap();
    let run = |task: &str| run_tool("os-eval", &["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", task, "--output", tmp.path().join("o").to_str().unwrap(), "--device", "cpu"]);
    let o = run("piqa");
    assert_eq!(o.status.code(), Some(66));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("piqa") && err.contains("valid.jsonl"), "{err}");
    let o = run("hellaswag");
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hellaswag/validation.jsonl") && err.contains("no column \"ctx_b\""), "{err}");
}

/// `RUN/checkpoints/step-N` folders holding (symlinks to) the tiny model.
fn checkpoint(run: &Path, model: &Path, step: u64) {
    link_model(&run.join("checkpoints").join(format!("step-{step:07}")), model, &" ".repeat(step as usize));
}

#[test]
fn sweep_is_idempotent_locked_and_draws_the_table() {
    let (_, model, data) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let out = tmp.path().join("sweep");
    checkpoint(&run_dir, model, 20);
    checkpoint(&run_dir, model, 10);
    let sweep = || {
        Command::new(tool("os-eval"))
            .args(["sweep", "--checkpoints", run_dir.to_str().unwrap(), "--output", out.to_str().unwrap(), "--data", data.to_str().unwrap()])
            .args(["--tasks", "piqa,openbookqa", "--limit", "3", "--device", "cpu", "--quiet"])
            .output()
            .unwrap()
    };
    // Bad data stops the sweep before any checkpoint is loaded.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run_tool("os-eval", &["sweep", "--checkpoints", run_dir.to_str().unwrap(), "--output", out.to_str().unwrap(), "--data", empty.to_str().unwrap(), "--tasks", "piqa", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(66), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("results.jsonl").exists());
    let rows = || -> Vec<Value> { std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let o = sweep();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = rows();
    assert_eq!(r.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 20]);
    assert!(r[0]["table"]["PIQA"].is_number() && r[0]["table"]["OpenBookQA"].is_number());
    // Nothing new: nothing evaluated, nothing appended.
    let o = sweep();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 evaluated, 2 already done"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows().len(), 2);
    // A new checkpoint is evaluated alone.
    checkpoint(&run_dir, model, 30);
    let o = sweep();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows().iter().map(|r| r["checkpoint"].as_str().unwrap().to_string()).collect::<Vec<_>>(), vec!["step-0000010", "step-0000020", "step-0000030"]);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.starts_with("| checkpoint | step | PIQA | OpenBookQA | Mean |"), "{md}");
    assert_eq!(md.lines().count(), 5);
    for png in ["PIQA.png", "OpenBookQA.png"] {
        assert_eq!(&std::fs::read(out.join("plots").join(png)).unwrap()[..4], b"\x89PNG");
    }
    assert!(out.join("runs/step-0000030/details.h5").is_file());
    // While another sweep holds the lock, a sweep does nothing and exits 75. (`flock -o`: the lock
    // is held by flock itself, not by `sleep`, so killing flock releases it.)
    checkpoint(&run_dir, model, 40);
    let mut holder = Command::new("flock").args(["-o", out.join(".sweep.lock").to_str().unwrap(), "sleep", "30"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = sweep();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another sweep is running"));
    assert_eq!(rows().len(), 3);
    let o = sweep();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows().len(), 4);
}

/// os-demo-data's benchmark files read back through os-eval's readers: every item's gold is a fact
/// the demo corpus states and asks, and no item's question is in the corpus (the corpus asks those
/// animals in other wordings; its word problems work out other sums).
#[test]
fn demo_tasks_ask_facts_the_corpus_teaches_in_words_it_never_uses() {
    use openseek_corpus::synthetic::{answer, benchmark_wording_in_corpus, document, question_en, question_zh, Relation, ANIMALS, DEMO_DOCUMENTS, DEMO_SEED, QUESTION_FORMS};
    let d = tempfile::tempdir().unwrap();
    openseek_corpus::demo_tasks::write_demo_tasks(d.path(), DEMO_SEED).unwrap();
    // The corpus os-demo-data writes by default.
    let mut rng = openseek_common::rng::SplitMix::new(DEMO_SEED);
    let corpus: String = (0..DEMO_DOCUMENTS).map(|_| document(&mut rng) + "\n").collect();
    let stated = |fact: String| assert!(corpus.contains(&fact), "the corpus never states {fact:?}");
    for task in Task::parse_list(openseek_corpus::demo_tasks::DEMO_TASKS).unwrap() {
        let docs = read_docs(&task, d.path(), &Options::default()).unwrap_or_else(|e| panic!("{}: {e}", task.name));
        assert!(docs.len() >= 8, "{}: {} items", task.name, docs.len());
        for doc in &docs {
            let gold = if doc.choices.is_empty() { doc.gold_texts[0].clone() } else { doc.choices[doc.gold[0]].clone() };
            let gold = gold.trim();
            match task.name.as_str() {
                // Cloze in the corpus' own sentences: "The red cat eats" + " fish".
                "openbookqa" | "commonsense_qa" => stated(format!("{} {gold}.", doc.query)),
                "gsm8k" => {
                    let question = doc.query.strip_prefix("Question: ").and_then(|q| q.strip_suffix("\nAnswer:")).unwrap();
                    assert!(!corpus.contains(question), "the corpus holds the test problem {question:?}");
                    let (sum, total) = gold.split_once("\n#### ").unwrap();
                    let (a, b) = sum.strip_suffix(&format!(" is {total}.")).unwrap().split_once(" plus ").unwrap();
                    assert_eq!(a.parse::<usize>().unwrap() + b.parse::<usize>().unwrap(), total.parse::<usize>().unwrap());
                    assert!(!corpus.contains(&format!("Answer: {sum}")), "a word problem of the corpus works out {sum:?}");
                    stated(sum.to_string());
                }
                _ => {
                    // A question about one animal's food or place in the benchmarks' wording (form 0).
                    let asked = |k: usize, r: Relation| {
                        let (en, zh, _, _) = ANIMALS[k];
                        let lines = [question_en(en, r, "a", 0), question_en(en, r, "the", 0)].map(|q| format!("Question: {q}\n"));
                        lines.into_iter().chain([format!("题目：{}\n", question_zh(zh, r, 0))]).find(|line| doc.query.contains(line))
                    };
                    let (k, r, question) = (0..ANIMALS.len())
                        .flat_map(|k| [Relation::Food, Relation::Place].map(|r| (k, r)))
                        .find_map(|(k, r)| asked(k, r).map(|q| (k, r, q)))
                        .unwrap_or_else(|| panic!("{}: {:?} asks no demo fact", task.name, doc.query));
                    assert!(!corpus.contains(&question) && !benchmark_wording_in_corpus(k), "the corpus asks {question:?}");
                    let (en, zh) = answer(k, r);
                    let (animal_en, animal_zh, _, _) = ANIMALS[k];
                    assert_eq!(gold, if task.name == "cmmlu:agronomy" { zh } else { en }, "{question}");
                    // Stated, and asked in the other wordings.
                    match r {
                        Relation::Food => {
                            stated(format!("The {animal_en} eats {en}."));
                            stated(format!("{animal_zh}吃{zh}。"));
                        }
                        Relation::Place => {
                            stated(format!("A {animal_en} lives in the {en}."));
                            stated(format!("{animal_zh}住在{zh}里。"));
                        }
                    }
                    for form in 1..QUESTION_FORMS {
                        stated(format!("Question: {}\nAnswer: {en}", question_en(animal_en, r, "the", form)));
                        stated(format!("题目：{}\n答案是： {zh}", question_zh(animal_zh, r, form)));
                    }
                }
            }
        }
    }
}

#[test]
fn demo_tasks_run_end_to_end() {
    let (_, model, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    let o = run_tool("os-demo-data", &["--output", demo.to_str().unwrap(), "--documents", "200", "--vocab-size", "300"]);
    assert!(o.status.success(), "os-demo-data: {}", String::from_utf8_lossy(&o.stderr));
    let data = demo.join("eval-data");
    let out = tmp.path().join("out");
    // GSM8K's demo rows are read by demo_tasks_read_back_with_golds_on_the_facts; generation here is TriviaQA's (short).
    let tasks = openseek_corpus::demo_tasks::DEMO_TASKS.replace(",gsm8k", "");
    let run = |disable: &str| {
        let args = ["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", &tasks, "--output", out.to_str().unwrap()];
        run_tool("os-eval", &[&args[..], &["--device", "cpu", "--limit", "3", "--disable", disable]].concat())
    };
    // An unknown fast path is refused before anything is loaded (exit 64, the known names listed).
    let o = run("moe_fused,head_grad");
    assert_eq!(o.status.code(), Some(64), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown fast path \"head_grad\"; known: fused_norm"));
    assert!(!out.exists());
    let o = run("moe_fused,rope_kernel");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_json(&out.join("results.json"));
    assert_eq!(r["tasks"].as_object().unwrap().len(), 5);
    assert_eq!(r["backend"]["disable"], serde_json::json!(["moe_fused", "rope_kernel"]));
}

/// A copy of the tiny model at `RUN/checkpoints/step-N` whose safetensors is cut short, every
/// file dated `age` ago.
fn truncated_checkpoint(run: &Path, model: &Path, step: u64, age: std::time::Duration) -> PathBuf {
    let dir = run.join("checkpoints").join(format!("step-{step:07}"));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let p = e.unwrap().path();
        let dest = dir.join(p.file_name().unwrap());
        let bytes = std::fs::read(&p).unwrap();
        let keep = if p.extension().is_some_and(|x| x == "safetensors") { bytes.len() / 2 } else { bytes.len() };
        std::fs::write(&dest, &bytes[..keep]).unwrap();
        std::fs::File::options().write(true).open(&dest).unwrap().set_modified(std::time::SystemTime::now() - age).unwrap();
    }
    dir
}

#[test]
fn sweep_records_a_corrupt_checkpoint_as_failed_and_leaves_one_being_written() {
    let (_, model, data) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let out = tmp.path().join("sweep");
    checkpoint(&run_dir, model, 10);
    let hour = std::time::Duration::from_secs(3600);
    truncated_checkpoint(&run_dir, model, 20, hour);
    let sweep = || run_tool("os-eval", &["sweep", "--checkpoints", run_dir.to_str().unwrap(), "--output", out.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", "piqa", "--limit", "2", "--device", "cpu", "--quiet"]);
    let rows = || -> Vec<Value> { std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    // The corrupt one: recorded as failed with the reason, exit 65 (not 75: no requeue).
    let o = sweep();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(!err.contains("signal"), "{err}");
    let r = rows();
    assert_eq!(r.len(), 2);
    let failed = r.iter().find(|r| r["checkpoint"] == "step-0000020").unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["reason"].as_str().unwrap().contains("model.safetensors"), "{failed}");
    assert!(r.iter().any(|r| r["checkpoint"] == "step-0000010" && r["table"]["PIQA"].is_number()));
    assert!(!std::fs::read_to_string(out.join("results.md")).unwrap().contains("step-0000020"));
    // Not tried again.
    let o = sweep();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows().len(), 2);
    // One still being written (files younger than the settle time; or `latest` naming an earlier
    // step): left for the next sweep, nothing recorded, exit 0.
    truncated_checkpoint(&run_dir, model, 30, std::time::Duration::ZERO);
    let o = sweep();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("still being written") && err.contains("1 still being written"), "{err}");
    assert_eq!(rows().len(), 2);
    let old = truncated_checkpoint(&run_dir, model, 40, hour);
    std::fs::write(run_dir.join("checkpoints/latest"), "step-0000030\n").unwrap();
    let o = sweep();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows().len(), 2);
    // os-train's temporary folder is no checkpoint at all.
    std::fs::rename(&old, run_dir.join("checkpoints/.tmp-step-0000040")).unwrap();
    let o = sweep();
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 checkpoints found"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sigterm_during_the_last_task_stops_between_batches_with_75() {
    let (_, model, data) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // One generative task decoding one prompt at a time: many decoding steps to stop between.
    let args = ["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tasks", "gsm8k", "--limit", "6", "--generate-batch", "1", "--output", out.to_str().unwrap(), "--device", "cpu"];
    let mut child = Command::new(tool("os-eval")).args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let t0 = std::time::Instant::now();
    while !seen.contains("gsm8k: 6 items") {
        assert!(t0.elapsed().as_secs() < 120, "the task did not start: {seen}");
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
            panic!("os-eval ended before the task started: {seen}");
        }
        seen.push_str(&line);
    }
    let sent = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let stopped_in = sent.elapsed();
    assert_eq!(status.code(), Some(75), "{seen}{rest}");
    assert!(rest.contains("SIGTERM") && rest.contains("run again to resume"), "{rest}");
    assert!(stopped_in.as_secs() < 10, "took {stopped_in:?} to stop");
    assert!(!out.join("results.json").exists() && !out.join("tasks/gsm8k.json").exists());
    // The rerun evaluates the task again, whole.
    os_eval(&args);
    assert_eq!(record(&out, "gsm8k")["n"], 6);
}

#[test]
fn splits_per_task_limit_zero_and_lighteval_results() {
    let (_, model, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // ARC only under its validation split's name; PIQA at its default.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("arc")).unwrap();
    std::os::unix::fs::symlink(shared("eval-dev/arc/ARC-Easy_validation.jsonl"), data.join("arc/ARC-Easy_validation.jsonl")).unwrap();
    std::os::unix::fs::symlink(shared("eval-dev/piqa"), data.join("piqa")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--output", out.to_str().unwrap(), "--device", "cpu", "--quiet"];
        args.extend_from_slice(extra);
        run_tool("os-eval", &args)
    };
    let o = run(&["--tasks", "piqa", "--limit", "0"]);
    assert_eq!(o.status.code(), Some(64), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--limit 0"));
    assert!(!out.exists());
    let o = run(&["--tasks", "piqa", "--split", "nope=test"]);
    assert_eq!(o.status.code(), Some(64), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--tasks", "arc:easy,piqa", "--limit", "2"]);
    assert_eq!(o.status.code(), Some(66), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--tasks", "arc:easy,piqa", "--limit", "2", "--split", "arc=validation"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_json(&out.join("results.json"));
    assert_eq!(r["options"]["split"], "arc=validation");
    // lighteval's schema beside ours, and user-facing names.
    let hs = &r["results"]["custom|arc:easy|0"];
    assert_eq!(hs["acc_norm"], r["tasks"]["arc:easy"]["metrics"]["acc_norm"]["value"]);
    assert_eq!(hs["acc_stderr"], r["tasks"]["arc:easy"]["metrics"]["acc"]["stderr"]);
    assert!(r["results"]["all"]["acc"].is_number());
    assert_eq!(r["backend"]["device"], "cpu");
    assert_eq!(r["backend"]["dtype"], "float32");
}
