//! Subordinate id ranges of the services' user namespaces: one range of
//! 65536 ids per service, allocated from the agent's pool
//! (`--userns-range`) on its first replica and kept in the state database
//! (tree `userns`, key = service name, value = the range's base, big-endian
//! u32), so a restarted agent gives each service its range back. Which
//! services get one at all is [`decide`].

use std::collections::{BTreeMap, BTreeSet};

use berth_core::manifest::UsernsMode;

use crate::runtime::userns::{allocate, IdRange, Pool, RANGE_LEN};
use crate::state::Store;

/// The sled tree of allocated ranges.
pub const TREE: &str = "userns";

/// Why a service gets no range.
#[derive(Debug, thiserror::Error)]
pub enum IdRangeError {
    #[error("user namespace ranges: {0}")]
    Db(String),
    #[error("service `{service}`: the user namespace pool {start:#x}:{count:#x} is full ({n} services); raise --userns-range COUNT")]
    PoolFull {
        service: String,
        start: u32,
        count: u32,
        n: u32,
    },
    #[error("service `{service}`: user namespaces are unavailable on this host ({why}); set `userns = \"host\"` on the service or start berthd with --userns-fallback")]
    Unsupported { service: String, why: String },
}

/// Whether a service in `mode` runs in its own user namespace, given the
/// kernel's `support` ([`crate::runtime::userns::probe`]) and whether the
/// agent may fall back to the host's namespace (`--userns-fallback`).
pub fn decide(
    service: &str,
    mode: UsernsMode,
    support: &Result<(), String>,
    fallback: bool,
) -> Result<bool, IdRangeError> {
    match (mode, support) {
        (UsernsMode::Host, _) => Ok(false),
        (UsernsMode::Auto, Ok(())) => Ok(true),
        (UsernsMode::Auto, Err(_)) if fallback => Ok(false),
        (UsernsMode::Auto, Err(why)) => Err(IdRangeError::Unsupported {
            service: service.into(),
            why: why.clone(),
        }),
    }
}

/// The allocated ranges, persisted.
#[derive(Debug)]
pub struct IdRanges {
    tree: sled::Tree,
    pool: Pool,
    /// Serializes allocation (read the taken set, then insert).
    lock: std::sync::Mutex<()>,
}

impl IdRanges {
    /// The ranges stored in `store`, allocating new ones from `pool`.
    pub fn open(store: &Store, pool: Pool) -> Result<IdRanges, IdRangeError> {
        let tree = store
            .tree(TREE)
            .map_err(|e| IdRangeError::Db(e.to_string()))?;
        Ok(IdRanges {
            tree,
            pool,
            lock: std::sync::Mutex::new(()),
        })
    }

    /// Every stored range, by service.
    pub fn all(&self) -> BTreeMap<String, IdRange> {
        self.tree
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let base = u32::from_be_bytes(v.as_ref().try_into().ok()?);
                Some((
                    String::from_utf8_lossy(&k).into_owned(),
                    IdRange {
                        base,
                        len: RANGE_LEN,
                    },
                ))
            })
            .collect()
    }

    /// Records `range` as the range of `service` (durably), replacing its
    /// record: its containers were found using it after the records were
    /// lost (see `crate::rebuild`, which decides what is adopted).
    pub fn adopt(&self, service: &str, range: IdRange) -> Result<(), IdRangeError> {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let db = |e: sled::Error| IdRangeError::Db(e.to_string());
        self.tree
            .insert(service.as_bytes(), &range.base.to_be_bytes())
            .map_err(db)?;
        self.tree.flush().map_err(db)?;
        Ok(())
    }

    /// Drops the record of `service` (durably): it collided with a range
    /// containers of another service were found using. The service gets a
    /// free range when it next starts a replica.
    pub fn forget(&self, service: &str) -> Result<(), IdRangeError> {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let db = |e: sled::Error| IdRangeError::Db(e.to_string());
        self.tree.remove(service.as_bytes()).map_err(db)?;
        self.tree.flush().map_err(db)?;
        Ok(())
    }

    /// The range of `service`: the stored one (even if the pool changed
    /// since: its files may be on disk), else the lowest free one of the
    /// pool, stored and flushed before it is returned.
    pub fn range_for(&self, service: &str) -> Result<IdRange, IdRangeError> {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.all();
        if let Some(r) = all.get(service) {
            return Ok(*r);
        }
        let taken: BTreeSet<u32> = all.values().map(|r| r.base).collect();
        let r = allocate(self.pool, &taken).ok_or_else(|| IdRangeError::PoolFull {
            service: service.into(),
            start: self.pool.start,
            count: self.pool.count,
            n: self.pool.count / RANGE_LEN,
        })?;
        let db = |e: sled::Error| IdRangeError::Db(e.to_string());
        self.tree
            .insert(service.as_bytes(), &r.base.to_be_bytes())
            .map_err(db)?;
        self.tree.flush().map_err(db)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_follows_the_mode_the_kernel_and_the_fallback() {
        let ok: Result<(), String> = Ok(());
        let no: Result<(), String> = Err("kernel 5.4 is older than 5.19".into());
        let cases = [
            (UsernsMode::Auto, &ok, false, Some(true)),
            (UsernsMode::Auto, &ok, true, Some(true)),
            (UsernsMode::Host, &ok, false, Some(false)),
            (UsernsMode::Host, &no, false, Some(false)),
            (UsernsMode::Auto, &no, true, Some(false)),
            (UsernsMode::Auto, &no, false, None),
        ];
        for (mode, support, fallback, want) in cases {
            let got = decide("web", mode, support, fallback);
            match want {
                Some(w) => assert_eq!(got.unwrap(), w, "{mode:?} {support:?} {fallback}"),
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(
                        e.contains("service `web`")
                            && e.contains("5.19")
                            && e.contains("--userns-fallback"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn adopted_ranges_are_kept_and_skipped_by_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool {
            start: 0x10000,
            count: 3 * RANGE_LEN,
        };
        let (store, _) = Store::open(dir.path()).unwrap();
        let r = IdRanges::open(&store, pool).unwrap();
        let first = IdRange {
            base: 0x10000,
            len: RANGE_LEN,
        };
        r.adopt("web", first).unwrap();
        let db = r.range_for("db").unwrap();
        assert_eq!(db.base, 0x20000, "the adopted range is taken");
        assert_eq!(r.range_for("web").unwrap(), first);
        r.forget("db").unwrap();
        assert_eq!(r.all().len(), 1);
        drop(r);
        let r = IdRanges::open(&store, pool).unwrap();
        assert_eq!(r.range_for("web").unwrap(), first);
    }

    #[test]
    fn ranges_are_disjoint_stored_and_come_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool {
            start: 0x10000,
            count: 2 * RANGE_LEN,
        };
        let (web, db) = {
            let (store, _) = Store::open(dir.path()).unwrap();
            let r = IdRanges::open(&store, pool).unwrap();
            let web = r.range_for("web").unwrap();
            let db = r.range_for("db").unwrap();
            assert_eq!(r.range_for("web").unwrap(), web);
            assert_ne!(web.base, db.base);
            assert!(web.base + web.len <= db.base || db.base + db.len <= web.base);
            let e = r.range_for("third").unwrap_err().to_string();
            assert!(e.contains("pool") && e.contains("full"), "{e}");
            store.flush().unwrap();
            (web, db)
        };
        let (store, _) = Store::open(dir.path()).unwrap();
        let r = IdRanges::open(&store, pool).unwrap();
        assert_eq!(r.range_for("db").unwrap(), db);
        assert_eq!(r.range_for("web").unwrap(), web);
    }
}
