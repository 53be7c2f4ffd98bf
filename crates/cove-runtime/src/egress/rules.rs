//! What the egress filter decides, as data: the ranges of `resources/egress.json` (one
//! reason each), the operator's opened ranges, the host's own addresses and its name
//! servers, turned into the two longest-prefix tables the eBPF programs look up.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    str::FromStr,
};

use serde::Deserialize;

/// The policy, as data with a reason per range.
const POLICY: &str = include_str!("../../resources/egress.json");

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("`{0}` is not an address range (expected ADDRESS/PREFIX, e.g. 10.20.0.0/16)")]
    BadCidr(String),
    #[error("{cidr} cannot be opened: it lies in {within}, which is always refused ({reason})")]
    NeverOpened {
        cidr: Cidr,
        within: Cidr,
        reason: String,
    },
    #[error("the egress policy is malformed: {0}")]
    Policy(String),
}

/// An address range, `ADDRESS/PREFIX`, kept with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range of `prefix` bits around `addr` (`None` if the prefix is too long).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let masked = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(a) if prefix <= 128 => {
                let bits =
                    u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(bits.into())
            }
            _ => return None,
        };
        Some(Self {
            addr: masked,
            prefix,
        })
    }

    /// The range holding `addr` alone.
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether every address of `other` is in this range.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix
            && other.addr.is_ipv4() == self.addr.is_ipv4()
            && Cidr::new(other.addr, self.prefix) == Some(*self)
    }

    /// Whether `addr` is in this range.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.contains(&Cidr::host(addr))
    }
}

impl FromStr for Cidr {
    type Err = RulesError;

    /// `ADDRESS/PREFIX`, or a bare address for that address alone.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || RulesError::BadCidr(text.to_owned());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        match prefix {
            None => Ok(Cidr::host(addr)),
            Some(prefix) => Cidr::new(addr, prefix.parse().map_err(|_| bad())?).ok_or_else(bad),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What an entry of a table says about its destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Refuse,
    Allow,
    /// Only the DNS port: the host's name servers in ranges closed to sandboxes.
    DnsOnly,
    /// Open: one of the host's name servers in an open range, whose DNS port a sandbox's
    /// own policy (see [`super::SandboxPolicy`]) never closes.
    NameServer,
}

impl Verdict {
    /// The value stored in the map (what the program compares).
    pub(super) const fn code(self) -> u32 {
        match self {
            Verdict::Refuse => 1,
            Verdict::Allow => 2,
            Verdict::DnsOnly => 3,
            Verdict::NameServer => 4,
        }
    }

    pub(super) fn from_code(code: u32) -> Option<Self> {
        [
            Verdict::Refuse,
            Verdict::Allow,
            Verdict::DnsOnly,
            Verdict::NameServer,
        ]
        .into_iter()
        .find(|v| v.code() == code)
    }
}

#[derive(Debug, Deserialize)]
struct Policy {
    always_refused: Vec<Entry>,
    closed_by_default: Vec<Entry>,
    dns: Dns,
}

#[derive(Debug, Deserialize)]
struct Entry {
    range: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct Dns {
    port: u16,
    #[allow(dead_code)]
    reason: String,
}

/// The fixed policy plus what the operator opened.
#[derive(Clone, Debug)]
pub struct Rules {
    always_refused: Vec<(Cidr, String)>,
    closed: Vec<Cidr>,
    opened: Vec<Cidr>,
    dns_port: u16,
}

/// The two tables the programs look up, most specific entry first: `refused` (what can
/// never be opened; looked up first) and `policy` (ranges closed by default, ranges the
/// operator opened). A destination in neither is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub refused: BTreeMap<Cidr, Verdict>,
    pub policy: BTreeMap<Cidr, Verdict>,
}

impl Rules {
    /// The policy of `resources/egress.json` with the ranges in `opened` opened.
    pub fn new(opened: &[Cidr]) -> Result<Self, RulesError> {
        let policy: Policy =
            serde_json::from_str(POLICY).map_err(|e| RulesError::Policy(e.to_string()))?;
        let parse = |entry: &Entry| {
            entry
                .range
                .parse::<Cidr>()
                .map_err(|e| RulesError::Policy(e.to_string()))
        };
        let mut always_refused = Vec::new();
        for entry in &policy.always_refused {
            always_refused.push((parse(entry)?, entry.reason.clone()));
        }
        let closed = policy
            .closed_by_default
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()?;
        let rules = Self {
            always_refused,
            closed,
            opened: Vec::new(),
            dns_port: policy.dns.port,
        };
        for cidr in opened {
            rules.check_openable(cidr)?;
        }
        Ok(Self {
            opened: opened.to_vec(),
            ..rules
        })
    }

