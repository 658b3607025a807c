//! `berth-monitor`: the small per-container process that holds a container
//! while `berthd` comes and goes (see `berth_agent::runtime::monitor`). It is a
//! separate binary so each running container costs only its few pages.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::MONITOR_SUBCOMMAND) {
        berth_agent::runtime::monitor_main(&args[2..]);
    }
    // Hidden: the start-up check of the state dir's filesystem for id-mapped mounts.
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::userns::PROBE_SUBCOMMAND) {
        berth_agent::runtime::userns::probe_main(&args[2..]);
    }
    // Hidden: a command run inside a running container (see berth_agent::runtime::exec).
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::EXEC_SUBCOMMAND) {
        berth_agent::runtime::exec_main(&args[2..]);
    }
    eprintln!("berth-monitor is started by berthd, not by hand");
    std::process::exit(2);
}
