//! os-demo-data: the demo's inputs, made locally: a synthetic English + Chinese corpus with
//! learnable structure (three files in three formats), a small byte-level BPE tokenizer trained
//! on it with the `tokenizers` crate, and small benchmark files asking about the corpus' facts.

use std::path::PathBuf;

use clap::Parser;
use openseek_common::exit::run_main;
use openseek_common::output;
use openseek_corpus::{demo_tasks, synthetic};

#[derive(Parser)]
#[command(name = "os-demo-data", version, about = "Generate the demo corpus, train its tokenizer, write its benchmark files")]
struct Args {
    /// Output directory: writes DIR/corpus/*, DIR/tokenizer/{tokenizer.json,tokenizer_config.json} and
    /// DIR/eval-data/ (benchmark files in os-eval's data layout).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Replace the files of an earlier run in the output directory.
    #[arg(long)]
    force: bool,
    /// Number of documents.
    #[arg(long, default_value_t = synthetic::DEMO_DOCUMENTS)]
    documents: usize,
    /// Tokenizer vocabulary size, special tokens included.
    #[arg(long, default_value_t = 2048)]
    vocab_size: usize,
    #[arg(long, default_value_t = synthetic::DEMO_SEED)]
    seed: u64,
}

fn main() {
    let args = openseek_common::exit::parse_args::<Args>();
    run_main("os-demo-data", || {
        let tokenizer_dir = args.output.join("tokenizer");
        let mut outputs = synthetic::demo_corpus_paths(&args.output.join("corpus")).to_vec();
        outputs.extend(["tokenizer.json", "tokenizer_config.json"].map(|f| tokenizer_dir.join(f)));
        outputs.push(args.output.join("eval-data"));
        output::refuse_existing(&outputs, args.force)?;
        let files = synthetic::write_demo_corpus(&args.output.join("corpus"), args.documents, args.seed)?;
        output::create_dir(&tokenizer_dir)?;
        let training_text = tokenizer_dir.join(".training-text.txt");
        synthetic::write_plain_text(&training_text, args.documents, args.seed)?;
        let trained = openseek_tokenizer::train_bpe(
            std::slice::from_ref(&training_text),
            args.vocab_size,
            &["<|endoftext|>", "<|bos|>", "<|eos|>"],
            &tokenizer_dir.join("tokenizer.json"),
        );
        let _ = std::fs::remove_file(&training_text);
        trained?;
        let vocab_size = openseek_tokenizer::Tokenizer::load(&tokenizer_dir)?.vocab_size();
        let eval_files = demo_tasks::write_demo_tasks(&args.output.join("eval-data"), args.seed)?;
        eprintln!(
            "os-demo-data: {} documents in {} files under {}, tokenizer ({vocab_size} tokens{}) in {}",
            args.documents,
            files.len(),
            args.output.join("corpus").display(),
            if vocab_size < args.vocab_size {
                format!("; --vocab-size {} asked for more merges than the corpus holds", args.vocab_size)
            } else {
                String::new()
            },
            tokenizer_dir.display()
        );
        eprintln!(
            "os-demo-data: {} benchmark files under {}; evaluate with --tasks {}",
            eval_files.len(),
            args.output.join("eval-data").display(),
            demo_tasks::DEMO_TASKS
        );
        Ok(())
    });
}
