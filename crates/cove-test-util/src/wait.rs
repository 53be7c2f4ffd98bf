//! Waiting with deadlines instead of sleeps.

use std::{
    future::Future,
    net::TcpListener,
    time::{Duration, Instant},
};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A TCP port that nothing on this machine listens on right now, for a server that cannot
/// choose its own (`cove serve` can, and [`crate::TestServer`] lets it).
///
/// It is drawn at random below the kernel's ephemeral range (`ip_local_port_range`), where
/// neither outgoing connections nor listeners on port 0 get theirs: the server it is for
/// loses it only to another test that drew the same one in the moment before it binds.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST);
    if span >= 1000 {
        let random = RandomState::new();
        for attempt in 0..100u32 {
            let port = LOWEST + (random.hash_one(attempt) % u64::from(span)) as u32;
            let port = u16::try_from(port).expect("below the ephemeral range");
            // The wildcard address conflicts with a listener on any of the machine's.
            if TcpListener::bind(("0.0.0.0", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface has free ports")
}

/// Stops `child` as an operator would (SIGTERM), waits up to `grace` for it to exit, and
/// SIGKILLs it after that.
pub fn terminate(mut child: std::process::Child, grace: Duration) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
