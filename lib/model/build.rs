//! Link libtorch so that this crate's tests run here and on the GPU machines (openseek-torch-link).

fn main() {
    openseek_torch_link::link_libtorch();
}
