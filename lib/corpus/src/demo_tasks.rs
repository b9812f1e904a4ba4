//! Small benchmark files made from the demo corpus's facts (`crate::synthetic`: what each animal
//! eats and where it lives, sums), in the benchmarks' own formats and the data layout os-eval
//! reads, so the demo can end with `os-eval run` on the demo model. A model that learnt the
//! corpus scores above chance on them. Written by os-demo-data; read back by os-eval in the tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::rng::SplitMix;
use openseek_common::{AtomicOutputs, Failure};
use crate::synthetic::{ANIMALS, COLORS, FOODS, PLACES};
use serde_json::{json, Value};

/// The tasks the demo data holds, as an `os-eval run --tasks` list.
pub const DEMO_TASKS: &str = "openbookqa,commonsense_qa,arc:easy,cmmlu:agronomy,triviaqa,gsm8k";

fn write_file(path: &Path, text: &str) -> Result<PathBuf, Failure> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Failure::io_at(dir, "cannot create", &e))?;
    }
    let mut out = AtomicOutputs::new();
    out.create(path)?.write_all(text.as_bytes()).map_err(|e| Failure::io_at(path, "cannot write", &e))?;
    out.commit()?;
    Ok(path.to_path_buf())
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// `k` distinct indices below `n` including `must`, shuffled; returns them and where `must` went.
fn options(rng: &mut SplitMix, n: usize, k: usize, must: usize) -> (Vec<usize>, usize) {
    let mut v = vec![must];
    while v.len() < k {
        let x = rng.below(n);
        if !v.contains(&x) {
            v.push(x);
        }
    }
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
    let gold = v.iter().position(|&x| x == must).unwrap();
    (v, gold)
}

const LETTERS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// Write the demo tasks under `dir` (one folder per benchmark); returns the files written.
pub fn write_demo_tasks(dir: &Path, seed: u64) -> Result<Vec<PathBuf>, Failure> {
    let mut rng = SplitMix::new(seed);
    let mut files = Vec::new();

    // OpenBookQA: "The red cat eats" → the animal's food among 4.
    let mut rows = Vec::new();
    for (k, (animal, _, food, _)) in ANIMALS.iter().enumerate() {
        for (color, _) in COLORS.iter().take(3) {
            let (opts, gold) = options(&mut rng, FOODS.len(), 4, *food);
            rows.push(json!({
                "id": format!("demo-{k}-{color}"),
                "question_stem": format!("The {color} {animal} eats"),
                "choices": {"text": opts.iter().map(|&i| FOODS[i].0).collect::<Vec<_>>(), "label": &LETTERS[..4]},
                "answerKey": LETTERS[gold],
            }));
        }
    }
    files.push(write_file(&dir.join("openbookqa/validation.jsonl"), &jsonl(&rows))?);

    // CommonsenseQA: "A cat lives in the" → its place among all 5.
    let rows: Vec<Value> = ANIMALS
        .iter()
        .enumerate()
        .map(|(k, (animal, _, _, place))| {
            let (opts, gold) = options(&mut rng, PLACES.len(), 5, *place);
            json!({
                "id": format!("demo-{k}"),
                "question": format!("A {animal} lives in the"),
                "question_concept": animal,
                "choices": {"label": LETTERS, "text": opts.iter().map(|&i| PLACES[i].0).collect::<Vec<_>>()},
                "answerKey": LETTERS[gold],
            })
        })
        .collect();
    files.push(write_file(&dir.join("commonsense_qa/validation.jsonl"), &jsonl(&rows))?);

    // ARC-Easy: "Question: What does a horse eat?" with numeric labels as some ARC rows have.
    let rows: Vec<Value> = ANIMALS
        .iter()
        .enumerate()
        .map(|(k, (animal, _, food, _))| {
            let (opts, gold) = options(&mut rng, FOODS.len(), 4, *food);
            json!({
                "id": format!("demo-{k}"),
                "question": format!("What does a {animal} eat?"),
                "choices": {"text": opts.iter().map(|&i| FOODS[i].0).collect::<Vec<_>>(), "label": ["1", "2", "3", "4"]},
                "answerKey": (gold + 1).to_string(),
            })
        })
        .collect();
    files.push(write_file(&dir.join("arc/ARC-Easy_test.jsonl"), &jsonl(&rows))?);

    // CMMLU (original CSV): "熊猫喜欢吃什么？" → its food among 4.
    let mut csv = String::from(",Question,A,B,C,D,Answer\n");
    for (k, (_, animal, food, _)) in ANIMALS.iter().enumerate() {
        let (opts, gold) = options(&mut rng, FOODS.len(), 4, *food);
        let o: Vec<&str> = opts.iter().map(|&i| FOODS[i].1).collect();
        csv.push_str(&format!("{k},{animal}喜欢吃什么？,{},{},{},{},{}\n", o[0], o[1], o[2], o[3], LETTERS[gold]));
    }
    files.push(write_file(&dir.join("cmmlu/test/agronomy.csv"), &csv)?);

    // TriviaQA (rc.nocontext schema): "What does the dog eat?" → " bones".
    let rows: Vec<Value> = ANIMALS
        .iter()
        .enumerate()
        .map(|(k, (animal, _, food, _))| {
            json!({
                "question_id": format!("demo-{k}"),
                "question": format!("What does the {animal} eat?"),
                "answer": {"aliases": [FOODS[*food].0, format!("{} {}", "some", FOODS[*food].0)], "value": FOODS[*food].0},
            })
        })
        .collect();
    files.push(write_file(&dir.join("triviaqa/validation.jsonl"), &jsonl(&rows))?);

    // GSM8K (original jsonl): sums as the corpus states them, "#### n" answers; 5 shots from train.
    let sum = |rng: &mut SplitMix| {
        let (a, b) = (rng.below(50), rng.below(50));
        json!({"question": format!("What is {a} plus {b}?"), "answer": format!("{a} plus {b} is {}.\n#### {}", a + b, a + b)})
    };
    let test: Vec<Value> = (0..8).map(|_| sum(&mut rng)).collect();
    let train: Vec<Value> = (0..20).map(|_| sum(&mut rng)).collect();
    files.push(write_file(&dir.join("gsm8k/test.jsonl"), &jsonl(&test))?);
    files.push(write_file(&dir.join("gsm8k/train.jsonl"), &jsonl(&train))?);
    Ok(files)
}
