//! The `bpf` system calls the egress filter makes: longest-prefix-match maps (create,
//! update, delete, look up), loading a `cgroup/sock_addr` program, attaching it to a cgroup.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use super::{
    program::{Family, Insn},
    rules::Cidr,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// Longest-prefix-match maps must allocate entries as they come.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// `BPF_CGROUP_INET4_CONNECT` and friends: where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 10,
    Connect6 = 11,
    Sendmsg4 = 14,
    Sendmsg6 = 15,
}

/// The fields of `union bpf_attr` for `BPF_MAP_CREATE` (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    /// `map_ifindex` onwards; 32-bit words, so no padding can hold garbage.
    rest: [u32; 16],
}

/// The fields of `union bpf_attr` for the `BPF_MAP_*_ELEM` commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The fields of `union bpf_attr` for `BPF_PROG_LOAD`.
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

/// Makes the `bpf` call `cmd` with `attr`.
///
/// # Safety
/// `attr` must be a zero-padded `bpf_attr` prefix for `cmd` whose pointers refer to memory
/// valid (and, where the kernel writes, writable) for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; its size is the one we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Creates a map of `map_type` named `label`.
fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    label: &str,
) -> io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
        map_name: name(label),
        ..MapCreateAttr::default()
    };
    // SAFETY: a zero-padded `bpf_attr` for BPF_MAP_CREATE without pointers.
    owned(unsafe { bpf(BPF_MAP_CREATE, &attr) }?)
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name(text: &str) -> [u8; 16] {
    let mut name = [0u8; 16];
    for (dst, src) in name.iter_mut().zip(text.bytes().take(15)) {
        *dst = src;
    }
    name
}

/// A longest-prefix-match map from address ranges of one family to a `u32` verdict code.
#[derive(Debug)]
pub struct LpmMap {
    fd: OwnedFd,
    family: Family,
}

