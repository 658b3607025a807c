//! What `berth-dns` answers. berthd builds [`Records`] from the reconciler's
//! view of each replica ([`build_records`], pure), writes them to
//! `<run-dir>/dns/records.json` atomically (temp file + rename), and berth-dns
//! compiles them into a [`Table`] and answers each question with [`answer`]
//! (pure). See docs/networking.md, "Service discovery".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use hickory_server::proto::rr::RecordType;
use serde::{Deserialize, Serialize};

use super::DnsError;

/// The zone every service and container name also resolves in:
/// `SERVICE.berth.internal` (`.internal` is the TLD reserved for private use).
pub const DOMAIN: &str = "berth.internal";
/// TTL in seconds of every answer berth-dns gives from its records: short,
/// so a client that caches follows a rollout within a couple of seconds.
pub const TTL: u32 = 2;
/// Version of the `records.json` format.
pub const RECORDS_VERSION: u32 = 1;

/// The content of `records.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    pub version: u32,
    /// Every service of the current revision → the addresses of its ready
    /// replicas, sorted. An empty list: the service exists, nothing is ready.
    pub services: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Running container name (= its id and hostname) → its address.
    pub containers: BTreeMap<String, Ipv4Addr>,
}

/// Whether a replica may be answered for its service name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Ready: answered.
    Ready,
    /// Running without a health verdict yet (a replica re-adopted after an
    /// agent restart whose first check has not run): answered only if it
    /// was answered before, so a restart does not drop healthy replicas.
    Unknown,
    /// Starting, unhealthy, retiring or exited: not answered.
    NotReady,
}

/// One replica as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView<'a> {
    pub service: &'a str,
    /// Container id, which is also its name and hostname.
    pub id: &'a str,
    /// Its address on the bridge (None: not attached).
    pub ip: Option<Ipv4Addr>,
    /// The process runs (its container name resolves).
    pub running: bool,
    pub readiness: Readiness,
}

/// The records for `services` (every service of the current revision) given
/// their replicas and what was published `before`. Only `Ready` replicas are
/// answered, plus `Unknown` ones that were answered before.
pub fn build_records<'a>(
    services: impl IntoIterator<Item = &'a str>,
    replicas: &[ReplicaView<'_>],
    before: &Records,
) -> Records {
    let mut out = Records {
        version: RECORDS_VERSION,
        ..Records::default()
    };
    for s in services {
        out.services.insert(s.to_string(), Vec::new());
    }
    let mut sets: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for r in replicas {
        let Some(ip) = r.ip else { continue };
        if r.running {
            out.containers.insert(r.id.to_string(), ip);
        }
        if !out.services.contains_key(r.service) || !r.running {
            continue;
        }
        let answered = match r.readiness {
            Readiness::Ready => true,
            Readiness::Unknown => before
                .services
                .get(r.service)
                .is_some_and(|ips| ips.contains(&ip)),
            Readiness::NotReady => false,
        };
        if answered {
            sets.entry(r.service).or_default().insert(ip);
        }
    }
    for (s, ips) in sets {
        if let Some(v) = out.services.get_mut(s) {
            *v = ips.into_iter().collect();
        }
    }
    out
}

/// Reads `records.json`.
pub fn read(path: &Path) -> Result<Records, DnsError> {
    let bytes = std::fs::read(path).map_err(DnsError::io("reading", path))?;
    let r: Records = serde_json::from_slice(&bytes).map_err(|e| DnsError::Records {
        path: path.into(),
        message: e.to_string(),
    })?;
    if r.version != RECORDS_VERSION {
        return Err(DnsError::Records {
            path: path.into(),
            message: format!(
                "version {} (this berth-dns reads {RECORDS_VERSION})",
                r.version
            ),
        });
    }
    Ok(r)
}

