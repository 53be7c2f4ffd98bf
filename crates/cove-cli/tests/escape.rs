//! The escape and abuse suite: from inside real sandboxes, try to hurt the host, other
//! sandboxes or Cove, and check that every attempt fails or is contained.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use cove_sdk::{CreateOptions, Error, Sandbox};
use cove_test_util::{TestServer, wait_until};

mod common;
use common::{cove, python, root, sandbox, syscall_probe};

/// What `amicontained` reports, and what it must say.
#[tokio::test(flavor = "multi_thread")]
async fn the_probe_sees_a_confined_sandbox() {
    let server = TestServer::start(cove()).await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let out = root(&sbx)
        .commands()
        .run("grep -E '^(CapPrm|CapEff|CapBnd|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status; cat /proc/self/uid_map /proc/self/gid_map")
        .await
        .unwrap()
        .stdout;
    eprintln!("{out}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let kept = cove_runtime::confine::kept_capabilities().bits();
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
    assert_eq!(bounding, kept, "bounding set {bounding:#x}");
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), kept);
    assert_eq!(u64::from_str_radix(&field("CapAmb:"), 16).unwrap(), 0);
    assert_eq!(field("Seccomp:"), "2", "seccomp filter mode");
    // no_new_privs stays off by default so that sudo works (see docs/SECURITY.md).
    assert_eq!(field("NoNewPrivs:"), "0");
    let maps: Vec<Vec<u64>> = out
        .lines()
        .filter(|l| {
            l.split_whitespace().count() == 3
                && l.split_whitespace().all(|w| w.parse::<u64>().is_ok())
        })
        .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
        .collect();
    assert_eq!(maps.len(), 2, "{out}");
    for map in maps {
        assert_eq!(map[0], 0);
        assert!(
            map[1] >= u64::from(cove_runtime::userns::FIRST_BASE),
            "host id 0 mapped: {map:?}"
        );
        assert_eq!(map[2], 65536);
    }
    // Only stdin, stdout and stderr reach a command (and the fd `ls` opens itself).
    let fds = sbx.commands().run("ls /proc/self/fd").await.unwrap().stdout;
    assert_eq!(fds.split_whitespace().count(), 4, "{fds}");
    let env = sbx
        .commands()
        .run("env | cut -d= -f1 | sort | tr '\\n' ' '")
        .await
        .unwrap()
        .stdout;
    assert!(
        !env.contains("COVE_") && !env.contains("CARGO"),
        "host environment leaked: {env}"
    );

    let with_nnp = TestServer::start_with_args(cove(), &["--no-new-privileges"]).await;
    let strict = sandbox(&with_nnp, CreateOptions::default()).await;
    let nnp = strict
        .commands()
        .run("grep NoNewPrivs /proc/self/status")
        .await
        .unwrap()
        .stdout;
    assert!(nnp.trim_end().ends_with('1'), "{nnp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_and_other_sandboxes_stay_out_of_reach() {
    let server = TestServer::start(cove()).await;
    let a = sandbox(&server, CreateOptions::default()).await;
    let b = sandbox(&server, CreateOptions::default()).await;
    b.files()
        .write("/home/user/b-secret.txt", "b only")
        .await
        .unwrap();

    let out = root(&a)
        .commands()
        .run(concat!(
            "test -e /work && echo SEES-WORK; ",
            "test -e /root/.cargo && echo SEES-HOST-ROOT; ",
            "grep -c '\\$' /etc/shadow; ",
            "find / -xdev -name b-secret.txt 2>/dev/null | grep -c . ; ",
            "ls /proc | grep -c '^[0-9]'",
        ))
        .await;
    let out = match out {
        Ok(out) => out.stdout,
        Err(Error::CommandExit(exit)) => exit.stdout,
        Err(err) => panic!("{err}"),
    };
    assert!(!out.contains("SEES-"), "{out}");
    let counts: Vec<&str> = out.lines().collect();
    assert_eq!(counts[0], "0", "password hashes visible: {out}");
    assert_eq!(counts[1], "0", "another sandbox's file visible: {out}");
    assert!(
        counts[2].parse::<u32>().unwrap() < 10,
        "too many processes visible: {out}"
    );

    // The template's lower layers are read-only: a write lands in the sandbox's own layer.
    let marker = format!("/usr/bin/cove-escape-{}", a.id());
    root(&a)
        .commands()
        .run(&format!("echo x > {marker}"))
        .await
        .unwrap();
    assert!(!Path::new(&marker).exists(), "the host's /usr was written");
    assert!(!b.files().exists(&marker).await.unwrap());

    // Cove's own API and another sandbox's servers are not reachable from inside.
    let _server_in_b = b
        .commands()
        .spawn(cove_sdk::Command::shell(
            "python3 -m http.server 8080 --bind 0.0.0.0",
        ))
        .await
        .unwrap();
    wait_until("b's server", Duration::from_secs(60), || {
        let b = b.clone();
        async move {
            b.commands()
                .run("curl -s -o /dev/null http://127.0.0.1:8080/")
                .await
                .ok()
        }
    })
    .await;
    let probe = format!(
        "for url in http://127.0.0.1:{cove}/health http://127.0.0.1:8080/ http://169.254.169.254/; do \
         curl -s -m 3 -o /dev/null \"$url\" && echo \"REACHED $url\"; done; true",
        cove = server.addr.port()
    );
    let reached = a.commands().run(&probe).await.unwrap().stdout;
    assert_eq!(reached, "", "{reached}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dangerous_system_calls_fail() {
    let server = TestServer::start(cove()).await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let agent = root(&sbx);
    let shell = |line: &'static str| {
        let agent = agent.clone();
        async move {
            match agent.commands().run(line).await {
                Ok(out) => format!("ok {}{}", out.stdout, out.stderr),
                Err(Error::CommandExit(exit)) => format!("failed {}", exit.stderr),
                Err(err) => panic!("{err}"),
            }
        }
    };
    for attempt in [
        "mount -t tmpfs none /mnt",
        "unshare -U true",
        "unshare -m true",
        "unshare -n true",
        "chroot / true",
        "umount /proc/kcore",
    ] {
        let out = shell(attempt).await;
        assert!(out.starts_with("failed"), "{attempt}: {out}");
    }
    // Raw system calls: bpf, keyctl, init_module, perf_event_open, userfaultfd, io_uring,
    // open_by_handle_at, kexec_load, reboot, clock_settime, x32 ABI.
    for (name, nr, args) in [
        ("bpf", 321, ", 0, 0, 0"),
        ("keyctl", 250, ", 0, 0, 0"),
        ("init_module", 175, ", 0, 0, 0"),
        ("perf_event_open", 298, ", 0, 0, -1, -1, 0"),
        ("userfaultfd", 323, ", 0"),
        ("io_uring_setup", 425, ", 1, 0"),
        ("open_by_handle_at", 304, ", 0, 0, 0"),
        ("kexec_load", 246, ", 0, 0, 0, 0"),
        ("reboot", 169, ", 0, 0, 0, 0"),
        ("clock_settime", 227, ", 0, 0"),
        ("x32 getpid", 0x4000_0000 + 39, ""),
        // Unfiltered, the kernel would answer these with EBADF, EFAULT or EINVAL.
        ("process_madvise", 440, ", 0, 0, 0, 0, 0"),
        ("set_mempolicy_home_node", 450, ", 0, 0, 0, 0"),
        ("lsm_list_modules", 461, ", 0, 0, 0"),
        ("open_tree_attr", 467, ", 0, 0, 0, 0, 0"),
        // Execution domains other than Docker's few: READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE.
        (
            "personality(READ_IMPLIES_EXEC)",
            135,
            ", ctypes.c_ulong(0x0400000)",
        ),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            135,
            ", ctypes.c_ulong(0x0040000)",
        ),
    ] {
        let out = python(&agent, &syscall_probe(nr, args)).await;
        assert_eq!(out.trim(), "errno 1", "{name}: {out}");
    }
    // The query and plain Linux still work (Python, setarch and friends ask).
    for value in ["0xffffffff", "0x0"] {
        let args = format!(", ctypes.c_ulong({value})");
        let out = python(&agent, &syscall_probe(135, &args)).await;
        assert_eq!(out.trim(), "ok", "personality({value}): {out}");
    }
    // Sockets of rare families answer as on a kernel without them (EAFNOSUPPORT): vsock
    // (the hypervisor below the host), the kernel's crypto API, TIPC; common ones work.
    let families = python(
        &agent,
        concat!(
            "import socket\n",
            "def probe(make):\n",
            "    try:\n",
            "        make().close()\n",
            "        return 'ok'\n",
            "    except OSError as e:\n",
            "        return f'errno {e.errno}'\n",
            "print(probe(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)))\n",
            "print(probe(lambda: socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET)))\n",
            "print(probe(lambda: socket.socket(socket.AF_TIPC, socket.SOCK_RDM)))\n",
            "print(probe(lambda: socket.socketpair(socket.AF_TIPC, socket.SOCK_SEQPACKET)[0]))\n",
            "print(probe(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)))\n",
            "print(probe(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)))\n",
            "print(probe(lambda: socket.socketpair(socket.AF_UNIX)[0]))\n",
        ),
    )
    .await;
    assert_eq!(
        families.lines().collect::<Vec<_>>(),
        [
            "errno 97", "errno 97", "errno 97", "errno 97", "ok", "ok", "ok"
        ],
        "{families}"
    );
    // Typing into another terminal (TIOCSTI).
    let tiocsti = python(
        &agent,
        "import fcntl, termios, os, pty\nm, s = pty.openpty()\ntry:\n    fcntl.ioctl(s, termios.TIOCSTI, b'x')\n    print('ok')\nexcept OSError as e:\n    print('errno', e.errno)",
    )
    .await;
    assert_eq!(tiocsti.trim(), "errno 1", "{tiocsti}");
    // Raw sockets.
    let raw = python(
        &agent,
        "import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n    print('ok')\nexcept PermissionError:\n    print('denied')",
    )
    .await;
    assert_eq!(raw.trim(), "denied");
    // ptrace of PID 1 (the agent) and reading its memory.
    let ptrace = python(&agent, &syscall_probe(101, ", 16, 1, 0, 0")).await;
    assert_eq!(ptrace.trim(), "errno 1", "PTRACE_ATTACH to pid 1: {ptrace}");
    let mem = shell("head -c 1 /proc/1/mem").await;
    assert!(mem.starts_with("failed"), "{mem}");
    // PID 1's binary (`cove-init`, a host file) through its link: neither read nor written.
    let exe = shell("head -c 1 /proc/1/exe").await;
    assert!(exe.starts_with("failed"), "{exe}");
    let exe = shell("echo x >> /proc/1/exe").await;
    assert!(exe.starts_with("failed"), "{exe}");
    // Masked kernel interfaces.
    let kcore =
        shell("wc -c < /proc/kcore; cat /proc/keys | wc -c; echo b > /proc/sysrq-trigger").await;
    assert!(kcore.starts_with("failed"), "{kcore}");
    let sys = shell("touch /sys/kernel/cove-test").await;
    assert!(sys.starts_with("failed"), "{sys}");
    // The agent is still fine after all this.
    assert_eq!(
        sbx.commands().run("echo alive").await.unwrap().stdout,
        "alive\n"
    );
}

