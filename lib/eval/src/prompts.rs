//! The prompt functions that turn a benchmark row into a [`Doc`] (query, choices and gold):
//! lighteval v0.3.0's (`tasks_prompt_formatting.py` + OpenSeek's `lighteval_tasks_v3.py`) and,
//! where EleutherAI's lm-evaluation-harness builds a task differently, its version. The task
//! table (crate::tasks) names each task's functions.

use openseek_common::Failure;

use crate::data::RowRef;
use crate::text::{hellaswag_preprocess, py_capitalize, py_lower, py_strip, remove_punctuation};

/// One evaluated document: what the prompt function made of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub query: String,
    /// Multiple choice: the scored continuations. Generative: empty.
    pub choices: Vec<String>,
    /// Multiple choice: the gold choice indices.
    pub gold: Vec<usize>,
    /// Generative: the gold answers (TriviaQA: normalised aliases; GSM8K: " " + answer).
    pub gold_texts: Vec<String>,
    /// Multiple choice with one context per choice (lm-eval's Winogrande): the contexts, the
    /// same continuation in `choices`. Empty: every choice continues `query`.
    pub contexts: Vec<String>,
}

/// A lighteval prompt function: one row → one [`Doc`]. `topic` is the subject as the prompt
/// writes it (MMLU: the subject's name; CMMLU, C-Eval: its Chinese name), empty for tasks
/// without subjects.
pub type Prompt = fn(row: RowRef, topic: &str) -> Result<Doc, Failure>;

/// An lm-evaluation-harness prompt function: the row and lighteval's [`Doc`] of it (checked,
/// with its gold) → lm-eval's [`Doc`].
pub type LmEvalPrompt = fn(row: RowRef, lighteval: Doc) -> Result<Doc, Failure>;

/// A multiple-choice document; the gold index must name one of the choices.
fn multiple_choice(row: RowRef, query: String, choices: Vec<String>, gold: usize) -> Result<Doc, Failure> {
    if gold >= choices.len() {
        return Err(Failure::data(format!("{}: row {}: gold index {gold} but only {} choices", row.source, row.index, choices.len())));
    }
    Ok(Doc { query, choices, gold: vec![gold], gold_texts: vec![], contexts: vec![] })
}

/// Choices as continuations: each after a space.
fn spaced(choices: Vec<String>) -> Vec<String> {
    choices.into_iter().map(|c| format!(" {c}")).collect()
}

pub fn hellaswag(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let ctx = format!("{} {} ", row.str("ctx_a")?, py_capitalize(row.str("ctx_b")?));
    let query = hellaswag_preprocess(&format!("{}: {ctx}", row.str("activity_label")?));
    let choices = row.str_list("endings")?.iter().map(|e| format!(" {}", hellaswag_preprocess(e))).collect();
    multiple_choice(row, query, choices, index_label(row, "label", 0)?)
}

pub fn winogrande(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let sentence = row.str("sentence")?;
    let parts: Vec<&str> = sentence.split('_').collect();
    if parts.len() != 2 {
        return Err(Failure::data(format!("{}: row {}: the winogrande sentence must hold exactly one `_`: {sentence:?}", row.source, row.index)));
    }
    let end = py_strip(parts[1]);
    let choices = vec![format!("{} {end}", row.label("option1")?), format!("{} {end}", row.label("option2")?)];
    multiple_choice(row, parts[0].to_string(), choices, index_label(row, "answer", 1)?)
}

pub fn piqa(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let query = format!("Question: {}\nAnswer:", row.str("goal")?);
    multiple_choice(row, query, vec![format!(" {}", row.str("sol1")?), format!(" {}", row.str("sol2")?)], index_label(row, "label", 0)?)
}

pub fn siqa(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let query = format!("{} {}", row.str("context")?, row.str("question")?);
    let choices = spaced(vec![row.str("answerA")?.into(), row.str("answerB")?.into(), row.str("answerC")?.into()]);
    multiple_choice(row, query, choices, index_label(row, "label", 1)?)
}

pub fn openbookqa(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let ch = row.object("choices")?;
    let key = row.str("answerKey")?;
    multiple_choice(row, row.str("question_stem")?.to_string(), spaced(ch.str_list("text")?), letter_index(row, py_strip(key), 5)?)
}

