//! The eBPF programs of the egress filter, assembled by hand (a few dozen instructions do
//! not need a compiler toolchain). For `cgroup/connect4|6` and `cgroup/sendmsg4|6`: the
//! destination address becomes a full-length key of the two longest-prefix-match maps (see
//! [`super::rules::Tables`]); the `refused` map is asked first, then `policy`; the verdict
//! found refuses, allows, or allows the DNS port only. A destination in neither is allowed.
//! The maps are referred to by descriptor, so userspace changes them without loading or
//! attaching anything again.

use super::rules::Verdict;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

pub const LDX_MEM_W: u8 = 0x61;
pub const ST_MEM_W: u8 = 0x62;
pub const STX_MEM_W: u8 = 0x63;
pub const STX_MEM_DW: u8 = 0x7b;
pub const ALU64_ADD_K: u8 = 0x07;
pub const MOV64_K: u8 = 0xb7;
pub const MOV64_X: u8 = 0xbf;
pub const LD_IMM64: u8 = 0x18;
pub const JA: u8 = 0x05;
pub const JEQ_K: u8 = 0x15;
pub const JNE_K: u8 = 0x55;
pub const CALL: u8 = 0x85;
/// `BPF_STX | BPF_DW | BPF_ATOMIC`; with `imm` `BPF_ADD` (0), `*(u64 *)(dst + off) += src`.
pub const ATOMIC_DW: u8 = 0xdb;
pub const EXIT: u8 = 0x95;

/// `src` of a 64-bit immediate load whose value is a map descriptor.
pub const PSEUDO_MAP_FD: u8 = 1;
/// The `bpf_map_lookup_elem` helper.
pub const HELPER_MAP_LOOKUP: i32 = 1;
/// `bpf_map_update_elem`, and its flag that refuses a key already there.
pub const HELPER_MAP_UPDATE: i32 = 2;
const BPF_NOEXIST: i32 = 1;
/// `bpf_get_current_cgroup_id`: the cgroup v2 id of the task making the call.
pub const HELPER_CURRENT_CGROUP_ID: i32 = 80;

pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;
pub const R4: u8 = 4;
pub const R6: u8 = 6;
pub const R10: u8 = 10;

/// Where the key of the refusal counter goes on the stack (below the longest address key).
const COUNTER_KEY: i16 = -32;
/// Where the cgroup id (the key of the shared program's counters) and a counter's first
/// value go on the stack (8-byte aligned, below the others).
const CGROUP_KEY: i16 = -40;
const FIRST_COUNT: i16 = -48;

/// Offsets in `struct bpf_sock_addr`.
pub const USER_IP4: i16 = 4;
pub const USER_IP6: i16 = 8;
pub const USER_PORT: i16 = 24;
pub const SOCK_TYPE: i16 = 32;

/// `SOCK_STREAM`, the type of a TCP socket.
const SOCK_STREAM: i32 = 1;

/// A port as the context holds it: network byte order in the low half of a word.
fn port_word(port: u16) -> i32 {
    i32::from(u16::from_ne_bytes(port.to_be_bytes()))
}

/// The egress proxy's ports as its map holds them: the port for connections to port 80 in
/// the low word, for port 443 in the high one, each as [`port_word`]; 0 is no proxy.
pub fn proxy_ports(http: u16, tls: u16) -> u64 {
    (port_word(tls) as u64) << 32 | port_word(http) as u64
}
/// Which programs: IPv4 or IPv6 destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// 32-bit words of an address.
    fn words(self) -> i16 {
        match self {
            Family::V4 => 1,
            Family::V6 => 4,
        }
    }

    /// Bytes of an address.
    pub fn address_len(self) -> usize {
        4 * self.words() as usize
    }

    /// Bytes of a map key: the prefix length, then the address.
    pub fn key_len(self) -> usize {
        4 + self.address_len()
    }

    fn user_ip(self) -> i16 {
        match self {
            Family::V4 => USER_IP4,
            Family::V6 => USER_IP6,
        }
    }
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// A jump target, bound to an instruction once its place is known.
#[derive(Clone, Copy)]
struct Label(usize);

/// Instructions with jumps to labels, resolved at the end.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: Vec<Option<usize>>,
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    fn push(&mut self, insn: Insn) {
        self.code.push(insn);
    }

    /// A jump (`JA`, or a comparison of `dst` with `imm`) to `to`.
    fn jump(&mut self, code: u8, dst: u8, imm: i32, to: Label) {
        self.jumps.push((self.code.len(), to));
        self.code.push(insn(code, dst, 0, 0, imm));
    }

    /// `r0 = bpf_map_lookup_elem(map, r10 + key)`.
    fn lookup(&mut self, map_fd: i32, key: i16) {
        self.push(insn(LD_IMM64, R1, PSEUDO_MAP_FD, 0, map_fd));
        self.push(insn(0, 0, 0, 0, 0));
        self.push(insn(MOV64_X, R2, R10, 0, 0));
        self.push(insn(ALU64_ADD_K, R2, 0, 0, i32::from(key)));
        self.push(insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP));
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in self.jumps {
            let target = self.labels[label.0].expect("every label is bound");
            self.code[at].off =
                i16::try_from(target as isize - at as isize - 1).expect("programs are short");
        }
        self.code
    }
}

