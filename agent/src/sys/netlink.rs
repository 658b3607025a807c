//! A minimal synchronous rtnetlink client (`NETLINK_ROUTE`): create bridges and
//! veth pairs (the peer directly in another network namespace), set flags and
//! masters, add addresses and routes, look up, dump and delete links; and, on
//! a `NETLINK_NETFILTER` socket, delete one conntrack entry. Messages are
//! built as plain byte buffers; the socket belongs to the network namespace
//! of the thread that opened it, so one socket per namespace is enough.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, connect, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_ACK_TLVS: u16 = 0x200;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IF_OPER_UP: u8 = 6;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

/// ctnetlink (`linux/netfilter/nfnetlink_conntrack.h`).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// One link as reported by a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Index of the bridge (or bond) the link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND`, e.g. `veth`, `bridge`.
    pub kind: Option<String>,
    pub up: bool,
}

/// One IPv4 route of the main table as reported by a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// The original direction of a conntrack entry (what the client sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackTuple {
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// A request under construction: netlink header, fixed header, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; NLMSG_HDR];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Msg { buf }
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    /// `struct ifinfomsg`.
    fn ifinfo(mut self, index: u32, flags: u32, change: u32) -> Msg {
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(index as i32).to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
        self
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }

    fn begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// Iterates `(type, payload)` over the attributes in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty, data))
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn cstr(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

/// A `NETLINK_ROUTE` socket bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        Netlink::open_protocol(SockProtocol::NetlinkRoute)
    }

    /// Opens a `NETLINK_NETFILTER` socket (for [`Netlink::delete_conntrack`]).
    pub fn open_netfilter() -> io::Result<Netlink> {
        Netlink::open_protocol(SockProtocol::NetlinkNetFilter)
    }

    fn open_protocol(protocol: SockProtocol) -> io::Result<Netlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: valid socket fd; `one` is a c_int that outlives the call and
            // its exact size is passed. Failure (old kernel) is harmless: acks
            // then carry the request and no message, which we tolerate.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // Connected to the kernel (port 0), so plain send() works.
        connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Sends `msg` and collects every reply message (payload after the
    /// netlink header) until the ack or `NLMSG_DONE`.
    fn exchange(&mut self, msg: Msg) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty())?;
        let mut out = Vec::new();
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDR {
                let len = u32_at(rest, 0) as usize;
                if len < NLMSG_HDR || len > rest.len() {
                    return Err(invalid("truncated message"));
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let mseq = u32_at(rest, 8);
                let payload = &rest[NLMSG_HDR..len];
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        if payload.len() < 4 {
                            return Err(invalid("short error message"));
                        }
                        let errno = -(u32_at(payload, 0) as i32);
                        if errno == 0 {
                            return Ok(out);
                        }
                        let os = io::Error::from_raw_os_error(errno);
                        let ext = if flags & NLM_F_ACK_TLVS != 0 && payload.len() > 4 + NLMSG_HDR {
                            attrs(&payload[4 + NLMSG_HDR..])
                                .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                                .map(|(_, d)| cstr(d))
                        } else {
                            None
                        };
                        return Err(match ext {
                            Some(m) => io::Error::new(os.kind(), format!("{os}: {m}")),
                            None => os,
                        });
                    }
                    _ => {
                        out.push((ty, payload.to_vec()));
                        if flags & NLM_F_MULTI == 0 && out.len() == 1 {
                            // A single reply (GET by name) is followed by no ack.
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// The index of link `name`, or `None` when it does not exist.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut m = Msg::new(RTM_GETLINK, 0).ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        match self.exchange(m) {
            Ok(replies) => match replies.first() {
                Some((_, p)) if p.len() >= 16 => Ok(Some(u32_at(p, 4))),
                _ => Err(invalid("no link in reply")),
            },
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether link `index` is operationally up: the kernel's link watcher has
    /// seen its carrier, activated its queueing discipline (until then packets
    /// are dropped) and told its bridge to enable the port.
    pub fn oper_up(&mut self, index: u32) -> io::Result<bool> {
        let m = Msg::new(RTM_GETLINK, 0).ifinfo(index, 0, 0);
        let replies = self.exchange(m)?;
        let Some((_, p)) = replies.first().filter(|(_, p)| p.len() >= 16) else {
            return Err(invalid("no link in reply"));
        };
        let up =
            attrs(&p[16..]).any(|(t, d)| t == IFLA_OPERSTATE && d.first() == Some(&IF_OPER_UP));
        Ok(up)
    }

    /// Creates bridge `name` with a fixed MAC address (so it does not change as
    /// ports come and go). `Ok(false)` when it already existed.
    pub fn create_bridge(&mut self, name: &str, mac: [u8; 6]) -> io::Result<bool> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        m.attr(IFLA_ADDRESS, &mac);
        let li = m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.end(li);
        match self.exchange(m) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair: `host` here, up and enslaved to `master`; `peer`
    /// created directly in the network namespace `peer_ns`, down (the kernel
    /// refuses to open a veth end before both ends are linked: `ENOTCONN`).
    pub fn create_veth(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).ifinfo(0, up, up);
        m.attr_str(IFLA_IFNAME, host);
        m.attr(IFLA_MASTER, &master.to_ne_bytes());
        let li = m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        let data = m.begin(IFLA_INFO_DATA);
        let p = m.begin(VETH_INFO_PEER);
        // The peer's own `struct ifinfomsg` precedes its attributes.
        m.buf.push(libc::AF_UNSPEC as u8);
        m.buf.push(0);
        m.buf.extend_from_slice(&0u16.to_ne_bytes());
        m.buf.extend_from_slice(&0i32.to_ne_bytes());
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.attr_str(IFLA_IFNAME, peer);
        m.attr(IFLA_NET_NS_FD, &(peer_ns.as_raw_fd() as u32).to_ne_bytes());
        m.end(p);
        m.end(data);
        m.end(li);
        self.exchange(m).map(drop)
    }

    /// Sets `IFF_UP` on link `index`.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK).ifinfo(index, up, up);
        self.exchange(m).map(drop)
    }

    /// Deletes the IPv4 conntrack entry whose original direction is `t`
    /// (a netfilter socket); `Ok(false)` when there was none.
    pub fn delete_conntrack(&mut self, t: &ConntrackTuple) -> io::Result<bool> {
        let mut m = Msg::new(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            NLM_F_ACK,
        );
        // struct nfgenmsg: family, version, res_id (big endian).
        m.buf.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        let orig = m.begin(CTA_TUPLE_ORIG);
        let ip = m.begin(CTA_TUPLE_IP);
        m.attr(CTA_IP_V4_SRC, &t.src.octets());
        m.attr(CTA_IP_V4_DST, &t.dst.octets());
        m.end(ip);
        let proto = m.begin(CTA_TUPLE_PROTO);
        m.attr(CTA_PROTO_NUM, &[t.protocol]);
        m.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        m.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        m.end(proto);
        m.end(orig);
        match self.exchange(m) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes link `name`; `Ok(false)` when there was none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Msg::new(RTM_DELLINK, NLM_F_ACK).ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        match self.exchange(m) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds (or replaces) `addr/prefix_len` on link `index`.
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
        m.buf
            .extend_from_slice(&[libc::AF_INET as u8, prefix_len, 0, 0]);
        m.buf.extend_from_slice(&index.to_ne_bytes());
        m.attr(IFA_LOCAL, &addr.octets());
        m.attr(IFA_ADDRESS, &addr.octets());
        if prefix_len < 31 {
            let host_mask = u32::MAX >> prefix_len;
            let bcast = Ipv4Addr::from(u32::from(addr) | host_mask);
            m.attr(IFA_BROADCAST, &bcast.octets());
        }
        self.exchange(m).map(drop)
    }

    /// IPv4 addresses (with prefix length) on link `index`.
    pub fn addrs(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
        m.buf
            .extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        for (ty, p) in self.exchange(m)? {
            if ty != RTM_NEWADDR || p.len() < 8 || u32_at(&p, 4) != index {
                continue;
            }
            if let Some(a) = attrs(&p[8..])
                .find(|(t, _)| *t == IFA_LOCAL)
                .and_then(|(_, d)| ipv4(d))
            {
                out.push((a, p[1]));
            }
        }
        Ok(out)
    }

    /// Adds the default route via `gateway` on link `oif`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, oif: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        m.buf.extend_from_slice(&[
            libc::AF_INET as u8,
            0, // dst_len
            0, // src_len
            0, // tos
            libc::RT_TABLE_MAIN,
            libc::RTPROT_BOOT,
            libc::RT_SCOPE_UNIVERSE,
            libc::RTN_UNICAST,
        ]);
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.attr(RTA_GATEWAY, &gateway.octets());
        m.attr(RTA_OIF, &oif.to_ne_bytes());
        self.exchange(m).map(drop)
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        m.buf
            .extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0]);
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        for (ty, p) in self.exchange(m)? {
            if ty != RTM_NEWROUTE || p.len() < 12 || p[4] != libc::RT_TABLE_MAIN {
                continue;
            }
            let mut r = Route {
                dst: Ipv4Addr::UNSPECIFIED,
                dst_len: p[1],
                gateway: None,
                oif: None,
            };
            for (t, d) in attrs(&p[12..]) {
                match t {
                    RTA_DST => r.dst = ipv4(d).unwrap_or(r.dst),
                    RTA_GATEWAY => r.gateway = ipv4(d),
                    RTA_OIF if d.len() == 4 => r.oif = Some(u32_at(d, 0)),
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let m = Msg::new(RTM_GETLINK, NLM_F_DUMP).ifinfo(0, 0, 0);
        let mut out = Vec::new();
        for (ty, p) in self.exchange(m)? {
            if ty != RTM_NEWLINK || p.len() < 16 {
                continue;
            }
            let mut link = Link {
                index: u32_at(&p, 4),
                name: String::new(),
                master: None,
                kind: None,
                up: u32_at(&p, 8) & libc::IFF_UP as u32 != 0,
            };
            for (t, d) in attrs(&p[16..]) {
                match t {
                    IFLA_IFNAME => link.name = cstr(d),
                    IFLA_MASTER if d.len() == 4 => link.master = Some(u32_at(d, 0)),
                    IFLA_LINKINFO => {
                        link.kind = attrs(d)
                            .find(|(k, _)| *k == IFLA_INFO_KIND)
                            .map(|(_, v)| cstr(v));
                    }
                    _ => {}
                }
            }
            out.push(link);
        }
        Ok(out)
    }
}

impl AsFd for Netlink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nested_attributes_are_length_prefixed_and_padded() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK).ifinfo(7, 1, 1);
        let li = m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        m.end(li);
        let b = m.finish(9);
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        assert_eq!(u32_at(&b, 8), 9);
        assert_eq!(u32_at(&b, NLMSG_HDR + 4), 7);
        let parsed: Vec<_> = attrs(&b[NLMSG_HDR + 16..]).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, IFLA_LINKINFO);
        let inner: Vec<_> = attrs(parsed[0].1).collect();
        assert_eq!(inner, vec![(IFLA_INFO_KIND, &b"veth\0"[..])]);
        assert_eq!(b.len() % 4, 0);
    }
}
