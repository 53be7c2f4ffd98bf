//! What a sandbox's egress may not reach. Its traffic leaves through slirp4netns, which makes
//! ordinary connections from the host; eBPF programs on its cgroup (cgroup v2
//! `connect` and `sendmsg` hooks) refuse the destinations that would be the host itself or
//! its surroundings: loopback, the host's own addresses, link-local (cloud metadata
//! services), multicast and reserved ranges.

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// An IPv4 range refused as a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4 {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// An IPv6 range refused as a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6 {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

/// The destinations refused: fixed ranges plus the host's own addresses right now.
#[derive(Clone, Debug, Default)]
pub struct DenyList {
    pub v4: Vec<Net4>,
    pub v6: Vec<Net6>,
}

impl DenyList {
    pub fn for_this_host() -> Self {
        let mut list = Self::default();
        for (addr, prefix) in [
            ([0, 0, 0, 0], 8),          // "this network"
            ([127, 0, 0, 0], 8),        // the host's loopback services (Cove's API among them)
            ([169, 254, 0, 0], 16),     // link-local: cloud metadata services
            ([224, 0, 0, 0], 4),        // multicast
            ([240, 0, 0, 0], 4),        // reserved and broadcast
            ([100, 100, 100, 200], 32), // Alibaba Cloud metadata
        ] {
            list.v4.push(Net4 {
                addr: Ipv4Addr::from(addr),
                prefix,
            });
        }
        for (addr, prefix) in [
            ("::", 128),
            ("::1", 128),
            ("::ffff:0:0", 96), // IPv4-mapped: the IPv4 rules must not be side-stepped
            ("fe80::", 10),     // link-local
            ("ff00::", 8),      // multicast
            ("fd00:ec2::", 32), // AWS metadata over IPv6
        ] {
            if let Ok(addr) = addr.parse() {
                list.v6.push(Net6 { addr, prefix });
            }
        }
        list.v4.extend(
            host_ipv4_addresses()
                .into_iter()
                .map(|addr| Net4 { addr, prefix: 32 }),
        );
        list.v6.extend(
            host_ipv6_addresses()
                .into_iter()
                .map(|addr| Net6 { addr, prefix: 128 }),
        );
        list
    }
}

/// The host's own IPv4 addresses (the `LOCAL` entries of the routing trie).
fn host_ipv4_addresses() -> Vec<Ipv4Addr> {
    let trie = fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let lines: Vec<&str> = trie.lines().collect();
    let mut addresses: Vec<Ipv4Addr> = lines
        .windows(2)
        .filter(|pair| pair[1].contains("/32 host LOCAL"))
        .filter_map(|pair| {
            pair[0]
                .trim()
                .trim_start_matches(['|', '-', '+', ' '])
                .trim()
                .parse()
                .ok()
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The host's own IPv6 addresses.
fn host_ipv6_addresses() -> Vec<Ipv6Addr> {
    let table = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16).ok()?;
            Some(Ipv6Addr::from(bits))
        })
        .collect()
}

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const JMP32_JNE_K: u8 = 0x56;
const JMP_JA: u8 = 0x05;
const MOV64_K: u8 = 0xb7;
const EXIT: u8 = 0x95;

/// Offsets in `struct bpf_sock_addr`.
const USER_IP4: i16 = 4;
const USER_IP6: i16 = 8;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// A 32-bit word as the program loads it (network byte order in memory, read little-endian).
fn word(bytes: [u8; 4]) -> i32 {
    i32::from_le_bytes(bytes)
}

fn mask_bytes<const N: usize>(prefix: u8) -> [u8; N] {
    let mut mask = [0u8; N];
    for (i, byte) in mask.iter_mut().enumerate() {
        let bits = i32::from(prefix) - 8 * i as i32;
        *byte = match bits {
            b if b >= 8 => 0xff,
            b if b <= 0 => 0,
            b => 0xffu8 << (8 - b),
        };
    }
    mask
}

