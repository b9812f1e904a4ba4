//! A small synthetic bilingual (English + Chinese) corpus with learnable structure, for the demo
//! and tests: fixed facts (each animal eats one food and lives in one place) stated in English and
//! Chinese sentences, sums of small numbers, and question-answer documents of the kinds the demo's
//! benchmarks ask ("Question: … Answer: …", "题目：… 答案是： …", word problems with worked answers
//! ending in "#### N"). The corpus asks every fact, but never in a benchmark item's words: each
//! question has two wordings, and the benchmarks' wording (form 0) is used only for the animals
//! [`benchmark_wording_in_corpus`]; the benchmarks ask the other animals in it. The word problems
//! leave out a set of number pairs ([`held_out_sum`]), which the benchmark's problems are about.
//! Deterministic for a seed.

use openseek_common::rng::SplitMix;

/// (English, Chinese) animal names with the food each eats and the place each lives.
pub const ANIMALS: [(&str, &str, usize, usize); 8] = [
    ("cat", "猫", 0, 0),
    ("dog", "狗", 1, 0),
    ("rabbit", "兔子", 2, 1),
    ("panda", "熊猫", 3, 2),
    ("monkey", "猴子", 4, 3),
    ("horse", "马", 5, 1),
    ("bird", "鸟", 6, 3),
    ("fish", "鱼", 7, 4),
];
pub const FOODS: [(&str, &str); 8] = [
    ("fish", "鱼"),
    ("bones", "骨头"),
    ("carrots", "胡萝卜"),
    ("bamboo", "竹子"),
    ("bananas", "香蕉"),
    ("hay", "干草"),
    ("seeds", "种子"),
    ("plankton", "浮游生物"),
];
pub const PLACES: [(&str, &str); 5] = [("house", "房子"), ("farm", "农场"), ("forest", "森林"), ("tree", "树"), ("river", "河")];
pub const COLORS: [(&str, &str); 6] = [("red", "红色"), ("black", "黑色"), ("white", "白色"), ("brown", "棕色"), ("grey", "灰色"), ("small", "小")];
pub const NAMES: [&str; 6] = ["Alice", "Bob", "Li Wei", "Zhang San", "Maria", "Ken"];
/// Things the word problems count.
pub const OBJECTS: [&str; 5] = ["apples", "books", "pens", "eggs", "stones"];
const DIGITS_ZH: [&str; 10] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"];
/// How many documents os-demo-data writes by default, and from which seed.
pub const DEMO_DOCUMENTS: usize = 20_000;
pub const DEMO_SEED: u64 = 1234;
/// The corpus' sums add two numbers from 1 to `MAX_ADDEND`.
pub const MAX_ADDEND: usize = 9;

/// The two facts the corpus states about each animal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// What it eats.
    Food,
    /// Where it lives.
    Place,
}

impl Relation {
    /// The answers the relation can have, (English, Chinese): the foods or the places.
    pub fn answers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Relation::Food => &FOODS,
            Relation::Place => &PLACES,
        }
    }

    /// Animal `k`'s answer, as an index into [`Relation::answers`].
    pub fn answer_index(self, k: usize) -> usize {
        match self {
            Relation::Food => ANIMALS[k].2,
            Relation::Place => ANIMALS[k].3,
        }
    }
}

/// How many wordings each question has; form 0 is the benchmarks' ("What does a cat eat?",
/// "猫喜欢吃什么？").
pub const QUESTION_FORMS: usize = 2;

/// Whether the corpus asks about animal `k` (index into [`ANIMALS`]) in the benchmarks' wording
/// (form 0) too: the animals of even index. The others are asked only in form 1, and the
/// benchmarks ask them in form 0.
pub fn benchmark_wording_in_corpus(k: usize) -> bool {
    k.is_multiple_of(2)
}

/// The answer to relation `r` of animal `k`: (English, Chinese).
pub fn answer(k: usize, r: Relation) -> (&'static str, &'static str) {
    r.answers()[r.answer_index(k)]
}

