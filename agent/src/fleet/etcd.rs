//! The fleet's etcd keys and the requests on them (the decisions are in
//! `decide`). Layout under `/berth/fleet/<fleet>/`: `hosts/<group>/<host>`
//! (JSON record; by group, so a host reads only the earlier groups'),
//! `queue/<host>` (the manifest hash; its create revision orders the slot
//! queue), `order/<create revision, 20 digits>/<host>` (a copy of the queue
//! in key order, so a far host counts its place from the index alone),
//! `halted/<hash>` (JSON [`FleetHalt`]), `paused`, `claims/<host>` (the
//! agent instance that holds the host id). Host, queue, order and claim
//! keys are bound to the agent's lease, so they vanish with it. Each agent
//! watches `halted/` and `paused` ([`Conn::watch`]), and the queue's
//! deletions only while it waits near the front ([`Conn::watch_queue`]).

use std::sync::Arc;
use std::time::Duration;

use berth_core::api::{FleetHalt, FleetHostRecord};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchStream,
};

use super::decide::{Cache, Change, QueueEntry, Snapshot};

use super::{FleetConfig, FleetError};

/// A connection to the fleet's etcd with this agent's lease.
#[derive(Clone)]
pub struct Conn {
    client: Client,
    /// The endpoints as configured, comma-separated: errors name them.
    endpoints: Arc<str>,
    /// The lease host and queue keys are bound to.
    pub lease: i64,
    prefix: String,
    host: String,
    group: String,
}

/// What [`Conn::confirm`] read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The etcd revision of the read.
    pub revision: i64,
    /// The hosts of the queue entries created before this host's, oldest
    /// first (at most the limit asked).
    pub ahead: Vec<String>,
    pub paused: bool,
    pub halted: Option<FleetHalt>,
}

/// The order key of the queue entry of `host` created at `create_revision`:
/// zero-padded, so order keys sort as the queue does.
fn order_key(prefix: &str, create_revision: i64, host: &str) -> String {
    format!("{prefix}order/{create_revision:020}/{host}")
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1; // prefixes here end in '/' or a name character
    }
    end
}

