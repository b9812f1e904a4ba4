//! Link libtorch so that os-eval runs here and, unchanged, on the GPU machines (openseek-torch-link).

fn main() {
    openseek_torch_link::link_libtorch();
}
