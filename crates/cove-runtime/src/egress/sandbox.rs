//! The kernel side of one sandbox's own policy: its `allowOut` and `denyOut` maps (one of
//! each per family), a counter per `denyOut` range, and programs of its own
//! ([`program::sandbox_program`]) that read the server's maps first, then these. A change of
//! policy changes map entries only; the programs stay attached. While the policy has domain
//! entries, the sandbox has an egress proxy ([`SandboxProxy`]) whose ports are in its
//! `cove_proxy` map, and its TCP connect program sends connections to ports 80 and 443 there.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    sync::Arc,
};

use super::{
    EgressError, MAX_ENTRIES, Maps, Refusal, SandboxPolicy,
    bpf::{CounterMap, Hook, LpmMap},
    load,
    policy::MAX_POLICY_ENTRIES,
    program::{self, Family, SandboxMapFds},
    proxy::{ProxyEnv, SandboxProxy},
    rules::Cidr,
};

/// Counter slots: the server's refusals, then one per `denyOut` range (an entry may stand
/// for two ranges, `0.0.0.0/0` for both families).
const SLOTS: u32 = 1 + 2 * MAX_POLICY_ENTRIES as u32;
/// The slot of the server's refusals.
const SERVER_SLOT: u32 = 0;

#[derive(Debug)]
pub(super) struct SandboxFilter {
    allow4: LpmMap,
    deny4: LpmMap,
    allow6: LpmMap,
    deny6: LpmMap,
    counters: CounterMap,
    /// The proxy's ports ([`program::proxy_ports`]), 0 without a proxy.
    proxy_map: CounterMap,
    proxy: Option<SandboxProxy>,
    proxy_env: Arc<ProxyEnv>,
    id: String,
    pub(super) programs: Vec<(OwnedFd, Hook)>,
    /// What the maps hold: allowed ranges, and denied ranges with their slots.
    allowed: BTreeSet<Cidr>,
    denied: BTreeMap<Cidr, u32>,
    /// What each slot in use stands for.
    labels: BTreeMap<u32, Refusal>,
    /// Each slot's counter when it was last read.
    seen: BTreeMap<u32, u64>,
    /// Refusals read from slots given up since they were last taken.
    pending: BTreeMap<Refusal, u64>,
}

