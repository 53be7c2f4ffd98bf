//! What a sandbox's egress may not reach. Its traffic leaves through slirp4netns, which makes
//! ordinary connections from the host; eBPF programs on the helper's cgroup (cgroup v2
//! `connect4|6` and `sendmsg4|6` hooks) refuse the destinations that would be the host itself
//! or its surroundings: loopback, the host's own addresses, the private ranges (RFC 1918,
//! CGNAT, link-local, unique local), multicast and reserved ranges — see
//! `resources/egress.json`, one reason per range. The operator opens private ranges with
//! [`EgressConfig::allow_private`]; the host's name servers stay reachable on the DNS port.
//!
//! The programs look destinations up in longest-prefix-match maps ([`rules::Tables`]) that a
//! thread of the runtime keeps current as the host gains and loses addresses (rtnetlink) and
//! as its `resolv.conf` changes: nothing is loaded or attached again.
//!
//! A sandbox with a policy of its own (E2B's `allowOut` / `denyOut`, [`SandboxPolicy`]) gets
//! programs of its own, attached to its helper's cgroup instead of the shared ones: they ask
//! the server's maps first (whose refusals no sandbox policy opens), then the sandbox's maps,
//! and count what they refuse. Sandboxes without one keep the shared programs.

mod bpf;
mod dns;
mod follow;
mod netlink;
mod policy;
mod program;
mod proxy;
mod refusals;
mod rules;
mod sandbox;

