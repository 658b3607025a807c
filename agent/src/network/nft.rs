//! The agent's nftables table of a bridge (`table ip berth_<bridge>`), changed
//! by difference, never flushed: every rule carries the comment `"<group>
//! <key>"` (key: a hash of its chain and text), the table is read back as
//! JSON, and only a group whose rules differ is replaced, in one `nft -f`
//! transaction. Rules already right keep their handles, so an agent restart
//! rewrites nothing. Planning is pure ([`plan_group`], [`plan_prune`]); [`read`]
//! and [`apply`] run `nft`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

use sha2::{Digest as _, Sha256};

/// Why nft could not be run or its answer not be read.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft: {0}")]
    Failed(String),
    #[error("reading nft's JSON listing: {0}")]
    Json(String),
}

/// The chains the agent owns in its table, with their declarations.
pub const CHAINS: &[(&str, &str)] = &[
    (
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    (
        "forward",
        "type filter hook forward priority filter; policy accept;",
    ),
    (
        "input",
        "type filter hook input priority filter; policy accept;",
    ),
    (
        "published_prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "published_output",
        "type nat hook output priority -100; policy accept;",
    ),
    (
        "published_postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    (
        "published_guard",
        "type filter hook prerouting priority raw; policy accept;",
    ),
];

/// The nftables table of `bridge`.
pub fn table(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("berth_{safe}")
}

/// One rule as the agent writes it: its chain (one of [`CHAINS`]) and its
/// text without the comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub body: String,
}

impl Rule {
    pub fn new(chain: &'static str, body: impl Into<String>) -> Rule {
        Rule {
            chain,
            body: body.into(),
        }
    }

    /// 16 hex digits of SHA-256 over chain and text: equal keys, equal rules.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.chain.as_bytes());
        h.update([0]);
        h.update(self.body.as_bytes());
        hex::encode(h.finalize())[..16].to_string()
    }
}

/// A group's rules per chain, by key, in order: what is compared.
pub type Shape = BTreeMap<String, Vec<String>>;

/// The shape of `rules`.
pub fn shape(rules: &[Rule]) -> Shape {
    let mut s = Shape::new();
    for r in rules {
        s.entry(r.chain.to_string()).or_default().push(r.key());
    }
    s
}

/// One rule of the table as nft lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRule {
    pub chain: String,
    pub handle: u64,
    /// The group and key from the comment; `None` for a rule without the
    /// agent's comment (written by an older agent or by hand).
    pub group: Option<String>,
    pub key: Option<String>,
    /// Container addresses a `dnat` map of the rule sends to.
    pub endpoints: Vec<SocketAddrV4>,
}

/// The table as nft lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub exists: bool,
    pub chains: BTreeSet<String>,
    /// In listing order: chain by chain, each in rule order.
    pub rules: Vec<InstalledRule>,
}

impl Installed {
    /// The installed shape of `group`.
    pub fn shape(&self, group: &str) -> Shape {
        let mut s = Shape::new();
        for r in &self.rules {
            if r.group.as_deref() == Some(group) {
                s.entry(r.chain.clone())
                    .or_default()
                    .push(r.key.clone().unwrap_or_default());
            }
        }
        s
    }

    /// The groups present, each with its shape.
    pub fn groups(&self) -> BTreeMap<String, Shape> {
        let mut out: BTreeMap<String, Shape> = BTreeMap::new();
        for r in &self.rules {
            if let (Some(g), Some(k)) = (&r.group, &r.key) {
                out.entry(g.clone())
                    .or_default()
                    .entry(r.chain.clone())
                    .or_default()
                    .push(k.clone());
            }
        }
        out
    }
}

/// Parses `nft -j list table ip T` output.
pub fn parse_installed(json: &str) -> Result<Installed, NftError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| NftError::Json(e.to_string()))?;
    let items = v["nftables"]
        .as_array()
        .ok_or_else(|| NftError::Json("no \"nftables\" array".into()))?;
    let mut out = Installed::default();
    for item in items {
        if item.get("table").is_some() {
            out.exists = true;
        } else if let Some(c) = item.get("chain") {
            if let Some(name) = c["name"].as_str() {
                out.chains.insert(name.to_string());
            }
        } else if let Some(r) = item.get("rule") {
            let (Some(chain), Some(handle)) = (r["chain"].as_str(), r["handle"].as_u64()) else {
                continue;
            };
            let (group, key) = match r["comment"].as_str().and_then(|c| c.split_once(' ')) {
                Some((g, k)) if !g.is_empty() && k.len() == 16 => {
                    (Some(g.to_string()), Some(k.to_string()))
                }
                _ => (None, None),
            };
            let mut endpoints = Vec::new();
            collect_endpoints(&r["expr"], false, &mut endpoints);
            out.rules.push(InstalledRule {
                chain: chain.to_string(),
                handle,
                group,
                key,
                endpoints,
            });
        }
    }
    Ok(out)
}

