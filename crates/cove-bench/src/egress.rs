//! Egress with and without a sandbox's own rules: HTTP requests from inside a sandbox to a
//! test host of the benchmark's own (a network namespace behind a veth pair, a private
//! address the server is started to open), timed by curl inside the sandbox — connect to
//! first byte of a small file, and the rate of a large download — with no rules, with rules
//! by address (decided in the kernel), and with domain rules (through the egress proxy).
//! The same curl on the host, straight to the test host, is the baseline. Traffic goes only
//! to addresses on this machine.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::{TestServer, name_server::NameServer};

use crate::measure::{Figure, Report, Result, Settings, latency, median};

/// The test host's network: the host's side is .1, the test host .2.
const NET: &str = "10.203.61.0/29";
const HOST_SIDE: &str = "10.203.61.1/29";
const TARGET: Ipv4Addr = Ipv4Addr::new(10, 203, 61, 2);
/// The name domain rules allow, which the benchmark's name server gives the test host's
/// address.
const NAME: &str = "bench.egress.test";
/// Requests timed per case, and downloads of the large file.
const REQUESTS: usize = 100;
const DOWNLOADS: usize = 3;
const LARGE_MIB: usize = 64;

/// The test host; removed by name when dropped (processes first).
struct TestHost {
    netns: String,
    link: String,
    server: Option<Child>,
    _dir: tempfile::TempDir,
}