/// A program that answers 0 (refuse) when the destination is in one of `rules`, else 1.
/// Each rule is a list of (offset, mask, value) words that must all match.
fn program(rules: &[Vec<(i16, i32, i32)>]) -> Vec<Insn> {
    let mut code = Vec::new();
    let mut to_deny = Vec::new();
    for rule in rules {
        // Words that fail jump to the next rule: patched once the rule's length is known.
        let mut to_next = Vec::new();
        for &(offset, mask, value) in rule {
            code.push(insn(LDX_MEM_W, 3, 1, offset, 0));
            code.push(insn(ALU32_AND_K, 3, 0, 0, mask));
            to_next.push(code.len());
            code.push(insn(JMP32_JNE_K, 3, 0, 0, value));
        }
        to_deny.push(code.len());
        code.push(insn(JMP_JA, 0, 0, 0, 0));
        let next = code.len();
        for at in to_next {
            code[at].off = (next - at - 1) as i16;
        }
    }
    code.push(insn(MOV64_K, 0, 0, 0, 1));
    code.push(insn(EXIT, 0, 0, 0, 0));
    let deny = code.len();
    for at in to_deny {
        code[at].off = (deny - at - 1) as i16;
    }
    code.push(insn(MOV64_K, 0, 0, 0, 0));
    code.push(insn(EXIT, 0, 0, 0, 0));
    code
}

fn v4_program(list: &DenyList) -> Vec<Insn> {
    let rules: Vec<Vec<(i16, i32, i32)>> = list
        .v4
        .iter()
        .map(|net| {
            let mask = mask_bytes::<4>(net.prefix);
            let addr = net.addr.octets();
            let value: [u8; 4] = std::array::from_fn(|i| addr[i] & mask[i]);
            vec![(USER_IP4, word(mask), word(value))]
        })
        .collect();
    program(&rules)
}

fn v6_program(list: &DenyList) -> Vec<Insn> {
    let rules: Vec<Vec<(i16, i32, i32)>> = list
        .v6
        .iter()
        .map(|net| {
            let mask = mask_bytes::<16>(net.prefix);
            let addr = net.addr.octets();
            (0..4)
                .filter(|w| mask[4 * w..4 * w + 4] != [0, 0, 0, 0])
                .map(|w| {
                    let m: [u8; 4] = std::array::from_fn(|i| mask[4 * w + i]);
                    let v: [u8; 4] = std::array::from_fn(|i| addr[4 * w + i] & m[i]);
                    (USER_IP6 + 4 * w as i16, word(m), word(v))
                })
                .collect()
        })
        .collect();
    program(&rules)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;

/// The fields of `union bpf_attr` for `BPF_PROG_LOAD` (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    rest: [u64; 8],
}

/// The fields of `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    rest: [u32; 11],
}

fn load(insns: &[Insn], attach_type: u32) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"cove_egres");
    let attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: u32::try_from(insns.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: attach_type,
        ..LoadAttr::default()
    };
    // SAFETY: `attr` is a zero-padded `bpf_attr` prefix for BPF_PROG_LOAD whose pointers
    // (instructions, license) refer to memory that outlives the call; the kernel copies it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const LoadAttr,
            std::mem::size_of::<LoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The loaded programs, ready to attach to the cgroups of network helpers.
#[derive(Debug)]
pub struct EgressFilter {
    programs: Vec<(OwnedFd, u32)>,
}

impl EgressFilter {
    /// Loads the programs refusing `list`.
    pub fn load(list: &DenyList) -> io::Result<Self> {
        let v4 = v4_program(list);
        let v6 = v6_program(list);
        let mut programs = Vec::new();
        for (insns, attach) in [
            (&v4, BPF_CGROUP_INET4_CONNECT),
            (&v4, BPF_CGROUP_UDP4_SENDMSG),
            (&v6, BPF_CGROUP_INET6_CONNECT),
            (&v6, BPF_CGROUP_UDP6_SENDMSG),
        ] {
            programs.push((load(insns, attach)?, attach));
        }
        Ok(Self { programs })
    }