/// Every `concat: ["a.b.c.d", port]` inside a `dnat` expression.
fn collect_endpoints(v: &serde_json::Value, in_dnat: bool, out: &mut Vec<SocketAddrV4>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let dnat = in_dnat || k == "dnat";
                if dnat && k == "concat" {
                    if let Some([ip, port]) = x.as_array().map(Vec::as_slice) {
                        if let (Some(ip), Some(port)) = (
                            ip.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()),
                            port.as_u64().and_then(|p| u16::try_from(p).ok()),
                        ) {
                            out.push(SocketAddrV4::new(ip, port));
                        }
                    }
                } else {
                    collect_endpoints(x, dnat, out);
                }
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                collect_endpoints(x, in_dnat, out);
            }
        }
        _ => {}
    }
}

fn declare(script: &mut String, table: &str, installed: &Installed, chains: &BTreeSet<&str>) {
    if !installed.exists {
        let _ = writeln!(script, "add table ip {table}");
    }
    for (name, decl) in CHAINS {
        if chains.contains(name) && !installed.chains.contains(*name) {
            let _ = writeln!(script, "add chain ip {table} {name} {{ {decl} }}");
        }
    }
}

/// The transaction that makes `group`'s rules in `table` equal `rules`
/// (order within a chain included), or `None` when they already are. A
/// differing group is replaced whole: its rules deleted by handle and
/// `rules` added, in the same transaction. Rules of `owned_chains` that
/// carry no group of the agent (an older agent's, a hand-made one) are
/// deleted with it. Other groups and chains are untouched.
pub fn plan_group(
    table: &str,
    installed: &Installed,
    group: &str,
    rules: &[Rule],
    owned_chains: &[&str],
) -> Option<String> {
    let same = installed.shape(group) == shape(rules);
    let strays: Vec<&InstalledRule> = installed
        .rules
        .iter()
        .filter(|r| r.group.is_none() && owned_chains.contains(&r.chain.as_str()))
        .collect();
    if same && strays.is_empty() {
        return None;
    }
    let mut s = String::new();
    let chains: BTreeSet<&str> = rules.iter().map(|r| r.chain).collect();
    declare(&mut s, table, installed, &chains);
    let mine = installed
        .rules
        .iter()
        .filter(|r| !same && r.group.as_deref() == Some(group));
    for r in mine.chain(strays) {
        let _ = writeln!(s, "delete rule ip {table} {} handle {}", r.chain, r.handle);
    }
    if !same {
        for r in rules {
            let _ = writeln!(
                s,
                "add rule ip {table} {} {} comment \"{group} {}\"",
                r.chain,
                r.body,
                r.key()
            );
        }
    }
    Some(s)
}

/// The transaction that deletes the rules of `chains` whose group `keep`
/// refuses (or that carry none), or `None` when there are none.
pub fn plan_prune(
    table: &str,
    installed: &Installed,
    chains: &[&str],
    keep: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut s = String::new();
    for r in &installed.rules {
        let stale = match &r.group {
            Some(g) => !keep(g),
            None => true,
        };
        if stale && chains.contains(&r.chain.as_str()) {
            let _ = writeln!(s, "delete rule ip {table} {} handle {}", r.chain, r.handle);
        }
    }
    (!s.is_empty()).then_some(s)
}

/// Reads `table` (empty when it does not exist).
pub fn read(table: &str) -> Result<Installed, NftError> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", table])
        .stdin(Stdio::null())
        .output()
        .map_err(NftError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("No such file or directory") {
            return Ok(Installed::default());
        }
        return Err(NftError::Failed(err));
    }
    parse_installed(&String::from_utf8_lossy(&out.stdout))
}

