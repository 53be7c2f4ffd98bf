//! A sandbox's own egress rules (E2B's `allowOut` / `denyOut` / `dnsServers`): checked when a create or
//! `PUT /sandboxes/{id}/network` gives them, kept with its record, handed to the runtime
//! before it starts, again when a restarted server adopts it, and at once when they change.
//! The server's own refusals (the host, private ranges) stay whatever a sandbox asks for.

use std::collections::BTreeMap;

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
    refuse_unsupported(network.egress_proxy.as_ref())?;
    if network.https_ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(unsupported("httpsPorts"));
    }
    checked(EgressRules {
        allow_out: network.allow_out.clone().unwrap_or_default(),
        deny_out: network.deny_out.clone().unwrap_or_default(),
        dns_servers: network.dns_servers.clone().unwrap_or_default(),
        rules: rules_of(network.rules.as_ref())?,
    })
}

/// The rules an update gives (replacing the old ones; omitted lists are empty), checked.
pub fn from_update(update: &SandboxNetworkUpdate) -> Result<Option<EgressRules>, LifecycleError> {
    refuse_unsupported(update.egress_proxy.as_ref())?;
    let mut deny_out = update.deny_out.clone().unwrap_or_default();
    if update.allow_internet_access == Some(false) && !deny_out.iter().any(|d| d == ALL_TRAFFIC) {
        deny_out.push(ALL_TRAFFIC.to_owned());
    }
    checked(EgressRules {
        allow_out: update.allow_out.clone().unwrap_or_default(),
        deny_out,
        dns_servers: update.dns_servers.clone().unwrap_or_default(),
        rules: rules_of(update.rules.as_ref())?,
    })
}

fn unsupported(field: &str) -> LifecycleError {
    LifecycleError::BadRequest(format!(
        "network.{field} is not supported by Cove yet; allowOut, denyOut (IP addresses, CIDR ranges and domain names), dnsServers and maskRequestHost are"
    ))
}

/// Refuses E2B's network options Cove does not have yet, when they ask for anything.
fn refuse_unsupported(egress_proxy: Option<&serde_json::Value>) -> Result<(), LifecycleError> {
    if egress_proxy.is_some_and(|p| !p.is_null()) {
        return Err(unsupported("egressProxy"));
    }
    Ok(())
}

