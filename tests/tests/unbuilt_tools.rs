//! A tool that is not built yet must say so and exit 69 (EX_UNAVAILABLE), never fake output.

use openseek_tests::run_tool;

#[test]
fn unbuilt_tools_exit_69_with_a_message() {
    for tool in ["os-megatron2hf"] {
        let out = run_tool(tool, &["--help"]);
        assert_eq!(out.status.code(), Some(69), "{tool}");
        assert!(out.stdout.is_empty(), "{tool} printed output");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented yet"), "{tool}");
    }
}
