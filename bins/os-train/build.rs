//! Link libtorch so that os-train runs here and, unchanged, on the GPU machines
//! (openseek-torch-link), and record the git commit it was built from.

fn main() {
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OS_TRAIN_GIT_COMMIT={commit}");
    openseek_torch_link::link_libtorch();
}
