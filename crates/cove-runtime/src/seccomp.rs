//! The sandbox's system call filter: the deny list of `resources/seccomp.json`, compiled to
//! classic BPF and installed in PID 1 before the agent runs, so every process of the
//! sandbox inherits it. Calls of any other ABI than x86-64 (i386, x32) are refused, and so
//! are calls newer than the list.
//!
//! Arguments are compared on their low 32 bits, so argument rules are only written for
//! arguments the kernel reads as 32-bit (`int` flags, address families, ioctl commands).

use std::io;

use serde::Deserialize;

/// The policy, as data with a reason per rule.
const POLICY: &str = include_str!("../resources/seccomp.json");

#[derive(Debug, Deserialize)]
struct Policy {
    deny: Vec<Deny>,
    deny_with_args: Vec<DenyWithArgs>,
    deny_unless: Vec<DenyUnless>,
    newer_than: NewerThan,
}

#[derive(Debug, Deserialize)]
struct Deny {
    syscall: String,
    #[allow(dead_code)]
    reason: String,
    /// `EPERM` unless named (`ENOSYS` makes libc fall back to an older call).
    #[serde(default)]
    errno: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DenyWithArgs {
    syscall: String,
    arg: u8,
    #[serde(default)]
    any_bit_of: Option<String>,
    #[serde(default)]
    equals: Option<String>,
    #[allow(dead_code)]
    reason: String,
}

/// A call allowed only with one of a few values in one argument.
#[derive(Debug, Deserialize)]
struct DenyUnless {
    syscall: String,
    arg: u8,
    one_of: Vec<String>,
    #[serde(default)]
    errno: Option<String>,
    #[allow(dead_code)]
    reason: String,
}

/// Calls above the newest one the list was checked against.
#[derive(Debug, Deserialize)]
struct NewerThan {
    last_known: u32,
    errno: String,
    #[allow(dead_code)]
    reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp policy is malformed: {0}")]
    Policy(String),
    #[error("seccomp filters are only written for x86-64")]
    UnsupportedArch,
    #[error("cannot install the seccomp filter")]
    Install(#[source] io::Error),
}

/// A classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 system calls are x86-64 ones with this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
fn offset_arg_low(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}

fn stmt(code: u16, k: u32) -> Instruction {
    Instruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction { code, jt, jf, k }
}

fn parse_number(raw: &str) -> Result<u32, SeccompError> {
    let parsed = match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    parsed.map_err(|_| SeccompError::Policy(format!("{raw:?} is not a number")))
}

fn errno(name: Option<&str>) -> Result<u32, SeccompError> {
    match name.unwrap_or("EPERM") {
        "EPERM" => Ok(libc::EPERM as u32),
        "ENOSYS" => Ok(libc::ENOSYS as u32),
        "EAFNOSUPPORT" => Ok(libc::EAFNOSUPPORT as u32),
        other => Err(SeccompError::Policy(format!("unknown errno {other}"))),
    }
}

/// A jump offset, which BPF holds in a byte.
fn offset(n: usize, syscall: &str) -> Result<u8, SeccompError> {
    u8::try_from(n).map_err(|_| SeccompError::Policy(format!("the rule for {syscall} is too long")))
}

/// Compiles the policy into a BPF program.
pub fn compile() -> Result<Vec<Instruction>, SeccompError> {
    compile_policy(POLICY)
}

fn compile_policy(raw: &str) -> Result<Vec<Instruction>, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedArch);
    }
    let policy: Policy =
        serde_json::from_str(raw).map_err(|e| SeccompError::Policy(e.to_string()))?;
    let mut program = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, RET_ERRNO | libc::EPERM as u32),
    ];
    for rule in &policy.deny {
        let nr = syscall_number(&rule.syscall)?;
        program.push(jump(JEQ_K, nr, 0, 1));
        program.push(stmt(RET_K, RET_ERRNO | errno(rule.errno.as_deref())?));
    }
    for rule in &policy.deny_with_args {
        let nr = syscall_number(&rule.syscall)?;
        let test = match (&rule.any_bit_of, &rule.equals) {
            (Some(mask), None) => jump(JSET_K, parse_number(mask)?, 0, 1),
            (None, Some(value)) => jump(JEQ_K, parse_number(value)?, 0, 1),
            _ => {
                return Err(SeccompError::Policy(format!(
                    "rule for {} needs exactly one of any_bit_of and equals",
                    rule.syscall
                )));
            }
        };
        // Not this call: skip the four instructions of the check, the number is still in A.
        program.push(jump(JEQ_K, nr, 0, 4));
        program.push(stmt(LD_W_ABS, offset_arg_low(rule.arg)));
        program.push(test);
        program.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
        program.push(stmt(LD_W_ABS, OFFSET_NR));
    }
    for rule in &policy.deny_unless {
        let nr = syscall_number(&rule.syscall)?;
        let values = rule
            .one_of
            .iter()
            .map(|v| parse_number(v))
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() {
            return Err(SeccompError::Policy(format!(
                "rule for {} allows no value",
                rule.syscall
            )));
        }
        // Not this call: skip the load, the comparisons, the refusal and the reload.
        program.push(jump(JEQ_K, nr, 0, offset(values.len() + 3, &rule.syscall)?));
        program.push(stmt(LD_W_ABS, offset_arg_low(rule.arg)));
        for (i, value) in values.iter().enumerate() {
            // A match jumps over the remaining comparisons and the refusal, to the reload.
            let to_reload = offset(values.len() - i, &rule.syscall)?;
            program.push(jump(JEQ_K, *value, to_reload, 0));
        }
        program.push(stmt(RET_K, RET_ERRNO | errno(rule.errno.as_deref())?));
        program.push(stmt(LD_W_ABS, OFFSET_NR));
    }
    let newer = &policy.newer_than;
    program.push(jump(JGE_K, newer.last_known + 1, 0, 1));
    program.push(stmt(RET_K, RET_ERRNO | errno(Some(&newer.errno))?));
    program.push(stmt(RET_K, RET_ALLOW));
    Ok(program)
}

