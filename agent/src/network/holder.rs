//! Who holds a host port the agent could not bind, best effort: the inode of
//! a socket bound to that port (listening, for TCP) from `/proc/net/{tcp,
//! tcp6,udp,udp6}`, then the process with that socket among `/proc/*/fd`.
//! The parsers are pure; [`find`] reads procfs.

use std::net::Ipv4Addr;
use std::path::Path;

use berth_core::manifest::Protocol;

/// A process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `/proc/PID/comm` (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

/// A local address in `/proc/net/*` (`0100007F:1F90`, or 32 hex digits for
/// IPv6) as (IPv4 address, port); IPv6 `::` and `::ffff:a.b.c.d` map to
/// IPv4, other IPv6 addresses are `None`.
fn local_addr(field: &str) -> Option<(Ipv4Addr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        // One host-order (little-endian on x86, as procfs prints it) u32.
        8 => Ipv4Addr::from(u32::from_be(u32::from_str_radix(addr, 16).ok()?)),
        32 => {
            let words: Vec<u32> = (0..4)
                .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).map(u32::from_be))
                .collect::<Result<_, _>>()
                .ok()?;
            match words[..] {
                [0, 0, 0, 0] => Ipv4Addr::UNSPECIFIED,
                [0, 0, 0xffff, v4] => Ipv4Addr::from(v4),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Inodes of the sockets in `table` (the text of a `/proc/net/{tcp,udp}[6]`
/// file) bound to `port` on an address that overlaps `ip` (the same
/// address, or either one unspecified). For TCP only listening sockets
/// (state `0A`) count; for UDP every bound socket does.
pub fn socket_inodes(table: &str, protocol: Protocol, ip: Ipv4Addr, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if protocol == Protocol::Tcp && *state != "0A" {
                return None;
            }
            let (lip, lport) = local_addr(local)?;
            let overlaps = lip == ip || lip.is_unspecified() || ip.is_unspecified();
            let inode: u64 = inode.parse().ok()?;
            (lport == port && overlaps && inode != 0).then_some(inode)
        })
        .collect()
}

/// The process (under `proc`) with an fd on one of the socket `inodes`.
pub fn owner_of(proc: &Path, inodes: &[u64]) -> Option<Holder> {
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
                .unwrap_or(false)
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(Holder {
                pid,
                comm: comm.trim().to_string(),
            });
        }
    }
    None
}

/// The process holding `ip:port`/`protocol` on this host, if procfs tells.
pub fn find(protocol: Protocol, ip: Ipv4Addr, port: u16) -> Option<Holder> {
    let proc = Path::new("/proc");
    let files: [&str; 2] = match protocol {
        Protocol::Tcp => ["net/tcp", "net/tcp6"],
        Protocol::Udp => ["net/udp", "net/udp6"],
    };
    let inodes: Vec<u64> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(proc.join(f)).ok())
        .flat_map(|t| socket_inodes(&t, protocol, ip, port))
        .collect();
    owner_of(proc, &inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 41003 1 0000000000000000 20 4 30 10 -1
   3: 0502000A:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41004 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F94 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42002 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F95 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42003 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 43001 2 0000000000000000 0
";

    const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    #[test]
    fn listening_tcp_sockets_on_the_port_and_an_overlapping_address() {
        // 127.0.0.1:8080 listening (the established one on 8080 is not a holder).
        assert_eq!(socket_inodes(TCP, Protocol::Tcp, ANY, 8080), vec![41001]);
        assert_eq!(socket_inodes(TCP, Protocol::Tcp, LO, 8080), vec![41001]);
        // 0.0.0.0:8081 overlaps every address.
        assert_eq!(socket_inodes(TCP, Protocol::Tcp, LO, 8081), vec![41002]);
        // 10.0.2.5:8082 does not overlap 127.0.0.1, does overlap 0.0.0.0.
        assert_eq!(
            socket_inodes(TCP, Protocol::Tcp, LO, 8082),
            Vec::<u64>::new()
        );
        assert_eq!(socket_inodes(TCP, Protocol::Tcp, ANY, 8082), vec![41004]);
        assert_eq!(
            socket_inodes(TCP, Protocol::Tcp, ANY, 9999),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn ipv6_any_and_mapped_addresses_count_other_ipv6_does_not() {
        assert_eq!(socket_inodes(TCP6, Protocol::Tcp, LO, 8083), vec![42001]);
        assert_eq!(socket_inodes(TCP6, Protocol::Tcp, LO, 8084), vec![42002]);
        assert_eq!(
            socket_inodes(TCP6, Protocol::Tcp, ANY, 8085),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn bound_udp_sockets_count_in_any_state() {
        assert_eq!(socket_inodes(UDP, Protocol::Udp, ANY, 5353), vec![43001]);
        assert_eq!(
            socket_inodes(UDP, Protocol::Tcp, ANY, 5353),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn this_process_is_found_holding_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = find(Protocol::Tcp, ANY, port).expect("holder found");
        assert_eq!(me.pid, std::process::id());
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(me.comm, comm.trim());
        drop(l);
        assert_eq!(find(Protocol::Tcp, ANY, port), None);
    }
}