/// E2B's `rules` (`{"api.example.com": [{"transform": {"headers": {"X-Key": "…"}}}]}`): the
/// headers of each domain's transforms, later ones replacing earlier ones of the same name.
fn rules_of(
    rules: Option<&serde_json::Value>,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, LifecycleError> {
    let bad = |what: String| LifecycleError::BadRequest(format!("network.rules: {what}"));
    let Some(rules) = rules.filter(|r| !r.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let domains = rules
        .as_object()
        .ok_or_else(|| bad("expected an object of domains".into()))?;
    let mut parsed = BTreeMap::new();
    for (domain, list) in domains {
        let list = list
            .as_array()
            .ok_or_else(|| bad(format!("`{domain}`: expected a list of rules")))?;
        let mut headers = BTreeMap::new();
        for rule in list {
            let rule = rule
                .as_object()
                .ok_or_else(|| bad(format!("`{domain}`: a rule is not an object")))?;
            for (key, transform) in rule {
                if key != "transform" {
                    return Err(bad(format!(
                        "`{domain}`: `{key}` is not supported by Cove (only `transform`)"
                    )));
                }
                let transform = transform
                    .as_object()
                    .ok_or_else(|| bad(format!("`{domain}`: transform is not an object")))?;
                for (key, value) in transform {
                    if key != "headers" {
                        return Err(bad(format!(
                            "`{domain}`: transform `{key}` is not supported by Cove (only `headers`)"
                        )));
                    }
                    let values = value
                        .as_object()
                        .ok_or_else(|| bad(format!("`{domain}`: headers is not an object")))?;
                    for (name, value) in values {
                        let value = value.as_str().ok_or_else(|| {
                            bad(format!("`{domain}`: header `{name}` is not a string"))
                        })?;
                        headers.insert(name.clone(), value.to_owned());
                    }
                }
            }
        }
        parsed.insert(domain.clone(), headers);
    }
    Ok(parsed)
}

/// `rules` as E2B shows them: each domain with one transform of its headers.
pub fn rules_json(rules: &BTreeMap<String, BTreeMap<String, String>>) -> serde_json::Value {
    rules
        .iter()
        .map(|(domain, headers)| {
            let rule = serde_json::json!([{ "transform": { "headers": headers } }]);
            (domain.clone(), rule)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Where a sandbox with rules finds the egress CA, and the trust store it joins.
pub const CA_FILE: &str = "/usr/local/share/ca-certificates/cove-egress-ca.crt";
pub const TRUST_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment that points the usual clients at the trust store holding the egress CA
/// (Python's `requests` and `httpx` carry their own bundles otherwise; Node adds the CA).
pub fn ca_env() -> [(&'static str, &'static str); 3] {
    [
        ("SSL_CERT_FILE", TRUST_STORE),
        ("REQUESTS_CA_BUNDLE", TRUST_STORE),
        ("NODE_EXTRA_CA_CERTS", CA_FILE),
    ]
}

/// Adds [`ca_env`] to `env` where the user set none of those.
pub fn add_ca_env(env: &mut BTreeMap<String, String>) {
    for (name, value) in ca_env() {
        env.entry(name.to_owned())
            .or_insert_with(|| value.to_owned());
    }
}

/// `rules` if they parse, `None` when both lists are empty.
fn checked(rules: EgressRules) -> Result<Option<EgressRules>, LifecycleError> {
    let policy = policy_of(&rules)?;
    Ok((!policy.is_empty()).then_some(rules))
}

/// Most entries of `dnsServers`, as E2B.
const MAX_DNS_SERVERS: usize = 10;

/// The runtime's policy for `rules`: with a domain among them, the `dnsServers` are opened
/// as `allowOut` addresses are (E2B's meaning: they only open the firewall); and the headers
/// of the `rules`.
pub fn policy_of(rules: &EgressRules) -> Result<SandboxPolicy, LifecycleError> {
    let transforms: Vec<(String, Vec<(String, String)>)> = rules
        .rules
        .iter()
        .map(|(domain, headers)| {
            let headers = headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            (domain.clone(), headers)
        })
        .collect();
    let policy = addresses_and_names(rules)?;
    policy
        .with_rules(&transforms)
        .map_err(|err| LifecycleError::BadRequest(format!("network.{err}")))
}

fn addresses_and_names(rules: &EgressRules) -> Result<SandboxPolicy, LifecycleError> {
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
        let with_rules = rules.as_ref().is_some_and(|r| !r.rules.is_empty());
        self.update(&live, |r| {
            r.egress = rules;
            if with_rules {
                add_ca_env(&mut r.env_vars);
            }
        })?;
        if with_rules && live.paused().is_none() {
            // New processes see the trust store with the egress CA in it.
            let env: BTreeMap<&str, &str> = ca_env().into_iter().collect();
            let init = serde_json::json!({ "envVars": env });
            let token = live.access_token();
            if let Err(err) =
                crate::agent_link::post_json(live.links(), "/init", Some(&token), &init).await
            {
                tracing::warn!(sandbox_id = %id, %err, "cannot point the sandbox at the egress CA");
            }
            self.install_egress_ca(&live.record(), &live.agent()).await;
        }
        tracing::info!(sandbox_id = %id, team = %team, "sandbox's egress rules replaced");
        Ok(())
    }

    /// Installs the egress CA in the sandbox of `record` when its rules set headers: the
    /// certificate at [`CA_FILE`], added to [`TRUST_STORE`] once, by root inside (the host
    /// writes nothing into the sandbox's files). A failure is told, not fatal: the sandbox's
    /// HTTPS requests to those names then fail verification.
    pub(super) async fn install_egress_ca(
        &self,
        record: &crate::store::SandboxRecord,
        agent: &cove_runtime::AgentEndpoint,
    ) {
        if record.egress.as_ref().is_none_or(|e| e.rules.is_empty()) {
            return;
        }
        let Some(pem) = &self.config.egress_ca_pem else {
            return;
        };
        // A line of the certificate's body tells whether the store has it already.
        let marker = pem.lines().nth(1).unwrap_or_default().to_owned();
        let line = format!(
            "set -e; mkdir -p \"$(dirname {CA_FILE})\" \"$(dirname {TRUST_STORE})\"; \
             printf '%s\\n' \"$COVE_EGRESS_CA\" > {CA_FILE}; \
             grep -qF \"$COVE_EGRESS_CA_MARK\" {TRUST_STORE} 2>/dev/null || cat {CA_FILE} >> {TRUST_STORE}"
        );
        let command = crate::agent_exec::Command {
            line,
            shell: "/bin/sh".to_owned(),
            user: "root".to_owned(),
            cwd: "/".to_owned(),
            env: [
                ("COVE_EGRESS_CA".to_owned(), pem.trim_end().to_owned()),
                ("COVE_EGRESS_CA_MARK".to_owned(), marker),
            ]
            .into_iter()
            .collect(),
            timeout: Some(std::time::Duration::from_secs(20)),
        };
        let mut output = String::new();
        let result = crate::agent_exec::run(
            agent,
            &record.envd_access_token,
            &command,
            &mut |_, line| {
                if output.len() < 4096 {
                    output.push_str(line);
                    output.push('\n');
                }
            },
        )
        .await;
        match result {
            Ok(exit) if exit.success() => {}
            Ok(exit) => {
                tracing::warn!(sandbox_id = %record.id, status = %exit.status, output, "cannot install the egress CA in the sandbox")
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %record.id, ?err, "cannot install the egress CA in the sandbox")
            }
        }
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
                rules: BTreeMap::new(),
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
                rules: BTreeMap::new(),
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
        // Rules: E2B's shape, headers merged per domain; other shapes named.
        let rules = SandboxNetwork {
            rules: Some(serde_json::json!({
                "api.example.com": [
                    {"transform": {"headers": {"X-Key": "one", "X-Team": "a"}}},
                    {"transform": {"headers": {"X-Key": "two"}}}
                ]
            })),
            ..SandboxNetwork::default()
        };
        let parsed = from_create(Some(&rules)).unwrap().unwrap();
        let headers = &parsed.rules["api.example.com"];
        assert_eq!(headers["X-Key"], "two");
        assert_eq!(headers["X-Team"], "a");
        assert_eq!(
            rules_json(&parsed.rules)["api.example.com"][0]["transform"]["headers"]["X-Key"],
            "two"
        );
        for (bad, says) in [
            (serde_json::json!(["x"]), "expected an object of domains"),
            (
                serde_json::json!({"a.example": {}}),
                "expected a list of rules",
            ),
            (
                serde_json::json!({"a.example": [{"match": {}}]}),
                "`match` is not supported",
            ),
            (
                serde_json::json!({"a.example": [{"transform": {"headers": {"X": 1}}}]}),
                "header `X` is not a string",
            ),
            (
                serde_json::json!({"10.0.0.0/8": [{"transform": {"headers": {"X": "y"}}}]}),
                "is not a domain name",
            ),
        ] {
            let network = SandboxNetwork {
                rules: Some(bad),
                ..SandboxNetwork::default()
            };
            let err = from_create(Some(&network)).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
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
