//! A sandbox's own egress rules (E2B's `allowOut` / `denyOut` / `dnsServers`): checked when a create or
//! `PUT /sandboxes/{id}/network` gives them, kept with its record, handed to the runtime
//! before it starts, again when a restarted server adopts it, and at once when they change.
//! The server's own refusals (the host, private ranges) stay whatever a sandbox asks for.

use cove_proto::rest::{SandboxNetwork, SandboxNetworkUpdate};
use cove_runtime::egress::{ALL_TRAFFIC, Refusal, SandboxPolicy};

use super::{Lifecycle, LifecycleError};
use crate::store::EgressRules;

/// The rules of a create's `network`, checked; `None` when it gives none.
pub fn from_create(
    network: Option<&SandboxNetwork>,
) -> Result<Option<EgressRules>, LifecycleError> {
    let Some(network) = network else {
        return Ok(None);
    };
    refuse_unsupported(network.egress_proxy.as_ref(), network.rules.as_ref())?;
    if network.https_ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(unsupported("httpsPorts"));
    }
    checked(EgressRules {
        allow_out: network.allow_out.clone().unwrap_or_default(),
        deny_out: network.deny_out.clone().unwrap_or_default(),
        dns_servers: network.dns_servers.clone().unwrap_or_default(),
    })
}

/// The rules an update gives (replacing the old ones; omitted lists are empty), checked.
pub fn from_update(update: &SandboxNetworkUpdate) -> Result<Option<EgressRules>, LifecycleError> {
    refuse_unsupported(update.egress_proxy.as_ref(), update.rules.as_ref())?;
    let mut deny_out = update.deny_out.clone().unwrap_or_default();
    if update.allow_internet_access == Some(false) && !deny_out.iter().any(|d| d == ALL_TRAFFIC) {
        deny_out.push(ALL_TRAFFIC.to_owned());
    }
    checked(EgressRules {
        allow_out: update.allow_out.clone().unwrap_or_default(),
        deny_out,
        dns_servers: update.dns_servers.clone().unwrap_or_default(),
    })
}

fn unsupported(field: &str) -> LifecycleError {
    LifecycleError::BadRequest(format!(
        "network.{field} is not supported by Cove yet; allowOut, denyOut (IP addresses, CIDR ranges and domain names), dnsServers and maskRequestHost are"
    ))
}

/// Refuses E2B's network options Cove does not have yet, when they ask for anything.
fn refuse_unsupported(
    egress_proxy: Option<&serde_json::Value>,
    rules: Option<&serde_json::Value>,
) -> Result<(), LifecycleError> {
    if egress_proxy.is_some_and(|p| !p.is_null()) {
        return Err(unsupported("egressProxy"));
    }
    if rules.is_some_and(|r| !(r.is_null() || r.as_object().is_some_and(|o| o.is_empty()))) {
        return Err(unsupported("rules"));
    }
    Ok(())
}

/// `rules` if they parse, `None` when both lists are empty.
fn checked(rules: EgressRules) -> Result<Option<EgressRules>, LifecycleError> {
    let policy = policy_of(&rules)?;
    Ok((!policy.is_empty()).then_some(rules))
}

/// Most entries of `dnsServers`, as E2B.
const MAX_DNS_SERVERS: usize = 10;

/// The runtime's policy for `rules`: with a domain among them, the `dnsServers` are opened
/// as `allowOut` addresses are (E2B's meaning: they only open the firewall).
pub fn policy_of(rules: &EgressRules) -> Result<SandboxPolicy, LifecycleError> {
    if rules.dns_servers.len() > MAX_DNS_SERVERS {
        return Err(LifecycleError::BadRequest(format!(
            "network.dnsServers has {} entries; at most {MAX_DNS_SERVERS} are allowed",
            rules.dns_servers.len()
        )));
    }
    if let Some(bad) = rules
        .dns_servers
        .iter()
        .find(|s| s.parse::<std::net::Ipv4Addr>().is_err())
    {
        return Err(LifecycleError::BadRequest(format!(
            "network.dnsServers entry `{bad}` is not an IPv4 address"
        )));
    }
    let refused = |err: cove_runtime::egress::PolicyError| {
        LifecycleError::BadRequest(format!(
            "{err} (rules of a sandbox narrow what the server allows; addresses the server refuses, such as the host and private ranges, stay refused whatever allowOut says)"
        ))
    };
    let policy = SandboxPolicy::new(&rules.allow_out, &rules.deny_out).map_err(refused)?;
    if !policy.has_domains() || rules.dns_servers.is_empty() {
        return Ok(policy);
    }
    let mut allow = rules.allow_out.clone();
    allow.extend(rules.dns_servers.iter().cloned());
    SandboxPolicy::new(&allow, &rules.deny_out).map_err(refused)
}

/// The policy a record's rules stand for (`None`: the server's rules alone).
pub fn policy_of_record(rules: Option<&EgressRules>) -> Option<SandboxPolicy> {
    rules.and_then(|rules| match policy_of(rules) {
        Ok(policy) => Some(policy),
        Err(err) => {
            // Checked when they were set; a record that no longer parses is refused all
            // egress rather than given none of its rules.
            tracing::error!(%err, "a sandbox's stored egress rules do not parse; refusing all its egress");
            SandboxPolicy::new(&[], &[ALL_TRAFFIC.to_owned()]).ok()
        }
    })
}

