//! Link libtorch so that os-dist-check runs here and, unchanged, on the GPU machines (openseek-torch-link).

fn main() {
    openseek_torch_link::link_libtorch();
}