/// Installs the filter for this process and everything it starts. Needs `CAP_SYS_ADMIN`
/// in the current user namespace, or no_new_privs.
pub fn install(program: &[Instruction]) -> Result<(), SeccompError> {
    #[repr(C)]
    struct Program {
        len: u16,
        filter: *const Instruction,
    }
    let len = u16::try_from(program.len())
        .map_err(|_| SeccompError::Policy("the filter is too long".into()))?;
    let prog = Program {
        len,
        filter: program.as_ptr(),
    };
    // SAFETY: `prog` points at `program`, a live slice of `len` `sock_filter`s laid out as
    // the kernel expects (repr(C)); the kernel copies the program during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1 as libc::c_ulong, // SECCOMP_SET_MODE_FILTER
            0 as libc::c_ulong,
            &prog as *const Program,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Install(io::Error::last_os_error()));
    }
    Ok(())
}

/// x86-64 numbers of calls newer than the `libc` crate's table (from the kernel's
/// `arch/x86/entry/syscalls/syscall_64.tbl`).
#[cfg(target_arch = "x86_64")]
const SYS_LSM_GET_SELF_ATTR: libc::c_long = 459;
#[cfg(target_arch = "x86_64")]
const SYS_LSM_SET_SELF_ATTR: libc::c_long = 460;
#[cfg(target_arch = "x86_64")]
const SYS_LSM_LIST_MODULES: libc::c_long = 461;
#[cfg(target_arch = "x86_64")]
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;
#[cfg(target_arch = "x86_64")]
const SYS_LISTNS: libc::c_long = 470;