fn get_response(op: Option<&TxnOpResponse>) -> Option<&etcd_client::GetResponse> {
    match op {
        Some(TxnOpResponse::Get(g)) => Some(g),
        _ => None,
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("lease", &self.lease)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// How many times a request etcd never received is sent again.
const RESENDS: usize = 6;

/// Whether a request failed before reaching etcd: the member the client
/// picked refused the connection (it is down). The client spreads requests
/// over every endpoint and keeps picking a dead member's for a share of them,
/// so such a request is sent again, most likely to a member that answers;
/// nothing was done, so resending any request is safe.
pub fn unsent(e: &etcd_client::Error) -> bool {
    use std::error::Error as _;
    match e {
        etcd_client::Error::IoError(io) => refused(Some(io)),
        etcd_client::Error::GRpcStatus(s) => refused(s.source()),
        etcd_client::Error::TransportError(t) => refused(t.source()),
        _ => false,
    }
}

/// Whether `source`'s chain has a refused connection.
fn refused(mut source: Option<&(dyn std::error::Error + 'static)>) -> bool {
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Evaluates `$call` (an etcd request, awaited) again while it fails
/// [`unsent`], at most [`RESENDS`] more times.
macro_rules! resend {
    ($call:expr) => {{
        let mut resent = 0;
        loop {
            match $call {
                Err(e) if resent < RESENDS && unsent(&e) => resent += 1,
                r => break r,
            }
        }
    }};
}

/// The error of request `what` to the etcd at `endpoints`.
fn err(endpoints: &Arc<str>, what: &'static str) -> impl FnOnce(etcd_client::Error) -> FleetError {
    let endpoints = endpoints.clone();
    move |source| FleetError::Etcd {
        what,
        endpoints,
        source,
    }
}

/// What an etcd request's failure says to an operator: etcd's own message
/// (`etcdserver: authentication failed, …`) instead of the gRPC wrapping,
/// and for a transport failure its innermost cause (a TLS alert, a refused
/// connection), with a hint when etcd refused the client certificate.
pub fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    match e {
        etcd_client::Error::GRpcStatus(s) => with_cause(s.message().to_string(), s.source()),
        etcd_client::Error::TransportError(t) => with_cause("transport error".into(), t.source()),
        other => with_cause(other.to_string(), None),
    }
}

/// `text`, then the innermost error of `source`'s chain unless `text` says
/// it already, then the client-certificate hint.
fn with_cause(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s);
        source = s.source();
    }
    if let Some(cause) = innermost.map(|c| c.to_string()) {
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    if text.contains("BadCertificate") || text.contains("CertificateRequired") {
        text.push_str(
            " (etcd refused this agent's client certificate or got none: --fleet-etcd-cert, --fleet-etcd-key)",
        );
    }
    text
}

/// The options every connection uses: short timeouts (an unreachable etcd
/// must not stall the agent), credentials and TLS when configured.
pub(super) fn options(config: &FleetConfig) -> Result<ConnectOptions, FleetError> {
    let timeout = config.interval.max(Duration::from_millis(500)) * 2;
    let mut o = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    if let Some((user, password)) = &config.auth {
        o = o.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| FleetError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        o = o.with_tls(t);
    }
    Ok(o)
}

impl Conn {
    /// Connects and grants a lease of the configured TTL.
    pub async fn open(config: &FleetConfig) -> Result<Conn, FleetError> {
        // etcd with --client-cert-auth drops a TLS connection without a
        // client certificate after the handshake, often before it could say
        // why: the error then names what is missing.
        let what = match &config.tls {
            Some(t) if t.cert.is_none() => "connecting over TLS without a client certificate",
            _ => "connecting",
        };
        let endpoints: Arc<str> = config.endpoints.join(",").into();
        let mut client = Client::connect(&config.endpoints, Some(options(config)?))
            .await
            .map_err(err(&endpoints, what))?;
        let ttl = config.lease_ttl.as_secs().max(2) as i64;
        let lease = resend!(client.lease_grant(ttl, None).await)
            .map_err(err(&endpoints, "granting a lease"))?
            .id();
        let conn = Conn {
            client,
            endpoints,
            lease,
            prefix: prefix(&config.name),
            host: config.host.clone(),
            group: config.group.clone(),
        };
        if !config.instance.is_empty() {
            if let Err(e) = conn.clone().claim(&config.name, &config.instance).await {
                // Its keys would never be written: let etcd drop it now
                // (else it expires by itself after the TTL).
                let mut c = conn.client.clone();
                if let Err(revoke) = c.lease_revoke(conn.lease).await {
                    tracing::warn!(lease = conn.lease, error = %describe(&revoke),
                        "cannot revoke the lease of a refused claim; it expires after its TTL");
                }
                return Err(e);
            }
        }
        Ok(conn)
    }

    /// Claims this host id for `instance` under the lease: `claims/<host>`
    /// is created, or taken over when it already names `instance` (this
    /// agent, restarted before its old lease expired). Another instance's
    /// claim refuses with [`FleetError::HostTaken`].
    async fn claim(mut self, fleet: &str, instance: &str) -> Result<(), FleetError> {
        let key = format!("{}claims/{}", self.prefix, self.host);
        let put = TxnOp::put(
            key.clone(),
            instance,
            Some(PutOptions::new().with_lease(self.lease)),
        );
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([put.clone()])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = resend!(self.client.txn(txn.clone()).await)
            .map_err(err(&self.endpoints, "claiming the host id"))?;
        if resp.succeeded() {
            return Ok(());
        }
        let holder = get_response(resp.op_responses().first())
            .and_then(|g| g.kvs().first())
            .map(|kv| kv.value().to_vec());
        if holder.as_deref() == Some(instance.as_bytes()) {
            let take_over = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, instance)])
                .and_then([put]);
            let resp = resend!(self.client.txn(take_over.clone()).await)
                .map_err(err(&self.endpoints, "claiming the host id"))?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(FleetError::HostTaken {
            fleet: fleet.to_string(),
            host: self.host.clone(),
        })
    }

    /// The fleet's key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// Renews the lease once; `Ok(false)` when etcd says it expired.
    pub async fn keep_alive(&mut self) -> Result<bool, FleetError> {
        let (mut keeper, mut stream) = resend!(self.client.lease_keep_alive(self.lease).await)
            .map_err(err(&self.endpoints, "renewing the lease"))?;
        keeper
            .keep_alive()
            .await
            .map_err(err(&self.endpoints, "renewing the lease"))?;
        match stream
            .message()
            .await
            .map_err(err(&self.endpoints, "renewing the lease"))?
        {
            Some(r) => Ok(r.ttl() > 0),
            None => Err(FleetError::Closed),
        }
    }

    /// Revokes the lease: this host's record and queue place go at once.
    pub async fn revoke(mut self) -> Result<(), FleetError> {
        resend!(self.client.lease_revoke(self.lease).await)
            .map_err(err(&self.endpoints, "revoking the lease"))?;
        Ok(())
    }

    /// Reads every key of the fleet at one revision.
    pub async fn snapshot(&mut self) -> Result<Snapshot, FleetError> {
        let resp = resend!(
            self.client
                .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
        )
        .map_err(err(&self.endpoints, "reading the fleet"))?;
        let mut snap = Snapshot::default();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some(rest) = key.strip_prefix(&self.prefix) else {
                continue;
            };
            if rest == "paused" {
                snap.paused = true;
            } else if let Some(host) = rest.strip_prefix("hosts/") {
                match serde_json::from_slice::<FleetHostRecord>(kv.value()) {
                    Ok(r) => snap.hosts.push(r),
                    Err(e) => tracing::warn!(host, error = %e, "unreadable fleet host record"),
                }
            } else if let Some(host) = rest.strip_prefix("queue/") {
                snap.queue.push(QueueEntry {
                    host: host.to_string(),
                    hash: String::from_utf8_lossy(kv.value()).into_owned(),
                    create_revision: kv.create_revision(),
                });
            } else if rest.starts_with("halted/") {
                match serde_json::from_slice::<FleetHalt>(kv.value()) {
                    Ok(h) => snap.halted.push(h),
                    Err(e) => tracing::warn!(key, error = %e, "unreadable fleet halt"),
                }
            }
        }
        snap.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        snap.halted.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snap)
    }

    /// Writes this host's record, bound to the lease.
    pub async fn put_record(&mut self, record: &FleetHostRecord) -> Result<(), FleetError> {
        let value = serde_json::to_vec(record).map_err(FleetError::Json)?;
        resend!(
            self.client
                .put(
                    format!("{}hosts/{}/{}", self.prefix, self.group, self.host),
                    value.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                )
                .await
        )
        .map_err(err(&self.endpoints, "writing the host record"))?;
        Ok(())
    }

    /// Joins the slot queue for `hash`, bound to the lease. An entry already
    /// there keeps its create revision (its place); only its hash changes.
    /// Returns the entry's create revision.
    pub async fn enqueue(&mut self, hash: &str) -> Result<i64, FleetError> {
        let key = format!("{}queue/{}", self.prefix, self.host);
        let put = TxnOp::put(
            key.clone(),
            hash,
            Some(PutOptions::new().with_lease(self.lease)),
        );
        // Create, or update in place with the same lease (a put keeps the
        // create revision); a key of an expired lease is gone already.
        let get = TxnOp::get(key.clone(), None);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([put.clone(), get.clone()])
            .or_else([put, get]);
        let resp = resend!(self.client.txn(txn.clone()).await)
            .map_err(err(&self.endpoints, "joining the slot queue"))?;
        let ops = resp.op_responses();
        let rev = get_response(ops.get(1))
            .and_then(|g| g.kvs().first())
            .map(|kv| kv.create_revision())
            .ok_or(FleetError::Etcd {
                what: "joining the slot queue",
                endpoints: self.endpoints.clone(),
                source: etcd_client::Error::InvalidArgs("no queue entry after the put".into()),
            })?;
        // The order key is written after the entry exists (its name needs the
        // create revision); until then the entry is missing from the hint
        // only, never from `confirm`, which grants.
        resend!(
            self.client
                .put(
                    order_key(&self.prefix, rev, &self.host),
                    "",
                    Some(PutOptions::new().with_lease(self.lease)),
                )
                .await
        )
        .map_err(err(&self.endpoints, "joining the slot queue"))?;
        Ok(rev)
    }

    /// Reads, at one revision, what decides whether the entry created at
    /// `create_revision` holds a slot for `hash`: how many entries are ahead
    /// of it, the pause and `hash`'s halt. The watched cache says when to
    /// ask; this read is what the grant rests on.
    /// At most `limit` entries ahead are read, keys only (etcd's count
    /// ignores the create-revision filter, so the keys are fetched).
    pub async fn confirm(
        &mut self,
        hash: &str,
        create_revision: i64,
        limit: usize,
    ) -> Result<Confirmed, FleetError> {
        let queue = format!("{}queue/", self.prefix);
        let txn = Txn::new().and_then([
            TxnOp::get(
                queue.clone(),
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(&queue))
                        .with_keys_only()
                        .with_max_create_revision(create_revision - 1)
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(limit.max(1) as i64),
                ),
            ),
            TxnOp::get(
                format!("{}paused", self.prefix),
                Some(GetOptions::new().with_count_only()),
            ),
            TxnOp::get(format!("{}halted/{hash}", self.prefix), None),
        ]);
        let resp = resend!(self.client.txn(txn.clone()).await)
            .map_err(err(&self.endpoints, "checking the slot queue"))?;
        let ops = resp.op_responses();
        let count = |i: usize| get_response(ops.get(i)).map(|g| g.count()).unwrap_or(0);
        let ahead = get_response(ops.first())
            .map(|g| {
                g.kvs()
                    .iter()
                    .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&queue).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let halted = get_response(ops.get(2))
            .and_then(|g| g.kvs().first())
            .and_then(|kv| serde_json::from_slice::<FleetHalt>(kv.value()).ok());
        Ok(Confirmed {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ahead,
            paused: count(1) > 0,
            halted,
        })
    }

    /// The records of the hosts in `groups` (one read).
    pub async fn records(&mut self, groups: &[String]) -> Result<Vec<FleetHostRecord>, FleetError> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let ops: Vec<TxnOp> = groups
            .iter()
            .map(|g| {
                let p = format!("{}hosts/{g}/", self.prefix);
                TxnOp::get(
                    p.clone(),
                    Some(GetOptions::new().with_range(prefix_end(&p))),
                )
            })
            .collect();
        let txn = Txn::new().and_then(ops);
        let resp = resend!(self.client.txn(txn.clone()).await)
            .map_err(err(&self.endpoints, "reading the earlier groups"))?;
        let mut out = Vec::new();
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    match serde_json::from_slice::<FleetHostRecord>(kv.value()) {
                        Ok(r) => out.push(r),
                        Err(e) => tracing::warn!(error = %e, "unreadable fleet host record"),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads `halted/` and `paused` at one revision into a [`Cache`] and
    /// opens a watch on them from the next revision; apply its events with
    /// [`changes`].
    pub async fn watch(&mut self) -> Result<(Cache, WatchStream), FleetError> {
        let halted = format!("{}halted/", self.prefix);
        let paused = format!("{}paused", self.prefix);
        let txn = Txn::new().and_then([
            TxnOp::get(
                halted.clone(),
                Some(GetOptions::new().with_range(prefix_end(&halted))),
            ),
            TxnOp::get(paused.clone(), None),
        ]);
        let resp = resend!(self.client.txn(txn.clone()).await)
            .map_err(err(&self.endpoints, "reading the fleet's halts"))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut cache = Cache::new(&self.host, revision);
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix))
                    else {
                        continue;
                    };
                    cache.apply(
                        revision,
                        Change::Put {
                            key: key.to_string(),
                            value: kv.value().to_vec(),
                            create_revision: kv.create_revision(),
                        },
                    );
                }
            }
        }
        let from = revision + 1;
        let mut stream = self
            .client
            .watch(
                halted.clone(),
                Some(
                    WatchOptions::new()
                        .with_range(prefix_end(&halted))
                        .with_start_revision(from),
                ),
            )
            .await
            .map_err(err(&self.endpoints, "watching the fleet"))?;
        stream
            .watch(paused, Some(WatchOptions::new().with_start_revision(from)))
            .await
            .map_err(err(&self.endpoints, "watching the fleet"))?;
        Ok((cache, stream))
    }

    /// Watches the queue's deletions from revision `from` (a waiting host
    /// near the front: an entry ahead of it leaving moves it up).
    pub async fn watch_queue(&mut self, from: i64) -> Result<WatchStream, FleetError> {
        let queue = format!("{}queue/", self.prefix);
        self.client
            .watch(
                queue.clone(),
                Some(
                    WatchOptions::new()
                        .with_range(prefix_end(&queue))
                        .with_start_revision(from)
                        .with_filters([WatchFilterType::NoPut]),
                ),
            )
            .await
            .map_err(err(&self.endpoints, "watching the slot queue"))
    }

    /// Leaves the slot queue (releases the slot if held), entry then order key.
    pub async fn dequeue(&mut self) -> Result<(), FleetError> {
        let resp = resend!(
            self.client
                .delete(
                    format!("{}queue/{}", self.prefix, self.host),
                    Some(DeleteOptions::new().with_prev_key()),
                )
                .await
        )
        .map_err(err(&self.endpoints, "leaving the slot queue"))?;
        for kv in resp.prev_kvs() {
            let key = order_key(&self.prefix, kv.create_revision(), &self.host);
            resend!(self.client.delete(key.clone(), None).await)
                .map_err(err(&self.endpoints, "leaving the slot queue"))?;
        }
        Ok(())
    }

    /// About how many queue entries are ahead of the one created at
    /// `create_revision`: a count of the order keys below its own, from
    /// etcd's index only (no values read, no sort), served by the member
    /// asked (serializable). A hint that tells a host far back to wait; it
    /// misses entries whose order key is not yet written, so a slot is only
    /// ever granted on [`Conn::confirm`].
    pub async fn ahead_hint(&mut self, create_revision: i64) -> Result<usize, FleetError> {
        let start = format!("{}order/", self.prefix);
        let end = order_key(&self.prefix, create_revision, "");
        let resp = resend!(
            self.client
                .get(
                    start.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_count_only()
                            .with_serializable(),
                    ),
                )
                .await
        )
        .map_err(err(&self.endpoints, "counting the slot queue"))?;
        Ok(usize::try_from(resp.count()).unwrap_or(usize::MAX))
    }

    /// Marks `halt.hash` halted unless it already is (the first failure's
    /// host and reason stay). Not lease-bound: it outlives the host.
    pub async fn halt(&mut self, halt: &FleetHalt) -> Result<(), FleetError> {
        let key = format!("{}halted/{}", self.prefix, halt.hash);
        let value = serde_json::to_vec(halt).map_err(FleetError::Json)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        resend!(self.client.txn(txn.clone()).await)
            .map_err(err(&self.endpoints, "halting the manifest"))?;
        Ok(())
    }

    /// Pauses the whole fleet (`on`) or clears the pause and every halt.
    pub async fn set_paused(&mut self, on: bool) -> Result<(), FleetError> {
        let key = format!("{}paused", self.prefix);
        if on {
            resend!(self.client.put(key.clone(), self.host.clone(), None).await)
                .map_err(err(&self.endpoints, "pausing the fleet"))?;
        } else {
            let txn = Txn::new().and_then([
                TxnOp::delete(key, None),
                TxnOp::delete(
                    format!("{}halted/", self.prefix),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
            ]);
            resend!(self.client.txn(txn.clone()).await)
                .map_err(err(&self.endpoints, "resuming the fleet"))?;
        }
        Ok(())
    }
}

