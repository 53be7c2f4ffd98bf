//! Signals the agent waits for, heard even when the runtime's notification of them is lost.
//!
//! tokio hears every signal through one self-pipe registered in its `epoll`. Across a gVisor
//! checkpoint and restore, an `epoll` interest made before the checkpoint can stop being
//! notified for good (gVisor saved its ready list without its lock; fixed upstream in
//! 2026, google/gvisor#14147, after the `runsc` Debian 12 ships): the agent then never heard
//! `USR2` and never listened again, or a child's exit and never reaped it. So a [`Heard`]
//! signal also sets a flag in the handler itself, and with a backstop the wait looks at that
//! flag on a timer as well (the timer wakes the runtime by `epoll_wait`'s own timeout, which
//! no lost notification stops). The flag is what counts: a notification without one, or one
//! that comes late, only makes the wait look again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

/// How often a wait with a backstop looks at the flag (a gVisor sandbox's agent).
pub const BACKSTOP: Duration = Duration::from_millis(100);

/// One signal, its deliveries counted by a flag and announced by tokio's stream.
#[derive(Debug)]
pub struct Heard {
    flag: Arc<AtomicBool>,
    stream: tokio::signal::unix::Signal,
    backstop: Option<Duration>,
    name: &'static str,
}

impl Heard {
    /// Hears `which` from now on; with a `backstop`, also when its notification is lost.
    /// Must run inside a tokio runtime.
    pub fn new(
        which: rustix::process::Signal,
        name: &'static str,
        backstop: Option<Duration>,
    ) -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        // The flag first: its action runs before tokio's, so a notification finds it set.
        signal_hook::flag::register(which.as_raw(), flag.clone())?;
        let stream = signal(SignalKind::from_raw(which.as_raw()))?;
        Ok(Self {
            flag,
            stream,
            backstop,
            name,
        })
    }

    /// Waits until the signal has come since the last wait returned.
    pub async fn recv(&mut self) {
        loop {
            if self.flag.swap(false, Ordering::SeqCst) {
                return;
            }
            match self.backstop {
                None => {
                    // tokio's stream ends only with the runtime.
                    if self.stream.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                Some(backstop) => {
                    tokio::select! {
                        heard = self.stream.recv() => {
                            // An ended stream is ready at once: look on the timer alone.
                            if heard.is_none() {
                                tokio::time::sleep(backstop).await;
                            }
                        }
                        _ = tokio::time::sleep(backstop) => {
                            if self.flag.load(Ordering::SeqCst) {
                                tracing::warn!(
                                    signal = self.name,
                                    "a signal's notification was lost (after a restore?); heard it on the timer"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustix::process::Signal;

    // Signals no other test of this crate waits for, whose default action is to be ignored
    // (a stray one cannot end the test process): SIGWINCH and SIGURG.
    fn raise(signal: Signal) {
        rustix::process::kill_process(rustix::process::getpid(), signal).unwrap();
    }

    #[tokio::test]
    async fn a_signal_is_heard_once_per_delivery_and_never_before_it() {
        let mut heard = Heard::new(Signal::WINCH, "SIGWINCH", Some(BACKSTOP)).unwrap();
        // Nothing came: the wait does not end, not even on the backstop's timer.
        let early = tokio::time::timeout(BACKSTOP * 3, heard.recv()).await;
        assert!(early.is_err());
        raise(Signal::WINCH);
        tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("a delivered signal is heard");
        // The one delivery was taken: the next wait waits again.
        assert!(
            tokio::time::timeout(BACKSTOP * 3, heard.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_delivery_whose_notification_never_comes_is_heard_on_the_timer() {
        // What the handler leaves when tokio's notification is lost: the flag set while the
        // wait waits, the stream silent.
        let set_later = |flag: Arc<AtomicBool>| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                flag.store(true, Ordering::SeqCst);
            })
        };
        let mut heard = Heard::new(Signal::URG, "SIGURG", Some(BACKSTOP)).unwrap();
        set_later(heard.flag.clone());
        tokio::time::timeout(BACKSTOP * 5, heard.recv())
            .await
            .expect("the backstop's timer hears the flag");
        // Without a backstop the same wait waits on the stream alone.
        let mut plain = Heard::new(Signal::URG, "SIGURG", None).unwrap();
        set_later(plain.flag.clone());
        assert!(
            tokio::time::timeout(BACKSTOP * 5, plain.recv())
                .await
                .is_err()
        );
    }
}
