//! What the front door allows: connection limits and timeouts. Every default is here with
//! the reason for its value; docs/SECURITY.md ("Overload") lists them for operators.

use std::time::Duration;

/// A new connection must have sent its first request's headers by then, and a kept-alive one
/// the next request's headers this long after their first byte (slowloris). Long enough for a
/// slow link or a browser's preconnect, short enough that a trickle of header bytes cannot
/// hold a connection for long.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection with no request in flight is closed after this long. Above the 90 s for which
/// reqwest (the Rust SDK) keeps idle connections, so the client gives up a pooled connection
/// before the server closes it under a new request; the Python and JS SDKs keep theirs 5 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A request body that delivers no byte for this long while the server waits for it is
/// aborted (a `Content-Length` that never arrives). Time the server itself spends not reading
/// (a sandbox writing an upload to its disk) does not count.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An upgraded connection (WebSocket to a sandbox's port) that moves no byte either way for
/// this long is closed. WebSocket clients ping every 20-60 s; an idle terminal or notebook
/// tab may stay quiet for minutes between keystrokes, but not for a quarter of an hour.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The most header bytes of one request (HTTP/1.1 request line and headers, HTTP/2 header
/// list): more is answered 431 (HTTP/1.1) or refused (HTTP/2), and nothing beyond it is
/// buffered. E2B clients send well under 2 KiB; 64 KiB leaves room for long signed URLs.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The most bytes an HTTP/1.1 connection reads at once (hyper grows its read buffer up to
/// this while reads fill it, and keeps it for the connection's life). A request body moves
/// through the server in pieces of this size: at 64 KiB every 64 KiB of an upload cost a read
/// from the client and a write to the sandbox; at 256 KiB the server spends about a quarter
/// less CPU per uploaded GiB. Larger (1 MiB saves a little more) would let a connection idle
/// after an upload hold 0.9 MiB instead of 0.26 (docs/SECURITY.md, "Memory per connection").
/// Request heads are bounded by [`MAX_HEADER_BYTES`] whatever the buffer's size.
pub const MAX_READ_BUFFER: usize = 256 * 1024;

/// The most headers in one HTTP/1.1 request (hyper's default; more is answered 431).
pub const MAX_HEADERS: usize = 100;

/// Streams one HTTP/2 connection may have open at once (hyper's default): a client that
/// needs more opens another connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 200;

/// How often an HTTP/2 connection is pinged, and how long an answer may take before the
/// connection is taken for dead: a peer that vanished without closing is noticed within a
/// minute, even while one of its streams waits for a long-running command.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The most client connections derived from the descriptor limit. Each idle connection costs
/// about 10 KiB of memory, one partly received header at most [`MAX_HEADER_BYTES`], so this
/// bounds what a flood of idle or slow connections can take at about 1 GiB; one whose read
/// buffer grew with an upload keeps it ([`MAX_READ_BUFFER`]), about 4 GiB at this limit.
pub const MAX_DERIVED_CONNECTIONS: usize = 16_384;

/// Limits and timeouts as configured; `None` limits are derived from the descriptor limit.
#[derive(Clone, Debug, Default)]
pub struct FrontConfig {
    /// Client connections open at once.
    pub max_connections: Option<usize>,
    /// Client connections open at once from one address (an IPv6 client: its /64).
    pub max_connections_per_ip: Option<usize>,
    /// The soft RLIMIT_NOFILE the server sets for itself (default: as high as it may).
    pub max_open_files: Option<u64>,
    pub timeouts: Timeouts,
}

/// How long each phase of a connection may stay silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub upgrade_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            body_read: DEFAULT_BODY_READ_TIMEOUT,
            upgrade_idle: DEFAULT_UPGRADE_IDLE_TIMEOUT,
        }
    }
}

/// The limits in force: the configuration with its gaps filled from the descriptor limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The soft descriptor limit the server runs with.
    pub open_files: u64,
    /// Descriptors kept free for everything but new connections (the database, `/proc`,
    /// sandboxes' sockets and files): the server stops accepting before it dips into them.
    pub fd_reserve: u64,
}

impl Limits {
    /// Fills in what `config` leaves open, for a server allowed `open_files` descriptors.
    ///
    /// An eighth of the descriptors (at least 32, at most 4096) is the reserve. A connection
    /// can hold two descriptors (the client's socket and one to a sandbox's agent), so the
    /// rest allows half as many connections, at most [`MAX_DERIVED_CONNECTIONS`]. One address
    /// may hold half of them: local clients all come from 127.0.0.1, so this must leave room
    /// for connection pools and benchmarks, while a single remote address cannot take all.
    pub fn derive(config: &FrontConfig, open_files: u64) -> Self {
        let fd_reserve = (open_files / 8).clamp(32, 4096).min(open_files / 2);
        let for_connections = usize::try_from((open_files - fd_reserve) / 2).unwrap_or(usize::MAX);
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| for_connections.min(MAX_DERIVED_CONNECTIONS))
            .max(1);
        let max_connections_per_ip = config
            .max_connections_per_ip
            .unwrap_or(max_connections / 2)
            .clamp(1, max_connections);
        Self {
            max_connections,
            max_connections_per_ip,
            open_files,
            fd_reserve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let derived = Limits::derive(&FrontConfig::default(), 20_000);
        assert_eq!(derived.fd_reserve, 2_500);
        assert_eq!(derived.max_connections, 8_750);
        assert_eq!(derived.max_connections_per_ip, 4_375);

        let root = Limits::derive(&FrontConfig::default(), 1 << 20);
        assert_eq!(root.fd_reserve, 4_096);
        assert_eq!(root.max_connections, MAX_DERIVED_CONNECTIONS);
        assert_eq!(root.max_connections_per_ip, MAX_DERIVED_CONNECTIONS / 2);

        let tiny = Limits::derive(&FrontConfig::default(), 40);
        assert_eq!(tiny.fd_reserve, 20);
        assert_eq!(tiny.max_connections, 10);
    }

    #[test]
    fn given_limits_win_and_stay_consistent() {
        let config = FrontConfig {
            max_connections: Some(100),
            max_connections_per_ip: Some(1_000),
            ..FrontConfig::default()
        };
        let limits = Limits::derive(&config, 20_000);
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.max_connections_per_ip, 100);

        let only_total = FrontConfig {
            max_connections: Some(10),
            ..FrontConfig::default()
        };
        assert_eq!(
            Limits::derive(&only_total, 20_000).max_connections_per_ip,
            5
        );
    }
}