/// Writes `records` to `path` atomically: a reader sees the old or the new
/// file, never a partial one (temp file in the same directory + rename).
pub fn write(path: &Path, records: &Records) -> Result<(), DnsError> {
    let tmp = path.with_extension("json.tmp");
    let mut body = serde_json::to_vec_pretty(records).map_err(|e| DnsError::Records {
        path: path.into(),
        message: e.to_string(),
    })?;
    body.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(DnsError::io("creating", &tmp))?;
    f.write_all(&body).map_err(DnsError::io("writing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(DnsError::io("renaming into place", path))
}

/// [`Records`] compiled for lookups, plus the bridge subnet (reverse lookups
/// inside it are answered here, never forwarded).
#[derive(Debug, Clone, Default)]
pub struct Table {
    services: HashMap<String, Vec<Ipv4Addr>>,
    containers: HashMap<String, Ipv4Addr>,
    names: HashMap<Ipv4Addr, String>,
    subnet: Option<ipnet::Ipv4Net>,
}

impl Table {
    pub fn new(records: &Records, subnet: Option<ipnet::Ipv4Net>) -> Table {
        Table {
            services: records
                .services
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            containers: records
                .containers
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            names: records
                .containers
                .iter()
                .map(|(k, v)| (*v, k.clone()))
                .collect(),
            subnet,
        }
    }
}

/// How one question is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A records (the handler rotates them per query); `service` names the
    /// service for the rotation counter (None: a container name).
    Addresses {
        service: Option<String>,
        addrs: Vec<Ipv4Addr>,
    },
    /// A PTR record naming this (fully qualified) name.
    Ptr(String),
    /// NOERROR without records: the name exists, not with this type.
    NoData,
    /// The name does not exist (authoritative; never sent upstream).
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Answers `qname` (any case, with or without the trailing dot) of type
/// `qtype` from `table`:
///
/// - `SERVICE` / `SERVICE.berth.internal`: A → the ready replicas (NXDOMAIN
///   when none is ready); other types → NoData;
/// - `CONTAINER` / `CONTAINER.berth.internal`: A → its address; others → NoData;
/// - `a.b.c.d.in-addr.arpa` of a container: PTR → `CONTAINER.berth.internal.`;
///   of another address in the subnet → NXDOMAIN;
/// - any other name under `berth.internal` → NXDOMAIN;
/// - everything else → [`Answer::Forward`].
pub fn answer(table: &Table, qname: &str, qtype: RecordType) -> Answer {
    let name = qname.trim_end_matches('.').to_ascii_lowercase();
    let wants_a = matches!(qtype, RecordType::A | RecordType::ANY);
    if let Some(ip) = reverse_ipv4(&name) {
        return match table.names.get(&ip) {
            Some(c) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                Answer::Ptr(format!("{c}.{DOMAIN}."))
            }
            Some(_) => Answer::NoData,
            None if table.subnet.is_some_and(|s| s.contains(&ip)) => Answer::NxDomain,
            None => Answer::Forward,
        };
    }
    if name == DOMAIN {
        return Answer::NoData;
    }
    let (base, qualified) = match name.strip_suffix(DOMAIN).and_then(|b| b.strip_suffix('.')) {
        Some(b) => (b, true),
        None => (name.as_str(), false),
    };
    if let Some(addrs) = table.services.get(base) {
        return if addrs.is_empty() {
            Answer::NxDomain
        } else if wants_a {
            Answer::Addresses {
                service: Some(base.to_string()),
                addrs: addrs.clone(),
            }
        } else {
            Answer::NoData
        };
    }
    if let Some(ip) = table.containers.get(base) {
        return if wants_a {
            Answer::Addresses {
                service: None,
                addrs: vec![*ip],
            }
        } else {
            Answer::NoData
        };
    }
    if qualified {
        Answer::NxDomain
    } else {
        Answer::Forward
    }
}

/// `addrs` rotated left by `turn` (round-robin order for the `turn`-th query).
pub fn rotate(mut addrs: Vec<Ipv4Addr>, turn: usize) -> Vec<Ipv4Addr> {
    if !addrs.is_empty() {
        let n = turn % addrs.len();
        addrs.rotate_left(n);
    }
    addrs
}

/// `d.c.b.a.in-addr.arpa` → `a.b.c.d`.
fn reverse_ipv4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse::<u8>().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [d, c, b, a] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn view<'a>(
        service: &'a str,
        id: &'a str,
        addr: &str,
        running: bool,
        readiness: Readiness,
    ) -> ReplicaView<'a> {
        ReplicaView {
            service,
            id,
            ip: Some(ip(addr)),
            running,
            readiness,
        }
    }

    #[test]
    fn records_answer_ready_replicas_and_keep_unknown_ones_that_were_answered() {
        use Readiness::*;
        let before = Records {
            version: RECORDS_VERSION,
            services: [("app".to_string(), vec![ip("10.0.0.3")])].into(),
            containers: BTreeMap::new(),
        };
        let replicas = [
            view("app", "app-1", "10.0.0.2", true, Ready),
            // adopted after a restart, verdict pending, answered before: kept
            view("app", "app-2", "10.0.0.3", true, Unknown),
            // new and not checked yet: not answered
            view("app", "app-3", "10.0.0.4", true, Unknown),
            view("app", "app-4", "10.0.0.5", true, NotReady),
            // exited: neither its service nor its name
            view("app", "app-5", "10.0.0.6", false, Ready),
            // a service no revision wants: its name resolves, the service does not
            view("old", "old-1", "10.0.0.7", true, Ready),
            ReplicaView {
                service: "app",
                id: "app-6",
                ip: None,
                running: true,
                readiness: Ready,
            },
        ];
        let r = build_records(["app", "db"], &replicas, &before);
        assert_eq!(r.version, RECORDS_VERSION);
        assert_eq!(r.services["app"], vec![ip("10.0.0.2"), ip("10.0.0.3")]);
        assert_eq!(r.services["db"], Vec::<Ipv4Addr>::new());
        assert!(!r.services.contains_key("old"));
        let names: Vec<&str> = r.containers.keys().map(String::as_str).collect();
        assert_eq!(names, ["app-1", "app-2", "app-3", "app-4", "old-1"]);
        // Building again from the result is stable (no flapping).
        assert_eq!(build_records(["app", "db"], &replicas, &r), r);
    }

    #[test]
    fn answers_follow_the_table() {
        let records = Records {
            version: RECORDS_VERSION,
            services: [
                ("app".to_string(), vec![ip("10.0.0.2"), ip("10.0.0.3")]),
                ("db".to_string(), vec![]),
            ]
            .into(),
            containers: [("app-1".to_string(), ip("10.0.0.2"))].into(),
        };
        let t = Table::new(&records, Some("10.0.0.0/24".parse().unwrap()));
        let both = Answer::Addresses {
            service: Some("app".into()),
            addrs: vec![ip("10.0.0.2"), ip("10.0.0.3")],
        };
        let one = Answer::Addresses {
            service: None,
            addrs: vec![ip("10.0.0.2")],
        };
        use RecordType::*;
        let cases: &[(&str, RecordType, Answer)] = &[
            ("app", A, both.clone()),
            ("app.", A, both.clone()),
            ("APP.Berth.Internal.", A, both.clone()),
            ("app.berth.internal", ANY, both.clone()),
            ("app", AAAA, Answer::NoData),
            ("app", MX, Answer::NoData),
            ("db", A, Answer::NxDomain),
            ("db", AAAA, Answer::NxDomain),
            ("db.berth.internal.", A, Answer::NxDomain),
            ("app-1", A, one.clone()),
            ("app-1.berth.internal.", A, one),
            ("app-1", AAAA, Answer::NoData),
            ("nope.berth.internal.", A, Answer::NxDomain),
            ("x.app.berth.internal.", A, Answer::NxDomain),
            ("berth.internal.", A, Answer::NoData),
            (
                "2.0.0.10.in-addr.arpa.",
                PTR,
                Answer::Ptr("app-1.berth.internal.".into()),
            ),
            ("2.0.0.10.in-addr.arpa.", A, Answer::NoData),
            ("9.0.0.10.in-addr.arpa.", PTR, Answer::NxDomain),
            ("1.1.168.192.in-addr.arpa.", PTR, Answer::Forward),
            ("example.com.", A, Answer::Forward),
            ("postgres", A, Answer::Forward),
            ("app.example.com.", A, Answer::Forward),
        ];
        for (name, qtype, want) in cases {
            assert_eq!(&answer(&t, name, *qtype), want, "{name} {qtype}");
        }
    }

    #[test]
    fn rotation_is_round_robin() {
        let a = vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
        assert_eq!(rotate(a.clone(), 0), a);
        assert_eq!(
            rotate(a.clone(), 1),
            vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.1")]
        );
        assert_eq!(rotate(a.clone(), 4), rotate(a.clone(), 1));
        assert_eq!(rotate(Vec::new(), 3), Vec::<Ipv4Addr>::new());
    }

    #[test]
    fn records_round_trip_through_the_file_and_refuse_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.json");
        let r = Records {
            version: RECORDS_VERSION,
            services: [("app".to_string(), vec![ip("10.0.0.2")])].into(),
            containers: [("app-1".to_string(), ip("10.0.0.2"))].into(),
        };
        write(&path, &r).unwrap();
        assert_eq!(read(&path).unwrap(), r);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, r#"{"version":9,"services":{},"containers":{}}"#).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("records.json") && e.contains("version 9"), "{e}");
    }
}