/// The English question about relation `r` of `animal` ("a" or "the" as `article`) in wording `form`.
pub fn question_en(animal: &str, r: Relation, article: &str, form: usize) -> String {
    match (r, form) {
        (Relation::Food, 0) => format!("What does {article} {animal} eat?"),
        (Relation::Food, _) => format!("What food does {article} {animal} like?"),
        (Relation::Place, 0) => format!("Where does {article} {animal} live?"),
        (Relation::Place, _) => format!("Where can you find {article} {animal}?"),
    }
}

/// The Chinese question about relation `r` of `animal` in wording `form`.
pub fn question_zh(animal: &str, r: Relation, form: usize) -> String {
    match (r, form) {
        (Relation::Food, 0) => format!("{animal}喜欢吃什么？"),
        (Relation::Food, _) => format!("{animal}爱吃什么食物？"),
        (Relation::Place, 0) => format!("{animal}住在哪里？"),
        (Relation::Place, _) => format!("在哪里能找到{animal}？"),
    }
}

/// Whether the word problems leave the sum `a + b` out (about one pair in seven); the corpus
/// still states it as a plain sum ("a plus b is c.").
pub fn held_out_sum(a: usize, b: usize) -> bool {
    (a + 2 * b) % 7 == 3
}

/// A word problem about `a + b` and its worked answer in GSM8K's form (`#### N` last).
pub fn word_problem(rng: &mut SplitMix, a: usize, b: usize) -> (String, String) {
    let name = rng.pick(&NAMES);
    let object = rng.pick(&OBJECTS);
    let question = match rng.below(3) {
        0 => format!("{name} has {a} {object}. {name} gets {b} more {object}. How many {object} does {name} have now?"),
        1 => format!("There are {a} {object} in a box and {b} {object} in a bag. How many {object} are there in all?"),
        _ => format!("{name} buys {a} {object} and then {b} {object}. How many {object} did {name} buy?"),
    };
    (question, format!("{a} plus {b} is {}.\n#### {}", a + b, a + b))
}

/// Two addends from 1 to [`MAX_ADDEND`].
fn addends(rng: &mut SplitMix) -> (usize, usize) {
    (1 + rng.below(MAX_ADDEND), 1 + rng.below(MAX_ADDEND))
}

fn number_zh(n: usize) -> String {
    match n {
        0..=9 => DIGITS_ZH[n].to_string(),
        10..=19 => format!("十{}", if n == 10 { String::new() } else { DIGITS_ZH[n - 10].to_string() }),
        _ => format!("{}十{}", DIGITS_ZH[n / 10], if n.is_multiple_of(10) { String::new() } else { DIGITS_ZH[n % 10].to_string() }),
    }
}

fn english_sentence(rng: &mut SplitMix) -> String {
    let (animal, _, food, place) = rng.pick(&ANIMALS);
    let (color, _) = rng.pick(&COLORS);
    match rng.below(5) {
        0 => format!("The {color} {animal} eats {}.", FOODS[food].0),
        1 => format!("A {animal} lives in the {}.", PLACES[place].0),
        2 => {
            let (a, b) = addends(rng);
            format!("{a} plus {b} is {}.", a + b)
        }
        3 => format!("{} saw a {color} {animal} near the {} eating {}.", rng.pick(&NAMES), PLACES[place].0, FOODS[food].0),
        _ => format!("Every {animal} likes {}, and it sleeps in the {}.", FOODS[food].0, PLACES[place].0),
    }
}

fn chinese_sentence(rng: &mut SplitMix) -> String {
    let (_, animal, food, place) = rng.pick(&ANIMALS);
    let (_, color) = rng.pick(&COLORS);
    match rng.below(4) {
        0 => format!("{color}的{animal}喜欢吃{}。", FOODS[food].1),
        1 => format!("{animal}住在{}里。", PLACES[place].1),
        2 => {
            let (a, b) = addends(rng);
            format!("{}加{}等于{}。", number_zh(a), number_zh(b), number_zh(a + b))
        }
        _ => format!("{}看见一只{animal}在{}旁边吃{}。", rng.pick(&NAMES), PLACES[place].1, FOODS[food].1),
    }
}

