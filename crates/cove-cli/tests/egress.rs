//! What sandboxes with internet access can reach, attacked from inside real sandboxes: test
//! hosts of our own in network namespaces (veth pairs with private addresses, serving HTTP)
//! stand for the host's neighbours. Traffic goes only to addresses on this machine.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cove_sdk::{CreateOptions, Sandbox, snapshots::PauseMode};
use cove_test_util::{TestServer, free_port, name_server::NameServer, wait_until};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

/// The port test hosts serve HTTP on (each in its own network namespace).
const PORT: u16 = 8000;
/// What their HTTP servers answer.
const MARKER: &str = "cove-egress-test-host";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `python3 -m http.server` serving `dir` at `bind`:`port`, started through `prefix`
/// (`ip netns exec NAME` to run it inside a test host).
fn http_server(prefix: &[&str], bind: &str, port: u16, dir: &Path) -> Child {
    let mut argv: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
    argv.extend(
        [
            "/usr/bin/python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            bind,
            "--directory",
        ]
        .map(str::to_owned),
    );
    argv.push(dir.display().to_string());
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A directory holding `marker.txt`, for the HTTP servers.
fn www() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("marker.txt")).unwrap();
    file.write_all(MARKER.as_bytes()).unwrap();
    dir
}

/// Waits until this process (on the host, unfiltered) gets the marker from `url`: the test
/// host is really there, so a sandbox that cannot reach it is refused by the filter.
async fn host_reaches(url: &str) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_until(&format!("{url} to answer"), Duration::from_secs(60), || {
        let (http, url) = (http.clone(), url.to_owned());
        async move {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            (text == MARKER).then_some(())
        }
    })
    .await;
}

/// Network things made on the host for one test, removed by name when dropped (also when
/// the test fails): processes first, then namespaces and links.
#[derive(Default)]
struct Cleanup {
    children: Vec<Child>,
    netns: Vec<String>,
    links: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        for name in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A test host in a network namespace of its own, behind a veth pair: the host's side has
/// 192.168.N.1, 10.N.0.1, 100.64.N.1 and fc00:N::1, the test host the same addresses
/// ending in 2, and it serves HTTP on all of them. It also has 198.18.N.2 (the host's side
/// 198.18.N.1), from a range the filter leaves open: it stands in for a server on the
/// internet. N tells the tests apart.
struct TestHost {
    n: u8,
    cleanup: Cleanup,
}

impl TestHost {
    async fn start(n: u8) -> Self {
        let pid = std::process::id();
        let netns = format!("cove-egress-{pid}-{n}");
        let (host_link, peer) = (format!("ce{pid}-{n}h"), format!("ce{pid}-{n}n"));
        let mut cleanup = Cleanup::default();
        run("ip", &["netns", "add", &netns]);
        cleanup.netns.push(netns.clone());
        run(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &peer, "netns", &netns,
            ],
        );
        cleanup.links.push(host_link.clone());
        for (host, guest) in Self::addresses(n) {
            let v6 = host.contains(':');
            let mut add = vec!["addr", "add", host.as_str(), "dev", host_link.as_str()];
            if v6 {
                add.push("nodad");
            }
            run("ip", &add);
            let mut add = vec!["-n", &netns, "addr", "add", guest.as_str(), "dev", &peer];
            if v6 {
                add.push("nodad");
            }
            run("ip", &add);
        }
        let (host, guest) = Self::public_addresses(n);
        run("ip", &["addr", "add", &host, "dev", &host_link]);
        run("ip", &["-n", &netns, "addr", "add", &guest, "dev", &peer]);
        run("ip", &["link", "set", &host_link, "up"]);
        run("ip", &["-n", &netns, "link", "set", &peer, "up"]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let dir = www();
        // `::` serves IPv4 too.
        let server = http_server(&["ip", "netns", "exec", &netns], "::", PORT, dir.path());
        cleanup.children.push(server);
        cleanup._dirs.push(dir);
        let host = Self { n, cleanup };
        for addr in host.guests().into_iter().chain([host.public()]) {
            host_reaches(&url(&addr, PORT)).await;
        }
        host
    }

