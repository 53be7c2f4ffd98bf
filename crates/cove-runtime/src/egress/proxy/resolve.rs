//! A minimal DNS client for the egress proxy: the IPv4 addresses of a name, asked of the
//! host's name servers over UDP and remembered for their TTL. The proxy resolves the names
//! it lets through itself (rather than trusting an address the sandbox looked up), so the
//! name it decided on is the name it connects to.
//!
//! Replies are written by name servers the host trusts, but travel over UDP: a reply counts
//! only when it comes from the server asked (a connected socket on a random port), carries
//! the query's random id and repeats its question. Nothing in a reply can make the parser
//! panic, index out of bounds or loop.

use std::{
    collections::HashMap,
    fmt, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Shortest time an answer is remembered (a TTL of 0 would ask again for every connection).
const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time an answer is remembered, whatever its TTL (addresses of services move).
const MAX_TTL: Duration = Duration::from_secs(300);
/// Most names remembered.
const MAX_CACHED: usize = 4096;
/// Most compression pointers followed in one name (a loop of pointers ends here).
const MAX_JUMPS: usize = 64;
/// Most CNAME links followed from the name asked for.
const MAX_CHAIN: usize = 16;
/// Longest name on the wire, its final zero byte included (RFC 1035 §2.3.4).
const MAX_WIRE_NAME: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// Receive buffer: a reply without EDNS is at most 512 bytes; a larger one is still read.
const MAX_REPLY: usize = 4096;
/// Bytes of a DNS header.
const HEADER: usize = 12;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
/// Flags of a query: recursion desired.
const FLAG_RD: u16 = 0x0100;
/// Flags of a reply: this is a response.
const FLAG_QR: u16 = 0x8000;
/// Flags of a reply: the answer did not fit.
const FLAG_TC: u16 = 0x0200;
const RCODE_NXDOMAIN: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("`{name}` is not a host name that can be looked up")]
    BadName { name: String },
    #[error("no name server to ask for `{name}`")]
    NoServers { name: String },
    #[error("cannot draw a random query id")]
    Random(#[source] io::Error),
    #[error("cannot ask the name server {server} for `{name}`")]
    Io {
        name: String,
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("`{name}` does not exist (NXDOMAIN)")]
    NotFound { name: String },
    #[error("`{name}` has no IPv4 address")]
    NoAnswer { name: String },
    #[error("the name server {server} refused to look up `{name}` (rcode {rcode})")]
    Refused {
        name: String,
        server: SocketAddr,
        rcode: u8,
    },
    #[error("the name server {server} did not answer for `{name}` in time")]
    TimedOut { name: String, server: SocketAddr },
    #[error(
        "the name server {server} sent a truncated answer for `{name}` (asking again over TCP is not supported)"
    )]
    Truncated { name: String, server: SocketAddr },
    #[error("the name server {server} sent a malformed answer for `{name}`: {reason}")]
    BadReply {
        name: String,
        server: SocketAddr,
        reason: &'static str,
    },
}

/// Asks name servers for IPv4 addresses, over UDP, and remembers answers for their TTL
/// (clamped to 5..=300 s).
///
/// A reply with the truncation flag is an error ([`ResolveError::Truncated`]): asking again
/// over TCP is not implemented, as a name's A records fit in a 512-byte reply unless it has
/// dozens of them. Failures are not remembered, and threads that miss the cache for the same
/// name at once each ask.
#[derive(Debug)]
pub struct Resolver {
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    servers: Vec<SocketAddr>,
    cache: Cache,
}

