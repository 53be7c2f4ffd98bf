//! The egress proxy of a sandbox with domain rules. Its programs send the sandbox's TCP
//! connections to ports 80 and 443 that no `allowOut` address lets through here
//! ([`super::program::sandbox_program`]); the proxy reads what each connection asks for —
//! the TLS server name, or the HTTP `Host` — and decides by the name:
//!
//! - a name an `allowOut` entry holds: resolved by the proxy itself and connected to, unless
//!   the server refuses the address (the host, private ranges: no rule opens those);
//! - a name a `denyOut` entry holds: refused;
//! - any other name (and an address written as the name): the addresses it stands for are
//!   decided as any address is, by the server's rules and then the sandbox's.
//!
//! The address the sandbox connected to plays no part: a name is never taken to another
//! address the sandbox found for it, so a denied service sharing an address with an allowed
//! one (or faking it) gets nothing. A connection that names nothing is refused. The bytes
//! read are sent on unchanged; nothing is decrypted.
//!
//! Blocking threads with small stacks: one per listener, two per connection (one for each
//! direction); at most [`MAX_CONNECTIONS`] connections per sandbox and [`MAX_ALL_CONNECTIONS`]
//! for all sandboxes at once, so no sandbox can make the host spawn threads without end.
//! Further connections are closed at once (the client sees a reset or an empty answer).

pub mod inject;
pub mod intercept;
pub mod peek;
pub mod resolve;

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use self::{
    peek::{MAX_PEEK, Peeked},
    resolve::Resolver,
};
use super::{Refusal, SandboxPolicy, policy::NameVerdict};

/// Most connections of one sandbox open through its proxy at once; more are closed.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections open through all proxies at once.
pub const MAX_ALL_CONNECTIONS: usize = 4096;
/// The stack of a proxy thread: it holds a request head at most, and splices the rest.
const THREAD_STACK: usize = 128 * 1024;

/// Connections open through all proxies.
static ALL_OPEN: AtomicUsize = AtomicUsize::new(0);
/// How long a connection may take to say what it asks for.
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the destination may take, per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What refuses a connection to an address and port: the server's rules, then the given
/// policy's addresses (`None`: let through).
pub type DecideAddress = dyn Fn(IpAddr, u16, &SandboxPolicy) -> Option<Refusal> + Send + Sync;

/// What every sandbox's proxy shares: how the server decides an address, and the resolver.
pub struct ProxyEnv {
    pub decide: Box<DecideAddress>,
    /// The name servers to ask now (the host's may change).
    pub name_servers: Box<dyn Fn() -> Vec<SocketAddr> + Send + Sync>,
    pub resolver: Resolver,
    /// How TLS is intercepted for `rules` (none: rules on port 443 are not applied and
    /// such connections are refused).
    pub tls: Option<intercept::Interception>,
}

impl std::fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyEnv").finish_non_exhaustive()
    }
}

/// Which of the two listeners: what a connection to it speaks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Tls,
}

impl Kind {
    fn port(self) -> u16 {
        match self {
            Kind::Http => 80,
            Kind::Tls => 443,
        }
    }

    fn peek(self, buf: &[u8]) -> Peeked {
        match self {
            Kind::Http => peek::http_host(buf),
            Kind::Tls => peek::tls_server_name(buf),
        }
    }
}

/// What a sandbox's connections share.
#[derive(Debug)]
struct State {
    id: String,
    env: Arc<ProxyEnv>,
    policy: Mutex<SandboxPolicy>,
    refusals: Mutex<BTreeMap<Refusal, u64>>,
    open: AtomicUsize,
    stopped: AtomicBool,
}

impl State {
    fn policy(&self) -> SandboxPolicy {
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, refusal: Refusal) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(refusal)
            .or_default() += 1;
    }
}

/// One sandbox's proxy: two listeners on the host's loopback, for ports 80 and 443.
#[derive(Debug)]
pub struct SandboxProxy {
    state: Arc<State>,
    listeners: Vec<(TcpListener, Option<thread::JoinHandle<()>>)>,
    http_port: u16,
    tls_port: u16,
}

