//! A sandbox's own egress policy: E2B's `allowOut` / `denyOut`, addresses and ranges. It
//! narrows what the server's rules ([`super::Rules`]) let through and never widens it: a
//! destination the server refuses stays refused whatever the sandbox's `allowOut` says. An
//! entry of `allowOut` wins over every entry of `denyOut`; among `denyOut` entries the most
//! specific one is named as the rule that refused a connection.

use std::{fmt, net::IpAddr};

use super::rules::Cidr;

/// Most entries of one list (`allowOut` or `denyOut`).
pub const MAX_POLICY_ENTRIES: usize = 256;

/// E2B's name for every destination; Cove takes it for both address families.
pub const ALL_TRAFFIC: &str = "0.0.0.0/0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "{list} entry `{entry}` is a domain name: domain rules are not supported by Cove yet; give IP addresses or ranges (CIDR, e.g. 203.0.113.0/24)"
    )]
    Domain { list: &'static str, entry: String },
    #[error(
        "{list} entry `{entry}` is not an IP address or range (expected ADDRESS or ADDRESS/PREFIX, e.g. 203.0.113.7 or 2001:db8::/32)"
    )]
    Bad { list: &'static str, entry: String },
    #[error("{list} has {count} entries; at most {max} are allowed")]
    TooMany {
        list: &'static str,
        count: usize,
        max: usize,
    },
}

/// One entry of a list as the user wrote it, and the ranges it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub text: String,
    pub ranges: Vec<Cidr>,
}

/// What refused a connection of a sandbox with its own policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The server's rules (the host, private ranges): no sandbox policy opens them.
    Server,
    /// The `denyOut` entry written so.
    Deny(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Server => f.write_str("the server's egress rules (the host, private ranges)"),
            Refusal::Deny(entry) => write!(f, "denyOut {entry}"),
        }
    }
}

/// A sandbox's `allowOut` and `denyOut`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxPolicy {
    allow: Vec<PolicyEntry>,
    deny: Vec<PolicyEntry>,
}

impl SandboxPolicy {
    /// Parses the two lists; every entry is an IPv4 or IPv6 address or range.
    pub fn new(allow_out: &[String], deny_out: &[String]) -> Result<Self, PolicyError> {
        Ok(Self {
            allow: parse_list("allowOut", allow_out)?,
            deny: parse_list("denyOut", deny_out)?,
        })
    }

    /// No entry in either list: the sandbox is filtered by the server's rules alone.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
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
            return Err(if looks_like_a_name(text) {
                PolicyError::Domain {
                    list,
                    entry: entry.clone(),
                }
            } else {
                PolicyError::Bad {
                    list,
                    entry: entry.clone(),
                }
            });
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
        });
    }
    Ok(parsed)
}

/// Whether `text` is written like a DNS name (`example.com`, `*.github.com`).
fn looks_like_a_name(text: &str) -> bool {
    let name = text.strip_prefix("*.").unwrap_or(text);
    !name.is_empty()
        && name.contains('.')
        && name.chars().any(|c| c.is_ascii_alphabetic())
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
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
    fn bad_entries_and_domains_are_named() {
        let err = SandboxPolicy::new(&strings(&["10.0.0.0/33"]), &[]).unwrap_err();
        assert_eq!(
            err,
            PolicyError::Bad {
                list: "allowOut",
                entry: "10.0.0.0/33".into()
            }
        );
        assert!(err.to_string().contains("`10.0.0.0/33`"), "{err}");
        for name in ["example.com", "*.github.com", "pypi.org"] {
            let err = SandboxPolicy::new(&strings(&[name]), &[]).unwrap_err();
            assert!(matches!(err, PolicyError::Domain { .. }), "{name}: {err}");
            assert!(
                err.to_string().contains("not supported by Cove yet"),
                "{err}"
            );
        }
        for bad in ["", "x", "1.2.3", "fe80::zz", "10.0.0.1/", "*"] {
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