/// The x86-64 number of a system call named in the policy.
fn syscall_number(name: &str) -> Result<u32, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    let nr = match name {
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "chroot" => libc::SYS_chroot,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "open_tree" => libc::SYS_open_tree,
        "move_mount" => libc::SYS_move_mount,
        "mount_setattr" => libc::SYS_mount_setattr,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "userfaultfd" => libc::SYS_userfaultfd,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "reboot" => libc::SYS_reboot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "acct" => libc::SYS_acct,
        "quotactl" => libc::SYS_quotactl,
        "quotactl_fd" => libc::SYS_quotactl_fd,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "nfsservctl" => libc::SYS_nfsservctl,
        "uselib" => libc::SYS_uselib,
        "ustat" => libc::SYS_ustat,
        "sysfs" => libc::SYS_sysfs,
        "_sysctl" => libc::SYS__sysctl,
        "syslog" => libc::SYS_syslog,
        "vhangup" => libc::SYS_vhangup,
        "ioperm" => libc::SYS_ioperm,
        "iopl" => libc::SYS_iopl,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kcmp" => libc::SYS_kcmp,
        "move_pages" => libc::SYS_move_pages,
        "mbind" => libc::SYS_mbind,
        "set_mempolicy" => libc::SYS_set_mempolicy,
        "migrate_pages" => libc::SYS_migrate_pages,
        "fanotify_init" => libc::SYS_fanotify_init,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        "set_mempolicy_home_node" => libc::SYS_set_mempolicy_home_node,
        "process_madvise" => libc::SYS_process_madvise,
        "open_tree_attr" => SYS_OPEN_TREE_ATTR,
        "lsm_get_self_attr" => SYS_LSM_GET_SELF_ATTR,
        "lsm_set_self_attr" => SYS_LSM_SET_SELF_ATTR,
        "lsm_list_modules" => SYS_LSM_LIST_MODULES,
        "listns" => SYS_LISTNS,
        "ioctl" => libc::SYS_ioctl,
        "personality" => libc::SYS_personality,
        "socket" => libc::SYS_socket,
        "socketpair" => libc::SYS_socketpair,
        other => return Err(SeccompError::Policy(format!("unknown system call {other}"))),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let nr: libc::c_long = return Err(SeccompError::UnsupportedArch);
    u32::try_from(nr).map_err(|_| SeccompError::Policy(format!("bad number for {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one call, like the kernel would.
    fn run(program: &[Instruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = program[pc];
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                RET_K => return ins.k,
                code => {
                    let taken = match code {
                        JEQ_K => acc == ins.k,
                        JGE_K => acc >= ins.k,
                        JSET_K => acc & ins.k != 0,
                        _ => panic!("unexpected instruction {ins:?}"),
                    };
                    pc += 1 + usize::from(if taken { ins.jt } else { ins.jf });
                }
            }
        }
    }

    #[test]
    fn the_policy_compiles_and_decides() {
        let program = compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let nr = |n: libc::c_long| n as u32;
        assert_eq!(run(&program, x86, nr(libc::SYS_read), [0; 6]), RET_ALLOW);
        assert_eq!(run(&program, x86, nr(libc::SYS_mount), [0; 6]), eperm);
        assert_eq!(run(&program, x86, nr(libc::SYS_bpf), [0; 6]), eperm);
        assert_eq!(
            run(&program, x86, nr(libc::SYS_clone3), [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        // clone: plain threads and processes yes, new namespaces no.
        let thread_flags =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_THREAD) as u64;
        assert_eq!(
            run(
                &program,
                x86,
                nr(libc::SYS_clone),
                [thread_flags, 0, 0, 0, 0, 0]
            ),
            RET_ALLOW
        );
        let new_user = libc::CLONE_NEWUSER as u64;
        assert_eq!(
            run(
                &program,
                x86,
                nr(libc::SYS_clone),
                [new_user, 0, 0, 0, 0, 0]
            ),
            eperm
        );
        // ioctl: TIOCSTI no, others yes.
        assert_eq!(
            run(&program, x86, nr(libc::SYS_ioctl), [0, 0x5412, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            run(&program, x86, nr(libc::SYS_ioctl), [0, 0x5401, 0, 0, 0, 0]),
            RET_ALLOW
        );
        // Other ABIs.
        assert_eq!(
            run(
                &program,
                x86,
                X32_SYSCALL_BIT | libc::SYS_read as u32,
                [0; 6]
            ),
            eperm
        );
        assert_eq!(run(&program, 0x4000_0003, 0, [0; 6]), RET_KILL_PROCESS);
    }

    fn errno_of(name: &str) -> u32 {
        RET_ERRNO | errno(Some(name)).unwrap()
    }

    #[test]
    fn an_argument_allow_list_compiles_to_a_chain_of_comparisons() {
        let policy = r#"{
            "deny": [],
            "deny_with_args": [],
            "deny_unless": [
                { "syscall": "personality", "arg": 0, "one_of": ["0x0", "0x8"], "reason": "test" }
            ],
            "newer_than": { "last_known": 470, "errno": "ENOSYS", "reason": "test" }
        }"#;
        let program = compile_policy(policy).unwrap();
        let nr = libc::SYS_personality as u32;
        let eperm = errno_of("EPERM");
        assert_eq!(
            program[6..],
            [
                jump(JEQ_K, nr, 0, 5),
                stmt(LD_W_ABS, 16),
                jump(JEQ_K, 0x0, 2, 0),
                jump(JEQ_K, 0x8, 1, 0),
                stmt(RET_K, eperm),
                stmt(LD_W_ABS, OFFSET_NR),
                jump(JGE_K, 471, 0, 1),
                stmt(RET_K, errno_of("ENOSYS")),
                stmt(RET_K, RET_ALLOW),
            ]
        );
        let x86 = AUDIT_ARCH_X86_64;
        assert_eq!(run(&program, x86, nr, [0; 6]), RET_ALLOW);
        assert_eq!(run(&program, x86, nr, [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&program, x86, nr, [1, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(run(&program, x86, 0, [1, 0, 0, 0, 0, 0]), RET_ALLOW);
        let empty = policy.replace(r#"["0x0", "0x8"]"#, "[]");
        assert!(compile_policy(&empty).is_err());
    }

    #[test]
    fn personality_only_with_the_values_docker_allows() {
        let program = compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        let personality = |value: u64| {
            run(
                &program,
                x86,
                libc::SYS_personality as u32,
                [value, 0, 0, 0, 0, 0],
            )
        };
        for allowed in [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
            assert_eq!(personality(allowed), RET_ALLOW, "{allowed:#x}");
        }
        // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, every other single flag.
        for refused in [0x040_0000, 0x004_0000, 0x0400_0008, 0x1, 0x100_0000] {
            assert_eq!(personality(refused), errno_of("EPERM"), "{refused:#x}");
        }
        for bit in 0..32 {
            let value = 1u64 << bit;
            if ![0x8, 0x2_0000].contains(&value) {
                assert_eq!(personality(value), errno_of("EPERM"), "{value:#x}");
            }
        }
    }

    #[test]
    fn sockets_only_of_the_common_families() {
        let program = compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        for call in [libc::SYS_socket, libc::SYS_socketpair] {
            for family in 0..64u64 {
                let verdict = run(&program, x86, call as u32, [family, 1, 0, 0, 0, 0]);
                let common = [
                    libc::AF_UNIX,
                    libc::AF_INET,
                    libc::AF_INET6,
                    libc::AF_NETLINK,
                ]
                .contains(&(family as i32));
                let expected = if common {
                    RET_ALLOW
                } else {
                    errno_of("EAFNOSUPPORT")
                };
                assert_eq!(verdict, expected, "call {call}, family {family}");
            }
        }
    }

    #[test]
    fn calls_newer_than_the_list_answer_enosys() {
        let program = compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        assert_eq!(run(&program, x86, 469, [0; 6]), RET_ALLOW);
        for nr in [471, 472, 500, 547, 1000, 0x3fff_ffff] {
            assert_eq!(run(&program, x86, nr, [0; 6]), errno_of("ENOSYS"), "{nr}");
        }
    }

    /// What Docker's default profile refuses, from `resources/seccomp-docker-default.json`.
    #[derive(Deserialize)]
    struct DockerReference {
        refused: Vec<DockerRefused>,
        refused_with_arguments: Vec<DockerArguments>,
        newest: DockerRefused,
    }

    #[derive(Deserialize)]
    struct DockerRefused {
        syscall: String,
        nr: u32,
        #[serde(default)]
        harmless: Option<String>,
    }

    #[derive(Deserialize)]
    struct DockerArguments {
        syscall: String,
        nr: u32,
        #[serde(default)]
        refused: Vec<String>,
        #[serde(default)]
        allowed_only: Vec<String>,
        #[serde(default)]
        refused_with_any_bit_of: Option<String>,
        #[serde(default)]
        errno: Option<String>,
    }

    #[test]
    fn at_least_as_strict_as_dockers_default_profile() {
        let reference: DockerReference =
            serde_json::from_str(include_str!("../resources/seccomp-docker-default.json")).unwrap();
        let program = compile().unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        let mut harmless = Vec::new();
        for call in &reference.refused {
            // The reference's numbers agree with ours wherever we know the call.
            if let Ok(nr) = syscall_number(&call.syscall) {
                assert_eq!(nr, call.nr, "{}", call.syscall);
            }
            match &call.harmless {
                Some(reason) => {
                    assert!(reason.len() > 20, "{}: give a reason", call.syscall);
                    harmless.push(call.syscall.as_str());
                }
                None => assert_ne!(
                    run(&program, x86, call.nr, [0; 6]),
                    RET_ALLOW,
                    "Docker refuses {} ({}), and nothing says why we may allow it",
                    call.syscall,
                    call.nr
                ),
            }
        }
        // The exceptions stay few, and each is one we looked at.
        assert_eq!(
            harmless,
            [
                "sethostname",
                "setdomainname",
                "create_module",
                "get_kernel_syms",
                "query_module",
                "getpmsg",
                "putpmsg",
                "afs_syscall",
                "tuxcall",
                "security",
                "vserver",
                "get_mempolicy",
                "uprobe",
                "file_getattr",
                "file_setattr",
            ]
        );

        for rule in &reference.refused_with_arguments {
            let call = |arg0: u64| run(&program, x86, rule.nr, [arg0, 0, 0, 0, 0, 0]);
            assert_eq!(syscall_number(&rule.syscall).unwrap(), rule.nr);
            for value in &rule.refused {
                let value = u64::from(parse_number(value).unwrap());
                assert_ne!(call(value), RET_ALLOW, "{} {value:#x}", rule.syscall);
            }
            if !rule.allowed_only.is_empty() {
                let allowed: Vec<u64> = rule
                    .allowed_only
                    .iter()
                    .map(|v| u64::from(parse_number(v).unwrap()))
                    .collect();
                let probes = (0..32)
                    .map(|bit| 1u64 << bit)
                    .chain([0x0400_0008, 0x4_0008]);
                for value in probes.filter(|v| !allowed.contains(v)) {
                    assert_ne!(call(value), RET_ALLOW, "{} {value:#x}", rule.syscall);
                }
            }
            if let Some(mask) = &rule.refused_with_any_bit_of {
                let mask = parse_number(mask).unwrap();
                for bit in (0..32).filter(|bit| mask & (1 << bit) != 0) {
                    assert_ne!(call(1u64 << bit), RET_ALLOW, "{} {bit}", rule.syscall);
                }
            }
            if let Some(name) = &rule.errno {
                assert_eq!(call(0), errno_of(name), "{}", rule.syscall);
            }
        }

        // Anything newer than Docker's list is not on its allow list either.
        let newest = &reference.newest;
        assert_ne!(run(&program, x86, newest.nr, [0; 6]), RET_ALLOW);
        assert_ne!(run(&program, x86, newest.nr + 1, [0; 6]), RET_ALLOW);
        assert_eq!(syscall_number(&newest.syscall).unwrap(), newest.nr);
    }
}
