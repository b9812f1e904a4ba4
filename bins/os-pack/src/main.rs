//! os-pack: not built yet. It says so and exits 69 (EX_UNAVAILABLE) rather than produce fake output.

fn main() {
    openseek_common::exit::not_implemented("os-pack");
}
