//! AFL++ entry point of the `layer` target (see `berth_fuzz::layer`).

fn main() {
    afl::fuzz!(|data: &[u8]| berth_fuzz::layer(data));
}