impl Resolver {
    /// `servers`: tried in order, each with `timeout`, until one answers.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self {
            timeout,
            state: Mutex::new(State {
                servers,
                cache: Cache::default(),
            }),
        }
    }

    /// Replaces the name servers (the host's resolv.conf changed); keeps the cache.
    pub fn set_servers(&self, servers: Vec<SocketAddr>) {
        self.state().servers = servers;
    }

    /// The IPv4 addresses of `name` (a cached answer while its TTL lasts).
    ///
    /// A server that fails (no answer in time, a refusal, a malformed or truncated reply)
    /// passes the question to the next; a name that does not exist, or has no IPv4 address,
    /// is an answer and ends the search. An IP address literal is a name like any other here:
    /// the caller handles literals itself.
    pub fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, ResolveError> {
        let qname = Name::from_text(name).ok_or_else(|| ResolveError::BadName {
            name: name.to_owned(),
        })?;
        let key = qname.to_string();
        let servers = {
            let state = self.state();
            if let Some(addrs) = state.cache.get(&key, Instant::now()) {
                return Ok(addrs);
            }
            state.servers.clone()
        };
        let mut failure = ResolveError::NoServers { name: key.clone() };
        for server in servers {
            match self.ask(server, &qname) {
                Ok(answer) => {
                    let ttl = Duration::from_secs(answer.ttl.into()).clamp(MIN_TTL, MAX_TTL);
                    let mut state = self.state();
                    state
                        .cache
                        .insert(key, answer.addrs.clone(), ttl, Instant::now());
                    return Ok(answer.addrs);
                }
                Err(err @ (ResolveError::NotFound { .. } | ResolveError::NoAnswer { .. })) => {
                    return Err(err);
                }
                Err(err) => {
                    tracing::debug!(%server, error = %err, "name server failed, asking the next");
                    failure = err;
                }
            }
        }
        Err(failure)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is whole between statements; a thread that panicked left nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks `server` once, waiting up to the timeout for its reply.
    fn ask(&self, server: SocketAddr, qname: &Name) -> Result<Answer, ResolveError> {
        let name = || qname.to_string();
        let io = |source| ResolveError::Io {
            name: name(),
            server,
            source,
        };
        let id = query_id()?;
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(io)?;
        // Connected: the kernel drops datagrams from anyone but the server.
        socket.connect(server).map_err(io)?;
        socket.send(&query(id, qname)).map_err(io)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0; MAX_REPLY];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ResolveError::TimedOut {
                    name: name(),
                    server,
                });
            }
            socket.set_read_timeout(Some(left)).map_err(io)?;
            let len = match socket.recv(&mut buf) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue; // the deadline check above decides
                }
                Err(err) => return Err(io(err)),
            };
            let reply = match parse_reply(&buf[..len], id, qname) {
                Ok(Some(reply)) => reply,
                Ok(None) => continue, // not the reply to this query
                Err(Malformed(reason)) => {
                    return Err(ResolveError::BadReply {
                        name: name(),
                        server,
                        reason,
                    });
                }
            };
            return match reply {
                Reply::Truncated => Err(ResolveError::Truncated {
                    name: name(),
                    server,
                }),
                Reply::Rcode(RCODE_NXDOMAIN) => Err(ResolveError::NotFound { name: name() }),
                Reply::Rcode(rcode) => Err(ResolveError::Refused {
                    name: name(),
                    server,
                    rcode,
                }),
                Reply::Answer(answer) if answer.addrs.is_empty() => {
                    Err(ResolveError::NoAnswer { name: name() })
                }
                Reply::Answer(answer) => Ok(answer),
            };
        }
    }
}