/// The program for `family` over the maps `refused` and `policy` (descriptors), with the
/// name servers' port `dns_port`. Answers 1 to let the call through, 0 to refuse it (EPERM).
/// With `by_cgroup` (a hash map of `u64` counters by cgroup id), every refusal adds one to
/// the counter of the cgroup of the task refused: the sandbox whose helper it is.
pub fn program(
    family: Family,
    refused: i32,
    policy: i32,
    dns_port: u16,
    by_cgroup: Option<i32>,
) -> Vec<Insn> {
    let mut a = Asm::default();
    let (in_policy, verdict, allow, refuse) = (a.label(), a.label(), a.label(), a.label());
    a.push(insn(MOV64_X, R6, R1, 0, 0));
    // The key on the stack: a full-length prefix, then the address as the context holds it
    // (network byte order), which is how the maps store their ranges.
    let key = -(family.key_len() as i16);
    a.push(insn(ST_MEM_W, R10, 0, key, 32 * i32::from(family.words())));
    for word in 0..family.words() {
        a.push(insn(LDX_MEM_W, R3, R6, family.user_ip() + 4 * word, 0));
        a.push(insn(STX_MEM_W, R10, R3, key + 4 + 4 * word, 0));
    }
    a.lookup(refused, key);
    a.jump(JEQ_K, R0, 0, in_policy);
    a.push(insn(LDX_MEM_W, R3, R0, 0, 0));
    a.jump(JA, 0, 0, verdict);
    a.bind(in_policy);
    a.lookup(policy, key);
    a.jump(JEQ_K, R0, 0, allow);
    a.push(insn(LDX_MEM_W, R3, R0, 0, 0));
    a.bind(verdict);
    a.jump(JEQ_K, R3, Verdict::Allow.code() as i32, allow);
    a.jump(JEQ_K, R3, Verdict::NameServer.code() as i32, allow);
    a.jump(JNE_K, R3, Verdict::DnsOnly.code() as i32, refuse);
    // The port is in network byte order in the low half of the field.
    a.push(insn(LDX_MEM_W, R3, R6, USER_PORT, 0));
    a.jump(JNE_K, R3, port_word(dns_port), refuse);
    a.bind(allow);
    a.push(insn(MOV64_K, R0, 0, 0, 1));
    a.push(insn(EXIT, 0, 0, 0, 0));
    a.bind(refuse);
    if let Some(counters) = by_cgroup {
        count_by_cgroup(&mut a, counters);
    }
    a.push(insn(MOV64_K, R0, 0, 0, 0));
    a.push(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

/// Adds one to the counter of the calling task's cgroup in `counters`, making it (at 1)
/// when it has none; when another CPU made it in between, adds to that one.
fn count_by_cgroup(a: &mut Asm, counters: i32) {
    let [insert, done] = [(); 2].map(|()| a.label());
    a.push(insn(CALL, 0, 0, 0, HELPER_CURRENT_CGROUP_ID));
    a.push(insn(STX_MEM_DW, R10, R0, CGROUP_KEY, 0));
    a.lookup(counters, CGROUP_KEY);
    a.jump(JEQ_K, R0, 0, insert);
    a.push(insn(MOV64_K, R1, 0, 0, 1));
    a.push(insn(ATOMIC_DW, R0, R1, 0, 0));
    a.jump(JA, 0, 0, done);
    a.bind(insert);
    a.push(insn(MOV64_K, R1, 0, 0, 1));
    a.push(insn(STX_MEM_DW, R10, R1, FIRST_COUNT, 0));
    a.push(insn(LD_IMM64, R1, PSEUDO_MAP_FD, 0, counters));
    a.push(insn(0, 0, 0, 0, 0));
    a.push(insn(MOV64_X, R2, R10, 0, 0));
    a.push(insn(ALU64_ADD_K, R2, 0, 0, i32::from(CGROUP_KEY)));
    a.push(insn(MOV64_X, R3, R10, 0, 0));
    a.push(insn(ALU64_ADD_K, R3, 0, 0, i32::from(FIRST_COUNT)));
    a.push(insn(MOV64_K, R4, 0, 0, BPF_NOEXIST));
    a.push(insn(CALL, 0, 0, 0, HELPER_MAP_UPDATE));
    a.jump(JEQ_K, R0, 0, done);
    a.lookup(counters, CGROUP_KEY);
    a.jump(JEQ_K, R0, 0, done);
    a.push(insn(MOV64_K, R1, 0, 0, 1));
    a.push(insn(ATOMIC_DW, R0, R1, 0, 0));
    a.bind(done);
}

/// The maps of a sandbox with its own policy, by descriptor.
#[derive(Clone, Copy, Debug)]
pub struct SandboxMapFds {
    /// The server's: always refused, and closed unless the operator opened them.
    pub refused: i32,
    pub policy: i32,
    /// The sandbox's: ranges its `allowOut` lets through (any value), ranges its `denyOut`
    /// refuses (the value is the counter slot of the entry).
    pub allow: i32,
    pub deny: i32,
    /// Refusals counted per slot (`u64`); slot 0 counts the server's refusals.
    pub counters: i32,
    /// One `u64`: the egress proxy's ports ([`proxy_ports`]), 0 while it has none.
    pub proxy: i32,
}

/// The program for a sandbox with its own policy: the server's refusals first (absolute),
/// the DNS port of the host's name servers open whatever the sandbox says, then the
/// sandbox's `allowOut` (wins) and `denyOut`. Every refusal adds one to its counter.
///
/// With `redirect` (the TCP connect hook of IPv4), a connection to port 80 or 443 that
/// `allowOut` does not let through by address goes to the egress proxy while it has ports
/// (the sandbox has domain rules): the destination becomes `127.0.0.1` and the proxy's port
/// for it. The server's refusals come first, so nothing it refuses reaches the proxy.
pub fn sandbox_program(
    family: Family,
    maps: SandboxMapFds,
    dns_port: u16,
    redirect: bool,
) -> Vec<Insn> {
    let mut a = Asm::default();
    let [
        in_policy,
        verdict,
        sandbox,
        name_server,
        server_refuses,
        count,
        allow,
        refuse,
    ] = [(); 8].map(|()| a.label());
    a.push(insn(MOV64_X, R6, R1, 0, 0));
    let key = -(family.key_len() as i16);
    a.push(insn(ST_MEM_W, R10, 0, key, 32 * i32::from(family.words())));
    for word in 0..family.words() {
        a.push(insn(LDX_MEM_W, R3, R6, family.user_ip() + 4 * word, 0));
        a.push(insn(STX_MEM_W, R10, R3, key + 4 + 4 * word, 0));
    }
    // The server's tables, as the shared program reads them.
    a.lookup(maps.refused, key);
    a.jump(JEQ_K, R0, 0, in_policy);
    a.push(insn(LDX_MEM_W, R3, R0, 0, 0));
    a.jump(JA, 0, 0, verdict);
    a.bind(in_policy);
    a.lookup(maps.policy, key);
    a.jump(JEQ_K, R0, 0, sandbox);
    a.push(insn(LDX_MEM_W, R3, R0, 0, 0));
    a.bind(verdict);
    a.jump(JEQ_K, R3, Verdict::Allow.code() as i32, sandbox);
    a.jump(JEQ_K, R3, Verdict::NameServer.code() as i32, name_server);
    a.jump(JNE_K, R3, Verdict::DnsOnly.code() as i32, server_refuses);
    a.push(insn(LDX_MEM_W, R3, R6, USER_PORT, 0));
    let port = port_word(dns_port);
    a.jump(JNE_K, R3, port, server_refuses);
    a.jump(JA, 0, 0, allow);
    a.bind(name_server);
    a.push(insn(LDX_MEM_W, R3, R6, USER_PORT, 0));
    a.jump(JEQ_K, R3, port, allow);
    // The sandbox's policy: allowOut wins, then denyOut.
    a.bind(sandbox);
    a.lookup(maps.allow, key);
    a.jump(JNE_K, R0, 0, allow);
    if redirect {
        let [by_address, tls, to_proxy] = [(); 3].map(|()| a.label());
        a.push(insn(LDX_MEM_W, R3, R6, SOCK_TYPE, 0));
        a.jump(JNE_K, R3, SOCK_STREAM, by_address);
        a.push(insn(ST_MEM_W, R10, 0, COUNTER_KEY, 0));
        a.lookup(maps.proxy, COUNTER_KEY);
        a.jump(JEQ_K, R0, 0, by_address);
        a.push(insn(LDX_MEM_W, R3, R6, USER_PORT, 0));
        a.jump(JEQ_K, R3, port_word(443), tls);
        a.jump(JNE_K, R3, port_word(80), by_address);
        a.push(insn(LDX_MEM_W, R4, R0, 0, 0));
        a.jump(JA, 0, 0, to_proxy);
        a.bind(tls);
        a.push(insn(LDX_MEM_W, R4, R0, 4, 0));
        a.bind(to_proxy);
        a.jump(JEQ_K, R4, 0, by_address);
        // The context takes stores from registers only.
        a.push(insn(STX_MEM_W, R6, R4, USER_PORT, 0));
        a.push(insn(MOV64_K, R3, 0, 0, i32::from_ne_bytes([127, 0, 0, 1])));
        a.push(insn(STX_MEM_W, R6, R3, USER_IP4, 0));
        a.jump(JA, 0, 0, allow);
        a.bind(by_address);
    }
    a.lookup(maps.deny, key);
    a.jump(JEQ_K, R0, 0, allow);
    a.push(insn(LDX_MEM_W, R3, R0, 0, 0));
    a.push(insn(STX_MEM_W, R10, R3, COUNTER_KEY, 0));
    a.jump(JA, 0, 0, count);
    a.bind(server_refuses);
    a.push(insn(ST_MEM_W, R10, 0, COUNTER_KEY, 0));
    a.bind(count);
    a.lookup(maps.counters, COUNTER_KEY);
    a.jump(JEQ_K, R0, 0, refuse);
    a.push(insn(MOV64_K, R1, 0, 0, 1));
    a.push(insn(ATOMIC_DW, R0, R1, 0, 0));
    a.bind(refuse);
    a.push(insn(MOV64_K, R0, 0, 0, 0));
    a.push(insn(EXIT, 0, 0, 0, 0));
    a.bind(allow);
    a.push(insn(MOV64_K, R0, 0, 0, 1));
    a.push(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
    };

    use super::*;
    use crate::egress::{
        Refusal, SandboxPolicy,
        rules::{self, Cidr, Rules, Tables},
    };

    const REFUSED_FD: i32 = 7;
    const POLICY_FD: i32 = 8;
    const ALLOW_FD: i32 = 9;
    const DENY_FD: i32 = 10;
    const COUNTERS_FD: i32 = 11;
    const PROXY_FD: i32 = 12;
    const BY_CGROUP_FD: i32 = 13;
    /// The cgroup id the interpreter's task is in.
    const CGROUP_ID: u64 = 0x1234_5678_9abc;
    const SANDBOX_FDS: SandboxMapFds = SandboxMapFds {
        refused: REFUSED_FD,
        policy: POLICY_FD,
        allow: ALLOW_FD,
        deny: DENY_FD,
        counters: COUNTERS_FD,
        proxy: PROXY_FD,
    };

    /// Where the interpreter puts the context, the stack and the map value it hands out.
    const CTX: u64 = 0x1_0000;
    const STACK: u64 = 0x2_0000;
    const STACK_SIZE: u64 = 512;
    const VALUE: u64 = 0x3_0000;

    /// The maps a program may ask, as the kernel would answer them.
    #[derive(Default)]
    struct Maps {
        /// Longest-prefix-match maps by descriptor.
        lpm: BTreeMap<i32, BTreeMap<Cidr, u32>>,
        /// The counters array (`COUNTERS_FD`).
        counters: Vec<u64>,
        /// The proxy's ports (`PROXY_FD`, one slot).
        proxy: u64,
        /// The shared program's counters by cgroup id (`BY_CGROUP_FD`).
        by_cgroup: BTreeMap<u64, u64>,
    }

    /// What a map value handed out is, for an atomic add on it.
    #[derive(Clone, Copy)]
    enum Counter {
        Slot(usize),
        Cgroup(u64),
    }

    impl Maps {
        fn server(tables: &Tables) -> Self {
            let codes = |t: &BTreeMap<Cidr, rules::Verdict>| {
                t.iter().map(|(c, v)| (*c, v.code())).collect()
            };
            let mut maps = Maps::default();
            maps.lpm.insert(REFUSED_FD, codes(&tables.refused));
            maps.lpm.insert(POLICY_FD, codes(&tables.policy));
            maps
        }

        /// The server's tables and a sandbox's policy, its deny entries counted from slot
        /// 1 on in order.
        fn sandbox(tables: &Tables, policy: &SandboxPolicy) -> (Self, Vec<String>) {
            let mut maps = Self::server(tables);
            let allow = policy
                .allow()
                .iter()
                .flat_map(|e| e.ranges.iter().map(|r| (*r, 1)))
                .collect();
            let mut labels = vec![String::new()];
            let mut deny = BTreeMap::new();
            for entry in policy.deny() {
                for range in &entry.ranges {
                    deny.insert(*range, labels.len() as u32);
                    labels.push(entry.text.clone());
                }
            }
            maps.lpm.insert(ALLOW_FD, allow);
            maps.lpm.insert(DENY_FD, deny);
            maps.counters = vec![0; labels.len()];
            (maps, labels)
        }
    }

    /// Runs `code` like the kernel would, on a `struct bpf_sock_addr` for `dest`, with the
    /// maps answered from `maps`.
    fn run(code: &[Insn], maps: &mut Maps, dest: IpAddr, port: u16) -> u64 {
        run_socket(code, maps, dest, port, 2).0
    }

    /// [`run`] for a socket of type `sock_type`; also the context as the program left it.
    fn run_socket(
        code: &[Insn],
        maps: &mut Maps,
        dest: IpAddr,
        port: u16,
        sock_type: u32,
    ) -> (u64, [u8; 64]) {
        let mut ctx = [0u8; 64];
        ctx[32..36].copy_from_slice(&sock_type.to_le_bytes());
        match dest {
            IpAddr::V4(a) => ctx[4..8].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => ctx[8..24].copy_from_slice(&a.octets()),
        }
        ctx[24..26].copy_from_slice(&port.to_be_bytes());
        let mut stack = [0u8; STACK_SIZE as usize];
        let mut value = [0u8; 8];
        // The counter VALUE points at, when the last lookup was of counters.
        let mut counter: Option<Counter> = None;
        let mut reg = [0u64; 11];
        reg[1] = CTX;
        reg[10] = STACK + STACK_SIZE;
        let mut pc = 0usize;
        let load = |addr: u64, ctx: &[u8], stack: &[u8], value: &[u8]| -> u32 {
            let (mem, at): (&[u8], u64) = match addr {
                a if (CTX..CTX + 64).contains(&a) => (ctx, a - CTX),
                a if (STACK..STACK + STACK_SIZE).contains(&a) => (stack, a - STACK),
                a if (VALUE..VALUE + 8).contains(&a) => (value, a - VALUE),
                a => panic!("load from {a:#x}"),
            };
            let at = at as usize;
            u32::from_le_bytes(mem[at..at + 4].try_into().unwrap())
        };
        loop {
            let i = code[pc];
            pc += 1;
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let jump = |taken: bool, pc: &mut usize| {
                if taken {
                    *pc = (*pc as isize + isize::from(i.off)) as usize;
                }
            };
            match i.code {
                MOV64_X => reg[dst] = reg[src],
                MOV64_K => reg[dst] = i.imm as i64 as u64,
                ALU64_ADD_K => reg[dst] = reg[dst].wrapping_add(i.imm as i64 as u64),
                LDX_MEM_W => {
                    let addr = reg[src].wrapping_add(i.off as i64 as u64);
                    assert!(
                        addr != VALUE || counter.is_none(),
                        "a counter read as a word"
                    );
                    reg[dst] = u64::from(load(addr, &ctx, &stack, &value));
                }
                STX_MEM_W if reg[dst] == CTX => {
                    // Only the destination may be rewritten, and only so.
                    assert!(
                        matches!(i.off, USER_IP4 | USER_PORT),
                        "store to ctx+{}",
                        i.off
                    );
                    let at = i.off as usize;
                    ctx[at..at + 4].copy_from_slice(&(reg[src] as u32).to_le_bytes());
                }
                STX_MEM_DW => {
                    let addr = reg[dst].wrapping_add(i.off as i64 as u64);
                    assert!(
                        (STACK..STACK + STACK_SIZE - 7).contains(&addr) && addr % 8 == 0,
                        "a double word stored outside the stack or unaligned"
                    );
                    let at = (addr - STACK) as usize;
                    stack[at..at + 8].copy_from_slice(&reg[src].to_le_bytes());
                }
                ST_MEM_W | STX_MEM_W => {
                    let addr = reg[dst].wrapping_add(i.off as i64 as u64);
                    assert!(
                        (STACK..STACK + STACK_SIZE - 3).contains(&addr),
                        "store outside the stack"
                    );
                    let word = if i.code == ST_MEM_W {
                        i.imm as u32
                    } else {
                        reg[src] as u32
                    };
                    let at = (addr - STACK) as usize;
                    stack[at..at + 4].copy_from_slice(&word.to_le_bytes());
                }
                ATOMIC_DW => {
                    assert_eq!(i.imm, 0, "only BPF_ADD");
                    let addr = reg[dst].wrapping_add(i.off as i64 as u64);
                    assert_eq!(addr, VALUE, "atomic add outside a map value");
                    match counter.expect("an atomic add on a counter") {
                        Counter::Slot(slot) => maps.counters[slot] += reg[src],
                        Counter::Cgroup(id) => {
                            *maps.by_cgroup.get_mut(&id).expect("looked up") += reg[src]
                        }
                    }
                }
                LD_IMM64 => {
                    assert_eq!(src, PSEUDO_MAP_FD as usize);
                    reg[dst] = i.imm as u64;
                    pc += 1;
                }
                CALL if i.imm == HELPER_CURRENT_CGROUP_ID => {
                    reg[0] = CGROUP_ID;
                    reg[1..6].fill(0xdead);
                }
                CALL if i.imm == HELPER_MAP_UPDATE => {
                    assert_eq!(
                        reg[1] as i32, BY_CGROUP_FD,
                        "updates only the cgroup counters"
                    );
                    assert_eq!(reg[4], BPF_NOEXIST as u64);
                    let read = |at: u64| {
                        let at = (at - STACK) as usize;
                        u64::from_le_bytes(stack[at..at + 8].try_into().unwrap())
                    };
                    let (key, first) = (read(reg[2]), read(reg[3]));
                    reg[0] = match maps.by_cgroup.contains_key(&key) {
                        true => (-libc::EEXIST) as i64 as u64,
                        false => {
                            maps.by_cgroup.insert(key, first);
                            0
                        }
                    };
                    reg[1..6].fill(0xdead);
                }
                CALL => {
                    assert_eq!(i.imm, HELPER_MAP_LOOKUP);
                    let at = (reg[2] - STACK) as usize;
                    let word = u32::from_le_bytes(stack[at..at + 4].try_into().unwrap());
                    counter = None;
                    reg[0] = if reg[1] as i32 == BY_CGROUP_FD {
                        let key = u64::from_le_bytes(stack[at..at + 8].try_into().unwrap());
                        match maps.by_cgroup.contains_key(&key) {
                            true => {
                                counter = Some(Counter::Cgroup(key));
                                VALUE
                            }
                            false => 0,
                        }
                    } else if reg[1] as i32 == PROXY_FD {
                        assert_eq!(word, 0, "the proxy map has one slot");
                        value = maps.proxy.to_le_bytes();
                        VALUE
                    } else if reg[1] as i32 == COUNTERS_FD {
                        let slot = word as usize;
                        if slot < maps.counters.len() {
                            counter = Some(Counter::Slot(slot));
                            VALUE
                        } else {
                            0
                        }
                    } else {
                        let table = maps
                            .lpm
                            .get(&(reg[1] as i32))
                            .unwrap_or_else(|| panic!("no map {}", reg[1]));
                        let addr = &stack[at + 4..];
                        let addr = match dest {
                            IpAddr::V4(_) => {
                                assert_eq!(word, 32);
                                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&addr[..4]).unwrap()))
                            }
                            IpAddr::V6(_) => {
                                assert_eq!(word, 128);
                                IpAddr::V6(Ipv6Addr::from(
                                    <[u8; 16]>::try_from(&addr[..16]).unwrap(),
                                ))
                            }
                        };
                        let found = table
                            .iter()
                            .filter(|(cidr, _)| cidr.contains_addr(addr))
                            .max_by_key(|(cidr, _)| cidr.prefix());
                        match found {
                            Some((_, code)) => {
                                value[..4].copy_from_slice(&code.to_le_bytes());
                                VALUE
                            }
                            None => 0,
                        }
                    };
                    // The helper clobbers the argument registers.
                    reg[1..6].fill(0xdead);
                }
                JA => jump(true, &mut pc),
                JEQ_K => jump(reg[dst] == i.imm as i64 as u64, &mut pc),
                JNE_K => jump(reg[dst] != i.imm as i64 as u64, &mut pc),
                EXIT => return (reg[0], ctx),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn programs_decide_as_the_tables_say() {
        let opened: Vec<Cidr> = vec!["192.168.77.0/24".parse().unwrap()];
        let rules = Rules::new(&opened).unwrap();
        let host: BTreeSet<IpAddr> = ["127.0.0.1", "192.0.2.2", "192.168.77.1", "::1", "fd00::2"]
            .iter()
            .map(|a| ip(a))
            .collect();
        let name_servers: BTreeSet<IpAddr> = ["10.255.255.53", "fd00::53"]
            .iter()
            .map(|a| ip(a))
            .collect();
        let tables = rules.tables(&host, &name_servers);
        let mut maps = Maps::server(&tables);
        let v4 = program(Family::V4, REFUSED_FD, POLICY_FD, 53, Some(BY_CGROUP_FD));
        let v6 = program(Family::V6, REFUSED_FD, POLICY_FD, 53, Some(BY_CGROUP_FD));
        let mut refused = 0;
        let cases = [
            ("127.0.0.1", 80, false),
            ("192.0.2.2", 22, false),
            ("192.0.2.1", 80, true),
            ("203.0.113.80", 443, true),
            ("10.1.2.3", 80, false),
            ("10.255.255.53", 53, true),
            ("10.255.255.53", 80, false),
            ("100.64.0.1", 80, false),
            ("169.254.169.254", 80, false),
            ("192.168.77.2", 8000, true),
            ("192.168.77.1", 8000, false),
            ("192.168.78.2", 8000, false),
            ("224.0.0.251", 5353, false),
            ("::1", 80, false),
            ("fd00::2", 80, false),
            ("fd00::53", 53, true),
            ("fd00::53", 5353, false),
            ("fc00::1", 80, false),
            ("fe80::1", 80, false),
            ("::ffff:127.0.0.1", 80, false),
            ("2a04:4e42::223", 443, true),
        ];
        for (dest, port, allowed) in cases {
            let dest = ip(dest);
            assert_eq!(
                tables.allows(dest, port, 53),
                allowed,
                "tables: {dest} port {port}"
            );
            let code = if dest.is_ipv4() { &v4 } else { &v6 };
            assert_eq!(
                run(code, &mut maps, dest, port),
                u64::from(allowed),
                "program: {dest} port {port}"
            );
            // Every refusal is counted for the cgroup of the task refused.
            refused += u64::from(!allowed);
            let counted = maps.by_cgroup.get(&CGROUP_ID).copied().unwrap_or(0);
            assert_eq!(counted, refused, "counted after {dest} port {port}");
        }
        assert_eq!(maps.by_cgroup.len(), 1);
    }

    #[test]
    fn jumps_land_inside_the_program() {
        let programs = [Family::V4, Family::V6].into_iter().flat_map(|family| {
            [
                program(family, REFUSED_FD, POLICY_FD, 53, None),
                program(family, REFUSED_FD, POLICY_FD, 53, Some(BY_CGROUP_FD)),
                sandbox_program(family, SANDBOX_FDS, 53, false),
                sandbox_program(family, SANDBOX_FDS, 53, true),
            ]
        });
        for code in programs {
            for (at, i) in code.iter().enumerate() {
                if matches!(i.code, JA | JEQ_K | JNE_K) {
                    let target = at as isize + 1 + isize::from(i.off);
                    assert!(target > at as isize && (target as usize) < code.len());
                }
            }
            assert_eq!(code.last().map(|i| i.code), Some(EXIT));
        }
    }

    #[test]
    fn sandbox_programs_decide_and_count_as_the_policy_says() {
        let opened: Vec<Cidr> = vec!["10.203.0.0/16".parse().unwrap()];
        let rules = Rules::new(&opened).unwrap();
        let host: BTreeSet<IpAddr> = ["127.0.0.1", "192.0.2.2", "10.203.1.1", "::1"]
            .iter()
            .map(|a| ip(a))
            .collect();
        let name_servers: BTreeSet<IpAddr> = ["10.255.255.53", "203.0.113.53", "fd00::53"]
            .iter()
            .map(|a| ip(a))
            .collect();
        let tables = rules.tables(&host, &name_servers);
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let policy = SandboxPolicy::new(
            // Asking for the host, loopback and a closed private range changes nothing.
            &strings(&[
                "10.203.1.2",
                "2001:db8:7::/48",
                "192.0.2.2",
                "127.0.0.1",
                "172.16.0.0/12",
            ]),
            &strings(&["0.0.0.0/0", "198.51.100.0/24"]),
        )
        .unwrap();
        let (mut maps, labels) = Maps::sandbox(&tables, &policy);
        let v4 = sandbox_program(Family::V4, SANDBOX_FDS, 53, false);
        let v6 = sandbox_program(Family::V6, SANDBOX_FDS, 53, false);
        let server = Some(Refusal::Server);
        let deny = |rule: &str| Some(Refusal::Deny(rule.to_owned()));
        let cases = [
            ("10.203.1.2", 8000, None),
            ("10.203.1.3", 8000, deny("0.0.0.0/0")),
            ("10.203.1.1", 8000, server.clone()),
            ("192.0.2.2", 22, server.clone()),
            ("127.0.0.1", 3000, server.clone()),
            ("172.16.0.1", 80, server.clone()),
            ("203.0.113.80", 443, deny("0.0.0.0/0")),
            ("198.51.100.7", 443, deny("198.51.100.0/24")),
            // The host's name servers answer on the DNS port under deny-all, wherever
            // they are, and only there.
            ("10.255.255.53", 53, None),
            ("10.255.255.53", 80, server.clone()),
            ("203.0.113.53", 53, None),
            ("203.0.113.53", 443, deny("0.0.0.0/0")),
            ("2001:db8:7::1", 443, None),
            ("2001:db8:8::1", 443, deny("0.0.0.0/0")),
            ("fd00::53", 53, None),
            ("fd00::53", 80, server.clone()),
            ("::1", 80, server.clone()),
            ("::ffff:10.203.1.2", 8000, server.clone()),
        ];
        let mut expected = vec![0u64; labels.len()];
        for (dest, port, refusal) in cases {
            let dest = ip(dest);
            assert_eq!(
                tables.refusal(&policy, dest, port, 53),
                refusal,
                "reference: {dest} port {port}"
            );
            let code = if dest.is_ipv4() { &v4 } else { &v6 };
            assert_eq!(
                run(code, &mut maps, dest, port),
                u64::from(refusal.is_none()),
                "program: {dest} port {port}"
            );
            match &refusal {
                None => {}
                Some(Refusal::Server) => expected[0] += 1,
                Some(Refusal::NoName | Refusal::NoInterception) => {
                    unreachable!("programs do not read names")
                }
                Some(Refusal::Deny(rule)) => {
                    // The slot of the range that matched: IPv4 or IPv6 of the same entry.
                    let slot = policy
                        .deny()
                        .iter()
                        .flat_map(|e| e.ranges.iter().map(move |r| (r, e)))
                        .enumerate()
                        .filter(|(_, (r, e))| &e.text == rule && r.contains_addr(dest))
                        .map(|(at, _)| at + 1)
                        .next()
                        .unwrap();
                    expected[slot] += 1;
                }
            }
            assert_eq!(maps.counters, expected, "counters after {dest} port {port}");
        }
        // Without a policy entry, a sandbox program lets through what the server does.
        let (mut open, _) = Maps::sandbox(&tables, &SandboxPolicy::default());
        assert_eq!(run(&v4, &mut open, ip("203.0.113.80"), 443), 1);
        assert_eq!(run(&v4, &mut open, ip("10.1.2.3"), 443), 0);
        assert_eq!(open.counters, vec![1]);
    }

    #[test]
    fn tcp_to_web_ports_goes_to_the_proxy_unless_the_address_decides() {
        let opened: Vec<Cidr> = vec!["10.203.0.0/16".parse().unwrap()];
        let rules = Rules::new(&opened).unwrap();
        let host: BTreeSet<IpAddr> = ["127.0.0.1", "10.203.1.1"].iter().map(|a| ip(a)).collect();
        let tables = rules.tables(&host, &BTreeSet::new());
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let policy = SandboxPolicy::new(
            &strings(&["10.203.1.2", "pypi.org"]),
            &strings(&["0.0.0.0/0"]),
        )
        .unwrap();
        let (mut maps, _) = Maps::sandbox(&tables, &policy);
        let v4 = sandbox_program(Family::V4, SANDBOX_FDS, 53, true);
        const TCP: u32 = 1;
        const UDP: u32 = 2;
        let dest_of = |ctx: &[u8; 64]| {
            let addr = Ipv4Addr::from(<[u8; 4]>::try_from(&ctx[4..8]).unwrap());
            let port = u16::from_be_bytes([ctx[24], ctx[25]]);
            (addr.to_string(), port)
        };
        // No proxy yet: decided by address alone, nothing rewritten.
        let (verdict, ctx) = run_socket(&v4, &mut maps, ip("203.0.113.9"), 443, TCP);
        assert_eq!((verdict, dest_of(&ctx)), (0, ("203.0.113.9".into(), 443)));
        maps.proxy = proxy_ports(41080, 41443);
        for (dest, port, kind, expected) in [
            // Web ports over TCP go to the proxy, whatever the address.
            ("203.0.113.9", 443, TCP, Some(("127.0.0.1", 41443))),
            ("203.0.113.9", 80, TCP, Some(("127.0.0.1", 41080))),
            // allowOut by address goes straight there.
            ("10.203.1.2", 443, TCP, Some(("10.203.1.2", 443))),
            // Other ports and UDP: the address rules.
            ("203.0.113.9", 22, TCP, None),
            ("203.0.113.9", 443, UDP, None),
            // What the server refuses never reaches the proxy.
            ("127.0.0.1", 443, TCP, None),
            ("10.203.1.1", 80, TCP, None),
            ("10.1.2.3", 443, TCP, None),
        ] {
            let (verdict, ctx) = run_socket(&v4, &mut maps, ip(dest), port, kind);
            match expected {
                Some((addr, to)) => {
                    assert_eq!(verdict, 1, "{dest}:{port}");
                    assert_eq!(dest_of(&ctx), (addr.to_owned(), to), "{dest}:{port}");
                }
                None => {
                    assert_eq!(verdict, 0, "{dest}:{port}/{kind}");
                    assert_eq!(dest_of(&ctx), (dest.to_owned(), port), "{dest}:{port}");
                }
            }
        }
        // The programs of other hooks never rewrite.
        let other = sandbox_program(Family::V4, SANDBOX_FDS, 53, false);
        let (verdict, ctx) = run_socket(&other, &mut maps, ip("203.0.113.9"), 443, TCP);
        assert_eq!((verdict, dest_of(&ctx)), (0, ("203.0.113.9".into(), 443)));
    }
}