use std::{
    collections::{BTreeSet, HashMap},
    fs, io,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub use self::{
    bpf::Hook as EgressHook,
    policy::{
        ALL_TRAFFIC, Domain, MAX_POLICY_ENTRIES, NameVerdict, PolicyEntry, PolicyError, Refusal,
        SandboxPolicy,
    },
    proxy::intercept::IssueCert,
    rules::{Cidr, Rules, RulesError, Tables, Verdict},
};
/// What the egress proxy reads from the wire (public for the fuzz targets).
pub mod wire {
    pub use super::proxy::{
        peek::{MAX_PEEK, Peeked, http_host, tls_server_name},
        resolve::read_reply,
    };
}
use self::{
    bpf::{Hook, KeyedCounterMap, LpmMap},
    netlink::IfAddr,
    program::Family,
    sandbox::SandboxFilter,
};

/// Most ranges one map holds (the host's addresses are most of them).
const MAX_ENTRIES: u32 = 16 * 1024;
/// Most sandboxes whose refusals the shared programs count at once.
const MAX_COUNTED_CGROUPS: u32 = 64 * 1024;

/// How the operator configured egress.
#[derive(Clone, Debug, Default)]
pub struct EgressConfig {
    /// Private ranges opened to sandboxes with internet access (`--allow-private-egress`).
    pub allow_private: Vec<Cidr>,
    /// The name servers the egress proxy asks for the addresses of the names sandboxes
    /// connect to (`--egress-resolver`); empty: the host's, from `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// Who signs the certificates of intercepted names (E2B's `rules` on port 443); none:
    /// such connections are refused.
    pub interception: Option<Arc<dyn IssueCert>>,
    /// PEM files of roots trusted for intercepted destinations besides the host's
    /// (`--egress-ca-file`).
    pub upstream_roots: Vec<PathBuf>,
}

/// How long the egress proxy waits for a name server's answer.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the host has no cgroup v2 hierarchy to attach the egress filter to")]
    NoCgroupV2,
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("cannot create the eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the egress program for {hook:?}{log}")]
    Load {
        hook: Hook,
        /// The verifier's last words, when it said any.
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the host's addresses")]
    Addresses(#[source] io::Error),
    #[error("cannot set {cidr} in the eBPF map {name}")]
    Update {
        name: &'static str,
        cidr: Cidr,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach the egress filter to {path}")]
    Attach {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the thread following the host's addresses")]
    Thread(#[source] io::Error),
    #[error("cannot start the egress proxy for the sandbox's domain rules")]
    Proxy {
        #[source]
        source: io::Error,
    },
    #[error("cannot set up TLS interception for rules: {0}")]
    Interception(String),
}

/// The four maps: for each family, what is always refused and the policy; and the shared
/// programs' refusals by the cgroup of the helper refused.
#[derive(Debug)]
struct Maps {
    refused4: LpmMap,
    policy4: LpmMap,
    refused6: LpmMap,
    policy6: LpmMap,
    by_cgroup: KeyedCounterMap,
}

impl Maps {
    fn create() -> Result<Self, EgressError> {
        let map = |name: &'static str, family| {
            LpmMap::create(name, family, MAX_ENTRIES)
                .map_err(|source| EgressError::Map { name, source })
        };
        Ok(Self {
            refused4: map("cove_refused4", Family::V4)?,
            policy4: map("cove_policy4", Family::V4)?,
            refused6: map("cove_refused6", Family::V6)?,
            policy6: map("cove_policy6", Family::V6)?,
            by_cgroup: KeyedCounterMap::create("cove_by_cgroup", MAX_COUNTED_CGROUPS).map_err(
                |source| EgressError::Map {
                    name: "cove_by_cgroup",
                    source,
                },
            )?,
        })
    }

    /// The map of `table` (refused or not) for `cidr`'s family, with its name.
    fn of(&self, refused: bool, cidr: &Cidr) -> (&LpmMap, &'static str) {
        match (refused, cidr.addr().is_ipv4()) {
            (true, true) => (&self.refused4, "cove_refused4"),
            (false, true) => (&self.policy4, "cove_policy4"),
            (true, false) => (&self.refused6, "cove_refused6"),
            (false, false) => (&self.policy6, "cove_policy6"),
        }
    }
}

/// What the tables are made of, and what the maps hold now.
#[derive(Debug, Default)]
struct State {
    addresses: BTreeSet<IfAddr>,
    name_servers: BTreeSet<IpAddr>,
    installed: Tables,
}

/// What the following thread shares with the filter.
#[derive(Debug)]
struct Shared {
    rules: Rules,
    maps: Maps,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the maps in line with the state: new and changed entries first (refusing
    /// early is the safe side), then the ones no longer wanted.
    fn sync(&self, state: &mut State) -> Result<(), EgressError> {
        let host: BTreeSet<IpAddr> = state.addresses.iter().map(|a| a.addr).collect();
        let wanted = self.rules.tables(&host, &state.name_servers);
        let mut first_error = None;
        for refused in [true, false] {
            let (want, have) = match refused {
                true => (&wanted.refused, &mut state.installed.refused),
                false => (&wanted.policy, &mut state.installed.policy),
            };
            for (cidr, verdict) in want {
                if have.get(cidr) == Some(verdict) {
                    continue;
                }
                let (map, name) = self.maps.of(refused, cidr);
                match map.set(cidr, verdict.code()) {
                    Ok(()) => {
                        have.insert(*cidr, *verdict);
                    }
                    Err(source) => {
                        first_error.get_or_insert(EgressError::Update {
                            name,
                            cidr: *cidr,
                            source,
                        });
                    }
                }
            }
        }
        for refused in [true, false] {
            let (want, have) = match refused {
                true => (&wanted.refused, &mut state.installed.refused),
                false => (&wanted.policy, &mut state.installed.policy),
            };
            let stale: Vec<Cidr> = have
                .keys()
                .filter(|c| !want.contains_key(c))
                .copied()
                .collect();
            for cidr in stale {
                let (map, name) = self.maps.of(refused, &cidr);
                match map.remove(&cidr) {
                    Ok(()) => {
                        have.remove(&cidr);
                    }
                    Err(source) => {
                        first_error.get_or_insert(EgressError::Update { name, cidr, source });
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The loaded programs and their maps, kept current by a thread of their own; attached to
/// the cgroups of network helpers.
#[derive(Debug)]
pub struct EgressFilter {
    shared: Arc<Shared>,
    programs: Vec<(OwnedFd, Hook)>,
    /// The sandboxes with a policy of their own, by id.
    sandboxes: Mutex<HashMap<String, SandboxFilter>>,
    /// What the egress proxies of sandboxes with domain rules share.
    proxy_env: Arc<proxy::ProxyEnv>,
    /// Whether the shared programs count refusals by cgroup (the kernel lets them).
    counting: bool,
    /// The helper cgroups of sandboxes under the shared programs, by sandbox id.
    counted: Mutex<HashMap<String, Counted>>,
}

/// A sandbox's counter in the shared programs' map.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// Its helper cgroup's id (the directory's inode number).
    cgroup: u64,
    /// The counter when last read.
    seen: u64,
    /// Refusals read from a cgroup it had before, not yet taken.
    carried: u64,
}

impl EgressFilter {
    /// Loads the filter for `config`, fills its maps with the host's addresses and name
    /// servers as they are now, and starts following them.
    pub fn start(config: &EgressConfig) -> Result<Self, EgressError> {
        Self::start_with(config, Path::new(dns::RESOLV_CONF))
    }

    /// [`EgressFilter::start`] with the name servers of the `resolv.conf` at `resolv_conf`.
    fn start_with(config: &EgressConfig, resolv_conf: &Path) -> Result<Self, EgressError> {
        let rules = Rules::new(&config.allow_private)?;
        let maps = Maps::create()?;
        let (programs, counting) = match shared_programs(&maps, &rules, true) {
            Ok(programs) => (programs, true),
            Err(err) => {
                tracing::warn!(err = %error_chain(&err), "this kernel refuses the egress programs that count refusals by sandbox; sandboxes without rules of their own are filtered, their refusals not counted");
                (shared_programs(&maps, &rules, false)?, false)
            }
        };
        // Subscribe before listing, so no change falls between the two.
        let watch = netlink::Watch::subscribe().map_err(EgressError::Addresses)?;
        let addresses = netlink::dump().map_err(EgressError::Addresses)?;
        let mut resolv = dns::ResolvConf::new(resolv_conf);
        let name_servers = resolv.changed().unwrap_or_default();
        let mut state = State {
            addresses: addresses.into_iter().collect(),
            name_servers,
            installed: Tables::default(),
        };
        let shared = Arc::new(Shared {
            rules,
            maps,
            state: Mutex::default(),
        });
        shared.sync(&mut state)?;
        tracing::info!(
            host_addresses = state.addresses.len(),
            name_servers = ?state.name_servers,
            opened = ?config.allow_private.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "egress filter loaded: private ranges and the host's own addresses are closed to sandboxes"
        );
        *shared.state() = state;
        follow::spawn(Arc::downgrade(&shared), watch, resolv).map_err(EgressError::Thread)?;
        let proxy_env = Arc::new(proxy_env(&shared, config)?);
        Ok(Self {
            shared,
            programs,
            sandboxes: Mutex::default(),
            proxy_env,
            counting,
            counted: Mutex::default(),
        })
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counted>> {
        self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the refusals of sandbox `id`, whose helper is in `cgroup` under the shared
    /// programs.
    fn count_shared(&self, id: &str, cgroup: &Path) {
        let Ok(meta) = fs::metadata(cgroup) else {
            return;
        };
        let key = meta.ino();
        let map = &self.shared.maps.by_cgroup;
        let mut counted = self.counted();
        let carried = match counted.get(id) {
            Some(c) if c.cgroup == key => return,
            // A new cgroup (it started again): what the old one counted is kept.
            Some(old) => {
                let last = map.get(old.cgroup).unwrap_or(old.seen);
                let _ = map.remove(old.cgroup);
                old.carried + last.saturating_sub(old.seen)
            }
            None => 0,
        };
        let seen = map.get(key).unwrap_or(0);
        counted.insert(
            id.to_owned(),
            Counted {
                cgroup: key,
                seen,
                carried,
            },
        );
    }

    /// The refusals the shared programs counted for sandbox `id` since the last call.
    fn take_shared_refusals(&self, id: &str) -> u64 {
        let mut counted = self.counted();
        let Some(entry) = counted.get_mut(id) else {
            return 0;
        };
        let now = self
            .shared
            .maps
            .by_cgroup
            .get(entry.cgroup)
            .unwrap_or(entry.seen);
        let taken = entry.carried + now.saturating_sub(entry.seen);
        entry.seen = now.max(entry.seen);
        entry.carried = 0;
        taken
    }

    fn sandboxes(&self) -> std::sync::MutexGuard<'_, HashMap<String, SandboxFilter>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives sandbox `id` its own policy (`None` or an empty one: the server's rules alone)
    /// and, when its helper's cgroup is given, attaches the programs that apply it there.
    /// A sandbox that has its programs already keeps them: only map entries change, and
    /// its next connection is decided by the new policy.
    pub fn set_policy(
        &self,
        id: &str,
        policy: Option<&SandboxPolicy>,
        cgroup: Option<&Path>,
    ) -> Result<(), EgressError> {
        let mut sandboxes = self.sandboxes();
        match policy.filter(|p| !p.is_empty()) {
            None => {
                if let Some(dir) = cgroup {
                    self.attach_programs(&self.programs, dir)?;
                    self.count_shared(id, dir);
                }
                sandboxes.remove(id);
            }
            Some(policy) => {
                if !sandboxes.contains_key(id) {
                    let filter = SandboxFilter::create(
                        id,
                        &self.shared.maps,
                        self.shared.rules.dns_port(),
                        &self.proxy_env,
                    )?;
                    sandboxes.insert(id.to_owned(), filter);
                }
                let filter = sandboxes.get_mut(id).expect("inserted above");
                filter.apply(policy)?;
                if let Some(dir) = cgroup {
                    self.attach_programs(&filter.programs, dir)?;
                }
            }
        }
        Ok(())
    }

    /// [`EgressFilter::set_policy`] with sandbox `id`'s egress cgroup in `cgroups`, when it
    /// has one yet.
    pub fn set_sandbox_policy(
        &self,
        cgroups: Option<&crate::cgroup::Hierarchy>,
        id: &str,
        policy: Option<&SandboxPolicy>,
    ) -> Result<(), crate::RuntimeError> {
        let dir = cgroups
            .and_then(|c| c.egress_dir(id))
            .filter(|d| d.is_dir());
        self.set_policy(id, policy, dir.as_deref())
            .map_err(|e| crate::RuntimeError::Io {
                what: "apply the sandbox's egress policy",
                source: io::Error::other(error_chain(&e)),
            })
    }

    /// [`EgressFilter::take_refusals`], also told in the sandbox's log at `log`.
    pub fn take_refusals_into_log(&self, id: &str, log: &Path) -> Vec<(Refusal, u64)> {
        let refusals = self.take_refusals(id);
        if !refusals.is_empty()
            && let Err(err) = refusals::write(log, &refusals)
        {
            tracing::warn!(%err, sandbox_id = %id, "cannot write refused connections to the sandbox's log");
        }
        refusals
    }

    /// Forgets sandbox `id` (it ended): its own policy, and its counter in the shared
    /// programs' map; its programs go with its cgroup.
    pub fn forget(&self, id: &str) {
        self.sandboxes().remove(id);
        if let Some(counted) = self.counted().remove(id) {
            let _ = self.shared.maps.by_cgroup.remove(counted.cgroup);
        }
    }

    /// The connections of sandbox `id` refused since the last call, by what refused them:
    /// by its own programs' rules while it has a policy, by the server's rules while the
    /// shared programs filter it (counted where the kernel lets them count).
    pub fn take_refusals(&self, id: &str) -> Vec<(Refusal, u64)> {
        let mut refusals = self
            .sandboxes()
            .get_mut(id)
            .map(SandboxFilter::take_refusals)
            .unwrap_or_default();
        let shared = self.take_shared_refusals(id);
        if shared > 0 {
            match refusals.iter_mut().find(|(r, _)| *r == Refusal::Server) {
                Some((_, count)) => *count += shared,
                None => refusals.push((Refusal::Server, shared)),
            }
        }
        refusals
    }

    /// The certificate of the CA the egress proxies sign intercepted connections under, PEM
    /// (none: no TLS interception here).
    pub fn interception_ca_pem(&self) -> Option<&str> {
        self.proxy_env.tls.as_ref().map(|tls| tls.ca_pem())
    }

    /// Whether refusals of sandboxes without rules of their own are counted here.
    pub fn counts_every_sandbox(&self) -> bool {
        self.counting
    }

    fn attach_programs(
        &self,
        programs: &[(OwnedFd, Hook)],
        cgroup: &Path,
    ) -> Result<(), EgressError> {
        let failed = |source| EgressError::Attach {
            path: cgroup.to_owned(),
            source,
        };
        let dir = fs::File::open(cgroup).map_err(failed)?;
        for (program, hook) in programs {
            bpf::attach(dir.as_fd(), program, *hook).map_err(failed)?;
        }
        Ok(())
    }

    /// Attaches the programs to the cgroup v2 directory `cgroup`: every process in it (and
    /// below) is refused those destinations from then on.
    pub fn attach(&self, cgroup: &Path) -> Result<(), EgressError> {
        self.attach_programs(&self.programs, cgroup)
    }

    /// Attaches sandbox `id`'s programs to its helper's cgroup: its own when it has a policy
    /// ([`EgressFilter::set_policy`]), the shared ones otherwise.
    pub fn attach_sandbox(&self, id: &str, cgroup: &Path) -> Result<(), EgressError> {
        match self.sandboxes().get(id) {
            Some(filter) => self.attach_programs(&filter.programs, cgroup),
            None => {
                self.attach(cgroup)?;
                self.count_shared(id, cgroup);
                Ok(())
            }
        }
    }

    /// Whether the filter lets a connection to `addr`, `port` through, as the kernel's maps
    /// say right now.
    pub fn allows(&self, addr: IpAddr, port: u16) -> io::Result<bool> {
        let host = Cidr::host(addr);
        let (refused, _) = self.shared.maps.of(true, &host);
        let (policy, _) = self.shared.maps.of(false, &host);
        let code = match refused.lookup(addr)? {
            Some(code) => Some(code),
            None => policy.lookup(addr)?,
        };
        Ok(match code.and_then(Verdict::from_code) {
            None | Some(Verdict::Allow | Verdict::NameServer) => true,
            Some(Verdict::Refuse) => false,
            Some(Verdict::DnsOnly) => port == self.shared.rules.dns_port(),
        })
    }
}

/// The shared programs, counting refusals by cgroup or not.
fn shared_programs(
    maps: &Maps,
    rules: &Rules,
    counting: bool,
) -> Result<Vec<(OwnedFd, Hook)>, EgressError> {
    let mut programs = Vec::new();
    for (hook, refused, policy) in [
        (Hook::Connect4, &maps.refused4, &maps.policy4),
        (Hook::Sendmsg4, &maps.refused4, &maps.policy4),
        (Hook::Connect6, &maps.refused6, &maps.policy6),
        (Hook::Sendmsg6, &maps.refused6, &maps.policy6),
    ] {
        let insns = program::program(
            refused.family(),
            refused.raw_fd(),
            policy.raw_fd(),
            rules.dns_port(),
            counting.then(|| maps.by_cgroup.raw_fd()),
        );
        programs.push((load(&insns, hook)?, hook));
    }
    Ok(programs)
}

/// How the proxies decide addresses (as the kernel's maps do, from the same tables) and
/// where they resolve names.
fn proxy_env(shared: &Arc<Shared>, config: &EgressConfig) -> Result<proxy::ProxyEnv, EgressError> {
    let tls = match &config.interception {
        None => None,
        Some(issuer) => {
            let extra: Vec<&Path> = config.upstream_roots.iter().map(PathBuf::as_path).collect();
            Some(
                proxy::intercept::Interception::new(Arc::clone(issuer), &extra)
                    .map_err(EgressError::Interception)?,
            )
        }
    };
    let tables = Arc::downgrade(shared);
    let fixed = config.resolvers.clone();
    let servers = Arc::downgrade(shared);
    Ok(proxy::ProxyEnv {
        decide: Box::new(move |addr, port, policy| {
            let Some(shared) = tables.upgrade() else {
                return Some(Refusal::Server);
            };
            let dns_port = shared.rules.dns_port();
            shared
                .state()
                .installed
                .refusal(policy, addr, port, dns_port)
        }),
        name_servers: Box::new(move || {
            if !fixed.is_empty() {
                return fixed.clone();
            }
            let Some(shared) = servers.upgrade() else {
                return Vec::new();
            };
            let port = shared.rules.dns_port();
            let state = shared.state();
            state
                .name_servers
                .iter()
                .map(|addr| SocketAddr::new(*addr, port))
                .collect()
        }),
        resolver: proxy::resolve::Resolver::new(Vec::new(), RESOLVE_TIMEOUT),
        tls,
    })
}

/// An error with its causes, `a: b: c`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Loads `insns` for `hook`; a refusal says what the verifier said last.
fn load(insns: &[program::Insn], hook: Hook) -> Result<OwnedFd, EgressError> {
    bpf::load(insns, hook).map_err(|e| EgressError::Load {
        hook,
        log: last_lines(&e.log),
        source: e.source,
    })
}

/// The end of a verifier log, where it says what it refused.
fn last_lines(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    match lines.len() {
        0 => String::new(),
        n => format!(": {}", lines[n.saturating_sub(3)..].join(" / ")),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ip_cmd(args: &[&str]) {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    /// A pair of interfaces of the host (this kernel has no dummy ones), removed by name
    /// when dropped.
    struct Link(String);

    impl Link {
        fn add(name: String) -> Self {
            ip_cmd(&[
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{name}p"),
            ]);
            let link = Link(name);
            ip_cmd(&["link", "set", &link.0, "up"]);
            link
        }
    }

    impl Drop for Link {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }

    fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_kernel_maps_decide_as_the_rules_say() {
        let config = EgressConfig {
            allow_private: vec!["192.168.77.0/24".parse().unwrap()],
            ..EgressConfig::default()
        };
        let filter = EgressFilter::start(&config).unwrap();
        for (addr, port, allowed) in [
            ("127.0.0.1", 80, false),
            ("10.1.2.3", 80, false),
            ("172.16.0.1", 80, false),
            ("192.168.1.1", 80, false),
            ("192.168.77.2", 80, true),
            ("100.64.0.1", 80, false),
            ("169.254.169.254", 80, false),
            ("203.0.113.80", 443, true),
            ("::1", 80, false),
            ("fc00::1", 80, false),
            ("fe80::1", 80, false),
            ("::ffff:8.8.8.8", 80, false),
            ("2a04:4e42::223", 443, true),
        ] {
            assert_eq!(
                filter.allows(ip(addr), port).unwrap(),
                allowed,
                "{addr}:{port}"
            );
        }
        // The host's own addresses and its name servers, whatever they are here.
        for addr in netlink::dump().unwrap() {
            assert!(!filter.allows(addr.addr, 80).unwrap(), "{}", addr.addr);
        }
        for server in dns::ResolvConf::new(dns::RESOLV_CONF).changed().unwrap() {
            assert!(filter.allows(server, 53).unwrap(), "{server}:53");
        }
    }

    #[test]
    fn follows_the_name_servers_of_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::write(&path, "nameserver 10.9.9.9\n").unwrap();
        let filter = EgressFilter::start_with(&EgressConfig::default(), &path).unwrap();
        let (old, new) = (ip("10.9.9.9"), ip("10.9.9.10"));
        assert!(filter.allows(old, 53).unwrap());
        assert!(!filter.allows(old, 80).unwrap());
        assert!(!filter.allows(new, 53).unwrap());
        let next = dir.path().join("resolv.conf.new");
        fs::write(&next, "nameserver 10.9.9.10\n").unwrap();
        fs::rename(&next, &path).unwrap();
        eventually("the new name server to be reachable", || {
            filter.allows(new, 53).unwrap() && !filter.allows(old, 53).unwrap()
        });
        assert!(!filter.allows(new, 80).unwrap());
    }

    #[test]
    fn follows_the_addresses_the_host_gains_and_loses() {
        let filter = EgressFilter::start(&EgressConfig::default()).unwrap();
        let addr = ip("198.51.100.8");
        let addr6 = ip("2001:db8:77::8");
        assert!(filter.allows(addr, 80).unwrap());
        assert!(filter.allows(addr6, 80).unwrap());
        let dummy = Link::add(format!("cvd{}", std::process::id()));
        ip_cmd(&["addr", "add", "198.51.100.8/32", "dev", &dummy.0]);
        ip_cmd(&[
            "addr",
            "add",
            "2001:db8:77::8/128",
            "dev",
            &dummy.0,
            "nodad",
        ]);
        eventually("the new addresses to be refused", || {
            !filter.allows(addr, 80).unwrap() && !filter.allows(addr6, 80).unwrap()
        });
        ip_cmd(&["addr", "del", "198.51.100.8/32", "dev", &dummy.0]);
        eventually("the removed address to be open again", || {
            filter.allows(addr, 80).unwrap()
        });
        assert!(!filter.allows(addr6, 80).unwrap());
        drop(dummy);
        eventually("the removed interface's address to be open again", || {
            filter.allows(addr6, 80).unwrap()
        });
    }

    /// A cgroup v2 directory of this test's own, removed when dropped.
    struct Cgroup(PathBuf);

    impl Cgroup {
        fn new(tag: &str) -> Self {
            let dir = PathBuf::from(format!(
                "/sys/fs/cgroup/unified/cove-policy-test-{}-{tag}",
                std::process::id()
            ));
            fs::create_dir(&dir).unwrap();
            Cgroup(dir)
        }

        /// Runs the Python `script` with `args` in this cgroup; its output.
        fn python(&self, script: &str, args: &[&str]) -> String {
            cove_test_util::cgroup::python(Some(&self.0), script, args)
        }

        /// What a TCP connect and a UDP send from a process in this cgroup to `addr` get:
        /// "refused" when the filter says no. Used only with destinations refused before
        /// any packet leaves.
        fn try_reach(&self, addr: &str) -> String {
            let script = r#"
import socket, sys
addr = sys.argv[1]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
out = []
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.connect((addr, 9))
        else:
            s.sendto(b"x", (addr, 9))
        out.append("open")
    except PermissionError:
        out.append("refused")
print(" ".join(out))
"#;
            self.python(script, &[addr])
        }
    }

    impl Drop for Cgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_sandbox_policy_loads_refuses_and_counts_by_rule() {
        let filter = EgressFilter::start(&EgressConfig::default()).unwrap();
        let cgroup = Cgroup::new("a");
        let id = "policy-test";
        let policy = SandboxPolicy::new(
            &strings(&["198.51.100.0/24"]),
            &strings(&["198.51.100.7", "203.0.113.0/24", "2001:db8:77::/48"]),
        )
        .unwrap();
        filter
            .set_policy(id, Some(&policy), Some(&cgroup.0))
            .unwrap();
        // 203.0.113.9 and the IPv6 range: refused by their denyOut entries; the host's
        // loopback by the server, although nothing in the policy names it.
        assert_eq!(cgroup.try_reach("203.0.113.9"), "refused refused");
        assert_eq!(cgroup.try_reach("2001:db8:77::1"), "refused refused");
        assert_eq!(cgroup.try_reach("127.0.0.1"), "refused refused");
        let mut refusals = filter.take_refusals(id);
        refusals.sort();
        assert_eq!(
            refusals,
            vec![
                (Refusal::Server, 2),
                (Refusal::Deny("2001:db8:77::/48".into()), 2),
                (Refusal::Deny("203.0.113.0/24".into()), 2),
            ]
        );
        assert_eq!(filter.take_refusals(id), vec![]);
        // An update narrows at once: the next connection is refused, counted under the
        // new rule; the rule it replaced told what it counted before.
        let narrower = SandboxPolicy::new(&[], &strings(&["0.0.0.0/0"])).unwrap();
        filter
            .set_policy(id, Some(&narrower), Some(&cgroup.0))
            .unwrap();
        assert_eq!(cgroup.try_reach("198.51.100.9"), "refused refused");
        assert_eq!(cgroup.try_reach("2001:db8:78::1"), "refused refused");
        assert_eq!(
            filter.take_refusals(id),
            vec![(Refusal::Deny("0.0.0.0/0".into()), 4)]
        );
        // Back to the shared programs: the server's refusals only, counted by cgroup.
        filter.set_policy(id, None, Some(&cgroup.0)).unwrap();
        assert_eq!(cgroup.try_reach("127.0.0.1"), "refused refused");
        assert!(filter.counts_every_sandbox());
        assert_eq!(filter.take_refusals(id), vec![(Refusal::Server, 2)]);
        assert_eq!(filter.take_refusals(id), vec![]);
        filter.forget(id);
        drop(cgroup);
    }

    #[test]
    fn the_shared_programs_count_refusals_by_sandbox() {
        let filter = EgressFilter::start(&EgressConfig::default()).unwrap();
        let (a, b) = (Cgroup::new("shared-a"), Cgroup::new("shared-b"));
        filter.attach_sandbox("a", &a.0).unwrap();
        filter.attach_sandbox("b", &b.0).unwrap();
        assert_eq!(a.try_reach("10.1.2.3"), "refused refused");
        assert_eq!(a.try_reach("127.0.0.1"), "refused refused");
        assert_eq!(b.try_reach("192.168.1.1"), "refused refused");
        assert_eq!(filter.take_refusals("a"), vec![(Refusal::Server, 4)]);
        assert_eq!(filter.take_refusals("b"), vec![(Refusal::Server, 2)]);
        assert_eq!(filter.take_refusals("a"), vec![]);
        // Started again in a new cgroup (a resume): counted on, nothing lost.
        assert_eq!(a.try_reach("10.1.2.3"), "refused refused");
        let again = Cgroup::new("shared-a2");
        filter.attach_sandbox("a", &again.0).unwrap();
        assert_eq!(again.try_reach("10.1.2.3"), "refused refused");
        assert_eq!(filter.take_refusals("a"), vec![(Refusal::Server, 4)]);
        // A sandbox never attached has nothing.
        assert_eq!(filter.take_refusals("c"), vec![]);
        filter.forget("a");
        filter.forget("b");
        assert_eq!(filter.take_refusals("a"), vec![]);
    }

    #[test]
    fn web_ports_of_a_sandbox_with_domain_rules_go_through_its_proxy() {
        let names = cove_test_util::name_server::NameServer::start([(
            "inside.test",
            std::net::Ipv4Addr::new(10, 1, 2, 3),
        )]);
        let config = EgressConfig {
            resolvers: vec![names.addr()],
            ..EgressConfig::default()
        };
        let filter = EgressFilter::start(&config).unwrap();
        let cgroup = Cgroup::new("proxy");
        let id = "proxy-test";
        let policy = SandboxPolicy::new(
            &strings(&["inside.test", "*.allowed.test"]),
            &strings(&["0.0.0.0/0"]),
        )
        .unwrap();
        filter
            .set_policy(id, Some(&policy), Some(&cgroup.0))
            .unwrap();
        // Requests to an address no packet may reach: without the proxy they are refused
        // (EPERM) before anything leaves; with it, the proxy answers.
        let script = r#"
import socket, sys
out = []
for port, payload in ((80, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % sys.argv[1].encode()),
                      (80, b"GET / HTTP/1.1\r\nHost: inside.test\r\n\r\n"),
                      (443, b"not a client hello\r\n\r\n")):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect(("203.0.113.9", port))
    except PermissionError:
        out.append("refused")
        continue
    s.sendall(payload)
    reply = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    out.append(reply.split(b"\r\n")[0].decode() + "|" + reply.split(b"\r\n\r\n")[-1].decode().strip())
print("\n".join(out))
"#;
        let out = cgroup.python(script, &["203.0.113.9"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        // An address as the name: refused by its rule, named in the answer.
        assert!(
            lines[0].starts_with("HTTP/1.1 403") && lines[0].contains("denyOut 0.0.0.0/0"),
            "{out}"
        );
        // An allowed name that resolves where the server refuses: refused all the same.
        assert!(
            lines[1].starts_with("HTTP/1.1 403") && lines[1].contains("the server's egress rules"),
            "{out}"
        );
        // Not TLS on 443: nothing named, closed without an answer.
        assert_eq!(lines[2], "|", "{out}");
        let mut refusals = filter.take_refusals(id);
        refusals.sort();
        assert_eq!(
            refusals,
            vec![
                (Refusal::Server, 1),
                (Refusal::Deny("0.0.0.0/0".into()), 1),
                (Refusal::NoName, 1),
            ]
        );
        // Without domain rules the proxy goes: refused by address again.
        let addresses = SandboxPolicy::new(&[], &strings(&["0.0.0.0/0"])).unwrap();
        filter
            .set_policy(id, Some(&addresses), Some(&cgroup.0))
            .unwrap();
        assert_eq!(
            cgroup.python(script, &["203.0.113.9"]),
            "refused\nrefused\nrefused"
        );
        filter.set_policy(id, None, Some(&cgroup.0)).unwrap();
        drop(cgroup);
    }
}