impl TestHost {
    fn start(python: &Path) -> anyhow::Result<Self> {
        // Without it the server below never answers, and the wait says only that.
        anyhow::ensure!(
            python.exists(),
            "{} does not exist: scripts/setup makes the venv (or pass --python)",
            python.display()
        );
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("cove-bench-egress-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        std::fs::write(dir.path().join("small.txt"), "hello from the test host\n")?;
        std::fs::write(dir.path().join("large.bin"), vec![7u8; LARGE_MIB << 20])?;
        let mut host = Self {
            netns: format!("cove-bench-egress-{pid}"),
            link: format!("cbe{pid}h"),
            server: None,
            _dir: dir,
        };
        let peer = format!("cbe{pid}n");
        ip(&["netns", "add", &host.netns])?;
        ip(&[
            "link",
            "add",
            &host.link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &host.netns,
        ])?;
        ip(&["addr", "add", HOST_SIDE, "dev", &host.link])?;
        let target = format!("{TARGET}/29");
        ip(&["-n", &host.netns, "addr", "add", &target, "dev", &peer])?;
        ip(&["link", "set", &host.link, "up"])?;
        ip(&["-n", &host.netns, "link", "set", &peer, "up"])?;
        ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        let server = Command::new("ip")
            .args(["netns", "exec", &host.netns])
            .arg(python)
            .args(["-m", "http.server", "80", "--bind", &TARGET.to_string()])
            .arg("--directory")
            .arg(host._dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the test host's HTTP server")?;
        host.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !host_curl(&[
            "-s",
            "-o",
            "/dev/null",
            &url(&TARGET.to_string(), "small.txt"),
        ])? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the test host did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(host)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn url(host: &str, file: &str) -> String {
    format!("http://{host}/{file}")
}

fn host_curl(args: &[&str]) -> anyhow::Result<bool> {
    Ok(Command::new("curl")
        .args(args)
        .stdout(Stdio::null())
        .status()?
        .success())
}

/// A shell script timing `REQUESTS` small requests (one line of seconds to the first byte
/// each) and `DOWNLOADS` large ones (bytes per second each), after one request of each.
fn script(host: &str) -> String {
    let small = url(host, "small.txt");
    let large = url(host, "large.bin");
    format!(
        "set -e; curl -s -o /dev/null {small}; \
         for i in $(seq {REQUESTS}); do curl -s -o /dev/null -w 'first %{{time_starttransfer}}\\n' {small}; done; \
         for i in $(seq {DOWNLOADS}); do curl -s -o /dev/null -w 'rate %{{speed_download}}\\n' {large}; done"
    )
}

/// What [`script`] printed: the first-byte latencies and the median download rate.
fn parse(output: &str) -> anyhow::Result<(Figure, Figure)> {
    let mut first = Vec::new();
    let mut rates = Vec::new();
    for line in output.lines() {
        match line.split_once(' ') {
            Some(("first", seconds)) => first.push(Duration::from_secs_f64(seconds.parse()?)),
            Some(("rate", rate)) => rates.push(rate.parse::<f64>()?),
            _ => {}
        }
    }
    anyhow::ensure!(
        first.len() == REQUESTS && rates.len() == DOWNLOADS,
        "curl did not time every request: {output}"
    );
    Ok((latency(first), Figure::Throughput(median(rates))))
}

/// One sandbox's figures under `options`, reaching the test host as `host`.
async fn in_sandbox(
    server: &TestServer,
    options: CreateOptions,
    host: &str,
) -> anyhow::Result<(Figure, Figure)> {
    let sandbox = Sandbox::create(&server.config(), options).await?;
    let root = sandbox.agent().clone().as_user("root");
    // The sandbox finds the name in its own hosts file: no name server is asked from inside.
    root.commands()
        .run(&format!("echo '{TARGET} {NAME}' >> /etc/hosts"))
        .await?;
    let output = sandbox.commands().run(&script(host)).await;
    sandbox.kill().await?;
    parse(&output?.stdout)
}

pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let host = TestHost::start(&settings.python)?;
    let names = NameServer::start([(NAME, TARGET)]);
    let resolver = names.addr().to_string();
    let server = TestServer::start_with_args(
        &settings.cove,
        &[
            "--allow-private-egress",
            NET,
            "--egress-resolver",
            &resolver,
        ],
    )
    .await;
    let out = Command::new("sh")
        .args(["-c", &script(&TARGET.to_string())])
        .output()?;
    anyhow::ensure!(out.status.success(), "curl on the host failed");
    let (host_first, host_rate) = parse(&String::from_utf8_lossy(&out.stdout))?;
    let strings = |items: &[&str]| Some(items.iter().map(|s| (*s).to_owned()).collect());
    let target = TARGET.to_string();
    let (open_first, open_rate) = in_sandbox(&server, CreateOptions::default(), &target).await?;
    let by_address = CreateOptions {
        allow_out: strings(&[&target]),
        deny_out: strings(&["0.0.0.0/0"]),
        ..CreateOptions::default()
    };
    let (ip_first, ip_rate) = in_sandbox(&server, by_address, &target).await?;
    let by_name = CreateOptions {
        allow_out: strings(&[NAME]),
        deny_out: strings(&["0.0.0.0/0"]),
        ..CreateOptions::default()
    };
    let (name_first, name_rate) = in_sandbox(&server, by_name, NAME).await?;
    drop(server);
    drop(names);
    drop(host);
    let host_name = "curl on the host, straight to the test host".to_owned();
    let open_name = "the same from a sandbox without rules".to_owned();
    for (what, first, rate, baseline_name, base_first, base_rate) in [
        (
            "no rules", open_first, open_rate, &host_name, host_first, host_rate,
        ),
        (
            "rules by address (allowOut the host, denyOut 0.0.0.0/0)",
            ip_first,
            ip_rate,
            &open_name,
            open_first,
            open_rate,
        ),
        (
            "domain rules (allowOut its name, denyOut 0.0.0.0/0: through the egress proxy)",
            name_first,
            name_rate,
            &open_name,
            open_first,
            open_rate,
        ),
    ] {
        report.results.push(Result {
            name: format!("sandbox egress, HTTP connect → first byte, {what}"),
            figure: first,
            baseline_name: baseline_name.clone(),
            baseline: base_first,
            target: None,
        });
        report.results.push(Result {
            name: format!("sandbox egress, {LARGE_MIB} MiB HTTP download, {what}"),
            figure: rate,
            baseline_name: baseline_name.clone(),
            baseline: base_rate,
            target: None,
        });
    }
    Ok(())
}
