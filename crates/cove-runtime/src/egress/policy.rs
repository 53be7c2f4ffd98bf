//! A sandbox's own egress policy: E2B's `allowOut` / `denyOut`, addresses, ranges and domain
//! names. It narrows what the server's rules ([`super::Rules`]) let through and never widens
//! it: a destination the server refuses stays refused whatever the sandbox's `allowOut` says.
//! An entry of `allowOut` wins over every entry of `denyOut`; among `denyOut` entries the most
//! specific one is named as the rule that refused a connection.
//!
//! Addresses and ranges are decided by the kernel on every connection. Domain names
//! (`pypi.org`, `*.github.com`) are decided on what a connection names — the TLS server name
//! on port 443, the HTTP `Host` on port 80 — by the egress proxy ([`super::proxy`]), which
//! resolves the name itself; other ports and protocols are decided by addresses alone.

use std::{fmt, net::IpAddr};

use super::rules::Cidr;

/// Most entries of one list (`allowOut` or `denyOut`).
pub const MAX_POLICY_ENTRIES: usize = 256;

/// E2B's name for every destination; Cove takes it for both address families.
pub const ALL_TRAFFIC: &str = "0.0.0.0/0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "{list} entry `{entry}` is not an IP address, range or domain name (expected ADDRESS, ADDRESS/PREFIX, NAME or *.NAME, e.g. 203.0.113.7, 2001:db8::/32, pypi.org or *.github.com)"
    )]
    Bad { list: &'static str, entry: String },
    #[error(
        "rules key `{domain}` is not a domain name (expected NAME or *.NAME, e.g. api.example.com)"
    )]
    RuleDomain { domain: String },
    #[error("rules for `{domain}`: header `{header}` {why}")]
    RuleHeader {
        domain: String,
        header: String,
        why: &'static str,
    },
    #[error("{list} has {count} entries; at most {max} are allowed")]
    TooMany {
        list: &'static str,
        count: usize,
        max: usize,
    },
}

/// One entry of a list as the user wrote it, and the ranges or the names it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub text: String,
    /// The address ranges of an address or range entry; none for a domain entry.
    pub ranges: Vec<Cidr>,
    /// The names of a domain entry.
    pub domain: Option<Domain>,
}

/// The names a domain entry stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Domain {
    /// `example.com`: that name only.
    Exact(String),
    /// `*.example.com`: every name below `example.com` (not `example.com` itself).
    Below(String),
}

impl Domain {
    /// Whether `name` (lowercase, no trailing dot) is one of these names.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Domain::Exact(exact) => name == exact,
            Domain::Below(parent) => name
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// How narrow the entry is: the longer the name, the narrower; an exact name is
    /// narrower than a wildcard of the same length.
    fn narrowness(&self) -> (usize, bool) {
        match self {
            Domain::Exact(name) => (name.len(), true),
            Domain::Below(name) => (name.len(), false),
        }
    }
}

/// What a sandbox's domain entries say of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameVerdict {
    /// An `allowOut` entry holds it: the proxy connects to what it resolves to.
    Allowed,
    /// A `denyOut` entry (the narrowest holding it), and no `allowOut` entry, holds it.
    Denied(Refusal),
    /// No domain entry names it: the addresses it resolves to are decided as any address.
    Unnamed,
}

/// What refused a connection of a sandbox with its own policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The server's rules (the host, private ranges): no sandbox policy opens them.
    Server,
    /// The `denyOut` entry written so.
    Deny(String),
    /// A connection to port 80 or 443 of a sandbox with domain rules that named no server
    /// (TLS without a server name, HTTP without `Host`) or spoke neither protocol.
    NoName,
    /// A TLS connection to a name with `rules` on a server that cannot intercept TLS.
    NoInterception,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Server => f.write_str("the server's egress rules (the host, private ranges)"),
            Refusal::Deny(entry) => write!(f, "denyOut {entry}"),
            Refusal::NoName => f.write_str(
                "the domain rules: the connection named no server (TLS server name or HTTP Host) to check",
            ),
            Refusal::NoInterception => f.write_str(
                "the rules: they set headers for this name, and this server cannot intercept TLS",
            ),
        }
    }
}

/// A sandbox's `allowOut` and `denyOut`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxPolicy {
    allow: Vec<PolicyEntry>,
    deny: Vec<PolicyEntry>,
    transforms: Vec<Transform>,
}

