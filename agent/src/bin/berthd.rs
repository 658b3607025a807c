fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Hidden: the per-container monitor (see berth_agent::runtime::monitor).
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::MONITOR_SUBCOMMAND) {
        berth_agent::runtime::monitor_main(&args[2..]);
    }
}