    /// Refuses a range that would open nothing because it lies in an always-refused one.
    pub fn check_openable(&self, cidr: &Cidr) -> Result<(), RulesError> {
        match self.always_refused.iter().find(|(r, _)| r.contains(cidr)) {
            Some((within, reason)) => Err(RulesError::NeverOpened {
                cidr: *cidr,
                within: *within,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The port the host's name servers are open on.
    pub fn dns_port(&self) -> u16 {
        self.dns_port
    }

    /// The tables for a host with addresses `host` and name servers `name_servers`.
    pub fn tables(&self, host: &BTreeSet<IpAddr>, name_servers: &BTreeSet<IpAddr>) -> Tables {
        let mut tables = Tables::default();
        for (cidr, _) in &self.always_refused {
            tables.refused.insert(*cidr, Verdict::Refuse);
        }
        for addr in host {
            tables.refused.insert(Cidr::host(*addr), Verdict::Refuse);
        }
        // An opened range opens every closed range inside it, and itself where it lies
        // inside a closed one (the longer prefix wins).
        for cidr in &self.closed {
            if !self.opened.iter().any(|o| o.contains(cidr)) {
                tables.policy.insert(*cidr, Verdict::Refuse);
            }
        }
        for cidr in &self.opened {
            tables.policy.insert(*cidr, Verdict::Allow);
        }
        for addr in name_servers {
            let host = Cidr::host(*addr);
            if lookup(&tables.refused, *addr).is_some() {
                tables.refused.insert(host, Verdict::DnsOnly);
            } else if lookup(&tables.policy, *addr) == Some(Verdict::Refuse) {
                tables.policy.insert(host, Verdict::DnsOnly);
            } else {
                // Open anyway; marked so that a sandbox's policy leaves its DNS port open.
                tables.policy.insert(host, Verdict::NameServer);
            }
        }
        tables
    }
}

impl Tables {
    /// Whether a connection to `addr`, `port` is allowed: what the programs decide, in Rust
    /// (the reference the programs are tested against).
    pub fn allows(&self, addr: IpAddr, port: u16, dns_port: u16) -> bool {
        let verdict = lookup(&self.refused, addr).or_else(|| lookup(&self.policy, addr));
        match verdict {
            None | Some(Verdict::Allow | Verdict::NameServer) => true,
            Some(Verdict::Refuse) => false,
            Some(Verdict::DnsOnly) => port == dns_port,
        }
    }

    /// What the programs of a sandbox with its own policy decide: the server's refusals
    /// first (absolute), the DNS port of the host's name servers always open, then the
    /// sandbox's policy. `None` is allowed; `Some(rule)` names what refused it.
    pub fn refusal(
        &self,
        policy: &super::SandboxPolicy,
        addr: IpAddr,
        port: u16,
        dns_port: u16,
    ) -> Option<super::Refusal> {
        let verdict = lookup(&self.refused, addr).or_else(|| lookup(&self.policy, addr));
        match verdict {
            Some(Verdict::Refuse) => Some(super::Refusal::Server),
            Some(Verdict::DnsOnly) if port == dns_port => None,
            Some(Verdict::DnsOnly) => Some(super::Refusal::Server),
            Some(Verdict::NameServer) if port == dns_port => None,
            None | Some(Verdict::Allow | Verdict::NameServer) => policy.refusal(addr),
        }
    }
}

/// The verdict of the longest prefix of `table` holding `addr`.
pub fn lookup(table: &BTreeMap<Cidr, Verdict>, addr: IpAddr) -> Option<Verdict> {
    table
        .iter()
        .filter(|(cidr, _)| cidr.contains_addr(addr))
        .max_by_key(|(cidr, _)| cidr.prefix())
        .map(|(_, verdict)| *verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| ip(a)).collect()
    }

    /// This machine: its own addresses, and a name server in a private range.
    fn this_host(rules: &Rules) -> Tables {
        rules.tables(
            &set(&[
                "127.0.0.1",
                "192.0.2.2",
                "::1",
                "fd00::2",
                "fe80::fc:ff:fe00:1",
            ]),
            &set(&["10.255.255.53"]),
        )
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let net: Cidr = "192.168.77.9/24".parse().unwrap();
        assert_eq!(net.to_string(), "192.168.77.0/24");
        assert!(net.contains_addr(ip("192.168.77.2")));
        assert!(!net.contains_addr(ip("192.168.78.2")));
        assert!(!net.contains_addr(ip("::ffff:192.168.77.2")));
        assert_eq!("fc00::/7".parse::<Cidr>().unwrap().prefix(), 7);
        assert_eq!(
            "10.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(&net));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fc00::/129",
            "",
            "x/8",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn private_ranges_are_closed_and_public_ones_open() {
        let rules = Rules::new(&[]).unwrap();
        let tables = this_host(&rules);
        let allows = |addr: &str, port| tables.allows(ip(addr), port, 53);
        for closed in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.77.2",
            "100.64.0.1",
            "100.100.100.200",
            "169.254.169.254",
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "192.0.2.2",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00::2",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:203.0.113.80",
        ] {
            assert!(!allows(closed, 80), "{closed} should be closed");
        }
        // Package registries here resolve into a documentation range; the host's gateway
        // and neighbours there are not the host.
        for open in [
            "203.0.113.80",
            "192.0.2.1",
            "198.51.100.7",
            "151.101.0.223",
            "172.32.0.1",
            "100.128.0.1",
            "2a04:4e42::223",
        ] {
            assert!(allows(open, 443), "{open} should be open");
        }
    }

    #[test]
    fn name_servers_answer_on_the_dns_port_only() {
        let rules = Rules::new(&[]).unwrap();
        let tables = rules.tables(
            &set(&["192.0.2.2"]),
            &set(&["10.255.255.53", "127.0.0.53", "192.0.2.2", "203.0.113.53"]),
        );
        for server in ["10.255.255.53", "127.0.0.53", "192.0.2.2"] {
            assert!(tables.allows(ip(server), 53, 53), "{server}:53");
            assert!(!tables.allows(ip(server), 80, 53), "{server}:80");
        }
        // A public name server is open on every port.
        assert!(tables.allows(ip("203.0.113.53"), 80, 53));
        assert_eq!(
            lookup(&tables.policy, ip("203.0.113.53")),
            Some(Verdict::NameServer)
        );
        assert!(!tables.allows(ip("10.255.255.54"), 53, 53));
        assert!(!tables.allows(ip("127.0.0.1"), 53, 53));
    }

    #[test]
    fn opened_ranges_open_private_ranges_but_never_the_host() {
        let opened: Vec<Cidr> = ["192.168.77.0/24", "10.0.0.0/8", "fc00::/7"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let rules = Rules::new(&opened).unwrap();
        let tables = rules.tables(&set(&["192.168.77.1", "fd00::2"]), &set(&["10.255.255.53"]));
        let allows = |addr: &str| tables.allows(ip(addr), 80, 53);
        assert!(allows("192.168.77.2"));
        assert!(allows("10.1.2.3"));
        assert!(allows("fd12::1"));
        // The name server is in an opened range: every port of it is open.
        assert!(allows("10.255.255.53"));
        assert!(!allows("192.168.78.2"));
        assert!(!allows("192.168.77.1"));
        assert!(!allows("fd00::2"));
        assert!(!allows("172.16.0.1"));
        // Opening everything opens the private ranges, still not loopback or the host.
        let all = Rules::new(&["0.0.0.0/0".parse().unwrap()]).unwrap();
        let tables = all.tables(&set(&["192.0.2.2"]), &BTreeSet::new());
        assert!(tables.allows(ip("172.16.0.1"), 80, 53));
        assert!(!tables.allows(ip("127.0.0.1"), 80, 53));
        assert!(!tables.allows(ip("192.0.2.2"), 80, 53));
    }

    #[test]
    fn loopback_cannot_be_opened() {
        for never in ["127.0.0.0/8", "127.0.0.1", "::1/128", "::ffff:10.0.0.0/104"] {
            let err = Rules::new(&[never.parse().unwrap()]).unwrap_err();
            assert!(
                matches!(err, RulesError::NeverOpened { .. }),
                "{never}: {err}"
            );
        }
    }
}