/// The changes of one watch response, keys relative to `prefix`, with the
/// revision each was made at; `None` when the watch was canceled (compacted
/// past its start: read again).
pub fn changes(prefix: &str, resp: &etcd_client::WatchResponse) -> Option<Vec<(i64, Change)>> {
    if resp.canceled() {
        return None;
    }
    let mut out = Vec::new();
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) else {
            continue;
        };
        let key = key.to_string();
        let change = match ev.event_type() {
            EventType::Put => Change::Put {
                key,
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
            },
            EventType::Delete => Change::Delete { key },
        };
        out.push((kv.mod_revision(), change));
    }
    Some(out)
}

/// The key prefix of fleet `name`.
pub fn prefix(name: &str) -> String {
    format!("/berth/fleet/{name}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with an optional cause, like tonic's and hyper's.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    /// An error whose cause is any error (an `io::Error` here).
    #[derive(Debug)]
    struct Over(Box<dyn std::error::Error + Send + Sync + 'static>);

    impl std::fmt::Display for Over {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport")
        }
    }

    impl std::error::Error for Over {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn only_a_refused_connection_is_resent() {
        use std::io::{Error, ErrorKind};
        let refused_deep = Over(Box::new(Over(Box::new(Error::from(
            ErrorKind::ConnectionRefused,
        )))));
        let timed_out = Over(Box::new(Error::from(ErrorKind::TimedOut)));
        assert!(refused(Some(&refused_deep)));
        assert!(
            !refused(Some(&timed_out)),
            "a timeout may have reached etcd"
        );
        assert!(!refused(Some(&Layer(
            "Connection refused, said as text",
            None
        ))));
        assert!(!refused(None));
        assert!(unsent(&etcd_client::Error::IoError(Error::from(
            ErrorKind::ConnectionRefused
        ))));
        assert!(!unsent(&etcd_client::Error::InvalidArgs("x".into())));
    }

    #[test]
    fn an_etcd_failure_names_its_innermost_cause() {
        let alert = Layer(
            "transport",
            Some(Box::new(Layer(
                "connection error",
                Some(Box::new(Layer(
                    "received fatal alert: BadCertificate",
                    None,
                ))),
            ))),
        );
        let refused = Layer(
            "transport",
            Some(Box::new(Layer("Connection refused (os error 111)", None))),
        );
        let cases: [(&str, Option<&(dyn std::error::Error + 'static)>, &str); 4] = [
            (
                "etcdserver: authentication failed, invalid user ID or password",
                None,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                "transport error",
                Some(&alert),
                "transport error: received fatal alert: BadCertificate (etcd refused this agent's client certificate or got none: --fleet-etcd-cert, --fleet-etcd-key)",
            ),
            (
                "transport error",
                Some(&refused),
                "transport error: Connection refused (os error 111)",
            ),
            (
                "Timeout expired",
                Some(&Layer("Timeout expired", None)),
                "Timeout expired",
            ),
        ];
        for (text, source, want) in cases {
            assert_eq!(with_cause(text.to_string(), source), want);
        }
        assert_eq!(
            describe(&etcd_client::Error::InvalidArgs("x".into())),
            "invalid arguments: x"
        );
    }
}