/// A random query id: with the random source port, what an off-path forger must guess.
fn query_id() -> Result<u16, ResolveError> {
    let mut id = [0; 2];
    let len = rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())
        .map_err(|err| ResolveError::Random(err.into()))?;
    if len != id.len() {
        return Err(ResolveError::Random(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(u16::from_ne_bytes(id))
}

/// A name in wire form without its final zero byte (length-prefixed labels), lowercased so
/// that equal names compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name(Vec<u8>);

impl Name {
    /// `text` (one trailing dot allowed) as a name; `None` unless every label is 1 to 63
    /// letters, digits, `-` or `_` and the name fits on the wire.
    fn from_text(text: &str) -> Option<Self> {
        let text = text.strip_suffix('.').unwrap_or(text);
        let mut wire = Vec::with_capacity(text.len() + 1);
        for label in text.split('.') {
            let valid = (1..=MAX_LABEL).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return None;
            }
            wire.push(u8::try_from(label.len()).ok()?);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        (wire.len() < MAX_WIRE_NAME).then_some(Self(wire))
    }
}

impl fmt::Display for Name {
    /// Dotted text; bytes other than letters, digits, `-` and `_` (which a reply may carry)
    /// are escaped as `\DDD`, as in zone files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = &self.0[..];
        let mut first = true;
        while let Some((&len, after)) = rest.split_first() {
            let (label, after) = after.split_at(usize::from(len).min(after.len()));
            if !first {
                f.write_str(".")?;
            }
            first = false;
            for &b in label {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    write!(f, "{}", char::from(b))?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            rest = after;
        }
        Ok(())
    }
}

/// The query for the A records of `qname`: one question, recursion desired, no EDNS.
fn query(id: u16, qname: &Name) -> Vec<u8> {
    let mut msg = Vec::with_capacity(HEADER + qname.0.len() + 5);
    msg.extend(id.to_be_bytes());
    msg.extend(FLAG_RD.to_be_bytes());
    msg.extend([0, 1, 0, 0, 0, 0, 0, 0]); // one question; no answer, authority, additional
    msg.extend(&qname.0);
    msg.push(0);
    msg.extend(TYPE_A.to_be_bytes());
    msg.extend(CLASS_IN.to_be_bytes());
    msg
}

/// A reply that breaks the DNS message format, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed(&'static str);

/// What a reply to our query says.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// The answer did not fit (the TC flag).
    Truncated,
    /// An error code other than 0.
    Rcode(u8),
    /// The addresses (none: the name has no A record) and how long they hold.
    Answer(Answer),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    addrs: Vec<Ipv4Addr>,
    /// Seconds: the least TTL of the records used (A records and the CNAMEs leading to them).
    ttl: u32,
}

/// One resource record of the answer section, as far as the client cares.
struct Record {
    owner: Name,
    class: u16,
    ttl: u32,
    rdata: Rdata,
}

enum Rdata {
    A(Ipv4Addr),
    Cname(Name),
    Other,
}

/// `msg` as the reply to query `id` for the A records of `qname`: `None` when it is not (a
/// stray or forged datagram; the caller keeps waiting).
///
/// The addresses are the A records whose owner is `qname` or a name of the CNAME chain that
/// starts at it (in any order within the answer section); other A records a server adds are
/// not used.
fn parse_reply(msg: &[u8], id: u16, qname: &Name) -> Result<Option<Reply>, Malformed> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16().ok() != Some(id) {
        return Ok(None);
    }
    let flags = r.u16()?;
    if flags & FLAG_QR == 0 {
        return Ok(None);
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(Malformed("a reply to another kind of query (opcode)"));
    }
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    r.u16()?; // authority records, not read
    r.u16()?; // additional records, not read
    if qdcount != 1 {
        return Ok(None);
    }
    let (question, next) = read_name(msg, r.pos)?;
    r.pos = next;
    let (qtype, qclass) = (r.u16()?, r.u16()?);
    if question != *qname || qtype != TYPE_A || qclass != CLASS_IN {
        return Ok(None);
    }
    if flags & FLAG_TC != 0 {
        return Ok(Some(Reply::Truncated));
    }
    let rcode = (flags & 0xf) as u8;
    if rcode != 0 {
        return Ok(Some(Reply::Rcode(rcode)));
    }
    let mut records = Vec::new();
    for _ in 0..ancount {
        records.push(r.record()?);
    }
    Ok(Some(Reply::Answer(follow(qname, &records))))
}

/// What [`Resolver::lookup`] reads in `msg` as the reply to query `id` for the A records
/// of `name`: `Ok(None)` when it is not that reply, the addresses when it is (none for a
/// truncated reply or an error code), or why it is malformed. For the fuzz target.
pub fn read_reply(msg: &[u8], id: u16, name: &str) -> Result<Option<Vec<Ipv4Addr>>, &'static str> {
    let qname = Name::from_text(name).ok_or("not a name that can be asked")?;
    match parse_reply(msg, id, &qname) {
        Ok(None) => Ok(None),
        Ok(Some(Reply::Answer(answer))) => Ok(Some(answer.addrs)),
        Ok(Some(Reply::Truncated | Reply::Rcode(_))) => Ok(Some(Vec::new())),
        Err(Malformed(reason)) => Err(reason),
    }
}

