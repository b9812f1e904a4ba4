//! os-plot: the loss curve of an os-train log as a PNG.

use openseek_tests::run_tool;

#[test]
fn charts_the_loss_of_a_training_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let mut lines: Vec<String> = (1..=40).map(|s| format!("{{\"step\": {s}, \"loss\": {}, \"lr\": 0.001}}", 8.0 / (1.0 + s as f64 * 0.2))).collect();
    lines[9] = "{\"step\": 10, \"loss\": null, \"skipped\": true}".into();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let png = dir.path().join("plots/loss.png");
    let args = [log.to_str().unwrap(), "-o", png.to_str().unwrap()];
    let out = run_tool("os-plot", &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("39 points of loss"), "the skipped step is left out");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (640, 400));
    // Not replaced without --force; a field no line has is an error.
    assert_eq!(run_tool("os-plot", &args).status.code(), Some(73));
    assert!(run_tool("os-plot", &[args[0], args[1], args[2], "--force"]).status.success());
    let none = run_tool("os-plot", &[log.to_str().unwrap(), "--field", "tflops", "-o", dir.path().join("x.png").to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(65));
}
