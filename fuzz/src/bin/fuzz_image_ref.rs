//! AFL++ entry point of the `image_ref` target (see `berth_fuzz::image_ref`).

fn main() {
    afl::fuzz!(|data: &[u8]| berth_fuzz::image_ref(data));
}