pub fn arc(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let ch = row.object("choices")?;
    let labels = ch.str_list("label")?;
    let key = row.str("answerKey")?;
    let gold = labels
        .iter()
        .position(|l| l == key)
        .ok_or_else(|| Failure::data(format!("{}: row {}: answerKey {key:?} is not among the labels {labels:?}", row.source, row.index)))?;
    multiple_choice(row, format!("Question: {}\nAnswer:", row.str("question")?), spaced(ch.str_list("text")?), gold)
}

pub fn commonsense_qa(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let ch = row.object("choices")?;
    let key = row.str("answerKey")?;
    multiple_choice(row, row.str("question")?.to_string(), spaced(ch.str_list("text")?), letter_index(row, py_strip(key), 26)?)
}

/// MMLU's cloze form; the topic is the row's `subject` column when it has one.
pub fn mmlu(row: RowRef, topic: &str) -> Result<Doc, Failure> {
    let topic = if row.has("subject") { row.str("subject")? } else { topic };
    let query = format!("The following are questions about {}.\nQuestion: {}\nAnswer:", topic.replace('_', " "), row.str("question")?);
    let (choices, gold) = choices_and_answer(row)?;
    multiple_choice(row, query, spaced(choices), gold)
}

pub fn cmmlu(row: RowRef, topic: &str) -> Result<Doc, Failure> {
    let (q, choices, gold) = chinese_row(row)?;
    let query = format!("以下是关于{}的单项选择题，请直接给出正确答案的选项。\n题目：{q}\n答案是：", topic.replace('_', " "));
    multiple_choice(row, query, spaced(choices), gold)
}

pub fn ceval(row: RowRef, topic: &str) -> Result<Doc, Failure> {
    let (q, choices, gold) = chinese_row(row)?;
    let query = format!("以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n题目：{q}\n答案：", topic.replace('_', " "));
    multiple_choice(row, query, spaced(choices), gold)
}

/// BoolQ: google/boolq's `answer` bool, or super_glue's `label`.
pub fn boolq(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let query = format!("{}\nQuestion: {}?\nAnswer:", row.str("passage")?, py_capitalize(row.str("question")?));
    let gold = if row.has("label") { index_label(row, "label", 0)? } else { row.bool("answer")? as usize };
    multiple_choice(row, query, vec![" No".into(), " Yes".into()], gold)
}

pub fn triviaqa(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    let aliases = row.object("answer")?.str_list("aliases")?;
    if aliases.is_empty() {
        return Err(Failure::data(format!("{}: row {}: answer.aliases is empty", row.source, row.index)));
    }
    Ok(Doc { query: format!("Question: {}\nAnswer:", row.str("question")?), choices: vec![], gold: vec![], gold_texts: triviaqa_golds(aliases), contexts: vec![] })
}

pub fn gsm8k(row: RowRef, _topic: &str) -> Result<Doc, Failure> {
    Ok(Doc {
        query: format!("Question: {}\nAnswer:", row.str("question")?),
        choices: vec![],
        gold: vec![],
        gold_texts: vec![format!(" {}", row.str("answer")?)],
        contexts: vec![],
    })
}

/// lm-eval's document: its own query, choices and contexts, lighteval's gold.
fn lm_eval_choice(lighteval: Doc, query: String, choices: Vec<String>, contexts: Vec<String>) -> Doc {
    Doc { query, choices, gold: lighteval.gold, gold_texts: vec![], contexts }
}

/// lm-eval's HellaSwag: without the trailing space of the query (so no doubled space before each
/// ending); its preprocess strips first, then rewrites.
pub fn hellaswag_lm_eval(row: RowRef, lighteval: Doc) -> Result<Doc, Failure> {
    let ctx = format!("{} {}", row.str("ctx_a")?, py_capitalize(row.str("ctx_b")?));
    let query = hellaswag_preprocess(py_strip(&format!("{}: {ctx}", row.str("activity_label")?)));
    let choices = row.str_list("endings")?.iter().map(|e| format!(" {}", hellaswag_preprocess(py_strip(e)))).collect();
    Ok(lm_eval_choice(lighteval, query, choices, vec![]))
}

/// lm-eval's Winogrande, by partial evaluation: one context per option (the sentence up to the
/// blank with the option filled in) and the rest of the sentence as the common continuation.
pub fn winogrande_lm_eval(row: RowRef, lighteval: Doc) -> Result<Doc, Failure> {
    let sentence = row.str("sentence")?;
    let blank = sentence.find('_').expect("doc() checked the blank");
    let target = format!(" {}", py_strip(&sentence[blank + 1..]));
    let contexts = vec![format!("{}{}", &sentence[..blank], row.label("option1")?), format!("{}{}", &sentence[..blank], row.label("option2")?)];
    Ok(lm_eval_choice(lighteval, sentence[..blank].to_string(), vec![target.clone(), target], contexts))
}

