//! A name server of a test's own on the host (its loopback, or an address of a test
//! network's): it answers A questions for the names it was given (TTL [`TTL`]) and NXDOMAIN
//! for every other, so tests resolve their own names without asking anything outside the
//! machine.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// The TTL of every answer, in seconds.
pub const TTL: u32 = 60;

/// The server; its thread stops when dropped.
pub struct NameServer {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    /// Serves `names` (lowercase, no trailing dot) on a UDP port of 127.0.0.1.
    pub fn start<'a>(names: impl IntoIterator<Item = (&'a str, Ipv4Addr)>) -> Self {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), names)
    }

    /// Serves `names` on `bind` (an address of this host's; port 0: a free one).
    pub fn start_on<'a>(
        bind: SocketAddr,
        names: impl IntoIterator<Item = (&'a str, Ipv4Addr)>,
    ) -> Self {
        let names: HashMap<String, Ipv4Addr> =
            names.into_iter().map(|(n, a)| (n.to_owned(), a)).collect();
        let socket = UdpSocket::bind(bind).expect("bind the test name server");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set a read timeout");
        let addr = socket.local_addr().expect("the test name server's address");
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (queries, stop) = (queries.clone(), stop.clone());
            move || {
                let mut buf = [0; 512];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answer(&buf[..len], &names) {
                        queries.fetch_add(1, Ordering::SeqCst);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }
        });
        Self {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a `resolv.conf` naming it (which must listen on port 53) into `dir`; see
    /// [`crate::TestServer::launch_with_resolv_conf`].
    pub fn resolv_conf(&self, dir: &std::path::Path) -> std::path::PathBuf {
        assert_eq!(
            self.addr.port(),
            53,
            "resolv.conf names servers on port 53 only"
        );
        let path = dir.join("resolv.conf");
        std::fs::write(&path, format!("nameserver {}\n", self.addr.ip()))
            .expect("write the test's resolv.conf");
        path
    }

    /// The questions it answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread from its receive (its read timeout would, later).
        if let Ok(socket) = UdpSocket::bind("127.0.0.1:0") {
            let _ = socket.send_to(b"stop", self.addr);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The question's name (uncompressed, as queries carry it) and where the question ends.
fn question(query: &[u8]) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        let label = query.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    // The root label, then QTYPE and QCLASS.
    Some((labels.join("."), at + 5))
}

/// The reply to `query` when it asks one question of type A, class IN.
fn answer(query: &[u8], names: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let (name, end) = question(query)?;
    let question = query.get(12..end)?;
    if question[question.len() - 4..] != [0, 1, 0, 1] {
        return None;
    }
    let addr = names.get(&name);
    // QR, RD and RA set; NXDOMAIN (3) for names it does not know.
    let flags: u16 = 0x8180 | if addr.is_some() { 0 } else { 3 };
    let mut reply = query.get(..2)?.to_vec();
    reply.extend(flags.to_be_bytes());
    reply.extend([0, 1, 0, u8::from(addr.is_some()), 0, 0, 0, 0]);
    reply.extend(question);
    if let Some(addr) = addr {
        // The owner: a pointer to the question's name at offset 12.
        reply.extend([0xc0, 12, 0, 1, 0, 1]);
        reply.extend(TTL.to_be_bytes());
        reply.extend([0, 4]);
        reply.extend(addr.octets());
    }
    Some(reply)
}
