//! `berth-dns`: the DNS server containers use to resolve service names (see
//! `berth_agent::dns::server`). berthd starts it on the bridge gateway and it
//! keeps answering while berthd is stopped or restarting.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    berth_agent::dns::server::main(berth_agent::dns::server::Args::parse())
}