/// What the host's kernel, hardware and disks look like stays out of view; what programs
/// read about CPUs and memory stays in.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_kernel_is_not_on_show() {
    let server = TestServer::start(cove()).await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let _neighbour = sandbox(&server, CreateOptions::default()).await;
    let agent = root(&sbx);
    let run = |line: String| {
        let agent = agent.clone();
        async move {
            match agent.commands().run(&line).await {
                Ok(out) => out.stdout,
                Err(Error::CommandExit(exit)) => exit.stdout,
                Err(err) => panic!("{line}: {err}"),
            }
        }
    };

    // Files: each reads as empty (or is not there).
    let files = [
        "/proc/config.gz",
        "/proc/cmdline",
        "/proc/modules",
        "/proc/kallsyms",
        "/proc/interrupts",
        "/proc/softirqs",
        "/proc/slabinfo",
        "/proc/vmallocinfo",
        "/proc/buddyinfo",
        "/proc/zoneinfo",
        "/proc/iomem",
        "/proc/ioports",
        "/proc/diskstats",
        "/proc/partitions",
        "/proc/swaps",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/sys/kernel/btf/vmlinux",
        "/sys/kernel/vmcoreinfo",
        "/sys/kernel/boot_params/data",
        "/sys/kernel/notes",
    ];
    let sizes = run(format!(
        "for f in {}; do echo \"$f $(cat $f 2>/dev/null | wc -c)\"; done",
        files.join(" ")
    ))
    .await;
    for line in sizes.lines() {
        assert!(line.ends_with(" 0"), "readable: {line}");
    }
    assert_eq!(sizes.lines().count(), files.len(), "{sizes}");

    // Directories: empty (or not there).
    let dirs = [
        "/sys/block",
        "/sys/class/block",
        "/sys/dev",
        "/sys/bus",
        "/sys/module",
        "/sys/firmware",
        "/sys/fs/ext4",
        "/sys/devices/virtual/block",
        "/sys/devices/virtual/powercap",
        "/sys/devices/system/cpu/vulnerabilities",
        "/proc/fs",
        "/proc/bus",
        "/proc/irq",
        "/proc/acpi",
        "/proc/scsi",
        "/proc/driver",
    ];
    let counts = run(format!(
        "for d in {}; do echo \"$d $(ls -A $d 2>/dev/null | wc -l)\"; done",
        dirs.join(" ")
    ))
    .await;
    for line in counts.lines() {
        assert!(line.ends_with(" 0"), "not empty: {line}");
    }
    // Nothing anywhere in /sys names a block device, the host's kernel image or the host's
    // paths (two sandboxes' disks are loop devices on the host, backed by files in its
    // state directory).
    let found = run(format!(
        "find /sys \\( -name 'loop[0-9]*' -o -name vda -o -name backing_file -o -name vmlinux -o -name thermal_throttle \\) 2>/dev/null; grep -rls -- '{}' /sys 2>/dev/null; true",
        server.state_dir().display()
    ))
    .await;
    assert_eq!(found, "", "{found}");

    // What programs read still works: CPU count and topology, memory, processes, huge page
    // settings, the sandbox's own network interfaces.
    let facts = run(concat!(
        "python3 -c 'import os; print(\"cpus\", os.cpu_count())'; ",
        "echo nproc $(nproc); ",
        "echo processors $(grep -c ^processor /proc/cpuinfo); ",
        "grep -q '^MemTotal: *[1-9]' /proc/meminfo && echo meminfo ok; ",
        "ps -e >/dev/null && echo ps ok; ",
        "top -bn1 >/dev/null && echo top ok; ",
        "lscpu | grep -q '^CPU(s):' && echo lscpu ok; ",
        "test -s /sys/kernel/mm/transparent_hugepage/enabled && echo thp ok; ",
        "test -e /sys/devices/system/cpu/cpu0/topology/core_id && echo topology ok; ",
        "ls /sys/class/net | grep -qx lo && echo net ok; ",
        "command -v node >/dev/null && node -e 'console.log(\"node\", require(\"os\").cpus().length)'; ",
        "true"
    )
    .to_owned())
    .await;
    let value = |name: &str| {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {facts}"))
    };
    let cpus: u32 = value("cpus").parse().unwrap();
    assert!(cpus > 0, "{facts}");
    assert_eq!(value("nproc").parse::<u32>().unwrap(), cpus, "{facts}");
    assert_eq!(value("processors").parse::<u32>().unwrap(), cpus, "{facts}");
    for what in ["meminfo", "ps", "top", "lscpu", "thp", "topology", "net"] {
        assert_eq!(value(what), "ok", "{facts}");
    }
    if facts.contains("node ") {
        assert_eq!(value("node").parse::<u32>().unwrap(), cpus, "{facts}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_abuse_is_contained() {
    let server = TestServer::start_with_args(cove(), &["--sandbox-disk-mb", "64"]).await;
    let small = CreateOptions {
        memory_mb: Some(256),
        cpu_count: Some(1),
        ..CreateOptions::default()
    };
    let bomber = sandbox(&server, small.clone()).await;
    let bystander = sandbox(&server, CreateOptions::default()).await;

    // A memory bomb kills only its own process; the agent and the sandbox live on.
    let bomb = python(
        bomber.agent(),
        "a = bytearray(1024 * 1024 * 1024)\nprint('survived')",
    )
    .await;
    assert!(
        bomb.ends_with("exit -1") || bomb.contains("exit 137") || bomb.contains("Killed"),
        "{bomb}"
    );
    assert_eq!(
        bomber.commands().run("echo alive").await.unwrap().stdout,
        "alive\n"
    );

    // Filling the disk: ENOSPC inside, a 507 for uploads, the host's disk untouched.
    let fill = bomber
        .commands()
        .run("dd if=/dev/zero of=/home/user/fill bs=1M count=200 2>&1 | grep -o 'No space left on device'; df -m / | tail -1")
        .await;
    let fill = match fill {
        Ok(out) => out.stdout,
        Err(Error::CommandExit(exit)) => format!("{}{}", exit.stdout, exit.stderr),
        Err(err) => panic!("{err}"),
    };
    assert!(fill.contains("No space left on device"), "{fill}");
    let upload = bomber
        .files()
        .write("/home/user/more.bin", vec![0u8; 8 << 20])
        .await;
    assert!(
        matches!(upload, Err(Error::NotEnoughSpace(_))),
        "{upload:?}"
    );
    // The failed upload left nothing behind: no file, no temporary file.
    let left: Vec<String> = bomber
        .files()
        .list("/home/user", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|name| name == "more.bin" || name.starts_with(".cove-upload-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let image = server
        .state_dir()
        .join("sandboxes")
        .join(bomber.id())
        .join("disk.img");
    let on_host = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).unwrap()) * 512;
    assert!(
        on_host <= 72 << 20,
        "the image takes {on_host} bytes on the host"
    );
    bomber
        .commands()
        .run("rm -f /home/user/fill")
        .await
        .unwrap();

    // A million tiny files run out of inodes, not of host disk.
    let files = python(
        bomber.agent(),
        "import os\nos.makedirs('/tmp/many', exist_ok=True)\ntry:\n    for i in range(1_000_000):\n        open(f'/tmp/many/{i}', 'w').close()\n    print('all created')\nexcept OSError as e:\n    print('stopped', e.errno)",
    )
    .await;
    assert_eq!(files.trim(), "stopped 28", "{files}");

    // A fork bomb hits the pids limit; the bystander and the server keep answering.
    assert!(bomber.kill().await.unwrap());
    let bomber = sandbox(
        &server,
        CreateOptions {
            cpu_count: Some(1),
            ..CreateOptions::default()
        },
    )
    .await;
    let _bomb = root(&bomber)
        .commands()
        .spawn(cove_sdk::Command::shell("f() { f | f & }; f").timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let pids_max = wait_until(
        "the fork bomb to reach the pids limit",
        Duration::from_secs(60),
        || {
            let id = bomber.id().to_owned();
            async move {
                let current =
                    std::fs::read_to_string(format!("/sys/fs/cgroup/pids/cove/{id}/pids.current"))
                        .or_else(|_| {
                            std::fs::read_to_string(format!(
                                "/sys/fs/cgroup/cove/{id}/pids.current"
                            ))
                        })
                        .ok()?;
                let max =
                    std::fs::read_to_string(format!("/sys/fs/cgroup/pids/cove/{id}/pids.max"))
                        .or_else(|_| {
                            std::fs::read_to_string(format!("/sys/fs/cgroup/cove/{id}/pids.max"))
                        })
                        .ok()?;
                let (current, max): (u64, u64) =
                    (current.trim().parse().ok()?, max.trim().parse().ok()?);
                (current + 10 >= max).then_some(max)
            }
        },
    )
    .await;
    assert!(pids_max <= 4096);
    assert_eq!(
        bystander
            .commands()
            .run("echo still here")
            .await
            .unwrap()
            .stdout,
        "still here\n"
    );
    assert!(Sandbox::list(&server.config()).await.unwrap().len() == 2);
    let started = std::time::Instant::now();
    assert!(bomber.kill().await.unwrap());
    eprintln!("killed the fork bomb in {:?}", started.elapsed());
    // With internet access the kill is answered once every process is dead; the cgroups go
    // just after, when the network helper's exit is through.
    let (v1, v2) = (
        format!("/sys/fs/cgroup/pids/cove/{}", bomber.id()),
        format!("/sys/fs/cgroup/cove/{}", bomber.id()),
    );
    wait_until(
        "the bomb's cgroup to go",
        Duration::from_secs(30),
        || async { (!Path::new(&v1).exists() && !Path::new(&v2).exists()).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_hog_gets_its_quota_only() {
    let server = TestServer::start(cove()).await;
    let hog = sandbox(
        &server,
        CreateOptions {
            memory_mb: Some(512),
            cpu_count: Some(1),
            ..CreateOptions::default()
        },
    )
    .await;
    let _spin = hog
        .commands()
        .spawn(cove_sdk::Command::shell(
            "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
        ))
        .await
        .unwrap();
    let cpu_time = || {
        let id = hog.id().to_owned();
        let raw =
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct/cove/{id}/cpuacct.usage"))
                .map(|ns| ns.trim().parse::<u64>().unwrap_or(0) / 1000)
                .or_else(|_| {
                    std::fs::read_to_string(format!("/sys/fs/cgroup/cove/{id}/cpu.stat")).map(
                        |stat| {
                            stat.lines()
                                .find_map(|l| l.strip_prefix("usage_usec ")?.parse::<u64>().ok())
                                .unwrap_or(0)
                        },
                    )
                })
                .unwrap();
        Duration::from_micros(raw)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, started) = (cpu_time(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time() - before;
    let wall = started.elapsed();
    // Four spinning processes, one CPU's worth of quota.
    assert!(
        used.as_secs_f64() <= wall.as_secs_f64() * 1.15,
        "used {used:?} of CPU in {wall:?}"
    );
    // That it ran at all (how much depends on what else the machine does), and that the
    // kernel holds it to one CPU per period.
    assert!(
        used >= Duration::from_millis(50),
        "the hog did not run: {used:?}"
    );
    let quota = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/cpu/cove/{}/cpu.cfs_quota_us",
        hog.id()
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/cove/{}/cpu.max", hog.id())))
    .unwrap();
    assert!(quota.starts_with("100000"), "quota {quota:?}");
}
