//! Address management in a sled tree: one record per container id (the state
//! envelope around `{"ip": ...}`), mirrored in memory for allocation. Addresses
//! are handed out round-robin (not reused at once), flushed to disk before they are returned,
//! and released on removal or when `retain` finds their container gone.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::addr::Ipv4Net;
use crate::state;

const TREE: &str = "net";

/// Why an address could not be allocated, released or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {0} has no free address left")]
    Exhausted(Ipv4Net),
    #[error("address store: {0}")]
    Db(#[from] sled::Error),
    #[error(transparent)]
    Record(#[from] state::StateError),
    #[error("address store: key {0:?} is not a container id")]
    BadKey(Vec<u8>),
    #[error("address {ip} is held by container {holder}")]
    Taken { ip: Ipv4Addr, holder: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IpRecord {
    ip: Ipv4Addr,
}

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<String, Ipv4Addr>,
    by_ip: BTreeMap<u32, String>,
    /// Where the next search starts: just after the last address handed out.
    /// Addresses are handed out round-robin, so a replacement never gets the
    /// address its predecessor just released while the host's neighbor cache
    /// still maps it to the old interface's MAC (which would black-hole the
    /// new container's traffic for up to ~30 s).
    cursor: Option<u32>,
}

/// The address allocator of one network.
#[derive(Debug)]
pub struct Ipam {
    tree: sled::Tree,
    subnet: Ipv4Net,
    maps: Mutex<Maps>,
}

impl Ipam {
    /// Loads every record of `tree`. A second record claiming an address that
    /// is already taken (which this code never writes) is dropped from the tree.
    pub fn open(tree: sled::Tree, subnet: Ipv4Net) -> Result<Ipam, IpamError> {
        let mut maps = Maps::default();
        let mut dupes = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let id = String::from_utf8(k.to_vec()).map_err(|_| IpamError::BadKey(k.to_vec()))?;
            let rec: IpRecord = state::decode(TREE, &id, &v)?;
            if maps.by_ip.contains_key(&u32::from(rec.ip)) {
                dupes.push(id);
                continue;
            }
            maps.by_ip.insert(rec.ip.into(), id.clone());
            maps.by_id.insert(id, rec.ip);
        }
        for id in &dupes {
            tracing::warn!(container = %id, "ipam: dropping a duplicate address record");
            tree.remove(id.as_bytes())?;
        }
        if !dupes.is_empty() {
            tree.flush()?;
        }
        Ok(Ipam {
            tree,
            subnet,
            maps: Mutex::new(maps),
        })
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address of `id`, allocating the next free one (durably) if it has none.
    pub fn allocate(&self, id: &str) -> Result<Ipv4Addr, IpamError> {
        let mut maps = self.maps();
        if let Some(ip) = maps.by_id.get(id) {
            return Ok(*ip);
        }
        let (first, last) = self.subnet.container_range();
        let (first, last) = (u32::from(first), u32::from(last));
        let start = maps
            .cursor
            .or_else(|| maps.by_ip.keys().next_back().map(|k| k + 1))
            .filter(|c| (first..=last).contains(c))
            .unwrap_or(first);
        let candidate = (start..=last)
            .chain(first..start)
            .find(|c| !maps.by_ip.contains_key(c))
            .ok_or(IpamError::Exhausted(self.subnet))?;
        maps.cursor = Some(candidate + 1);
        let ip = Ipv4Addr::from(candidate);
        self.tree
            .insert(id.as_bytes(), state::encode(TREE, &IpRecord { ip })?)?;
        self.tree.flush()?;
        maps.by_ip.insert(candidate, id.into());
        maps.by_id.insert(id.into(), ip);
        Ok(ip)
    }

    /// Records `ip` as the address of `id` (durably): a container found
    /// holding it after the records were lost (see `crate::rebuild`).
    /// Replaces a different record of `id`; [`IpamError::Taken`] when another
    /// id holds `ip`. Outside the subnet is allowed: the kernel has it.
    pub fn adopt(&self, id: &str, ip: Ipv4Addr) -> Result<(), IpamError> {
        let mut maps = self.maps();
        match maps.by_ip.get(&u32::from(ip)) {
            Some(holder) if holder == id => return Ok(()),
            Some(holder) => {
                return Err(IpamError::Taken {
                    ip,
                    holder: holder.clone(),
                })
            }
            None => {}
        }
        self.tree
            .insert(id.as_bytes(), state::encode(TREE, &IpRecord { ip })?)?;
        self.tree.flush()?;
        if let Some(old) = maps.by_id.insert(id.into(), ip) {
            maps.by_ip.remove(&u32::from(old));
        }
        maps.by_ip.insert(ip.into(), id.into());
        Ok(())
    }

    /// The address `id` holds, if any.
    pub fn get(&self, id: &str) -> Option<Ipv4Addr> {
        self.maps().by_id.get(id).copied()
    }

    /// Releases the address of `id` (durably); returns it if there was one.
    pub fn release(&self, id: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut maps = self.maps();
        let Some(ip) = maps.by_id.remove(id) else {
            return Ok(None);
        };
        maps.by_ip.remove(&u32::from(ip));
        self.tree.remove(id.as_bytes())?;
        self.tree.flush()?;
        Ok(Some(ip))
    }

    /// Every `(id, address)`, ordered by address.
    pub fn entries(&self) -> Vec<(String, Ipv4Addr)> {
        self.maps()
            .by_ip
            .iter()
            .map(|(ip, id)| (id.clone(), Ipv4Addr::from(*ip)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net() -> Ipv4Net {
        "10.200.7.0/29".parse().unwrap()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 7, last)
    }

    #[test]
    fn round_robin_release_and_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::open_db(dir.path()).unwrap();
        let ipam = Ipam::open(db.open_tree("net").unwrap(), net()).unwrap();
        assert_eq!(ipam.allocate("a").unwrap(), ip(2));
        assert_eq!(ipam.allocate("b").unwrap(), ip(3));
        assert_eq!(ipam.allocate("c").unwrap(), ip(4));
        assert_eq!(ipam.allocate("b").unwrap(), ip(3), "idempotent per id");
        assert_eq!(ipam.release("b").unwrap(), Some(ip(3)));
        assert_eq!(ipam.release("b").unwrap(), None);
        // A just-released address is handed out last (round-robin).
        assert_eq!(ipam.allocate("d").unwrap(), ip(5));
        assert_eq!(ipam.allocate("e").unwrap(), ip(6));
        assert_eq!(
            ipam.allocate("f").unwrap(),
            ip(3),
            "wraps to the first free"
        );
        // /29: .0 network, .1 gateway, .2-.6 containers, .7 broadcast.
        assert!(matches!(ipam.allocate("g"), Err(IpamError::Exhausted(_))));
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("g").unwrap(), ip(2));
    }

    #[test]
    fn no_duplicates_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::state::open_db(dir.path()).unwrap();
            let ipam = Ipam::open(db.open_tree("net").unwrap(), net()).unwrap();
            ipam.allocate("a").unwrap();
            ipam.allocate("b").unwrap();
            ipam.allocate("c").unwrap();
            ipam.release("a").unwrap();
            // No explicit flush here: allocate/release flush before returning.
        }
        let db = crate::state::open_db(dir.path()).unwrap();
        let ipam = Ipam::open(db.open_tree("net").unwrap(), net()).unwrap();
        assert_eq!(ipam.get("b"), Some(ip(3)));
        assert_eq!(ipam.get("c"), Some(ip(4)));
        assert_eq!(ipam.get("a"), None);
        // After a reopen the search starts after the highest address in use.
        assert_eq!(ipam.allocate("d").unwrap(), ip(5));
        assert_eq!(ipam.allocate("e").unwrap(), ip(6));
        assert_eq!(ipam.allocate("f").unwrap(), ip(2));
        let mut ips: Vec<_> = ipam.entries().into_iter().map(|(_, ip)| ip).collect();
        ips.dedup();
        ips.sort();
        assert_eq!(ips, vec![ip(2), ip(3), ip(4), ip(5), ip(6)]);
    }

    #[test]
    fn adopted_addresses_are_never_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::open_db(dir.path()).unwrap();
        let tree = db.open_tree("net").unwrap();
        let ipam = Ipam::open(tree.clone(), net()).unwrap();
        ipam.adopt("a", ip(2)).unwrap();
        ipam.adopt("b", ip(4)).unwrap();
        ipam.adopt("b", ip(4)).unwrap();
        let e = ipam.adopt("c", ip(2)).unwrap_err().to_string();
        assert!(e.contains("10.200.7.2") && e.contains("container a"), "{e}");
        // A new container gets neither, before or after a reopen.
        assert_eq!(ipam.allocate("c").unwrap(), ip(5));
        let ipam = Ipam::open(tree, net()).unwrap();
        assert_eq!(ipam.get("a"), Some(ip(2)));
        assert_eq!(ipam.get("b"), Some(ip(4)));
        assert_eq!(ipam.allocate("d").unwrap(), ip(6));
        assert_eq!(ipam.allocate("e").unwrap(), ip(3));
        assert!(matches!(ipam.allocate("f"), Err(IpamError::Exhausted(_))));
        // Adopting a different address of a known id moves it.
        ipam.adopt("a", ip(7)).unwrap();
        assert_eq!(ipam.get("a"), Some(ip(7)));
        assert_eq!(ipam.allocate("f").unwrap(), ip(2));
    }

    #[test]
    fn duplicate_records_on_disk_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::open_db(dir.path()).unwrap();
        let tree = db.open_tree("net").unwrap();
        for id in ["x", "y"] {
            tree.insert(id, state::encode(TREE, &IpRecord { ip: ip(2) }).unwrap())
                .unwrap();
        }
        let ipam = Ipam::open(tree.clone(), net()).unwrap();
        assert_eq!(ipam.entries(), vec![("x".to_string(), ip(2))]);
        assert!(tree.get("y").unwrap().is_none());
        assert_eq!(ipam.allocate("y").unwrap(), ip(3));
    }
}