impl LpmMap {
    /// Creates a map named `label` for up to `max_entries` ranges.
    pub fn create(label: &str, family: Family, max_entries: u32) -> io::Result<Self> {
        let key_size = family.key_len() as u32;
        Ok(Self {
            fd: create_map(
                BPF_MAP_TYPE_LPM_TRIE,
                key_size,
                4,
                max_entries,
                BPF_F_NO_PREALLOC,
                label,
            )?,
            family,
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The key of `cidr`: prefix length (host byte order), then the address bytes.
    fn key(&self, addr: IpAddr, prefix: u8) -> io::Result<Vec<u8>> {
        let mut key = u32::from(prefix).to_ne_bytes().to_vec();
        match (addr, self.family) {
            (IpAddr::V4(a), Family::V4) => key.extend(a.octets()),
            (IpAddr::V6(a), Family::V6) => key.extend(a.octets()),
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
        Ok(key)
    }

    fn elem_attr(&self, key: &[u8], value: Option<&mut u32>, flags: u64) -> MapElemAttr {
        MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.map_or(0, |v| v as *mut u32 as u64),
            flags,
            ..MapElemAttr::default()
        }
    }

    /// Sets the verdict code of `cidr`.
    pub fn set(&self, cidr: &Cidr, code: u32) -> io::Result<()> {
        let key = self.key(cidr.addr(), cidr.prefix())?;
        let mut value = code;
        // BPF_ANY: create or replace.
        let attr = self.elem_attr(&key, Some(&mut value), 0);
        // SAFETY: the key and value buffers have the map's sizes and outlive the call.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &attr) }.map(drop)
    }

    /// Removes `cidr` (gone already is fine).
    pub fn remove(&self, cidr: &Cidr) -> io::Result<()> {
        let key = self.key(cidr.addr(), cidr.prefix())?;
        let attr = self.elem_attr(&key, None, 0);
        // SAFETY: the key buffer has the map's key size and outlives the call.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &attr) } {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The verdict code of the longest range holding `addr`, as the programs see it.
    pub fn lookup(&self, addr: IpAddr) -> io::Result<Option<u32>> {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        let key = self.key(addr, prefix)?;
        let mut value = 0u32;
        let attr = self.elem_attr(&key, Some(&mut value), 0);
        // SAFETY: the key buffer has the map's key size, the value one its value size; the
        // kernel writes only the value, which outlives the call.
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &attr) } {
            Ok(_) => Ok(Some(value)),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// An array of `u64` counters, indexed from 0.
#[derive(Debug)]
pub struct CounterMap {
    fd: OwnedFd,
}

impl CounterMap {
    /// Creates a map named `label` of `len` counters, all zero.
    pub fn create(label: &str, len: u32) -> io::Result<Self> {
        Ok(Self {
            fd: create_map(BPF_MAP_TYPE_ARRAY, 4, 8, len, 0, label)?,
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn attr(&self, key: &u32, value: &mut u64) -> MapElemAttr {
        MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const u32 as u64,
            value: value as *mut u64 as u64,
            ..MapElemAttr::default()
        }
    }

    /// The counter at `slot`.
    pub fn get(&self, slot: u32) -> io::Result<u64> {
        let mut value = 0u64;
        let attr = self.attr(&slot, &mut value);
        // SAFETY: the key (4 bytes) and value (8 bytes) buffers have the map's sizes and
        // outlive the call; the kernel writes only the value.
        unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &attr) }?;
        Ok(value)
    }

    /// Sets the counter at `slot`.
    pub fn set(&self, slot: u32, mut value: u64) -> io::Result<()> {
        let attr = self.attr(&slot, &mut value);
        // SAFETY: the key and value buffers have the map's sizes and outlive the call.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &attr) }.map(drop)
    }
}

/// `u64` counters by `u64` key (a cgroup's id), which programs add as they meet new keys.
#[derive(Debug)]
pub struct KeyedCounterMap {
    fd: OwnedFd,
}

impl KeyedCounterMap {
    /// Creates a map named `label` of at most `len` counters.
    pub fn create(label: &str, len: u32) -> io::Result<Self> {
        Ok(Self {
            fd: create_map(BPF_MAP_TYPE_HASH, 8, 8, len, BPF_F_NO_PREALLOC, label)?,
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn attr(&self, key: &u64, value: Option<&mut u64>) -> MapElemAttr {
        MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const u64 as u64,
            value: value.map_or(0, |v| v as *mut u64 as u64),
            ..MapElemAttr::default()
        }
    }

    /// The counter of `key`; 0 when it has none.
    pub fn get(&self, key: u64) -> io::Result<u64> {
        let mut value = 0u64;
        let attr = self.attr(&key, Some(&mut value));
        // SAFETY: the key and value buffers (8 bytes each, the map's sizes) outlive the
        // call; the kernel writes only the value.
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &attr) } {
            Ok(_) => Ok(value),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(0),
            Err(err) => Err(err),
        }
    }

    /// Forgets the counter of `key`.
    pub fn remove(&self, key: u64) -> io::Result<()> {
        let attr = self.attr(&key, None);
        // SAFETY: the key buffer (8 bytes, the map's key size) outlives the call.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &attr) } {
            Ok(_) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// A program refused by the kernel, with what its verifier said.
#[derive(Debug)]
pub struct LoadError {
    pub source: io::Error,
    pub log: String,
}

/// Loads `insns` as a `cgroup/sock_addr` program for `hook`.
pub fn load(insns: &[Insn], hook: Hook) -> Result<OwnedFd, LoadError> {
    let attempt = |log: Option<&mut [u8]>| {
        let license = c"GPL";
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let attr = LoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            prog_name: name("cove_egress"),
            expected_attach_type: hook as u32,
            ..LoadAttr::default()
        };
        // SAFETY: the instructions and license outlive the call; the log buffer, when
        // given, is writable for `log_size` bytes.
        unsafe { bpf(BPF_PROG_LOAD, &attr) }.and_then(owned)
    };
    attempt(None).map_err(|source| {
        // Once more with the verifier's log, to say why.
        let mut log = vec![0u8; 64 * 1024];
        let _ = attempt(Some(&mut log));
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        LoadError {
            source,
            log: String::from_utf8_lossy(&log[..end]).trim().to_owned(),
        }
    })
}

/// Attaches `program` at `hook` of the cgroup v2 directory open as `cgroup`; a program
/// attached there before is replaced.
pub fn attach(cgroup: BorrowedFd<'_>, program: &OwnedFd, hook: Hook) -> io::Result<()> {
    let attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_fd().as_raw_fd() as u32,
        attach_type: hook as u32,
        ..AttachAttr::default()
    };
    // SAFETY: a zero-padded `bpf_attr` for BPF_PROG_ATTACH naming descriptors we hold open
    // for the duration of the call.
    unsafe { bpf(BPF_PROG_ATTACH, &attr) }.map(drop)
}