impl Lifecycle {
    /// `PUT /sandboxes/{id}/network`: replaces the egress rules of `team`'s sandbox `id`,
    /// running or paused. Its next connection is decided by them.
    pub async fn update_network(
        &self,
        team: &str,
        id: &str,
        update: SandboxNetworkUpdate,
    ) -> Result<(), LifecycleError> {
        let rules = from_update(&update)?;
        let live = self.get(team, id)?;
        if update.allow_internet_access == Some(true) && !live.read(|r| r.allow_internet_access) {
            return Err(LifecycleError::Conflict(format!(
                "sandbox {id} was created without internet access; it cannot be given some later"
            )));
        }
        // One change at a time, and none while it is paused or resumed.
        let _turn = self.turn_of(&live).await?;
        let policy = policy_of_record(rules.as_ref());
        let sandbox = id.to_owned();
        self.blocking(move |r| r.set_egress_policy(&sandbox, policy.as_ref()))
            .await
            .map_err(|source| LifecycleError::Transition {
                id: id.to_owned(),
                what: "given its new network rules",
                source,
            })?;
        self.update(&live, |r| r.egress = rules)?;
        tracing::info!(sandbox_id = %id, team = %team, "sandbox's egress rules replaced");
        Ok(())
    }

    /// Counts what the egress filter of `live` refused since the last look (the runtime
    /// tells it in the sandbox's log, by rule).
    pub(super) async fn count_egress_refusals(&self, live: &super::Live) {
        let id = live.id();
        let refusals = self
            .blocking(move |r| Ok(r.take_egress_refusals(&id)))
            .await
            .unwrap_or_default();
        for (rule, count) in refusals {
            self.metrics
                .egress_refused(matches!(rule, Refusal::Server), count);
        }
    }

    /// Hands the runtime the egress rules of sandbox `id` (at create, adopt and resume).
    pub(super) async fn apply_egress(
        &self,
        id: &str,
        rules: Option<&EgressRules>,
    ) -> Result<(), cove_runtime::RuntimeError> {
        let policy = policy_of_record(rules);
        if policy.is_none() {
            return Ok(());
        }
        let id = id.to_owned();
        self.blocking(move |r| r.set_egress_policy(&id, policy.as_ref()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn updates_replace_and_name_what_they_refuse() {
        let update = SandboxNetworkUpdate {
            allow_out: Some(strings(&["10.203.0.2"])),
            allow_internet_access: Some(false),
            ..SandboxNetworkUpdate::default()
        };
        assert_eq!(
            from_update(&update).unwrap(),
            Some(EgressRules {
                allow_out: strings(&["10.203.0.2"]),
                deny_out: strings(&["0.0.0.0/0"]),
                dns_servers: Vec::new(),
            })
        );
        // Omitted lists are cleared.
        assert_eq!(from_update(&SandboxNetworkUpdate::default()).unwrap(), None);
        let domain = SandboxNetworkUpdate {
            allow_out: Some(strings(&["*.github.com"])),
            deny_out: Some(strings(&["0.0.0.0/0"])),
            ..SandboxNetworkUpdate::default()
        };
        assert_eq!(
            from_update(&domain).unwrap(),
            Some(EgressRules {
                allow_out: strings(&["*.github.com"]),
                deny_out: strings(&["0.0.0.0/0"]),
                dns_servers: Vec::new(),
            })
        );
        let url = SandboxNetworkUpdate {
            allow_out: Some(strings(&["https://github.com"])),
            ..SandboxNetworkUpdate::default()
        };
        let err = from_update(&url).unwrap_err().to_string();
        assert!(err.contains("`https://github.com`"), "{err}");
        let proxy = SandboxNetworkUpdate {
            egress_proxy: Some(serde_json::json!({"address": "127.0.0.1:1080"})),
            ..SandboxNetworkUpdate::default()
        };
        assert!(
            from_update(&proxy)
                .unwrap_err()
                .to_string()
                .contains("egressProxy")
        );
        let bad = SandboxNetwork {
            deny_out: Some(strings(&["10.0.0.0/40"])),
            ..SandboxNetwork::default()
        };
        let err = from_create(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("`10.0.0.0/40`"), "{err}");
        assert!(err.contains("stay refused whatever allowOut says"), "{err}");
        // A create asking for what Cove does not have yet is refused, as an update is.
        let https = SandboxNetwork {
            https_ports: Some(vec![3000]),
            ..SandboxNetwork::default()
        };
        let err = from_create(Some(&https)).unwrap_err().to_string();
        assert!(err.contains("httpsPorts is not supported"), "{err}");
        // Name servers: IPv4 addresses, at most ten; opened only beside a domain rule.
        let dns = |servers: &[&str], allow: &[&str]| SandboxNetwork {
            dns_servers: Some(strings(servers)),
            allow_out: Some(strings(allow)),
            deny_out: Some(strings(&["0.0.0.0/0"])),
            ..SandboxNetwork::default()
        };
        let err = from_create(Some(&dns(&["1.1.1.1", "dns.google"], &["pypi.org"])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dnsServers entry `dns.google`"), "{err}");
        let many: Vec<String> = (1..=11).map(|i| format!("192.0.2.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = from_create(Some(&dns(&many, &["pypi.org"])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 10"), "{err}");
        let ip = |a: &str| a.parse().unwrap();
        let with_name = from_create(Some(&dns(&["192.0.2.53"], &["pypi.org"])))
            .unwrap()
            .unwrap();
        assert_eq!(
            policy_of(&with_name).unwrap().refusal(ip("192.0.2.53")),
            None
        );
        let by_address = from_create(Some(&dns(&["192.0.2.53"], &["198.51.100.7"])))
            .unwrap()
            .unwrap();
        assert!(
            policy_of(&by_address)
                .unwrap()
                .refusal(ip("192.0.2.53"))
                .is_some()
        );
        assert!(
            from_create(Some(&SandboxNetwork {
                allow_public_traffic: Some(false),
                dns_servers: Some(Vec::new()),
                ..SandboxNetwork::default()
            }))
            .unwrap()
            .is_none()
        );
    }
}