/// The A records of `qname` and of the names its CNAME chain leads to.
fn follow(qname: &Name, records: &[Record]) -> Answer {
    let mut chain = vec![qname];
    let mut ttl = u32::MAX;
    for _ in 0..MAX_CHAIN {
        let Some(last) = chain.last() else { break };
        let next = records.iter().find_map(|record| match &record.rdata {
            Rdata::Cname(target) if record.owner == **last && record.class == CLASS_IN => {
                Some((target, record.ttl))
            }
            _ => None,
        });
        match next {
            Some((target, link_ttl)) if !chain.contains(&target) => {
                chain.push(target);
                ttl = ttl.min(link_ttl);
            }
            _ => break,
        }
    }
    let mut addrs = Vec::new();
    for record in records {
        if let Rdata::A(addr) = record.rdata
            && record.class == CLASS_IN
            && chain.contains(&&record.owner)
        {
            ttl = ttl.min(record.ttl);
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    Answer { addrs, ttl }
}

/// Reads a DNS message from `pos` on.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Malformed("a length overflows"))?;
        let bytes = self
            .msg
            .get(self.pos..end)
            .ok_or(Malformed("the reply ends inside a record"))?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn record(&mut self) -> Result<Record, Malformed> {
        let (owner, next) = read_name(self.msg, self.pos)?;
        self.pos = next;
        let rtype = self.u16()?;
        let class = self.u16()?;
        // RFC 2181 §8: a TTL with the top bit set is read as 0.
        let ttl = match self.u32()? {
            ttl if ttl > i32::MAX as u32 => 0,
            ttl => ttl,
        };
        let len = usize::from(self.u16()?);
        let start = self.pos;
        let data = self.take(len)?;
        let rdata = match rtype {
            TYPE_A => {
                let octets: [u8; 4] = data
                    .try_into()
                    .map_err(|_| Malformed("an A record is not 4 bytes"))?;
                Rdata::A(Ipv4Addr::from(octets))
            }
            TYPE_CNAME => {
                let (target, end) = read_name(self.msg, start)?;
                if end != self.pos {
                    return Err(Malformed("a CNAME's name does not fill its record"));
                }
                Rdata::Cname(target)
            }
            _ => Rdata::Other,
        };
        Ok(Record {
            owner,
            class,
            ttl,
            rdata,
        })
    }
}

/// The name at `pos` of `msg`, following compression pointers (at most [`MAX_JUMPS`]), and
/// where the bytes after it start.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(Name, usize), Malformed> {
    const ENDS: Malformed = Malformed("a name runs past the end of the reply");
    let mut wire = Vec::new();
    let mut after = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or(ENDS)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok((Name(wire), after.unwrap_or(pos + 1))),
            0x00 => {
                let label = msg.get(pos + 1..pos + 1 + usize::from(len)).ok_or(ENDS)?;
                wire.push(len);
                wire.extend(label.iter().map(u8::to_ascii_lowercase));
                if wire.len() >= MAX_WIRE_NAME {
                    return Err(Malformed("a name is longer than 255 bytes"));
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(ENDS)?;
                after.get_or_insert(pos + 2);
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(Malformed("too many compression pointers in a name"));
                }
                pos = usize::from(u16::from_be_bytes([len & 0x3f, low]));
            }
            _ => return Err(Malformed("a label of an unknown type")),
        }
    }
}

/// Answers by name, each until it expires.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<String, Cached>,
    /// Counts insertions, to tell the oldest entry.
    stored: u64,
}

#[derive(Debug)]
struct Cached {
    addrs: Vec<Ipv4Addr>,
    expires: Instant,
    stored: u64,
}

impl Cache {
    fn get(&self, key: &str, now: Instant) -> Option<Vec<Ipv4Addr>> {
        self.entries
            .get(key)
            .filter(|entry| entry.expires > now)
            .map(|entry| entry.addrs.clone())
    }

