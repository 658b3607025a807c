//! AFL++ entry point of the `manifest` target (see `berth_fuzz::manifest`).

fn main() {
    afl::fuzz!(|data: &[u8]| berth_fuzz::manifest(data));
}