/// Runs `nft -f -` with `script`: one atomic transaction.
pub fn apply(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Reads `table` and makes `group` equal `rules` (see [`plan_group`]);
/// runs nothing when it already is. Returns whether anything changed.
pub fn sync_group(
    table: &str,
    group: &str,
    rules: &[Rule],
    owned_chains: &[&str],
) -> Result<bool, NftError> {
    let installed = read(table)?;
    match plan_group(table, &installed, group, rules, owned_chains) {
        Some(script) => apply(&script).map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list table` of nftables 1.0.6, trimmed.
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "ip", "name": "berth_b0", "handle": 31}},
{"chain": {"family": "ip", "table": "berth_b0", "name": "published_output", "handle": 1, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
{"chain": {"family": "ip", "table": "berth_b0", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
{"rule": {"family": "ip", "table": "berth_b0", "chain": "published_output", "handle": 4, "comment": "svc:web 0123456789abcdef", "expr": [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 18080}}, {"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "data": {"set": [[0, {"concat": ["10.89.0.2", 80]}], [1, {"concat": ["10.89.0.3", 80]}]]}}}}}]}},
{"rule": {"family": "ip", "table": "berth_b0", "chain": "published_output", "handle": 6, "comment": "web", "expr": []}},
{"rule": {"family": "ip", "table": "berth_b0", "chain": "forward", "handle": 7, "expr": [{"accept": null}]}}]}"#;

    #[test]
    fn listing_gives_chains_groups_handles_and_dnat_endpoints() {
        let i = parse_installed(LISTING).unwrap();
        assert!(i.exists);
        assert_eq!(
            i.chains.iter().map(String::as_str).collect::<Vec<_>>(),
            ["forward", "published_output"]
        );
        assert_eq!(i.rules.len(), 3);
        let web = &i.rules[0];
        assert_eq!((web.chain.as_str(), web.handle), ("published_output", 4));
        assert_eq!(web.group.as_deref(), Some("svc:web"));
        assert_eq!(web.key.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            web.endpoints,
            vec![
                "10.89.0.2:80".parse::<SocketAddrV4>().unwrap(),
                "10.89.0.3:80".parse().unwrap()
            ]
        );
        // An older agent's comment and no comment: no group.
        assert_eq!(i.rules[1].group, None);
        assert_eq!(i.rules[2].group, None);
        assert!(parse_installed("{}").is_err());
    }

    fn installed(rules: &[(&str, u64, &str, &Rule)]) -> Installed {
        Installed {
            exists: true,
            chains: CHAINS.iter().map(|(n, _)| n.to_string()).collect(),
            rules: rules
                .iter()
                .map(|(chain, handle, group, rule)| InstalledRule {
                    chain: chain.to_string(),
                    handle: *handle,
                    group: (!group.is_empty()).then(|| group.to_string()),
                    key: (!group.is_empty()).then(|| rule.key()),
                    endpoints: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn a_group_already_right_needs_no_transaction() {
        let a = Rule::new("forward", "oifname \"b0\" drop");
        let b = Rule::new("postrouting", "masquerade");
        let i = installed(&[("forward", 5, "nat", &a), ("postrouting", 6, "nat", &b)]);
        assert_eq!(
            plan_group("berth_b0", &i, "nat", &[a.clone(), b.clone()], &[]),
            None
        );
        // Another group's rules are not this group's business.
        assert_eq!(
            plan_group("berth_b0", &i, "svc:web", &[], &["published_output"]),
            None
        );
    }

    #[test]
    fn a_differing_group_is_replaced_whole_in_one_transaction() {
        let a = Rule::new("forward", "ct state established,related accept");
        let b = Rule::new("forward", "drop");
        let other = Rule::new("published_output", "tcp dport 1 accept");
        // Wrong order: the drop came first.
        let i = installed(&[
            ("forward", 5, "nat", &b),
            ("forward", 6, "nat", &a),
            ("published_output", 9, "svc:web", &other),
        ]);
        let s = plan_group("berth_b0", &i, "nat", &[a.clone(), b.clone()], &[]).unwrap();
        assert_eq!(
            s,
            format!(
                "delete rule ip berth_b0 forward handle 5\n\
                 delete rule ip berth_b0 forward handle 6\n\
                 add rule ip berth_b0 forward ct state established,related accept comment \"nat {}\"\n\
                 add rule ip berth_b0 forward drop comment \"nat {}\"\n",
                a.key(),
                b.key()
            )
        );
        assert!(!s.contains("handle 9"), "{s}");
    }

    #[test]
    fn strays_in_owned_chains_go_and_a_new_table_is_declared() {
        let a = Rule::new("forward", "drop");
        let i = installed(&[("forward", 3, "", &a), ("published_output", 4, "", &a)]);
        // Same rule present under the group? No: the stray has no comment.
        let s = plan_group(
            "berth_b0",
            &i,
            "nat",
            std::slice::from_ref(&a),
            &["forward"],
        )
        .unwrap();
        assert!(
            s.contains("delete rule ip berth_b0 forward handle 3"),
            "{s}"
        );
        assert!(!s.contains("handle 4"), "{s}");
        assert!(
            s.contains("add rule ip berth_b0 forward drop comment"),
            "{s}"
        );
        let fresh = plan_group("berth_b0", &Installed::default(), "nat", &[a], &[]).unwrap();
        assert!(fresh.starts_with(
            "add table ip berth_b0\nadd chain ip berth_b0 forward { type filter hook forward priority filter; policy accept; }\n"
        ), "{fresh}");
    }

    #[test]
    fn prune_deletes_unkept_and_unmarked_rules_of_the_given_chains() {
        let a = Rule::new("published_output", "tcp dport 1 accept");
        let i = installed(&[
            ("published_output", 3, "svc:web", &a),
            ("published_output", 4, "svc:gone", &a),
            ("published_output", 5, "", &a),
            ("forward", 6, "", &a),
        ]);
        let s = plan_prune("t", &i, &["published_output"], |g| g == "svc:web").unwrap();
        assert_eq!(
            s,
            "delete rule ip t published_output handle 4\ndelete rule ip t published_output handle 5\n"
        );
        assert_eq!(
            plan_prune("t", &i, &["published_output"], |_| true),
            Some("delete rule ip t published_output handle 5\n".into())
        );
        assert_eq!(
            plan_prune("t", &i, &["published_prerouting"], |_| false),
            None
        );
    }
}