/// A question the corpus asks: an animal, a relation and a wording (form 0 only for the animals
/// [`benchmark_wording_in_corpus`]).
fn asked_question(rng: &mut SplitMix) -> (usize, Relation, usize) {
    let k = rng.below(ANIMALS.len());
    let r = if rng.below(2) == 0 { Relation::Food } else { Relation::Place };
    let form = if benchmark_wording_in_corpus(k) { rng.below(QUESTION_FORMS) } else { 1 + rng.below(QUESTION_FORMS - 1) };
    (k, r, form)
}

/// Questions and answers about the animals, in English.
fn english_questions(rng: &mut SplitMix, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let (k, r, form) = asked_question(rng);
            let article = if rng.below(2) == 0 { "a" } else { "the" };
            format!("Question: {}\nAnswer: {}", question_en(ANIMALS[k].0, r, article, form), answer(k, r).0)
        })
        .collect()
}

/// The same in Chinese, under a heading, in an exam's form (题目 … 答案是 …).
fn chinese_questions(rng: &mut SplitMix, count: usize) -> Vec<String> {
    let mut lines = vec!["以下是关于动物的问题。".to_string()];
    lines.extend((0..count).map(|_| {
        let (k, r, form) = asked_question(rng);
        format!("题目：{}\n答案是： {}", question_zh(ANIMALS[k].1, r, form), answer(k, r).1)
    }));
    lines
}

/// Word problems with worked answers, none about a [`held_out_sum`].
fn word_problems(rng: &mut SplitMix, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let (a, b) = loop {
                let (a, b) = addends(rng);
                if !held_out_sum(a, b) {
                    break (a, b);
                }
            };
            let (question, worked) = word_problem(rng, a, b);
            format!("Question: {question}\nAnswer: {worked}")
        })
        .collect()
}

/// Bilingual pairs of the same fact.
fn bilingual_pairs(rng: &mut SplitMix, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let (en, zh, food, place) = rng.pick(&ANIMALS);
            if rng.below(2) == 0 {
                format!("English: The {en} eats {}.\n中文：{zh}吃{}。", FOODS[food].0, FOODS[food].1)
            } else {
                format!("English: A {en} lives in the {}.\n中文：{zh}住在{}里。", PLACES[place].0, PLACES[place].1)
            }
        })
        .collect()
}

/// One document: a paragraph in English or in Chinese, bilingual pairs of the same fact,
/// questions and answers about the animals in English or in Chinese, or (twice as often) word
/// problems.
pub fn document(rng: &mut SplitMix) -> String {
    let count = 2 + rng.below(6);
    match rng.below(7) {
        0 => (0..count * 2).map(|_| english_sentence(rng)).collect::<Vec<_>>().join(" "),
        1 => (0..count * 2).map(|_| chinese_sentence(rng)).collect(),
        2 => bilingual_pairs(rng, count).join("\n"),
        3 => english_questions(rng, count).join("\n\n"),
        4 => chinese_questions(rng, count).join("\n"),
        _ => word_problems(rng, count).join("\n\n"),
    }
}

/// The files `write_demo_corpus` writes under `dir`.
pub fn demo_corpus_paths(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    [dir.join("part-0.jsonl"), dir.join("part-1.jsonl.zst"), dir.join("part-2.json")]
}

