//! IPv4 subnets as the agent configures them (`--subnet 10.89.0.0/16`): parsing,
//! the gateway (first host address, on the bridge) and the range containers get
//! their addresses from (gateway + 1 up to the last address before broadcast).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a subnet string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("subnet {0:?}: expected a.b.c.d/len")]
    Syntax(String),
    #[error("subnet {0:?}: prefix length must be 8..=30")]
    PrefixLen(String),
    #[error("subnet {given:?} has host bits set; did you mean {network}?")]
    HostBits { given: String, network: Ipv4Net },
}

/// An IPv4 network: address with no host bits set plus prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// `addr/prefix_len`; `addr` must be the network address and `prefix_len` 8..=30.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Net, AddrError> {
        let given = format!("{addr}/{prefix_len}");
        if !(8..=30).contains(&prefix_len) {
            return Err(AddrError::PrefixLen(given));
        }
        let net = Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        };
        if net.addr != addr {
            return Err(AddrError::HostBits {
                given,
                network: net,
            });
        }
        Ok(net)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix_len))
    }

    /// The first host address; the bridge's address and the containers' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// First and last address handed to containers (inclusive).
    pub fn container_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::from(u32::from(self.addr) + 2),
            Ipv4Addr::from(u32::from(self.broadcast()) - 1),
        )
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.addr)
    }
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Ipv4Net, AddrError> {
        let syntax = || AddrError::Syntax(s.into());
        let (a, l) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| syntax())?;
        if l.is_empty() || l.len() > 2 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 = l.parse().map_err(|_| syntax())?;
        Ipv4Net::new(addr, len)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = AddrError;
    fn try_from(s: String) -> Result<Ipv4Net, AddrError> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_derives_addresses() {
        let n: Ipv4Net = "10.89.0.0/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.89.0.0/16");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 89, 255, 255));
        assert_eq!(
            n.container_range(),
            (Ipv4Addr::new(10, 89, 0, 2), Ipv4Addr::new(10, 89, 255, 254))
        );
        assert!(n.contains(Ipv4Addr::new(10, 89, 7, 7)));
        assert!(!n.contains(Ipv4Addr::new(10, 90, 0, 1)));
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in [
            "10.89.0.0",
            "10.89.0.0/",
            "10.89.0/16",
            "10.89.0.0/x",
            "a/16",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Net>(), Err(AddrError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/31".parse::<Ipv4Net>(),
            Err(AddrError::PrefixLen(_))
        ));
        let e = "10.89.0.1/16".parse::<Ipv4Net>().unwrap_err();
        assert!(e.to_string().contains("did you mean 10.89.0.0/16"), "{e}");
    }
}