    /// Attaches the programs to the cgroup v2 directory `cgroup`: every process in it (and
    /// below) is refused those destinations from then on.
    pub fn attach(&self, cgroup: &Path) -> io::Result<()> {
        let dir = fs::File::open(cgroup)?;
        for (program, attach_type) in &self.programs {
            let attr = AttachAttr {
                target_fd: u32::try_from(dir.as_raw_fd())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
                attach_bpf_fd: u32::try_from(program.as_raw_fd())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
                attach_type: *attach_type,
                ..AttachAttr::default()
            };
            // SAFETY: `attr` is a zero-padded `bpf_attr` prefix for BPF_PROG_ATTACH naming
            // descriptors we hold open for the duration of the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_PROG_ATTACH,
                    &attr as *const AttachAttr,
                    std::mem::size_of::<AttachAttr>(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program on a destination, like the kernel would.
    fn run(code: &[Insn], ctx: &[u8; 64]) -> i64 {
        let (mut pc, mut r0, mut r3) = (0usize, 0i64, 0u32);
        loop {
            let i = code[pc];
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    let at = i.off as usize;
                    r3 = u32::from_le_bytes(ctx[at..at + 4].try_into().unwrap());
                }
                ALU32_AND_K => r3 &= i.imm as u32,
                JMP32_JNE_K if r3 != i.imm as u32 => pc += i.off as usize,
                JMP32_JNE_K => {}
                JMP_JA => pc += i.off as usize,
                MOV64_K => r0 = i64::from(i.imm),
                EXIT => return r0,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn v4(addr: [u8; 4]) -> [u8; 64] {
        let mut ctx = [0u8; 64];
        ctx[4..8].copy_from_slice(&addr);
        ctx
    }

    fn v6(addr: &str) -> [u8; 64] {
        let mut ctx = [0u8; 64];
        ctx[8..24].copy_from_slice(&addr.parse::<Ipv6Addr>().unwrap().octets());
        ctx
    }

    #[test]
    fn refuses_the_host_and_its_surroundings() {
        let mut list = DenyList::for_this_host();
        list.v4.push(Net4 {
            addr: Ipv4Addr::new(192, 0, 2, 2),
            prefix: 32,
        });
        let p4 = v4_program(&list);
        assert_eq!(run(&p4, &v4([127, 0, 0, 1])), 0);
        assert_eq!(run(&p4, &v4([127, 9, 9, 9])), 0);
        assert_eq!(run(&p4, &v4([169, 254, 169, 254])), 0);
        assert_eq!(run(&p4, &v4([192, 0, 2, 2])), 0);
        assert_eq!(run(&p4, &v4([224, 0, 0, 251])), 0);
        assert_eq!(run(&p4, &v4([151, 101, 0, 223])), 1);
        assert_eq!(run(&p4, &v4([192, 0, 2, 1])), 1);
        assert_eq!(run(&p4, &v4([10, 255, 255, 53])), 1);
        let p6 = v6_program(&list);
        assert_eq!(run(&p6, &v6("::1")), 0);
        assert_eq!(run(&p6, &v6("fe80::1")), 0);
        assert_eq!(run(&p6, &v6("::ffff:127.0.0.1")), 0);
        assert_eq!(run(&p6, &v6("2a04:4e42::223")), 1);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_bytes::<4>(8), [0xff, 0, 0, 0]);
        assert_eq!(mask_bytes::<4>(10), [0xff, 0xc0, 0, 0]);
        assert_eq!(mask_bytes::<4>(32), [0xff; 4]);
        assert_eq!(mask_bytes::<16>(96)[11], 0xff);
        assert_eq!(mask_bytes::<16>(96)[12], 0);
    }
}
