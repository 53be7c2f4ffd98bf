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
pub const ALU64_ADD_K: u8 = 0x07;
pub const MOV64_K: u8 = 0xb7;
pub const MOV64_X: u8 = 0xbf;
pub const LD_IMM64: u8 = 0x18;
pub const JA: u8 = 0x05;
pub const JEQ_K: u8 = 0x15;
pub const JNE_K: u8 = 0x55;
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;

/// `src` of a 64-bit immediate load whose value is a map descriptor.
pub const PSEUDO_MAP_FD: u8 = 1;
/// The `bpf_map_lookup_elem` helper.
pub const HELPER_MAP_LOOKUP: i32 = 1;

pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;
pub const R6: u8 = 6;
pub const R10: u8 = 10;

/// Offsets in `struct bpf_sock_addr`.
pub const USER_IP4: i16 = 4;
pub const USER_IP6: i16 = 8;
pub const USER_PORT: i16 = 24;

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
pub fn program(family: Family, refused: i32, policy: i32, dns_port: u16) -> Vec<Insn> {
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
    a.jump(JNE_K, R3, Verdict::DnsOnly.code() as i32, refuse);
    // The port is in network byte order in the low half of the field.
    a.push(insn(LDX_MEM_W, R3, R6, USER_PORT, 0));
    let port = i32::from(u16::from_ne_bytes(dns_port.to_be_bytes()));
    a.jump(JNE_K, R3, port, refuse);
    a.bind(allow);
    a.push(insn(MOV64_K, R0, 0, 0, 1));
    a.push(insn(EXIT, 0, 0, 0, 0));
    a.bind(refuse);
    a.push(insn(MOV64_K, R0, 0, 0, 0));
    a.push(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
    };

    use super::*;
    use crate::egress::rules::{self, Cidr, Rules, Tables};

    const REFUSED_FD: i32 = 7;
    const POLICY_FD: i32 = 8;

    /// Where the interpreter puts the context, the stack and the map value it hands out.
    const CTX: u64 = 0x1_0000;
    const STACK: u64 = 0x2_0000;
    const STACK_SIZE: u64 = 512;
    const VALUE: u64 = 0x3_0000;

    /// Runs `code` like the kernel would, on a `struct bpf_sock_addr` for `dest`, with the
    /// maps answered from `tables`.
    fn run(code: &[Insn], tables: &Tables, dest: IpAddr, port: u16) -> u64 {
        let mut ctx = [0u8; 64];
        match dest {
            IpAddr::V4(a) => ctx[4..8].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => ctx[8..24].copy_from_slice(&a.octets()),
        }
        ctx[24..26].copy_from_slice(&port.to_be_bytes());
        let mut stack = [0u8; STACK_SIZE as usize];
        let mut value = [0u8; 4];
        let mut reg = [0u64; 11];
        reg[1] = CTX;
        reg[10] = STACK + STACK_SIZE;
        let mut pc = 0usize;
        let load = |addr: u64, stack: &[u8], value: &[u8]| -> u32 {
            let (mem, at): (&[u8], u64) = match addr {
                a if (CTX..CTX + 64).contains(&a) => (&ctx, a - CTX),
                a if (STACK..STACK + STACK_SIZE).contains(&a) => (stack, a - STACK),
                a if a == VALUE => (value, 0),
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
                    reg[dst] = u64::from(load(addr, &stack, &value));
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
                LD_IMM64 => {
                    assert_eq!(src, PSEUDO_MAP_FD as usize);
                    reg[dst] = i.imm as u64;
                    pc += 1;
                }
                CALL => {
                    assert_eq!(i.imm, HELPER_MAP_LOOKUP);
                    let table = match reg[1] as i32 {
                        REFUSED_FD => &tables.refused,
                        POLICY_FD => &tables.policy,
                        fd => panic!("no map {fd}"),
                    };
                    let at = (reg[2] - STACK) as usize;
                    let prefix = u32::from_le_bytes(stack[at..at + 4].try_into().unwrap());
                    let addr = &stack[at + 4..];
                    let addr = match dest {
                        IpAddr::V4(_) => {
                            assert_eq!(prefix, 32);
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&addr[..4]).unwrap()))
                        }
                        IpAddr::V6(_) => {
                            assert_eq!(prefix, 128);
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&addr[..16]).unwrap()))
                        }
                    };
                    reg[0] = match rules::lookup(table, addr) {
                        Some(verdict) => {
                            value = verdict.code().to_le_bytes();
                            VALUE
                        }
                        None => 0,
                    };
                    // The helper clobbers the argument registers.
                    reg[1..6].fill(0xdead);
                }
                JA => jump(true, &mut pc),
                JEQ_K => jump(reg[dst] == i.imm as i64 as u64, &mut pc),
                JNE_K => jump(reg[dst] != i.imm as i64 as u64, &mut pc),
                EXIT => return reg[0],
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
        let v4 = program(Family::V4, REFUSED_FD, POLICY_FD, 53);
        let v6 = program(Family::V6, REFUSED_FD, POLICY_FD, 53);
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
                run(code, &tables, dest, port),
                u64::from(allowed),
                "program: {dest} port {port}"
            );
        }
    }

    #[test]
    fn jumps_land_inside_the_program() {
        for family in [Family::V4, Family::V6] {
            let code = program(family, REFUSED_FD, POLICY_FD, 53);
            for (at, i) in code.iter().enumerate() {
                if matches!(i.code, JA | JEQ_K | JNE_K) {
                    let target = at as isize + 1 + isize::from(i.off);
                    assert!(target > at as isize && (target as usize) < code.len());
                }
            }
            assert_eq!(code.last().map(|i| i.code), Some(EXIT));
        }
    }
}