/// Headers set in the requests a sandbox sends to the names of a domain (E2B's `rules`):
/// an existing header of the same name is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    pub domain: Domain,
    pub headers: Vec<(String, String)>,
}

/// Most domains `rules` may name, and headers per domain.
pub const MAX_RULE_DOMAINS: usize = 64;
pub const MAX_RULE_HEADERS: usize = 32;

/// Headers a rule may not set: they frame the request or the connection, which the proxy
/// keeps as HTTP has them.
const FRAMING_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "te",
];

impl SandboxPolicy {
    /// Parses the two lists; every entry is an IPv4 or IPv6 address or range, or a domain
    /// name (`example.com`, `*.example.com`).
    pub fn new(allow_out: &[String], deny_out: &[String]) -> Result<Self, PolicyError> {
        Ok(Self {
            allow: parse_list("allowOut", allow_out)?,
            deny: parse_list("denyOut", deny_out)?,
            transforms: Vec::new(),
        })
    }

    /// No entry in either list: the sandbox is filtered by the server's rules alone.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.transforms.is_empty()
    }

    /// The policy with `rules` (domain → headers, as E2B's `rules` give them), checked.
    pub fn with_rules(
        mut self,
        rules: &[(String, Vec<(String, String)>)],
    ) -> Result<Self, PolicyError> {
        if rules.len() > MAX_RULE_DOMAINS {
            return Err(PolicyError::TooMany {
                list: "rules",
                count: rules.len(),
                max: MAX_RULE_DOMAINS,
            });
        }
        for (domain, headers) in rules {
            let Some(pattern) = domain_of(domain.trim()) else {
                return Err(PolicyError::RuleDomain {
                    domain: domain.clone(),
                });
            };
            if headers.len() > MAX_RULE_HEADERS {
                return Err(PolicyError::TooMany {
                    list: "rules headers",
                    count: headers.len(),
                    max: MAX_RULE_HEADERS,
                });
            }
            let bad = |header: &str, why| PolicyError::RuleHeader {
                domain: domain.clone(),
                header: header.to_owned(),
                why,
            };
            for (name, value) in headers {
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(bad(name, "is not an HTTP header name"));
                }
                if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(bad(name, "frames the request and cannot be set by a rule"));
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(bad(name, "has a value with a line break or NUL"));
                }
            }
            self.transforms.push(Transform {
                domain: pattern,
                headers: headers.clone(),
            });
        }
        Ok(self)
    }

    /// The headers to set in requests to `name`: those of the narrowest rule holding it.
    pub fn transform_for(&self, name: &str) -> Option<&[(String, String)]> {
        self.transforms
            .iter()
            .filter(|t| t.domain.matches(name))
            .max_by_key(|t| t.domain.narrowness())
            .map(|t| t.headers.as_slice())
    }

    /// Whether connections to ports 80 and 443 go through the egress proxy: for domain
    /// entries, or for rules that set headers.
    pub fn needs_proxy(&self) -> bool {
        self.has_domains() || !self.transforms.is_empty()
    }

    /// Whether an entry is a domain name: connections to ports 80 and 443 then go through
    /// the egress proxy, which decides by the name they ask for.
    pub fn has_domains(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|e| e.domain.is_some())
    }

    /// What the domain entries say of `name` (lowercase, no trailing dot).
    pub fn name_verdict(&self, name: &str) -> NameVerdict {
        let holds = |e: &&PolicyEntry| e.domain.as_ref().is_some_and(|d| d.matches(name));
        if self.allow.iter().any(|e| holds(&e)) {
            return NameVerdict::Allowed;
        }
        self.deny
            .iter()
            .filter(holds)
            .max_by_key(|e| e.domain.as_ref().map(Domain::narrowness))
            .map_or(NameVerdict::Unnamed, |e| {
                NameVerdict::Denied(Refusal::Deny(e.text.clone()))
            })
    }

    pub fn allow(&self) -> &[PolicyEntry] {
        &self.allow
    }

    pub fn deny(&self) -> &[PolicyEntry] {
        &self.deny
    }

    /// `allowOut` as written.
    pub fn allow_out(&self) -> Vec<String> {
        self.allow.iter().map(|e| e.text.clone()).collect()
    }

    /// `denyOut` as written.
    pub fn deny_out(&self) -> Vec<String> {
        self.deny.iter().map(|e| e.text.clone()).collect()
    }

    /// Whether the policy alone refuses `addr`, and by which `denyOut` entry (the most
    /// specific one holding it); any `allowOut` entry holding it lets it through.
    pub fn refusal(&self, addr: IpAddr) -> Option<Refusal> {
        let holds = |e: &&PolicyEntry| e.ranges.iter().any(|r| r.contains_addr(addr));
        if self.allow.iter().any(|e| holds(&e)) {
            return None;
        }
        self.deny
            .iter()
            .flat_map(|e| e.ranges.iter().map(move |r| (r, e)))
            .filter(|(r, _)| r.contains_addr(addr))
            .max_by_key(|(r, _)| r.prefix())
            .map(|(_, e)| Refusal::Deny(e.text.clone()))
    }
}

