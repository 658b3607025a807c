//! AFL++ entry point of the `registry` target (see `berth_fuzz::registry`).

fn main() {
    afl::fuzz!(|data: &[u8]| berth_fuzz::registry(data));
}