    /// (host side, test host side) in a range the filter leaves open, with prefixes.
    fn public_addresses(n: u8) -> (String, String) {
        (format!("198.18.{n}.1/24"), format!("198.18.{n}.2/24"))
    }

    /// The test host's address that stands in for the internet.
    fn public(&self) -> String {
        let (_, guest) = Self::public_addresses(self.n);
        guest.split('/').next().unwrap().to_owned()
    }

    /// (host side, test host side) with prefixes.
    fn addresses(n: u8) -> [(String, String); 4] {
        [
            (format!("192.168.{n}.1/24"), format!("192.168.{n}.2/24")),
            (format!("10.{n}.0.1/24"), format!("10.{n}.0.2/24")),
            (format!("100.64.{n}.1/24"), format!("100.64.{n}.2/24")),
            (format!("fc00:{n}::1/64"), format!("fc00:{n}::2/64")),
        ]
    }

    /// The test host's addresses in private ranges.
    fn guests(&self) -> Vec<String> {
        Self::addresses(self.n)
            .into_iter()
            .map(|(_, guest)| guest.split('/').next().unwrap().to_owned())
            .collect()
    }

    /// Serves HTTP on the host itself, at `addr` (one of the host side's), on a free port.
    async fn serve_on_the_host(&mut self, addr: &str) -> u16 {
        let port = free_port();
        let dir = www();
        let server = http_server(&[], addr, port, dir.path());
        self.cleanup.children.push(server);
        self.cleanup._dirs.push(dir);
        host_reaches(&url(addr, port)).await;
        port
    }
}

fn url(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("http://[{addr}]:{port}/marker.txt")
    } else {
        format!("http://{addr}:{port}/marker.txt")
    }
}

/// What `curl` in `sbx` gets from `addr`:`port`: the marker, or "refused".
async fn fetch(sbx: &Sandbox, addr: &str, port: u16) -> String {
    let cmd = format!("curl -g -s -m 5 '{}' || echo refused", url(addr, port));
    sbx.commands()
        .run(&cmd)
        .await
        .unwrap()
        .stdout
        .trim()
        .to_owned()
}

async fn online(server: &TestServer) -> Sandbox {
    Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap()
}

/// A sandbox without internet access.
async fn offline(server: &TestServer) -> Sandbox {
    let options = CreateOptions {
        allow_internet_access: Some(false),
        ..CreateOptions::default()
    };
    Sandbox::create(&server.config(), options).await.unwrap()
}

/// A name only the test's own name server knows.
const TEST_NAME: &str = "egress-host.cove.test";

