//! Small benchmark files made from the demo corpus's facts (`crate::synthetic`: what each animal
//! eats and where it lives, sums), in the benchmarks' own formats and the data layout os-eval
//! reads, so the demo can end with `os-eval run` on the demo model. OpenBookQA and CommonsenseQA
//! ask in the corpus' own sentences; ARC, CMMLU and TriviaQA ask facts the corpus asks too, but in
//! a wording it uses only for other animals; GSM8K's problems are about sums that the corpus
//! states but no word problem of it works out. No item's prompt is in the corpus. Written by
//! os-demo-data; read back by os-eval in the tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::rng::SplitMix;
use openseek_common::{AtomicOutputs, Failure};
use crate::synthetic::{answer, benchmark_wording_in_corpus, held_out_sum, question_en, question_zh, word_problem, Relation, ANIMALS, COLORS, FOODS, MAX_ADDEND, PLACES};
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

/// What the question benchmarks (ARC, CMMLU, TriviaQA) ask, in the benchmarks' wording (form 0):
/// both facts of every animal the corpus asks about only in other wordings (animal index, relation).
fn held_out_facts() -> impl Iterator<Item = (usize, Relation)> {
    (0..ANIMALS.len()).filter(|&k| !benchmark_wording_in_corpus(k)).flat_map(|k| [Relation::Food, Relation::Place].map(|r| (k, r)))
}

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

    // ARC-Easy, with numeric labels as some ARC rows have: "Question: Where does a cat live?" →
    // its place among 4, "What does a cat eat?" → its food among 4.
    let rows: Vec<Value> = held_out_facts()
        .map(|(k, r)| {
            let (opts, gold) = options(&mut rng, r.answers().len(), 4, r.answer_index(k));
            json!({
                "id": format!("demo-{k}-{r:?}"),
                "question": question_en(ANIMALS[k].0, r, "a", 0),
                "choices": {"text": opts.iter().map(|&i| r.answers()[i].0).collect::<Vec<_>>(), "label": ["1", "2", "3", "4"]},
                "answerKey": (gold + 1).to_string(),
            })
        })
        .collect();
    files.push(write_file(&dir.join("arc/ARC-Easy_test.jsonl"), &jsonl(&rows))?);

    // CMMLU (original CSV): "猫住在哪里？" → its place among 4, "猫喜欢吃什么？" → its food.
    let mut csv = String::from(",Question,A,B,C,D,Answer\n");
    for (i, (k, r)) in held_out_facts().enumerate() {
        let (opts, gold) = options(&mut rng, r.answers().len(), 4, r.answer_index(k));
        let o: Vec<&str> = opts.iter().map(|&i| r.answers()[i].1).collect();
        csv.push_str(&format!("{i},{},{},{},{},{},{}\n", question_zh(ANIMALS[k].1, r, 0), o[0], o[1], o[2], o[3], LETTERS[gold]));
    }
    files.push(write_file(&dir.join("cmmlu/test/agronomy.csv"), &csv)?);

    // TriviaQA (rc.nocontext schema): "What does the dog eat?" → " bones", generated.
    let rows: Vec<Value> = held_out_facts()
        .map(|(k, r)| {
            let gold = answer(k, r).0;
            json!({
                "question_id": format!("demo-{k}-{r:?}"),
                "question": question_en(ANIMALS[k].0, r, "the", 0),
                "answer": {"aliases": [gold, format!("the {gold}")], "value": gold},
            })
        })
        .collect();
    files.push(write_file(&dir.join("triviaqa/validation.jsonl"), &jsonl(&rows))?);

    // GSM8K (original jsonl): word problems on every sum the corpus' word problems leave out,
    // worked answers ending in "#### n"; the 5 shots come from train, on sums the corpus' word problems use.
    let pairs = || (1..=MAX_ADDEND).flat_map(|a| (1..=MAX_ADDEND).map(move |b| (a, b)));
    let row = |rng: &mut SplitMix, (a, b): (usize, usize)| {
        let (question, worked) = word_problem(rng, a, b);
        json!({"question": question, "answer": worked})
    };
    let test: Vec<Value> = pairs().filter(|&(a, b)| held_out_sum(a, b)).map(|p| row(&mut rng, p)).collect();
    let taught: Vec<(usize, usize)> = pairs().filter(|&(a, b)| !held_out_sum(a, b)).collect();
    let train: Vec<Value> = (0..20)
        .map(|_| {
            let p = rng.pick(&taught);
            row(&mut rng, p)
        })
        .collect();
    files.push(write_file(&dir.join("gsm8k/test.jsonl"), &jsonl(&test))?);
    files.push(write_file(&dir.join("gsm8k/train.jsonl"), &jsonl(&train))?);
    Ok(files)
}