impl SandboxFilter {
    /// Maps and programs for sandbox `id`, with an empty policy.
    pub(super) fn create(
        id: &str,
        server: &Maps,
        dns_port: u16,
        proxy_env: &Arc<ProxyEnv>,
    ) -> Result<Self, EgressError> {
        let map = |name: &'static str, family| {
            LpmMap::create(name, family, MAX_ENTRIES)
                .map_err(|source| EgressError::Map { name, source })
        };
        let counters =
            CounterMap::create("cove_refusals", SLOTS).map_err(|source| EgressError::Map {
                name: "cove_refusals",
                source,
            })?;
        let proxy_map = CounterMap::create("cove_proxy", 1).map_err(|source| EgressError::Map {
            name: "cove_proxy",
            source,
        })?;
        let filter = Self {
            allow4: map("cove_allow4", Family::V4)?,
            deny4: map("cove_deny4", Family::V4)?,
            allow6: map("cove_allow6", Family::V6)?,
            deny6: map("cove_deny6", Family::V6)?,
            counters,
            proxy_map,
            proxy: None,
            proxy_env: Arc::clone(proxy_env),
            id: id.to_owned(),
            programs: Vec::new(),
            allowed: BTreeSet::new(),
            denied: BTreeMap::new(),
            labels: BTreeMap::from([(SERVER_SLOT, Refusal::Server)]),
            seen: BTreeMap::from([(SERVER_SLOT, 0)]),
            pending: BTreeMap::new(),
        };
        let mut programs = Vec::new();
        for (hook, family) in [
            (Hook::Connect4, Family::V4),
            (Hook::Sendmsg4, Family::V4),
            (Hook::Connect6, Family::V6),
            (Hook::Sendmsg6, Family::V6),
        ] {
            let (refused, policy, allow, deny) = match family {
                Family::V4 => (
                    &server.refused4,
                    &server.policy4,
                    &filter.allow4,
                    &filter.deny4,
                ),
                Family::V6 => (
                    &server.refused6,
                    &server.policy6,
                    &filter.allow6,
                    &filter.deny6,
                ),
            };
            let fds = SandboxMapFds {
                refused: refused.raw_fd(),
                policy: policy.raw_fd(),
                allow: allow.raw_fd(),
                deny: deny.raw_fd(),
                counters: filter.counters.raw_fd(),
                proxy: filter.proxy_map.raw_fd(),
            };
            let insns = program::sandbox_program(family, fds, dns_port, hook == Hook::Connect4);
            programs.push((load(&insns, hook)?, hook));
        }
        Ok(Self { programs, ..filter })
    }

    fn allow_map(&self, cidr: &Cidr) -> (&LpmMap, &'static str) {
        match cidr.addr().is_ipv4() {
            true => (&self.allow4, "cove_allow4"),
            false => (&self.allow6, "cove_allow6"),
        }
    }

    fn deny_map(&self, cidr: &Cidr) -> (&LpmMap, &'static str) {
        match cidr.addr().is_ipv4() {
            true => (&self.deny4, "cove_deny4"),
            false => (&self.deny6, "cove_deny6"),
        }
    }

    /// Brings the maps in line with `policy`: new denials first, then new allowances, then
    /// what is no longer wanted goes (allowances before denials), so a change never opens
    /// more on the way than either policy does.
    pub(super) fn apply(&mut self, policy: &SandboxPolicy) -> Result<(), EgressError> {
        self.apply_ranges(policy)?;
        self.apply_names(policy)
    }

    /// Starts, changes or stops the proxy for the policy's domain entries and rules. Its
    /// ports go in the map once it listens, and out of it before it stops.
    fn apply_names(&mut self, policy: &SandboxPolicy) -> Result<(), EgressError> {
        if !policy.needs_proxy() {
            if let Some(proxy) = self.proxy.take() {
                self.set_proxy_ports(0)?;
                self.keep_refusals(proxy.take_refusals());
            }
            return Ok(());
        }
        match &self.proxy {
            Some(proxy) => proxy.set_policy(policy.clone()),
            None => {
                let proxy =
                    SandboxProxy::start(&self.id, policy.clone(), Arc::clone(&self.proxy_env))
                        .map_err(|source| EgressError::Proxy { source })?;
                let (http, tls) = proxy.ports();
                self.set_proxy_ports(program::proxy_ports(http, tls))?;
                self.proxy = Some(proxy);
            }
        }
        Ok(())
    }

    /// Sets the `cove_proxy` map the connect program reads (0: no proxy).
    fn set_proxy_ports(&self, ports: u64) -> Result<(), EgressError> {
        self.proxy_map
            .set(0, ports)
            .map_err(|source| EgressError::Map {
                name: "cove_proxy",
                source,
            })
    }

    fn keep_refusals(&mut self, refusals: BTreeMap<Refusal, u64>) {
        for (refusal, count) in refusals {
            *self.pending.entry(refusal).or_default() += count;
        }
    }

    fn apply_ranges(&mut self, policy: &SandboxPolicy) -> Result<(), EgressError> {
        let update = |name: &'static str, cidr: Cidr| {
            move |source| EgressError::Update { name, cidr, source }
        };
        let wanted_deny: BTreeMap<Cidr, Refusal> = policy
            .deny()
            .iter()
            .flat_map(|e| e.ranges.iter().map(|r| (*r, Refusal::Deny(e.text.clone()))))
            .collect();
        let wanted_allow: BTreeSet<Cidr> = policy
            .allow()
            .iter()
            .flat_map(|e| e.ranges.iter().copied())
            .collect();
        for (cidr, label) in &wanted_deny {
            if let Some(slot) = self.denied.get(cidr) {
                self.labels.insert(*slot, label.clone());
                continue;
            }
            let slot = (1..SLOTS)
                .find(|s| !self.labels.contains_key(s))
                .expect("a policy has fewer ranges than slots");
            let (map, name) = self.deny_map(cidr);
            self.counters
                .set(slot, 0)
                .map_err(update("cove_refusals", *cidr))?;
            map.set(cidr, slot).map_err(update(name, *cidr))?;
            self.labels.insert(slot, label.clone());
            self.seen.insert(slot, 0);
            self.denied.insert(*cidr, slot);
        }
        for cidr in &wanted_allow {
            if !self.allowed.contains(cidr) {
                let (map, name) = self.allow_map(cidr);
                map.set(cidr, 1).map_err(update(name, *cidr))?;
                self.allowed.insert(*cidr);
            }
        }
        let stale: Vec<Cidr> = self.allowed.difference(&wanted_allow).copied().collect();
        for cidr in stale {
            let (map, name) = self.allow_map(&cidr);
            map.remove(&cidr).map_err(update(name, cidr))?;
            self.allowed.remove(&cidr);
        }
        let stale: Vec<(Cidr, u32)> = self
            .denied
            .iter()
            .filter(|(c, _)| !wanted_deny.contains_key(c))
            .map(|(c, s)| (*c, *s))
            .collect();
        for (cidr, slot) in stale {
            let (map, name) = self.deny_map(&cidr);
            map.remove(&cidr).map_err(update(name, cidr))?;
            self.denied.remove(&cidr);
            // What it refused until now is still to be told.
            if let (Ok(count), Some(label)) = (self.counters.get(slot), self.labels.remove(&slot)) {
                let seen = self.seen.remove(&slot).unwrap_or(0);
                if count > seen {
                    *self.pending.entry(label).or_default() += count - seen;
                }
            }
        }
        Ok(())
    }

    /// The refusals counted since the last call, by what refused them.
    pub(super) fn take_refusals(&mut self) -> Vec<(Refusal, u64)> {
        if let Some(proxy) = &self.proxy {
            let refused = proxy.take_refusals();
            self.keep_refusals(refused);
        }
        let mut taken = std::mem::take(&mut self.pending);
        for (slot, label) in &self.labels {
            let Ok(count) = self.counters.get(*slot) else {
                continue;
            };
            let seen = self.seen.entry(*slot).or_default();
            if count > *seen {
                *taken.entry(label.clone()).or_default() += count - *seen;
                *seen = count;
            }
        }
        taken.into_iter().filter(|(_, n)| *n > 0).collect()
    }
}