/// lm-eval's SIQA: "Q: {context} {question}\nA:".
pub fn siqa_lm_eval(row: RowRef, lighteval: Doc) -> Result<Doc, Failure> {
    let query = format!("Q: {} {}\nA:", row.str("context")?, row.str("question")?);
    let choices = lighteval.choices.clone();
    Ok(lm_eval_choice(lighteval, query, choices, vec![]))
}

/// lm-eval's BoolQ: the question as written, " no" / " yes".
pub fn boolq_lm_eval(row: RowRef, lighteval: Doc) -> Result<Doc, Failure> {
    let query = format!("{}\nQuestion: {}?\nAnswer:", row.str("passage")?, row.str("question")?);
    Ok(lm_eval_choice(lighteval, query, vec![" no".into(), " yes".into()], vec![]))
}

/// TriviaQA golds as lighteval builds them: aliases sorted (code point order), an alias dropped
/// when it starts with the last kept one, then lower-cased with ASCII punctuation removed.
pub fn triviaqa_golds(mut aliases: Vec<String>) -> Vec<String> {
    aliases.sort();
    let mut kept: Vec<String> = Vec::new();
    for a in aliases {
        if kept.last().is_none_or(|last| !a.starts_with(last.as_str())) {
            kept.push(a);
        }
    }
    kept.iter().map(|a| remove_punctuation(&py_lower(a))).collect()
}

/// A 0- or 1-based integer label column as a 0-based index.
fn index_label(row: RowRef, key: &str, base: i64) -> Result<usize, Failure> {
    let v = row.int(key)?;
    if v < base {
        return Err(Failure::data(format!("{}: row {}: {key} = {v} is not a valid label (test rows without labels cannot be scored)", row.source, row.index)));
    }
    Ok((v - base) as usize)
}

fn letter_index(row: RowRef, key: &str, n: usize) -> Result<usize, Failure> {
    let mut cs = key.chars();
    match (cs.next(), cs.next()) {
        (Some(c @ 'A'..='Z'), None) if ((c as u8 - b'A') as usize) < n => Ok((c as u8 - b'A') as usize),
        _ => Err(Failure::data(format!("{}: row {}: answerKey {key:?} is not a letter A..", row.source, row.index))),
    }
}

/// HF schema (`choices` list + `answer` index or letter) for MMLU-style rows.
fn choices_and_answer(row: RowRef) -> Result<(Vec<String>, usize), Failure> {
    let choices = row.str_list("choices")?;
    let answer = row.label("answer")?;
    let gold = match answer.parse::<usize>() {
        Ok(i) => i,
        Err(_) => letter_index(row, py_strip(&answer), choices.len())?,
    };
    Ok((choices, gold))
}

/// CMMLU / C-Eval rows: the original CSV (`Question|question`, `A`..`D`, `Answer|answer` letter)
/// or the HF lighteval schema (`question`, `choices`, `answer`).
fn chinese_row(row: RowRef) -> Result<(String, Vec<String>, usize), Failure> {
    if row.has("choices") {
        let (choices, gold) = choices_and_answer(row)?;
        return Ok((row.str("question")?.to_string(), choices, gold));
    }
    let q = if row.has("Question") { row.str("Question")? } else { row.str("question")? };
    let choices: Vec<String> = ["A", "B", "C", "D"].iter().map(|k| row.label(k)).collect::<Result<_, _>>()?;
    let ans = if row.has("Answer") { row.str("Answer")? } else { row.str("answer")? };
    Ok((q.to_string(), choices, letter_index(row, py_strip(ans), 4)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triviaqa_prefix_removal_uses_last_kept() {
        let g = triviaqa_golds(vec!["Sunset Blvd".into(), "West Sunset Boulevard".into(), "Sunset Boulevard".into(), "Sunset Bulevard".into(), "Sunset Blvd.".into()]);
        assert_eq!(g, vec!["sunset blvd", "sunset boulevard", "sunset bulevard", "west sunset boulevard"]);
        // "ab" is kept after "a"? No: it starts with "a". "b" is kept.
        assert_eq!(triviaqa_golds(vec!["ab".into(), "a".into(), "b".into()]), vec!["a", "b"]);
    }
}
