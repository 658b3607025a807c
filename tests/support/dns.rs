//! DNS helpers for the service-discovery tests: a tiny upstream resolver on
//! loopback (the only "outside" the tests may reach) and one-shot queries
//! over UDP and TCP. Messages are built and parsed with hickory-proto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A UDP DNS server on 127.0.0.1 answering A queries for its names (TTL
/// 60) and NXDOMAIN otherwise; it records every name asked. Stops on drop.
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start(names: &[(&str, Ipv4Addr)]) -> FakeUpstream {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let names: Vec<(String, Ipv4Addr)> = names
            .iter()
            .map(|(n, ip)| (n.trim_end_matches('.').to_ascii_lowercase(), *ip))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (asked2, stop2) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut resp = Message::response(q.metadata.id, OpCode::Query);
                resp.metadata.recursion_desired = q.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                for query in &q.queries {
                    let name = query.name().to_string();
                    let key = name.trim_end_matches('.').to_ascii_lowercase();
                    asked2.lock().unwrap().push(key.clone());
                    resp.add_query(query.clone());
                    match names.iter().find(|(n, _)| *n == key) {
                        Some((_, ip)) if query.query_type() == RecordType::A => {
                            resp.add_answer(Record::from_rdata(
                                query.name().clone(),
                                60,
                                RData::A(A(*ip)),
                            ));
                        }
                        Some(_) => {}
                        None => resp.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                let _ = sock.send_to(&resp.to_vec().unwrap(), from);
            }
        });
        FakeUpstream {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    /// Every name asked so far (lower case, no trailing dot).
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn query_message(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = fastrand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn fastrand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u16
}

/// One query over UDP to `server`, from `from` (port 0), 2 s timeout.
pub fn query_udp(
    server: SocketAddr,
    from: IpAddr,
    name: &str,
    rtype: RecordType,
) -> std::io::Result<Message> {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let q = query_message(name, rtype);
    sock.send_to(&q.to_vec().unwrap(), server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf)?;
        let m = Message::from_vec(&buf[..n]).map_err(std::io::Error::other)?;
        if m.metadata.id == q.metadata.id && m.metadata.message_type == MessageType::Response {
            return Ok(m);
        }
    }
}

/// One query over TCP (2-byte length prefix) to `server` from `from`, 2 s timeout.
pub fn query_tcp(
    server: SocketAddr,
    from: IpAddr,
    name: &str,
    rtype: RecordType,
) -> std::io::Result<Message> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(from, 0))?;
        tokio::time::timeout(Duration::from_secs(2), sock.connect(server))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    })?;
    let mut s: TcpStream = stream.into_std()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let q = query_message(name, rtype).to_vec().unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Message::from_vec(&body).map_err(std::io::Error::other)
}

/// The A addresses of an answer, in order.
pub fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
