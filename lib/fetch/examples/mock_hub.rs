//! The mock Hub as a standalone server for bench/fetch: serves one model repo `bench/files`
//! with N LFS files of S bytes (through the CDN listener). Prints `endpoint URL` and runs until
//! stdin closes.
//!
//! usage: mock_hub FILES BYTES

use openseek_fetch::mock_hub::{pseudo_random, Faults, MockFile, MockHub, MockRepo};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64 << 20);
    let files = (0..n).map(|i| MockFile::new(&format!("shard_{i:03}.bin"), pseudo_random(size, i as u64 + 1), true)).collect();
    let repo = MockRepo {
        kind: "model".into(),
        id: "bench/files".into(),
        commit: "1111111111111111111111111111111111111111".into(),
        branch: "main".into(),
        files,
    };
    let hub = MockHub::start(vec![repo], Faults::default());
    println!("endpoint {}", hub.endpoint());
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
}