fn parse_list(list: &'static str, entries: &[String]) -> Result<Vec<PolicyEntry>, PolicyError> {
    if entries.len() > MAX_POLICY_ENTRIES {
        return Err(PolicyError::TooMany {
            list,
            count: entries.len(),
            max: MAX_POLICY_ENTRIES,
        });
    }
    let mut parsed: Vec<PolicyEntry> = Vec::new();
    for entry in entries {
        let text = entry.trim();
        let Ok(cidr) = text.parse::<Cidr>() else {
            let Some(domain) = domain_of(text) else {
                return Err(PolicyError::Bad {
                    list,
                    entry: entry.clone(),
                });
            };
            let text = text.trim_end_matches('.').to_ascii_lowercase();
            if !parsed.iter().any(|p| p.text == text) {
                parsed.push(PolicyEntry {
                    text,
                    ranges: Vec::new(),
                    domain: Some(domain),
                });
            }
            continue;
        };
        if parsed.iter().any(|p| p.text == text) {
            continue;
        }
        let mut ranges = vec![cidr];
        // E2B's "all traffic" is written as the IPv4 range alone; a rule meant for every
        // destination must not leave IPv6 open.
        if text == ALL_TRAFFIC {
            ranges.extend(Cidr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0));
        }
        parsed.push(PolicyEntry {
            text: text.to_owned(),
            ranges,
            domain: None,
        });
    }
    Ok(parsed)
}

