//! Build the requests of some tasks and report counts and time (a throughput check for the
//! model-independent half of os-eval).
//!
//! usage: cargo run --release -p openseek-eval --example build_requests -- TOKENIZER DATA_DIR TASKS [SPLIT]

use std::time::Instant;

use openseek_eval::{build_requests, Item, Options, Task};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: build_requests TOKENIZER DATA_DIR TASKS [SPLIT]");
        std::process::exit(64);
    }
    let tok = openseek_tokenizer::Tokenizer::load(args[0].as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let opts = Options { split: args.get(3).cloned(), ..Options::default() };
    for task in Task::parse_list(&args[2]).unwrap_or_else(|e| panic!("{e}")) {
        let t = Instant::now();
        let items = build_requests(&task, args[1].as_ref(), &tok, &opts).unwrap_or_else(|e| panic!("{e}"));
        let secs = t.elapsed().as_secs_f64();
        let (mut reqs, mut tokens) = (0usize, 0usize);
        for it in &items {
            match it {
                Item::Choice(c) => {
                    reqs += c.requests.len();
                    tokens += c.requests.iter().map(|r| r.context_ids.len() + r.continuation_ids.len()).sum::<usize>();
                }
                Item::Generate(g) => {
                    reqs += 1;
                    tokens += g.context_ids.len();
                }
            }
        }
        println!("{}: {} items, {reqs} requests, {tokens} tokens, {secs:.3} s ({:.0} items/s)", task.name, items.len(), items.len() as f64 / secs);
    }
}
