//! A small synthetic bilingual (English + Chinese) corpus with learnable structure, for the demo
//! and tests: fixed facts (each animal eats one food, lives in one place), arithmetic with
//! correct answers, and the same facts stated in both languages. A model that learns the facts
//! predicts the corpus better than its token frequencies alone. Deterministic for a seed.

use openseek_common::rng::SplitMix;

/// (English, Chinese) animal names with the food each eats and the place each lives.
pub const ANIMALS: [(&str, &str, usize, usize); 8] = [
    ("cat", "猫", 0, 0),
    ("dog", "狗", 1, 0),
    ("rabbit", "兔子", 2, 1),
    ("panda", "熊猫", 3, 2),
    ("monkey", "猴子", 4, 2),
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
const NAMES: [&str; 6] = ["Alice", "Bob", "Li Wei", "Zhang San", "Maria", "Ken"];
const DIGITS_ZH: [&str; 10] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"];

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
            let (a, b) = (rng.below(50), rng.below(50));
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
            let (a, b) = (rng.below(50), rng.below(50));
            format!("{}加{}等于{}。", number_zh(a), number_zh(b), number_zh(a + b))
        }
        _ => format!("{}看见一只{animal}在{}旁边吃{}。", rng.pick(&NAMES), PLACES[place].1, FOODS[food].1),
    }
}

/// One document: a paragraph in English, in Chinese, or a bilingual pair of the same fact.
pub fn document(rng: &mut SplitMix) -> String {
    let sentences = 2 + rng.below(10);
    let mut text = String::new();
    match rng.below(3) {
        0 => {
            for i in 0..sentences {
                if i > 0 {
                    text.push(' ');
                }
                text.push_str(&english_sentence(rng));
            }
        }
        1 => {
            for _ in 0..sentences {
                text.push_str(&chinese_sentence(rng));
            }
        }
        _ => {
            for _ in 0..sentences {
                let (en, zh, food, _) = rng.pick(&ANIMALS);
                text.push_str(&format!("English: The {en} eats {}.\n中文：{zh}吃{}。\n", FOODS[food].0, FOODS[food].1));
            }
        }
    }
    text
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
        let a: Vec<String> = (0..50).scan(SplitMix::new(7), |r, _| Some(document(r))).collect();
        let b: Vec<String> = (0..50).scan(SplitMix::new(7), |r, _| Some(document(r))).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|d| d.contains("eats")));
        assert!(a.iter().any(|d| d.contains("喜欢吃") || d.contains("吃")));
        assert_eq!(number_zh(47), "四十七");
        assert_eq!(number_zh(10), "十");
        assert_eq!(number_zh(13), "十三");
    }
}