impl SandboxProxy {
    /// Listens for sandbox `id`'s connections, decided by `policy` until changed.
    pub fn start(id: &str, policy: SandboxPolicy, env: Arc<ProxyEnv>) -> io::Result<Self> {
        let state = Arc::new(State {
            id: id.to_owned(),
            env,
            policy: Mutex::new(policy),
            refusals: Mutex::default(),
            open: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for kind in [Kind::Http, Kind::Tls] {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            ports.push(listener.local_addr()?.port());
            let accepting = listener.try_clone()?;
            let state = Arc::clone(&state);
            let thread = thread::Builder::new()
                .name(format!("cove-egress-{}", kind.port()))
                .stack_size(THREAD_STACK)
                .spawn(move || accept(&accepting, kind, &state))?;
            listeners.push((listener, Some(thread)));
        }
        Ok(Self {
            state,
            listeners,
            http_port: ports[0],
            tls_port: ports[1],
        })
    }

    /// The ports of its listeners on 127.0.0.1: for connections to port 80, and to 443.
    pub fn ports(&self) -> (u16, u16) {
        (self.http_port, self.tls_port)
    }

    /// Decides the next connections by `policy`.
    pub fn set_policy(&self, policy: SandboxPolicy) {
        *self.state.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The connections refused since the last call, by what refused them.
    pub fn take_refusals(&self) -> BTreeMap<Refusal, u64> {
        std::mem::take(
            &mut *self
                .state
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl Drop for SandboxProxy {
    /// Stops listening; connections already made run until either side ends them.
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for (listener, thread) in &mut self.listeners {
            // A shut-down listening socket wakes its accept() with an error.
            let _ = rustix::net::shutdown(listener.as_fd(), rustix::net::Shutdown::Read);
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn accept(listener: &TcpListener, kind: Kind, state: &Arc<State>) {
    loop {
        let accepted = listener.accept();
        if state.stopped.load(Ordering::SeqCst) {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(%err, sandbox_id = %state.id, "the egress proxy stopped accepting");
                return;
            }
        };
        let Some(slot) = Slot::take(state) else {
            tracing::debug!(sandbox_id = %state.id, "egress proxy full: a connection closed");
            continue;
        };
        // On failure the closure, slot and connection in it are dropped: both freed.
        let _ = thread::Builder::new()
            .name("cove-egress-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                serve(client, kind, &slot.state);
                drop(slot);
            });
    }
}

/// A connection's place among a sandbox's and all proxies' open ones, given back when
/// dropped.
struct Slot {
    state: Arc<State>,
}

impl Slot {
    fn take(state: &Arc<State>) -> Option<Self> {
        if ALL_OPEN.fetch_add(1, Ordering::SeqCst) >= MAX_ALL_CONNECTIONS {
            ALL_OPEN.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        if state.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            state.open.fetch_sub(1, Ordering::SeqCst);
            ALL_OPEN.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self {
            state: Arc::clone(state),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::SeqCst);
        ALL_OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a connection goes, or what refused it.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Connect(String, Vec<IpAddr>),
    Refuse(String, Refusal),
    /// The name did not resolve.
    Unresolved(String, String),
}

/// Decides a connection that asked for `peeked` on `port`.
fn decide(peeked: &Peeked, port: u16, policy: &SandboxPolicy, env: &ProxyEnv) -> Decision {
    let name = match peeked {
        Peeked::Name(name) => name.clone(),
        _ => return Decision::Refuse(String::new(), Refusal::NoName),
    };
    if let Ok(addr) = name.parse::<IpAddr>() {
        return match (env.decide)(addr, port, policy) {
            Some(refusal) => Decision::Refuse(name, refusal),
            None => Decision::Connect(name, vec![addr]),
        };
    }
    // An allowed name is refused only what the server refuses.
    let judge = match policy.name_verdict(&name) {
        NameVerdict::Denied(refusal) => return Decision::Refuse(name, refusal),
        NameVerdict::Allowed => SandboxPolicy::default(),
        NameVerdict::Unnamed => policy.clone(),
    };
    env.resolver.set_servers((env.name_servers)());
    let addrs = match env.resolver.lookup(&name) {
        Ok(addrs) => addrs,
        Err(err) => return Decision::Unresolved(name, err.to_string()),
    };
    let mut first_refusal = None;
    let mut allowed = Vec::new();
    for addr in addrs {
        match (env.decide)(IpAddr::V4(addr), port, &judge) {
            None => allowed.push(IpAddr::V4(addr)),
            Some(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    match (allowed.is_empty(), first_refusal) {
        (true, Some(refusal)) => Decision::Refuse(name, refusal),
        (true, None) => Decision::Unresolved(name, "no IPv4 address".into()),
        (false, _) => Decision::Connect(name, allowed),
    }
}

/// Reads what `client` asks for, decides, and joins it to its destination.
fn serve(mut client: TcpStream, kind: Kind, state: &State) {
    let mut buf = Vec::with_capacity(1024);
    let peeked = read_request(&mut client, kind, &mut buf);
    let policy = state.policy();
    match decide(&peeked, kind.port(), &policy, &state.env) {
        Decision::Refuse(name, refusal) => {
            tracing::info!(sandbox_id = %state.id, name, port = kind.port(), rule = %refusal, "egress proxy refused a connection");
            state.count(refusal.clone());
            if kind == Kind::Http {
                let what = match name.is_empty() {
                    true => "a request without a Host".to_owned(),
                    false => name,
                };
                let body = format!("Cove refused {what}: {refusal}\n");
                answer(&mut client, "403 Forbidden", &body);
            }
        }
        Decision::Unresolved(name, why) => {
            tracing::info!(sandbox_id = %state.id, name, why, "egress proxy could not resolve a name");
            if kind == Kind::Http {
                answer(
                    &mut client,
                    "502 Bad Gateway",
                    &format!("Cove could not resolve {name}: {why}\n"),
                );
            }
        }
        Decision::Connect(name, addrs) => {
            let headers = policy.transform_for(&name).map(<[_]>::to_vec);
            match (kind, headers) {
                (Kind::Tls, Some(headers)) => {
                    let Some(tls) = &state.env.tls else {
                        tracing::warn!(sandbox_id = %state.id, name, "rules for a name on port 443 but no TLS interception here: refused");
                        state.count(Refusal::NoInterception);
                        return;
                    };
                    let addrs: Vec<SocketAddr> =
                        addrs.iter().map(|a| SocketAddr::new(*a, 443)).collect();
                    if let Err(err) = intercept::serve(client, &buf, &name, &addrs, &headers, tls) {
                        tracing::info!(sandbox_id = %state.id, name, err, "an intercepted connection failed");
                    }
                    return;
                }
                (Kind::Http, Some(headers)) => match inject::set_headers(&buf, &headers) {
                    Some(rewritten) => buf = rewritten,
                    None => return,
                },
                _ => {}
            }
            let upstream = addrs.iter().find_map(|addr| {
                TcpStream::connect_timeout(&SocketAddr::new(*addr, kind.port()), CONNECT_TIMEOUT)
                    .ok()
            });
            let Some(mut upstream) = upstream else {
                if kind == Kind::Http {
                    answer(
                        &mut client,
                        "502 Bad Gateway",
                        &format!("Cove could not connect to {name}\n"),
                    );
                }
                return;
            };
            if client.set_read_timeout(None).is_err() || upstream.write_all(&buf).is_err() {
                return;
            }
            relay(client, upstream);
        }
    }
}

/// Reads from `client` into `buf` until what it asks for is known (or cannot be).
fn read_request(client: &mut TcpStream, kind: Kind, buf: &mut Vec<u8>) -> Peeked {
    if client.set_read_timeout(Some(PEEK_TIMEOUT)).is_err() {
        return Peeked::NotRecognised;
    }
    let mut chunk = [0u8; 4096];
    loop {
        match kind.peek(buf) {
            Peeked::NeedMore if buf.len() < MAX_PEEK => {}
            Peeked::NeedMore => return Peeked::NotRecognised,
            decided => return decided,
        }
        let room = (MAX_PEEK - buf.len()).min(chunk.len());
        match client.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return Peeked::NotRecognised,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers an HTTP request and ends the connection.
fn answer(client: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

/// Copies both ways until both sides are done; each end passes on the other's half-close.
fn relay(client: TcpStream, upstream: TcpStream) {
    let (Ok(client_read), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = thread::Builder::new()
        .name("cove-egress-up".into())
        .stack_size(THREAD_STACK)
        .spawn(move || pipe(client_read, upstream_write));
    pipe(upstream, client);
    if let Ok(up) = up {
        let _ = up.join();
    }
}

/// Most bytes one splice moves (and the pipe between the two sockets holds).
const SPLICE_CHUNK: usize = 1 << 20;

/// Moves what `from` sends to `to` until `from` ends, then ends `to`'s sending half. The
/// bytes go socket → pipe → socket inside the kernel (splice), never through this process;
/// where splice is refused, through a buffer.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    match splice_all(&from, &to) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            let _ = io::copy(&mut from, &mut to);
        }
        _ => {}
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn splice_all(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    use rustix::pipe::{SpliceFlags, fcntl_setpipe_size, splice};
    let (out, into) = rustix::pipe::pipe()?;
    // A larger pipe moves more per call; the default (64 KiB) is kept if refused.
    let _ = fcntl_setpipe_size(&into, SPLICE_CHUNK);
    loop {
        let moved = splice(from, None, &into, None, SPLICE_CHUNK, SpliceFlags::MOVE)?;
        if moved == 0 {
            return Ok(());
        }
        let mut left = moved;
        while left > 0 {
            let sent = splice(&out, None, to, None, left, SpliceFlags::MOVE)?;
            if sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= sent;
        }
    }
}

#[cfg(test)]
mod tests {
    use cove_test_util::name_server::NameServer;

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// An environment where the server refuses 10.0.0.0/8 and the test's name server
    /// answers `names`.
    fn env(server: SocketAddr) -> ProxyEnv {
        ProxyEnv {
            decide: Box::new(|addr, _port, policy| match addr {
                IpAddr::V4(v4) if v4.octets()[0] == 10 => Some(Refusal::Server),
                _ => policy.refusal(addr),
            }),
            name_servers: Box::new(move || vec![server]),
            resolver: Resolver::new(Vec::new(), Duration::from_secs(2)),
            tls: None,
        }
    }

    #[test]
    fn names_decide_and_the_proxy_resolves_them_itself() {
        let names = NameServer::start([
            ("pypi.org", Ipv4Addr::new(198, 51, 100, 7)),
            ("api.github.com", Ipv4Addr::new(198, 51, 100, 8)),
            ("inside.example", Ipv4Addr::new(10, 1, 2, 3)),
            ("other.example", Ipv4Addr::new(203, 0, 113, 9)),
            ("open.example", Ipv4Addr::new(192, 0, 2, 9)),
        ]);
        let env = env(names.addr());
        let policy = SandboxPolicy::new(
            &strings(&["pypi.org", "*.github.com", "inside.example", "192.0.2.0/24"]),
            &strings(&["0.0.0.0/0", "*.evil.example"]),
        )
        .unwrap();
        let name = |n: &str| Peeked::Name(n.to_owned());
        let connect = |n: &str, a: &str| Decision::Connect(n.to_owned(), vec![a.parse().unwrap()]);
        let refuse = |n: &str, r: Refusal| Decision::Refuse(n.to_owned(), r);
        let deny = |rule: &str| Refusal::Deny(rule.to_owned());
        for (peeked, expected) in [
            (name("pypi.org"), connect("pypi.org", "198.51.100.7")),
            (
                name("api.github.com"),
                connect("api.github.com", "198.51.100.8"),
            ),
            // Allowed by name, but the server refuses the address it resolves to.
            (
                name("inside.example"),
                refuse("inside.example", Refusal::Server),
            ),
            // Named by no rule: its address is decided, here by denyOut 0.0.0.0/0...
            (
                name("other.example"),
                refuse("other.example", deny("0.0.0.0/0")),
            ),
            // ...and here let through by an allowOut range.
            (name("open.example"), connect("open.example", "192.0.2.9")),
            (
                name("x.evil.example"),
                refuse("x.evil.example", deny("*.evil.example")),
            ),
            // An address as the name: decided as an address.
            (
                name("198.51.100.7"),
                refuse("198.51.100.7", deny("0.0.0.0/0")),
            ),
            (name("192.0.2.1"), connect("192.0.2.1", "192.0.2.1")),
            (Peeked::NoName, refuse("", Refusal::NoName)),
            (Peeked::NotRecognised, refuse("", Refusal::NoName)),
        ] {
            assert_eq!(decide(&peeked, 443, &policy, &env), expected, "{peeked:?}");
        }
        assert!(matches!(
            decide(&name("missing.github.com"), 443, &policy, &env),
            Decision::Unresolved(..)
        ));
    }

    #[test]
    fn a_sandbox_cannot_hold_more_than_its_share_of_connections() {
        let names = NameServer::start([]);
        let policy = SandboxPolicy::new(&strings(&["pypi.org"]), &[]).unwrap();
        let proxy = SandboxProxy::start("cap-test", policy, Arc::new(env(names.addr()))).unwrap();
        let (http, _) = proxy.ports();
        let connect = || TcpStream::connect((Ipv4Addr::LOCALHOST, http)).unwrap();
        // Connections that never say what they want hold their place until the peek times out.
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
        // The accepting thread takes them in order; once the last has its place, the next is
        // closed at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut extra = connect();
            extra
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut byte = [0u8; 1];
            match extra.read(&mut byte) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                _ => assert!(std::time::Instant::now() < deadline, "never full"),
            }
        }
        drop(held);
        // Places come back: a request is answered again.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut client = connect();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: 10.1.2.3\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = client.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 403") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no place given back: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(proxy.take_refusals().get(&Refusal::Server), Some(&1));
    }
}
