//! TLS interception for E2B's `rules` on port 443: the proxy finishes the sandbox's TLS
//! handshake itself, with a certificate for the name asked for signed by the server's egress
//! CA (which the server installs in sandboxes with rules), reads the request head, sets the
//! rule's headers and `Connection: close` ([`super::inject`]), and sends the request on over
//! a TLS connection of its own to the destination, whose certificate it verifies against the
//! host's trust store (and the operator's extra roots). Only HTTP/1.1 is offered (ALPN).
//! Connections to names without rules are never decrypted.

use std::{
    collections::HashMap,
    fmt,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::inject;

/// Signs certificates for names the sandboxes ask for.
pub trait IssueCert: Send + Sync + fmt::Debug {
    /// The certificate of the CA that signs them, PEM: what sandboxes with rules trust.
    fn ca_pem(&self) -> &str;

    /// The chain (leaf first) and key of a certificate for `name`.
    fn issue(
        &self,
        name: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String>;
}

/// The host's trust store, where Debian keeps it.
pub const HOST_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most bytes of a request head read before giving up.
const MAX_HEAD: usize = 64 * 1024;
/// How long a handshake or a head may take, and how long a relayed connection may idle.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The configurations of both ends.
#[derive(Debug)]
pub struct Interception {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    ca_pem: String,
}

impl Interception {
    /// Signing with `issuer`; trusting the host's roots and those in the PEM files `extra`.
    pub fn new(issuer: Arc<dyn IssueCert>, extra: &[&Path]) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for path in std::iter::once(Path::new(HOST_ROOTS)).chain(extra.iter().copied()) {
            let Ok(certs) = CertificateDer::pem_file_iter(path) else {
                if path == Path::new(HOST_ROOTS) {
                    continue;
                }
                return Err(format!(
                    "cannot read the certificates in {}",
                    path.display()
                ));
            };
            roots.add_parsable_certificates(certs.filter_map(Result::ok));
        }
        let ca_pem = issuer.ca_pem().to_owned();
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Leaves {
                issuer,
                issued: Mutex::default(),
            }));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            ca_pem,
        })
    }

    /// The CA certificate the intercepted connections are signed under, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// Certificates for the names asked for, made once each.
struct Leaves {
    issuer: Arc<dyn IssueCert>,
    issued: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for Leaves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaves").finish_non_exhaustive()
    }
}

/// Most certificates kept; past that the cache starts again.
const MAX_LEAVES: usize = 4096;

impl ResolvesServerCert for Leaves {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = issued.get(&name) {
            return Some(Arc::clone(key));
        }
        let (chain, key) = match self.issuer.issue(&name) {
            Ok(issued) => issued,
            Err(err) => {
                tracing::warn!(name, err, "cannot issue a certificate for TLS interception");
                return None;
            }
        };
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).ok()?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        if issued.len() >= MAX_LEAVES {
            issued.clear();
        }
        issued.insert(name, Arc::clone(&certified));
        Some(certified)
    }
}

/// Serves a sandbox's TLS connection to `name` (whose ClientHello is `hello`), sending its
/// request to the first of `addrs` that answers with `headers` set.
pub fn serve(
    mut client: TcpStream,
    hello: &[u8],
    name: &str,
    addrs: &[SocketAddr],
    headers: &[(String, String)],
    tls: &Interception,
) -> Result<(), String> {
    let text = |e: &dyn fmt::Display| e.to_string();
    let mut server = ServerConnection::new(Arc::clone(&tls.server)).map_err(|e| text(&e))?;
    let mut hello = hello;
    while !hello.is_empty() {
        server.read_tls(&mut hello).map_err(|e| text(&e))?;
        server.process_new_packets().map_err(|e| text(&e))?;
    }
    client
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| text(&e))?;
    while server.is_handshaking() {
        server.complete_io(&mut client).map_err(|e| text(&e))?;
    }
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err("the request head is too long".into());
        }
        let n = rustls::Stream::new(&mut server, &mut client)
            .read(&mut chunk)
            .map_err(|e| text(&e))?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let request = inject::set_headers(&head, headers).ok_or("not an HTTP/1 request")?;
    let mut upstream = addrs
        .iter()
        .find_map(|addr| TcpStream::connect_timeout(addr, HANDSHAKE_TIMEOUT).ok())
        .ok_or_else(|| format!("cannot connect to {name}"))?;
    upstream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| text(&e))?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| text(&e))?;
    let mut up =
        ClientConnection::new(Arc::clone(&tls.client), server_name).map_err(|e| text(&e))?;
    while up.is_handshaking() {
        up.complete_io(&mut upstream).map_err(|e| text(&e))?;
    }
    rustls::Stream::new(&mut up, &mut upstream)
        .write_all(&request)
        .map_err(|e| text(&e))?;
    pump(
        [client, upstream],
        [Connection::Server(server), Connection::Client(up)],
    )
    .map_err(|e| text(&e))
}

/// Relays plaintext between two TLS connections until either ends (the destination ends
/// after its answer: the request said `Connection: close`) or both idle for too long. A side
/// is read from only while the other has nothing left to send, so neither buffers more than
/// one read.
fn pump(socks: [TcpStream; 2], mut conns: [Connection; 2]) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    for sock in &socks {
        sock.set_nonblocking(true)?;
    }
    let mut plain = [0u8; 16 * 1024];
    let mut ended = false;
    while !ended {
        for (conn, mut sock) in conns.iter_mut().zip(&socks) {
            while conn.wants_write() {
                match conn.write_tls(&mut sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        for (from, to) in [(0, 1), (1, 0)] {
            loop {
                let read = conns[from].reader().read(&mut plain);
                match read {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => conns[to].writer().write_all(&plain[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        ended = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if ended {
            break;
        }
        let flags = |i: usize| {
            let mut flags = PollFlags::empty();
            if !conns[1 - i].wants_write() {
                flags |= PollFlags::IN;
            }
            if conns[i].wants_write() {
                flags |= PollFlags::OUT;
            }
            flags
        };
        let (f0, f1) = (flags(0), flags(1));
        let mut fds = [
            PollFd::from_borrowed_fd(socks[0].as_fd(), f0),
            PollFd::from_borrowed_fd(socks[1].as_fd(), f1),
        ];
        let idle = Timespec {
            tv_sec: IDLE_TIMEOUT.as_secs() as i64,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&idle))? == 0 {
            break;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| {
                fd.revents()
                    .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
            })
            .collect();
        for (i, ready) in ready.into_iter().enumerate() {
            if !ready || conns[1 - i].wants_write() {
                continue;
            }
            match conns[i].read_tls(&mut &socks[i]) {
                Ok(0) => ended = true,
                Ok(_) => {
                    if let Err(err) = conns[i].process_new_packets() {
                        return Err(io::Error::other(err));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    // What is decrypted and queued still goes out, as far as the sockets take it now.
    for (from, to) in [(0, 1), (1, 0)] {
        while let Ok(n) = conns[from].reader().read(&mut plain) {
            if n == 0 || conns[to].writer().write_all(&plain[..n]).is_err() {
                break;
            }
        }
    }
    for (conn, sock) in conns.iter_mut().zip(&socks) {
        conn.send_close_notify();
        let _ = sock.set_nonblocking(false);
        let _ = sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        let mut sock = sock;
        while conn.wants_write() {
            if conn.write_tls(&mut sock).is_err() {
                break;
            }
        }
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}
