//! A sandbox's own egress rules (E2B's `allowOut` / `denyOut`), attacked from inside real
//! sandboxes: test hosts of our own in network namespaces (a veth pair, private addresses in
//! 10.203.N.0/29 that the server is started to open) stand for "the internet". Traffic goes
//! only to addresses on this machine.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cove_proto::rest::SandboxNetworkUpdate;
use cove_sdk::{CreateOptions, Error, Sandbox, snapshots::PauseMode};
use cove_test_util::{TestServer, free_port, name_server::NameServer, wait_until};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

/// The port test hosts serve HTTP on, and the one they count UDP datagrams on.
const PORT: u16 = 8000;
const UDP_PORT: u16 = 9999;
/// What their HTTP servers answer.
const MARKER: &str = "cove-network-policy-test-host";
/// The token of the metrics endpoint of the servers here.
const METRICS_TOKEN: &str = "policy-test-metrics";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Writes every datagram it gets on UDP_PORT (any address of its namespace) as a line.
const UDP_LISTENER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
with open(sys.argv[1], "a") as out:
    while True:
        data, _ = s.recvfrom(2048)
        out.write(data.decode(errors="replace") + "\n")
        out.flush()
"#;

/// Things made on the host for one test, removed by name when dropped (also when the test
/// fails): processes first, then the namespace and the link.
#[derive(Default)]
struct Cleanup {
    children: Vec<Child>,
    netns: Option<String>,
    link: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(name) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        if let Some(name) = &self.link {
            let _ = Command::new("ip")
                .args(["link", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A test host in a network namespace of its own: the host's side of the veth pair has
/// 10.203.N.1, the test host 10.203.N.2 and 10.203.N.3 (and fc00:203:N::2, ::3), serving
/// HTTP on PORT and counting datagrams on UDP_PORT on all of them. A name server of the
/// test's own listens on the host's side, 10.203.N.1:53, knowing [`TEST_NAME`] (the
/// host's name server for the servers of [`server_for`]).
struct TestHost {
    n: u8,
    dir: tempfile::TempDir,
    names: NameServer,
    cleanup: Cleanup,
}

/// A name only the test hosts' name servers know: 10.203.N.2.
const TEST_NAME: &str = "policy-host.cove.test";

impl TestHost {
    async fn start(n: u8) -> Self {
        let pid = std::process::id();
        let netns = format!("cove-policy-{pid}-{n}");
        let (host_link, peer) = (format!("np{pid}{n}h"), format!("np{pid}{n}n"));
        let mut cleanup = Cleanup::default();
        run("ip", &["netns", "add", &netns]);
        cleanup.netns = Some(netns.clone());
        run(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &peer, "netns", &netns,
            ],
        );
        cleanup.link = Some(host_link.clone());
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.203.{n}.1/29"),
                "dev",
                &host_link,
            ],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("fc00:203:{n}::1/64"),
                "dev",
                &host_link,
                "nodad",
            ],
        );
        for last in [2, 3] {
            run(
                "ip",
                &[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("10.203.{n}.{last}/29"),
                    "dev",
                    &peer,
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("fc00:203:{n}::{last}/64"),
                    "dev",
                    &peer,
                    "nodad",
                ],
            );
        }
        run("ip", &["link", "set", &host_link, "up"]);
        run("ip", &["-n", &netns, "link", "set", &peer, "up"]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        let mut file = std::fs::File::create(www.join("marker.txt")).unwrap();
        file.write_all(MARKER.as_bytes()).unwrap();
        let in_netns = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        // `::` serves IPv4 too. Port 80 too, for domain rules.
        let www_dir = www.display().to_string();
        for port in [PORT, 80] {
            cleanup.children.push(in_netns(&[
                "/usr/bin/python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "::",
                "--directory",
                &www_dir,
            ]));
        }
        let received = dir.path().join("udp.txt");
        std::fs::write(&received, "").unwrap();
        cleanup.children.push(in_netns(&[
            "/usr/bin/python3",
            "-c",
            UDP_LISTENER,
            &received.display().to_string(),
            &UDP_PORT.to_string(),
        ]));
        let names = NameServer::start_on(
            SocketAddr::from(([10, 203, n, 1], 53)),
            [(TEST_NAME, Ipv4Addr::new(10, 203, n, 2))],
        );
        let host = Self {
            n,
            dir,
            names,
            cleanup,
        };
        for addr in [host.addr(2), host.addr(3), host.addr6(2)] {
            host_reaches(&url(&addr, PORT)).await;
        }
        host_reaches(&url(&host.addr(2), 80)).await;
        host
    }

    fn addr(&self, last: u8) -> String {
        format!("10.203.{}.{last}", self.n)
    }

    fn addr6(&self, last: u8) -> String {
        format!("fc00:203:{}::{last}", self.n)
    }

    /// What the server must be started with to open the test host's ranges at all.
    fn opened(&self) -> [String; 2] {
        [
            format!("10.203.{}.0/29", self.n),
            format!("fc00:203:{}::/64", self.n),
        ]
    }

    /// The datagrams the test host got, one payload a line.
    fn datagrams(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("udp.txt"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Serves HTTP on the host itself, at its side of the veth pair, on a free port.
    async fn serve_on_the_host(&mut self) -> u16 {
        let port = free_port();
        let www = self.dir.path().join("www");
        let server = Command::new("/usr/bin/python3")
            .args(["-m", "http.server", &port.to_string(), "--bind"])
            .arg(self.addr(1))
            .arg("--directory")
            .arg(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.cleanup.children.push(server);
        host_reaches(&url(&self.addr(1), port)).await;
        port
    }
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

/// Sends a UDP datagram saying `tag` to `addr`, through an ordinary socket or a raw one
/// (which builds the UDP header itself); prints how it went.
async fn send_datagram(sbx: &Sandbox, addr: &str, tag: &str, raw: bool) -> String {
    let script = format!(
        r#"python3 - {addr} {UDP_PORT} {tag} {raw} <<'EOF'
import socket, struct, sys
dst, port, tag, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4] == "true"
if raw:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        print("raw socket refused")
        sys.exit()
    s.sendto(struct.pack("!HHHH", 40000, port, 8 + len(tag), 0) + tag, (dst, 0))
    print("raw sent")
else:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(tag, (dst, port))
    print("sent")
EOF"#
    );
    sbx.commands()
        .run(&script)
        .await
        .unwrap()
        .stdout
        .trim()
        .to_owned()
}

/// A server with the test host's ranges opened and a metrics endpoint; with `kill_on_exit`
/// false its sandboxes outlive it.
async fn server_for(host: &TestHost, kill_on_exit: bool) -> TestServer {
    let [v4, v6] = host.opened();
    TestServer::launch_with_resolv_conf(
        cove(),
        kill_on_exit,
        &[
            "--allow-private-egress",
            &v4,
            "--allow-private-egress",
            &v6,
            "--metrics-token",
            METRICS_TOKEN,
        ],
        &host.names.resolv_conf(host.dir.path()),
    )
    .await
}

/// The value of `cove_egress_refused_connections_total{by="<by>"}` now.
async fn refused_metric(server: &TestServer, by: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.url()))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("cove_egress_refused_connections_total{{by=\"{by}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the sandbox's log tells of connections refused by `rule`.
async fn log_tells(sbx: &Sandbox, rule: &str) {
    let wanted = format!("refused by {rule}");
    wait_until(
        &format!("the sandbox's log to say {wanted:?}"),
        Duration::from_secs(30),
        || async {
            let logs = sbx.logs().await.ok()?;
            logs.log_entries
                .iter()
                .any(|e| e.message.ends_with(&wanted) && e.level.eq_ignore_ascii_case("warn"))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_all_with_an_allow_list_reaches_only_the_allowed_host() {
    let mut host = TestHost::start(41).await;
    let own_port = host.serve_on_the_host().await;
    let server = server_for(&host, true).await;
    let (allowed, denied) = (host.addr(2), host.addr(3));
    let sbx = Sandbox::create(
        &server.config(),
        CreateOptions {
            // The host's own address in the list opens nothing: the server refuses it.
            allow_out: Some(vec![allowed.clone(), host.addr(1), host.addr6(2)]),
            deny_out: Some(strings(&["0.0.0.0/0"])),
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    let info = sbx.info().await.unwrap();
    let network = info.network.unwrap();
    assert_eq!(
        network.allow_out.unwrap(),
        vec![allowed.clone(), host.addr(1), host.addr6(2)]
    );
    assert_eq!(network.deny_out.unwrap(), strings(&["0.0.0.0/0"]));

    assert_eq!(fetch(&sbx, &allowed, PORT).await, MARKER);
    assert_eq!(fetch(&sbx, &denied, PORT).await, "refused");
    assert_eq!(fetch(&sbx, &host.addr(1), own_port).await, "refused");
    // The sandbox's network has no IPv6 (slirp4netns runs without it): an IPv6 literal
    // gets nowhere, allowed or not. The IPv6 programs are attacked in
    // `ipv6_rules_hold_on_a_cgroup_of_our_own`.
    assert_eq!(fetch(&sbx, &host.addr6(3), PORT).await, "refused");
    assert_eq!(fetch(&sbx, &host.addr6(2), PORT).await, "refused");

    // Datagrams: the one to the denied address, sent first (through an ordinary socket and
    // through a raw one), never arrives; the one to the allowed address after it does.
    assert_eq!(
        send_datagram(&sbx, &denied, "denied-udp", false).await,
        "sent"
    );
    let raw = send_datagram(&sbx, &denied, "denied-raw", true).await;
    // CAP_NET_RAW is not among a sandbox's capabilities; were it, the datagram still goes
    // through the network helper, whose sockets the filter watches (asserted below).
    assert_eq!(raw, "raw socket refused");
    assert_eq!(
        send_datagram(&sbx, &allowed, "allowed-udp", false).await,
        "sent"
    );
    wait_until("the allowed datagram", Duration::from_secs(60), || async {
        host.datagrams()
            .contains(&"allowed-udp".to_owned())
            .then_some(())
    })
    .await;
    let got = host.datagrams();
    assert!(!got.contains(&"denied-udp".to_owned()), "{got:?}");
    assert!(!got.contains(&"denied-raw".to_owned()), "{got:?}");

    // Names still resolve: the host's name servers stay open on the DNS port.
    let resolved = sbx
        .commands()
        .run(&format!("getent hosts {TEST_NAME} || echo unresolved"))
        .await
        .unwrap()
        .stdout;
    assert_eq!(
        resolved.split_whitespace().collect::<Vec<_>>(),
        [allowed.as_str(), TEST_NAME],
        "{resolved}"
    );

    // Refusals are told in the sandbox's log by rule, and counted.
    log_tells(&sbx, "denyOut 0.0.0.0/0").await;
    log_tells(&sbx, "the server's egress rules (the host, private ranges)").await;
    assert!(refused_metric(&server, "policy").await >= 2);
    assert!(refused_metric(&server, "server").await >= 1);

    // A fork keeps its source's rules.
    let fork = sbx
        .fork(1, Some(Duration::from_secs(120)))
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(fetch(&fork, &allowed, PORT).await, MARKER);
    assert_eq!(fetch(&fork, &denied, PORT).await, "refused");
    let info = fork.info().await.unwrap().network.unwrap();
    assert_eq!(info.deny_out.unwrap(), strings(&["0.0.0.0/0"]));
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_narrow_and_widen_a_live_sandbox_and_hold_across_pause_and_restart() {
    let host = TestHost::start(42).await;
    let mut server = server_for(&host, false).await;
    let target = host.addr(2);
    let sbx = Sandbox::create(&server.config(), CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(fetch(&sbx, &target, PORT).await, MARKER);
    // A long-lived process inside sees the next connection refused, nothing restarted.
    let narrow = SandboxNetworkUpdate {
        deny_out: Some(vec![target.clone()]),
        ..SandboxNetworkUpdate::default()
    };
    sbx.update_network(&narrow).await.unwrap();
    assert_eq!(fetch(&sbx, &target, PORT).await, "refused");
    assert_eq!(fetch(&sbx, &host.addr(3), PORT).await, MARKER);
    log_tells(&sbx, &format!("denyOut {target}")).await;
    let info = sbx.info().await.unwrap().network.unwrap();
    assert_eq!(info.deny_out.unwrap(), vec![target.clone()]);
    assert_eq!(info.allow_out.unwrap(), Vec::<String>::new());

    // Widened again: deny everything but the target (E2B's allow_internet_access=false).
    let widen = SandboxNetworkUpdate {
        allow_out: Some(vec![target.clone()]),
        allow_internet_access: Some(false),
        ..SandboxNetworkUpdate::default()
    };
    sbx.update_network(&widen).await.unwrap();
    assert_eq!(fetch(&sbx, &target, PORT).await, MARKER);
    assert_eq!(fetch(&sbx, &host.addr(3), PORT).await, "refused");

    // Kept through a pause with memory and through a restart of the server.
    assert!(sbx.pause(PauseMode::Memory).await.unwrap());
    let sbx = Sandbox::connect(&server.config(), sbx.id(), None)
        .await
        .unwrap();
    assert_eq!(fetch(&sbx, &host.addr(3), PORT).await, "refused");
    // A crash: the previous server's programs stay attached until the new one adopts it.
    server.crash_and_restart().await;
    assert_eq!(fetch(&sbx, &host.addr(3), PORT).await, "refused");
    assert_eq!(fetch(&sbx, &target, PORT).await, MARKER);
    let info = sbx.info().await.unwrap().network.unwrap();
    assert_eq!(info.deny_out.unwrap(), strings(&["0.0.0.0/0"]));
    // The restarted server's maps decide now: an update still takes effect.
    sbx.update_network(&SandboxNetworkUpdate::default())
        .await
        .unwrap();
    assert_eq!(fetch(&sbx, &host.addr(3), PORT).await, MARKER);
    assert_eq!(sbx.info().await.unwrap().network.unwrap().deny_out, None);

    // Kept through a pause without memory (it starts again on its files).
    sbx.update_network(&narrow).await.unwrap();
    assert!(sbx.pause(PauseMode::Filesystem).await.unwrap());
    let sbx = Sandbox::connect(&server.config(), sbx.id(), None)
        .await
        .unwrap();
    assert_eq!(fetch(&sbx, &target, PORT).await, "refused");
    assert_eq!(fetch(&sbx, &host.addr(3), PORT).await, MARKER);
    drop(host);
}

/// Domain rules through a crash of the server: the restarted one starts the sandbox's egress
/// proxy again when it adopts it. The sandbox's own `/etc/hosts` points the name at an
/// address deny-all refuses; the proxy goes where the name really is.
#[tokio::test(flavor = "multi_thread")]
async fn domain_rules_hold_across_a_server_crash() {
    let host = TestHost::start(44).await;
    let names = cove_test_util::name_server::NameServer::start([(
        "www.allowed.test",
        host.addr(2).parse().unwrap(),
    )]);
    let [v4, _] = host.opened();
    let resolver = names.addr().to_string();
    let mut server = TestServer::launch(
        cove(),
        false,
        &[
            "--allow-private-egress",
            &v4,
            "--egress-resolver",
            &resolver,
        ],
    )
    .await;
    let sbx = Sandbox::create(
        &server.config(),
        CreateOptions {
            allow_out: Some(strings(&["www.allowed.test"])),
            deny_out: Some(strings(&["0.0.0.0/0"])),
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    let lie = format!("echo '{} www.allowed.test' >> /etc/hosts", host.addr(3));
    let root = sbx.agent().clone().as_user("root");
    root.commands().run(&lie).await.unwrap();
    let name = "www.allowed.test";
    assert_eq!(fetch(&sbx, name, 80).await, MARKER);
    // Port 8000 is decided by address: the sandbox's own (the lie) is refused.
    assert_eq!(fetch(&sbx, name, PORT).await, "refused");
    server.crash_and_restart().await;
    assert_eq!(fetch(&sbx, name, 80).await, MARKER);
    assert_eq!(
        sbx.info().await.unwrap().network.unwrap().allow_out,
        Some(strings(&["www.allowed.test"]))
    );
    assert!(names.queries() >= 1);
    sbx.kill().await.unwrap();
    drop(host);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rules_are_refused_with_a_message_naming_them() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    for (allow, deny, says) in [
        (
            strings(&["https://github.com"]),
            vec![],
            "allowOut entry `https://github.com` is not an IP address, range or domain name",
        ),
        (
            vec![],
            strings(&["*.*.example.com"]),
            "`*.*.example.com` is not an IP address, range or domain name",
        ),
        (
            vec![],
            strings(&["10.0.0.0/33"]),
            "`10.0.0.0/33` is not an IP address, range or domain name",
        ),
    ] {
        let err = Sandbox::create(
            &config,
            CreateOptions {
                allow_out: Some(allow.clone()),
                deny_out: Some(deny.clone()),
                ..CreateOptions::default()
            },
        )
        .await
        .unwrap_err();
        match err {
            Error::InvalidArgument(message) => assert!(message.contains(says), "{message}"),
            other => panic!("{allow:?} {deny:?}: {other:?}"),
        }
    }
    let sbx = Sandbox::create(&config, CreateOptions::default())
        .await
        .unwrap();
    let bad = SandboxNetworkUpdate {
        allow_out: Some(strings(&["203.0.113.300"])),
        ..SandboxNetworkUpdate::default()
    };
    match sbx.update_network(&bad).await.unwrap_err() {
        Error::InvalidArgument(message) => {
            assert!(message.contains("`203.0.113.300`"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let proxy = SandboxNetworkUpdate {
        egress_proxy: Some(serde_json::json!({"address": "127.0.0.1:1080"})),
        ..SandboxNetworkUpdate::default()
    };
    match sbx.update_network(&proxy).await.unwrap_err() {
        Error::InvalidArgument(message) => {
            assert!(
                message.contains("egressProxy is not supported"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Nothing was changed by the refused updates.
    assert_eq!(sbx.info().await.unwrap().network.unwrap().deny_out, None);
}

/// A cgroup v2 directory of our own, removed when dropped.
struct OwnCgroup(PathBuf);

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Connects over TCP (and sends a UDP datagram) to `addr` from a process in `cgroup`.
fn connect_from(cgroup: &Path, addr: &str) -> String {
    let script = r#"
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
    cove_test_util::cgroup::python(Some(cgroup), script, &[addr])
}

/// Sandboxes' network helper has no IPv6, so the IPv6 programs of a sandbox policy are
/// attacked from a cgroup of our own with a sandbox's programs attached.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_rules_hold_on_a_cgroup_of_our_own() {
    use cove_runtime::egress::{EgressConfig, EgressFilter, SandboxPolicy};
    let host = TestHost::start(43).await;
    let filter = EgressFilter::start(&EgressConfig {
        allow_private: host.opened().iter().map(|c| c.parse().unwrap()).collect(),
        ..EgressConfig::default()
    })
    .unwrap();
    let cgroup = OwnCgroup(PathBuf::from(format!(
        "/sys/fs/cgroup/unified/cove-policy-test-{}",
        std::process::id()
    )));
    std::fs::create_dir(&cgroup.0).unwrap();
    let (allowed, denied) = (host.addr6(2), host.addr6(3));
    let policy =
        SandboxPolicy::new(std::slice::from_ref(&allowed), &strings(&["0.0.0.0/0"])).unwrap();
    filter
        .set_policy("v6-test", Some(&policy), Some(&cgroup.0))
        .unwrap();
    assert_eq!(connect_from(&cgroup.0, &allowed), "connected sent");
    assert_eq!(connect_from(&cgroup.0, &denied), "refused refused");
    assert_eq!(connect_from(&cgroup.0, &host.addr(2)), "refused refused");
    let narrower = SandboxPolicy::new(&[], std::slice::from_ref(&allowed)).unwrap();
    filter
        .set_policy("v6-test", Some(&narrower), Some(&cgroup.0))
        .unwrap();
    assert_eq!(connect_from(&cgroup.0, &allowed), "refused refused");
    assert_eq!(connect_from(&cgroup.0, &denied), "connected sent");
    drop(cgroup);
    drop(host);
}
