//! Link libtorch as every torch-using crate does (openseek-torch-link), and tell the NCCL loader
//! where this torch lives.

fn main() {
    openseek_torch_link::link_libtorch();
}