    /// Remembers `addrs` for `ttl`; when full, drops the expired answers, or else the oldest.
    fn insert(&mut self, key: String, addrs: Vec<Ipv4Addr>, ttl: Duration, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_CACHED {
            self.entries.retain(|_, entry| entry.expires > now);
            if self.entries.len() >= MAX_CACHED {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.stored)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.stored += 1;
        let entry = Cached {
            addrs,
            expires: now + ttl,
            stored: self.stored,
        };
        self.entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use cove_test_util::name_server::NameServer;

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_text(text).unwrap()
    }

    /// Builds replies by hand.
    struct Msg(Vec<u8>);

    impl Msg {
        /// A header and the question for `qname` type A.
        fn reply(id: u16, flags: u16, ancount: u16, qname: &str) -> Self {
            let mut msg = id.to_be_bytes().to_vec();
            msg.extend((FLAG_QR | flags).to_be_bytes());
            msg.extend([0, 1]);
            msg.extend(ancount.to_be_bytes());
            msg.extend([0, 0, 0, 0]);
            msg.extend(&name(qname).0);
            msg.push(0);
            msg.extend([0, 1, 0, 1]);
            Msg(msg)
        }

        /// A record whose owner is given by raw wire bytes (labels or pointers).
        fn record(mut self, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Self {
            self.0.extend(owner);
            self.0.extend(rtype.to_be_bytes());
            self.0.extend(CLASS_IN.to_be_bytes());
            self.0.extend(ttl.to_be_bytes());
            self.0.extend((rdata.len() as u16).to_be_bytes());
            self.0.extend(rdata);
            self
        }
    }

    /// `text` in wire form with its final zero byte.
    fn wire(text: &str) -> Vec<u8> {
        let mut wire = name(text).0;
        wire.push(0);
        wire
    }

    /// A pointer to the question's name.
    const QNAME: [u8; 2] = [0xc0, HEADER as u8];

    fn answer(addrs: &[[u8; 4]], ttl: u32) -> Option<Reply> {
        Some(Reply::Answer(Answer {
            addrs: addrs.iter().map(|&a| Ipv4Addr::from(a)).collect(),
            ttl,
        }))
    }

    #[test]
    fn query_asks_one_question_for_an_a_record() {
        let msg = query(0xbeef, &name("PyPI.org."));
        assert_eq!(
            msg,
            [
                &[0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
                b"\x04pypi\x03org\x00",
                &[0, 1, 0, 1],
            ]
            .concat()
        );
        let (question, end) = read_name(&msg, HEADER).unwrap();
        assert_eq!(question, name("pypi.org"));
        assert_eq!(question.to_string(), "pypi.org");
        assert_eq!(end, msg.len() - 4);
    }

    #[test]
    fn names_that_cannot_be_asked_are_refused() {
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        for text in ["", ".", "a..b", ".a", "a b", "ü.de", &"x".repeat(64), &long] {
            assert!(Name::from_text(text).is_none(), "{text:?}");
        }
        assert!(Name::from_text(&long[1..]).is_some());
        assert!(Name::from_text("_dmarc.Example-1.COM.").is_some());
    }

    #[test]
    fn reads_a_records_with_compressed_names() {
        let msg = Msg::reply(7, 0x0180, 2, "example.com")
            .record(&QNAME, TYPE_A, 300, &[192, 0, 2, 1])
            // `www` then a pointer to `example.com` in the question: not the name asked.
            .record(
                &[3, b'w', b'w', b'w', 0xc0, HEADER as u8],
                TYPE_A,
                300,
                &[192, 0, 2, 9],
            )
            .0;
        assert_eq!(
            parse_reply(&msg, 7, &name("example.com")),
            Ok(answer(&[[192, 0, 2, 1]], 300))
        );
        assert_eq!(
            parse_reply(&msg, 7, &name("EXAMPLE.com")),
            Ok(answer(&[[192, 0, 2, 1]], 300))
        );
    }

    #[test]
    fn follows_a_cname_chain_to_its_a_records() {
        let msg = Msg::reply(1, 0, 4, "files.pypi.org")
            // The A records first, the chain after: the order does not matter.
            .record(&wire("edge.cdn.test"), TYPE_A, 30, &[203, 0, 113, 5])
            .record(&wire("edge.cdn.test"), TYPE_A, 60, &[203, 0, 113, 6])
            .record(&QNAME, TYPE_CNAME, 3600, &wire("pypi.cdn.test"))
            .record(
                &wire("pypi.cdn.test"),
                TYPE_CNAME,
                120,
                &wire("edge.cdn.test"),
            )
            .0;
        assert_eq!(
            parse_reply(&msg, 1, &name("files.pypi.org")),
            Ok(answer(&[[203, 0, 113, 5], [203, 0, 113, 6]], 30))
        );
    }

    #[test]
    fn a_records_outside_the_chain_are_not_used() {
        let msg = Msg::reply(1, 0, 2, "a.test")
            .record(&QNAME, TYPE_CNAME, 60, &wire("b.test"))
            .record(&wire("c.test"), TYPE_A, 60, &[10, 0, 0, 1])
            .0;
        assert_eq!(parse_reply(&msg, 1, &name("a.test")), Ok(answer(&[], 60)));
        // A CNAME loop ends.
        let msg = Msg::reply(1, 0, 2, "a.test")
            .record(&QNAME, TYPE_CNAME, 60, &wire("b.test"))
            .record(&wire("b.test"), TYPE_CNAME, 60, &wire("a.test"))
            .0;
        assert_eq!(parse_reply(&msg, 1, &name("a.test")), Ok(answer(&[], 60)));
    }

    #[test]
    fn other_replies_are_ignored() {
        let msg = Msg::reply(1, 0, 1, "a.test")
            .record(&QNAME, TYPE_A, 60, &[10, 0, 0, 1])
            .0;
        assert_eq!(parse_reply(&msg, 2, &name("a.test")), Ok(None)); // another id
        assert_eq!(parse_reply(&msg, 1, &name("b.test")), Ok(None)); // another question
        assert_eq!(parse_reply(&msg[..1], 1, &name("a.test")), Ok(None)); // no id
        let mut not_a_reply = msg.clone();
        not_a_reply[2] &= 0x7f;
        assert_eq!(parse_reply(&not_a_reply, 1, &name("a.test")), Ok(None));
        let mut aaaa = msg.clone();
        aaaa[HEADER + 8 + 1] = 28;
        assert_eq!(parse_reply(&aaaa, 1, &name("a.test")), Ok(None));
    }

    #[test]
    fn error_codes_and_truncation_are_reported() {
        let nxdomain = Msg::reply(1, 3, 0, "a.test").0;
        assert_eq!(
            parse_reply(&nxdomain, 1, &name("a.test")),
            Ok(Some(Reply::Rcode(3)))
        );
        let servfail = Msg::reply(1, 2, 0, "a.test").0;
        assert_eq!(
            parse_reply(&servfail, 1, &name("a.test")),
            Ok(Some(Reply::Rcode(2)))
        );
        let truncated = Msg::reply(1, FLAG_TC, 0, "a.test").0;
        assert_eq!(
            parse_reply(&truncated, 1, &name("a.test")),
            Ok(Some(Reply::Truncated))
        );
    }

    #[test]
    fn malformed_replies_are_bad() {
        let bad = |msg: &[u8]| {
            let parsed = parse_reply(msg, 1, &name("a.test"));
            assert!(parsed.is_err(), "{msg:?}: {parsed:?}");
        };
        let good = Msg::reply(1, 0, 1, "a.test")
            .record(&QNAME, TYPE_A, 60, &[10, 0, 0, 1])
            .0;
        assert!(parse_reply(&good, 1, &name("a.test")).unwrap().is_some());
        // Every truncation past the id.
        for len in 2..good.len() {
            bad(&good[..len]);
        }
        // A count of answers larger than the answers.
        let mut more = good.clone();
        more[7] = 2;
        bad(&more);
        // An A record of 5 bytes.
        bad(&Msg::reply(1, 0, 1, "a.test")
            .record(&QNAME, TYPE_A, 60, &[1, 2, 3, 4, 5])
            .0);
        // A pointer to itself, a pointer loop, a pointer past the end.
        let at = (HEADER + 8 + 4) as u8;
        bad(&Msg::reply(1, 0, 1, "a.test")
            .record(&[0xc0, at], TYPE_A, 60, &[1; 4])
            .0);
        let loop_ = [1, b'x', 0xc0, at];
        bad(&Msg::reply(1, 0, 1, "a.test")
            .record(&loop_, TYPE_A, 60, &[1; 4])
            .0);
        bad(&Msg::reply(1, 0, 1, "a.test")
            .record(&[0xc0, 0xff], TYPE_A, 60, &[1; 4])
            .0);
        // A label type other than length or pointer.
        bad(&Msg::reply(1, 0, 1, "a.test")
            .record(&[0x40, 0], TYPE_A, 60, &[1; 4])
            .0);
        // A CNAME whose name runs past its record.
        let cname = [4, b'a', b'b', 0];
        bad(&Msg::reply(1, 0, 1, "a.test")
            .record(&QNAME, TYPE_CNAME, 60, &cname)
            .0);
        // A name longer than 255 bytes, made of pointers to one label.
        let mut long = Msg::reply(1, 0, 1, "a.test").0;
        let start = long.len();
        long.extend([63]);
        long.extend([b'x'; 63]);
        long.extend([0xc0, start as u8]);
        bad(&long);
        // Another opcode.
        let mut opcode = good.clone();
        opcode[2] |= 0x10;
        bad(&opcode);
    }

    #[test]
    fn single_byte_corruptions_never_panic() {
        let msg = Msg::reply(9, 0x0180, 3, "files.pypi.org")
            .record(
                &QNAME,
                TYPE_CNAME,
                3600,
                &[4, b'e', b'd', b'g', b'e', 0xc0, 18],
            )
            .record(
                &[4, b'e', b'd', b'g', b'e', 0xc0, 18],
                TYPE_A,
                30,
                &[203, 0, 113, 5],
            )
            .record(&[0xc0, 18], TYPE_A, 30, &[203, 0, 113, 6])
            .0;
        let qname = name("files.pypi.org");
        assert!(matches!(
            parse_reply(&msg, 9, &qname),
            Ok(Some(Reply::Answer(_)))
        ));
        for at in 0..msg.len() {
            for value in 0..=u8::MAX {
                let mut bad = msg.clone();
                bad[at] = value;
                let _ = parse_reply(&bad, 9, &qname);
            }
        }
    }

    #[test]
    fn cache_holds_answers_until_they_expire() {
        let mut cache = Cache::default();
        let now = Instant::now();
        let addrs = vec![Ipv4Addr::new(10, 0, 0, 1)];
        cache.insert("a.test".into(), addrs.clone(), Duration::from_secs(60), now);
        assert_eq!(
            cache.get("a.test", now + Duration::from_secs(59)),
            Some(addrs)
        );
        assert_eq!(cache.get("a.test", now + Duration::from_secs(60)), None);
        assert_eq!(cache.get("b.test", now), None);
    }

    #[test]
    fn full_cache_drops_expired_then_oldest() {
        let mut cache = Cache::default();
        let now = Instant::now();
        let addrs = vec![Ipv4Addr::new(10, 0, 0, 1)];
        let ttl = |s| Duration::from_secs(s);
        cache.insert("short.test".into(), addrs.clone(), ttl(5), now);
        for i in 1..MAX_CACHED {
            cache.insert(format!("n{i}.test"), addrs.clone(), ttl(300), now);
        }
        assert_eq!(cache.entries.len(), MAX_CACHED);
        // Full: the expired answer goes.
        let later = now + ttl(10);
        cache.insert("new.test".into(), addrs.clone(), ttl(300), later);
        assert_eq!(cache.entries.len(), MAX_CACHED);
        assert!(!cache.entries.contains_key("short.test"));
        // Full, nothing expired: the oldest goes.
        cache.insert("newer.test".into(), addrs.clone(), ttl(300), later);
        assert_eq!(cache.entries.len(), MAX_CACHED);
        assert!(!cache.entries.contains_key("n1.test"));
        assert!(cache.get("n2.test", later).is_some());
        assert!(cache.get("newer.test", later).is_some());
    }

    #[test]
    fn ttls_are_clamped() {
        let clamp = |s: u64| Duration::from_secs(s).clamp(MIN_TTL, MAX_TTL).as_secs();
        assert_eq!((clamp(0), clamp(60), clamp(86_400)), (5, 60, 300));
    }

    fn allowed_test() -> NameServer {
        NameServer::start([("allowed.test", Ipv4Addr::new(10, 20, 30, 40))])
    }

    #[test]
    fn looks_up_a_name_server_and_caches_its_answer() {
        let names = allowed_test();
        let resolver = Resolver::new(vec![names.addr()], Duration::from_secs(5));
        let expected = vec![Ipv4Addr::new(10, 20, 30, 40)];
        assert_eq!(resolver.lookup("allowed.test").unwrap(), expected);
        assert_eq!(names.queries(), 1);
        // From the cache, whatever the case or trailing dot.
        assert_eq!(resolver.lookup("Allowed.Test.").unwrap(), expected);
        assert_eq!(names.queries(), 1);

        let err = resolver.lookup("denied.test").unwrap_err();
        assert!(
            matches!(&err, ResolveError::NotFound { name } if name == "denied.test"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "`denied.test` does not exist (NXDOMAIN)");
        // Failures are not cached.
        resolver.lookup("denied.test").unwrap_err();
        assert_eq!(names.queries(), 3);

        let err = resolver.lookup("not a name").unwrap_err();
        assert!(matches!(err, ResolveError::BadName { .. }), "{err:?}");
        assert_eq!(names.queries(), 3);
    }

    #[test]
    fn a_silent_name_server_times_out_and_the_next_is_asked() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let resolver = Resolver::new(vec![silent_addr], Duration::from_millis(200));
        let err = resolver.lookup("allowed.test").unwrap_err();
        assert!(
            matches!(&err, ResolveError::TimedOut { name, server } if name == "allowed.test" && *server == silent_addr),
            "{err:?}"
        );
        let names = allowed_test();
        resolver.set_servers(vec![silent_addr, names.addr()]);
        assert_eq!(
            resolver.lookup("allowed.test").unwrap(),
            [Ipv4Addr::new(10, 20, 30, 40)]
        );
        assert_eq!(names.queries(), 1);
        // No servers at all.
        resolver.set_servers(vec![]);
        let err = resolver.lookup("other.test").unwrap_err();
        assert!(matches!(err, ResolveError::NoServers { .. }), "{err:?}");
        // The cache outlives a change of servers.
        assert_eq!(
            resolver.lookup("allowed.test").unwrap(),
            [Ipv4Addr::new(10, 20, 30, 40)]
        );
    }

    #[test]
    fn replies_to_other_queries_are_ignored_on_the_wire() {
        // A server that first sends a reply with a wrong id, then one to another question,
        // then the real one.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = socket.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0; 512];
            let (_, from) = socket.recv_from(&mut buf).unwrap();
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let forged = Msg::reply(id.wrapping_add(1), 0, 1, "a.test")
                .record(&QNAME, TYPE_A, 60, &[6, 6, 6, 6])
                .0;
            let other = Msg::reply(id, 0, 1, "b.test")
                .record(&QNAME, TYPE_A, 60, &[7, 7, 7, 7])
                .0;
            let real = Msg::reply(id, 0, 1, "a.test")
                .record(&QNAME, TYPE_A, 60, &[10, 0, 0, 1])
                .0;
            for msg in [forged, other, real] {
                socket.send_to(&msg, from).unwrap();
            }
        });
        let resolver = Resolver::new(vec![server], Duration::from_secs(5));
        assert_eq!(
            resolver.lookup("a.test").unwrap(),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
        thread.join().unwrap();
    }
}