/// Write the demo corpus under `dir`: `documents` documents dealt over three files in three
/// input formats (`part-0.jsonl`, `part-1.jsonl.zst`, `part-2.json` as an array), each record
/// `{"id": …, "text": …}`. Returns the paths written.
pub fn write_demo_corpus(dir: &std::path::Path, documents: usize, seed: u64) -> Result<Vec<std::path::PathBuf>, openseek_common::Failure> {
    use openseek_common::{AtomicOutputs, Failure};
    use std::io::Write;

    openseek_common::output::create_dir(dir)?;
    let mut rng = SplitMix::new(seed);
    let mut parts: [Vec<String>; 3] = Default::default();
    for id in 0..documents {
        let record = serde_json::json!({"id": id, "text": document(&mut rng)});
        parts[id % 3].push(record.to_string());
    }
    let paths = demo_corpus_paths(dir);
    let mut outputs = AtomicOutputs::new();
    let write_err = |p: &std::path::Path, e: std::io::Error| Failure::io_at(p, "cannot write", &e);
    let mut f = outputs.create(&paths[0])?;
    f.write_all((parts[0].join("\n") + "\n").as_bytes()).map_err(|e| write_err(&paths[0], e))?;
    let f = outputs.create(&paths[1])?;
    let mut z = zstd::Encoder::new(f, 3).map_err(|e| write_err(&paths[1], e))?;
    z.write_all((parts[1].join("\n") + "\n").as_bytes()).map_err(|e| write_err(&paths[1], e))?;
    z.finish().map_err(|e| write_err(&paths[1], e))?;
    let mut f = outputs.create(&paths[2])?;
    f.write_all(format!("[\n{}\n]\n", parts[2].join(",\n")).as_bytes()).map_err(|e| write_err(&paths[2], e))?;
    outputs.commit()?;
    Ok(paths.to_vec())
}

/// The same documents as [`write_demo_corpus`], as plain text (one after another), for training
/// a tokenizer on the text rather than on JSON syntax.
pub fn write_plain_text(path: &std::path::Path, documents: usize, seed: u64) -> Result<(), openseek_common::Failure> {
    let mut rng = SplitMix::new(seed);
    let text: String = (0..documents).map(|_| document(&mut rng) + "\n").collect();
    std::fs::write(path, text).map_err(|e| openseek_common::Failure::io_at(path, "cannot write", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bilingual() {
        let a: Vec<String> = (0..200).scan(SplitMix::new(7), |r, _| Some(document(r))).collect();
        let b: Vec<String> = (0..200).scan(SplitMix::new(7), |r, _| Some(document(r))).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|d| d.contains("eats")));
        assert!(a.iter().any(|d| d.contains("喜欢吃")));
        assert!(a.iter().any(|d| d.contains("\nAnswer: ") && d.contains("\n#### ")));
        assert!(a.iter().any(|d| d.contains("\n答案是： ")));
        assert_eq!(number_zh(47), "四十七");
        assert_eq!(number_zh(10), "十");
        assert_eq!(number_zh(13), "十三");
    }

    #[test]
    fn the_corpus_asks_every_fact_but_not_in_the_benchmarks_wording_and_leaves_some_sums_out() {
        let text: String = (0..2000).scan(SplitMix::new(3), |r, _| Some(document(r))).collect();
        for (k, (en, zh, _, _)) in ANIMALS.iter().enumerate() {
            for r in [Relation::Food, Relation::Place] {
                for form in 0..QUESTION_FORMS {
                    let asked = [question_en(en, r, "a", form), question_en(en, r, "the", form), question_zh(zh, r, form)].map(|q| text.contains(&q));
                    assert_eq!(asked, [form > 0 || benchmark_wording_in_corpus(k); 3], "{en} {r:?} form {form}");
                }
            }
        }
        let held_out: Vec<(usize, usize)> = (1..=MAX_ADDEND).flat_map(|a| (1..=MAX_ADDEND).map(move |b| (a, b))).filter(|&(a, b)| held_out_sum(a, b)).collect();
        assert!(held_out.len() >= 10, "{held_out:?}");
        for (a, b) in held_out {
            assert!(text.contains(&format!("{a} plus {b} is {}.", a + b)), "{a} + {b} is stated");
            assert!(!text.contains(&format!("Answer: {a} plus {b} is")), "{a} + {b} is in no word problem");
        }
    }
}
