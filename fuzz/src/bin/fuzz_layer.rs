//! AFL++ entry point of the `layer` target (see `berth_fuzz::layer`), run
//! chrooted into a scratch directory when root (`berth_fuzz::jail_layer_target`).

fn main() {
    if let Err(e) = berth_fuzz::jail_layer_target() {
        eprintln!("fuzz_layer: cannot make the jail: {e}");
        std::process::exit(1);
    }
    afl::fuzz!(|data: &[u8]| berth_fuzz::layer(data));
}