/// A DNS query for [`TEST_NAME`] sent straight to slirp4netns's resolver (10.0.2.3), which
/// relays it to the host's name servers; prints the number of answers.
const DNS_QUERY: &str = r#"python3 - <<'EOF'
import socket, struct
name = b"".join(bytes([len(p)]) + p for p in b"egress-host.cove.test".split(b".")) + b"\0"
query = struct.pack(">HHHHHH", 0x2a2a, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(query, ("10.0.2.3", 53))
reply = s.recv(4096)
ident, flags, _, answers = struct.unpack(">HHHH", reply[:8])
print(answers if ident == 0x2a2a and flags & 0xf == 0 else "error")
EOF"#;

#[tokio::test(flavor = "multi_thread")]
async fn private_ranges_are_closed_to_sandboxes_and_names_still_resolve() {
    let host = TestHost::start(77).await;
    // The host's name server, as the server sees it (its own /etc/resolv.conf): ours, on
    // the host's side of the test host's link, in a private range.
    let names = NameServer::start_on(
        SocketAddr::from(([192, 168, 77, 1], 53)),
        [(TEST_NAME, Ipv4Addr::new(192, 168, 77, 2))],
    );
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::launch_with_resolv_conf(cove(), true, &[], &names.resolv_conf(dir.path()))
            .await;
    let sbx = online(&server).await;
    for addr in ["192.168.77.2", "10.77.0.2", "100.64.77.2"] {
        assert_eq!(fetch(&sbx, addr, PORT).await, "refused", "{addr}");
    }
    // A sandbox without rules of its own has its refusals told too (the metrics sample,
    // every 5 s, reads them; three may come in more than one line).
    let rule = " refused by the server's egress rules (the host, private ranges)";
    wait_until(
        "the sandbox's log to tell the refusals",
        Duration::from_secs(30),
        || async {
            let logs = sbx.logs().await.ok()?;
            let told: u64 = logs
                .log_entries
                .iter()
                .filter_map(|e| {
                    e.message
                        .strip_suffix(rule)?
                        .split(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            (told >= 3).then_some(())
        },
    )
    .await;
    // Names resolve: through the sandbox's resolv.conf, and through slirp4netns's relay,
    // although the host's name server sits in a private range here.
    let resolved = sbx
        .commands()
        .run(&format!("getent hosts {TEST_NAME} || echo unresolved"))
        .await
        .unwrap()
        .stdout;
    assert_eq!(
        resolved.split_whitespace().collect::<Vec<_>>(),
        ["192.168.77.2", TEST_NAME],
        "{resolved}"
    );
    let answers = sbx.commands().run(DNS_QUERY).await.unwrap().stdout;
    assert_eq!(answers.trim(), "1", "{answers}");

    // Without internet access there is loopback only: no route to the test host at all.
    let offline = offline(&server).await;
    let interfaces = offline.commands().run("ls /sys/class/net").await.unwrap();
    assert_eq!(interfaces.stdout, "lo\n");
    assert_eq!(fetch(&offline, "192.168.77.2", PORT).await, "refused");
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_reach_the_internet_only_when_allowed() {
    let host = TestHost::start(80).await;
    let server = TestServer::start(cove()).await;
    let online = online(&server).await;
    let offline = offline(&server).await;
    assert_eq!(fetch(&online, &host.public(), PORT).await, MARKER);
    assert_eq!(fetch(&offline, &host.public(), PORT).await, "refused");
    let interfaces = offline.commands().run("ls /sys/class/net").await.unwrap();
    assert_eq!(interfaces.stdout, "lo\n");
    // The host's own services stay out of reach, the server's API included.
    let api = format!("127.0.0.1:{}", server.addr.port());
    let health = format!("curl -s -m 3 http://{api}/health || echo refused");
    assert_eq!(
        online.commands().run(&health).await.unwrap().stdout,
        "refused\n"
    );
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_private_ranges_open_but_never_the_hosts_own_addresses() {
    let mut host = TestHost::start(78).await;
    let own_port = host.serve_on_the_host("192.168.78.1").await;
    let server =
        TestServer::start_with_args(cove(), &["--allow-private-egress", "192.168.78.0/24"]).await;
    let sbx = online(&server).await;
    assert_eq!(fetch(&sbx, "192.168.78.2", PORT).await, MARKER);
    // Only that range: the same test host's other private addresses stay closed.
    assert_eq!(fetch(&sbx, "10.78.0.2", PORT).await, "refused");
    assert_eq!(fetch(&sbx, "100.64.78.2", PORT).await, "refused");
    // The host's own address in the opened range stays closed.
    assert_eq!(fetch(&sbx, "192.168.78.1", own_port).await, "refused");
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_the_host_gains_after_start_are_refused() {
    let server = TestServer::start(cove()).await;
    let sbx = online(&server).await;
    refuses_an_address_gained_later(&sbx, "a", "198.51.100.7").await;
}

/// A sandbox adopted by a restarted server is filtered by the new server's filter, which
/// follows the host (the old one's stays attached, but nobody updates it any more).
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_taken_over_after_a_crash_follows_the_new_server() {
    let mut server = TestServer::start_with(cove(), false).await;
    let sbx = online(&server).await;
    server.crash_and_restart().await;
    refuses_an_address_gained_later(&sbx, "b", "198.51.100.8").await;
}

/// Gives the host a new interface (named after this process and `tag`) with `address`, from
/// a public-looking range the filter leaves open unless it is the host's, and a server on
/// it; `sbx` must be refused it.
async fn refuses_an_address_gained_later(sbx: &Sandbox, tag: &str, address: &str) {
    let link = format!("ce{}{tag}", std::process::id());
    let mut cleanup = Cleanup::default();
    run(
        "ip",
        &[
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{link}p"),
        ],
    );
    cleanup.links.push(link.clone());
    run(
        "ip",
        &["addr", "add", &format!("{address}/32"), "dev", &link],
    );
    run("ip", &["link", "set", &link, "up"]);
    let port = free_port();
    let dir = www();
    cleanup
        .children
        .push(http_server(&[], address, port, dir.path()));
    host_reaches(&url(address, port)).await;
    wait_until(
        "the new address to be refused to the sandbox",
        Duration::from_secs(60),
        || async {
            let got = fetch(sbx, address, port).await;
            assert!(got == "refused" || got == MARKER, "{got}");
            (got == "refused").then_some(())
        },
    )
    .await;
    drop(cleanup);
}

/// A cgroup v2 directory of our own with the egress filter attached, removed when dropped.
struct FilteredCgroup {
    dir: PathBuf,
    _filter: cove_runtime::egress::EgressFilter,
}

impl FilteredCgroup {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/unified/cove-egress-test-{}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        let filter = cove_runtime::egress::EgressFilter::start(
            &cove_runtime::egress::EgressConfig::default(),
        )
        .unwrap();
        let cgroup = Self {
            dir,
            _filter: filter,
        };
        cgroup._filter.attach(&cgroup.dir).unwrap();
        cgroup
    }

    /// Runs `script` with python3, in the cgroup or not, and returns what it printed.
    fn python(&self, inside: bool, script: &str, arg: &str) -> String {
        let cgroup = inside.then_some(self.dir.as_path());
        cove_test_util::cgroup::python(cgroup, script, &[arg])
    }
}

impl Drop for FilteredCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Connects over TCP and sends a UDP datagram: the four hooks of the filter.
const CONNECT_AND_SEND: &str = r#"
import socket, sys
addr = sys.argv[1]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
result = []
tcp = socket.socket(family, socket.SOCK_STREAM)
tcp.settimeout(5)
try:
    tcp.connect((addr, 8000))
    result.append("connected")
except PermissionError:
    result.append("refused")
udp = socket.socket(family, socket.SOCK_DGRAM)
try:
    udp.sendto(b"x", (addr, 9))
    result.append("sent")
except PermissionError:
    result.append("refused")
print(" ".join(result))
"#;

/// The sandboxes' network helper has no IPv6 (slirp4netns runs without it), so the IPv6
/// programs are attacked from a cgroup of our own with the same filter attached.
#[tokio::test(flavor = "multi_thread")]
async fn the_filter_refuses_private_ipv6_and_ipv4_hosts_to_its_cgroup() {
    let host = TestHost::start(79).await;
    let cgroup = FilteredCgroup::new();
    for addr in host.guests() {
        assert_eq!(
            cgroup.python(false, CONNECT_AND_SEND, &addr),
            "connected sent",
            "{addr} unfiltered"
        );
        assert_eq!(
            cgroup.python(true, CONNECT_AND_SEND, &addr),
            "refused refused",
            "{addr} filtered"
        );
    }
    drop(cgroup);
    drop(host);
}

#[test]
fn loopback_cannot_be_opened_to_sandboxes() {
    let state = tempfile::tempdir().unwrap();
    for (range, says) in [
        ("127.0.0.0/8", "127.0.0.0/8 cannot be opened"),
        ("::1", "::1/128 cannot be opened"),
        ("10.0.0.0/33", "is not an address range"),
    ] {
        // Should it start after all, it stops on its own.
        let out = assert_cmd::Command::new(cove())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-private-egress",
                range,
            ])
            .arg("--state-dir")
            .arg(state.path())
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{range}");
        assert!(stderr.contains(says), "{range}: {stderr}");
    }
}

/// A gVisor sandbox with internet access: the sentry's own network stack on a link of its
/// own, through the same relay and egress filter. Attacked from inside: the internet is
/// reached; the host's neighbours, the host's own addresses, its loopback (the server's API)
/// and the metadata address are not; a pause keeps the link's users working after the
/// resume; the link is gone with the sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn gvisor_sandboxes_reach_the_internet_and_nothing_of_the_host() {
    if !Path::new("/usr/bin/runsc").exists() {
        eprintln!("SKIPPED: runsc is not installed (Debian package runsc)");
        return;
    }
    let mut host = TestHost::start(83).await;
    let own_port = host.serve_on_the_host("198.18.83.1").await;
    let server = TestServer::start(cove()).await;
    let options = CreateOptions {
        metadata: [("cove.runtime".to_owned(), "gvisor".to_owned())].into(),
        ..CreateOptions::default()
    };
    let sbx = Sandbox::create(&server.config(), options).await.unwrap();
    assert_eq!(fetch(&sbx, &host.public(), PORT).await, MARKER);
    for addr in host.guests() {
        assert_eq!(fetch(&sbx, &addr, PORT).await, "refused", "{addr}");
    }
    // The host's own address, in a range otherwise open.
    assert_eq!(fetch(&sbx, "198.18.83.1", own_port).await, "refused");
    // The server's API: through the relay's gateway (the host's loopback) and through the
    // sentry's own loopback; and the cloud metadata address.
    let api = server.addr.port();
    for addr in ["10.0.2.2", "127.0.0.1", "169.254.169.254"] {
        assert_eq!(fetch(&sbx, addr, api).await, "refused", "{addr}");
    }
    // A pause keeps its memory (frozen in place): a process counts on after the resume,
    // and the link still carries.
    let counter = "nohup python3 -c 'import time\ni=0\nwhile True:\n  i+=1\n  open(\"/tmp/n\",\"w\").write(str(i))\n  time.sleep(0.05)' >/dev/null 2>&1 &";
    sbx.commands().run(counter).await.unwrap();
    let before = wait_until("the counter to start", Duration::from_secs(20), || {
        counted(&sbx)
    })
    .await;
    assert!(sbx.pause(PauseMode::Memory).await.unwrap());
    let sbx = Sandbox::connect(&server.config(), sbx.id(), None)
        .await
        .unwrap();
    wait_until("the counter to go on", Duration::from_secs(20), || async {
        counted(&sbx).await.filter(|n| *n > before)
    })
    .await;
    assert_eq!(fetch(&sbx, &host.public(), PORT).await, MARKER);
    let link_cgroup = PathBuf::from(format!("/sys/fs/cgroup/memory/cove/{}", sbx.id()));
    assert!(link_cgroup.is_dir(), "the link has no cgroup of its own");
    sbx.kill().await.unwrap();
    // The link's cgroup goes once its exit is through, just after the kill is answered.
    wait_until(
        "the link to end with its sandbox",
        Duration::from_secs(30),
        || async { (!link_cgroup.exists()).then_some(()) },
    )
    .await;
    drop(host);
}

/// What the counter in `sbx` wrote last.
async fn counted(sbx: &Sandbox) -> Option<u64> {
    let text = sbx.files().read("/tmp/n").await.ok()?;
    String::from_utf8_lossy(&text).trim().parse().ok()
}