/// The names `text` stands for, when it is written like a DNS name with at least two labels
/// (`example.com`, `*.github.com`; a trailing dot and upper case are allowed). Internationalised
/// names are given in their ASCII form (`xn--…`), as DNS carries them.
fn domain_of(text: &str) -> Option<Domain> {
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    let (name, below) = match lower.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (lower.as_str(), false),
    };
    let valid = name.len() <= 253
        && name.contains('.')
        && name.chars().any(|c| c.is_ascii_alphabetic())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    valid.then(|| match below {
        true => Domain::Below(name.to_owned()),
        false => Domain::Exact(name.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn allow_wins_over_deny_and_the_most_specific_deny_is_named() {
        let policy = SandboxPolicy::new(
            &strings(&["203.0.113.7", "2001:db8:1::/48"]),
            &strings(&["0.0.0.0/0", "198.51.100.0/24", "198.51.100.128/25"]),
        )
        .unwrap();
        assert_eq!(policy.refusal(ip("203.0.113.7")), None);
        assert_eq!(policy.refusal(ip("2001:db8:1::9")), None);
        let deny = |rule: &str| Some(Refusal::Deny(rule.to_owned()));
        assert_eq!(policy.refusal(ip("203.0.113.8")), deny("0.0.0.0/0"));
        // 0.0.0.0/0 stands for every destination, IPv6 too.
        assert_eq!(policy.refusal(ip("2001:db8:2::1")), deny("0.0.0.0/0"));
        assert_eq!(policy.refusal(ip("198.51.100.7")), deny("198.51.100.0/24"));
        assert_eq!(
            policy.refusal(ip("198.51.100.200")),
            deny("198.51.100.128/25")
        );
        // Only a deny list: the rest stays open.
        let narrow = SandboxPolicy::new(&[], &strings(&["198.51.100.7"])).unwrap();
        assert_eq!(narrow.refusal(ip("198.51.100.8")), None);
        assert_eq!(narrow.refusal(ip("198.51.100.7")), deny("198.51.100.7"));
        assert!(SandboxPolicy::new(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn domains_match_names_and_allow_wins() {
        let policy = SandboxPolicy::new(
            &strings(&["PyPI.org.", "*.github.com", "198.51.100.7"]),
            &strings(&["0.0.0.0/0", "*.example.com", "api.example.com"]),
        )
        .unwrap();
        assert!(policy.has_domains());
        assert_eq!(
            policy.allow_out(),
            ["pypi.org", "*.github.com", "198.51.100.7"]
        );
        assert_eq!(policy.name_verdict("pypi.org"), NameVerdict::Allowed);
        assert_eq!(policy.name_verdict("api.github.com"), NameVerdict::Allowed);
        assert_eq!(policy.name_verdict("a.b.github.com"), NameVerdict::Allowed);
        // A wildcard stands for the names below it, not the name itself, nor look-alikes.
        assert_eq!(policy.name_verdict("github.com"), NameVerdict::Unnamed);
        assert_eq!(policy.name_verdict("evilgithub.com"), NameVerdict::Unnamed);
        assert_eq!(policy.name_verdict("files.pypi.org"), NameVerdict::Unnamed);
        let deny = |rule: &str| NameVerdict::Denied(Refusal::Deny(rule.to_owned()));
        assert_eq!(
            policy.name_verdict("api.example.com"),
            deny("api.example.com")
        );
        assert_eq!(
            policy.name_verdict("www.example.com"),
            deny("*.example.com")
        );
        // Domain entries hold no addresses: the address rules are unchanged.
        assert_eq!(policy.refusal(ip("198.51.100.7")), None);
        assert_eq!(
            policy.refusal(ip("198.51.100.8")),
            Some(Refusal::Deny("0.0.0.0/0".into()))
        );
        assert!(
            !SandboxPolicy::new(&strings(&["10.0.0.1"]), &[])
                .unwrap()
                .has_domains()
        );
    }

    #[test]
    fn rules_set_headers_for_the_narrowest_domain_and_are_checked() {
        let headers = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let rules = vec![
            ("*.example.com".to_owned(), headers(&[("X-Key", "wide")])),
            (
                "api.example.com".to_owned(),
                headers(&[("X-Key", "narrow")]),
            ),
        ];
        let policy = SandboxPolicy::default().with_rules(&rules).unwrap();
        assert!(!policy.is_empty() && policy.needs_proxy() && !policy.has_domains());
        let value = |name: &str| policy.transform_for(name).map(|h| h[0].1.clone());
        assert_eq!(value("api.example.com").as_deref(), Some("narrow"));
        assert_eq!(value("www.example.com").as_deref(), Some("wide"));
        assert_eq!(value("example.com"), None);
        let refused = |domain: &str, pairs: &[(&str, &str)]| {
            SandboxPolicy::default()
                .with_rules(&[(domain.to_owned(), headers(pairs))])
                .unwrap_err()
                .to_string()
        };
        assert!(refused("10.0.0.1", &[("X", "y")]).contains("not a domain name"));
        assert!(refused("a.example", &[("Host", "x")]).contains("frames the request"));
        assert!(refused("a.example", &[("Bad Name", "x")]).contains("not an HTTP header name"));
        assert!(refused("a.example", &[("X", "a\r\nB: c")]).contains("line break"));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = SandboxPolicy::new(&strings(&["10.0.0.0/33"]), &[]).unwrap_err();
        assert_eq!(
            err,
            PolicyError::Bad {
                list: "allowOut",
                entry: "10.0.0.0/33".into()
            }
        );
        assert!(err.to_string().contains("`10.0.0.0/33`"), "{err}");
        for bad in [
            "",
            "x",
            "1.2.3",
            "fe80::zz",
            "10.0.0.1/",
            "*",
            "*.com.",
            "a..b",
            "ex ample.com",
            "*.*.example.com",
            "http://example.com",
        ] {
            let err = SandboxPolicy::new(&[], &strings(&[bad])).unwrap_err();
            assert!(
                matches!(
                    err,
                    PolicyError::Bad {
                        list: "denyOut",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        let many: Vec<String> = (0..=MAX_POLICY_ENTRIES)
            .map(|i| format!("198.51.{}.{}", i / 250, i % 250))
            .collect();
        assert!(matches!(
            SandboxPolicy::new(&many, &[]),
            Err(PolicyError::TooMany { .. })
        ));
    }
}
