//! Link libtorch as every torch-using crate does (openseek-torch-link), and tell the NCCL loader
//! where this torch lives.

fn main() {
    if let Some(lib) = openseek_torch_link::link_libtorch() {
        println!("cargo:rustc-env=OPENSEEK_TORCH_LIB={lib}");
    }
}
