//! Accept errors: logged, paused, never fatal.

use std::io;
use std::time::Duration;

use rustix::io::Errno;

use crate::{Throttle, WARN_PERIOD};

/// The first pause after an accept error, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// True for the errors that mean "no resources for one more": out of file
/// descriptors (the process's EMFILE or the system's ENFILE), of socket
/// buffers or of memory. An accept or a bind failing so is a capacity
/// problem, not a problem with that one peer or port.
pub fn is_exhaustion(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].iter().any(|errno| raw == Some(errno.raw_os_error()))
}

/// What an accept loop does with errors. An accept error never ends the
/// loop: the listener is still good, and what failed (a descriptor, a
/// connection reset before it was accepted) is gone or comes back. The
/// pending connection stays in the kernel's backlog, so without a pause the
/// loop would spin; the pause doubles while errors last, up to 1 s.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    throttle: Throttle,
    pause: Duration,
}

impl AcceptErrors {
    /// `listener` names the listener in the log lines.
    pub fn new(listener: &'static str) -> Self {
        AcceptErrors { listener, throttle: Throttle::new(WARN_PERIOD), pause: FIRST_PAUSE }
    }

    /// A connection was accepted: the next error starts with a short pause.
    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// Calls `accept` until it succeeds: every error is logged and paused
    /// ([`pause`](Self::pause)), none is returned.
    pub async fn retry<T, F, Fut>(&mut self, mut accept: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(accepted) => {
                    self.accepted();
                    return accepted;
                }
                Err(e) => self.pause(&e).await,
            }
        }
    }

    /// Logs `error` (a WARN at most every [`WARN_PERIOD`], with how many
    /// were left out) and waits before the next accept.
    pub async fn pause(&mut self, error: &io::Error) {
        if let Some(held_back) = self.throttle.ready() {
            let why = if is_exhaustion(error) { " (out of file descriptors or memory)" } else { "" };
            tracing::warn!(
                listener = self.listener,
                "{}: accepting a connection failed{why}: {error}; trying again in {} ms{}",
                self.listener,
                self.pause.as_millis(),
                if held_back > 0 {
                    format!(" ({held_back} more such errors since the last line)")
                } else {
                    String::new()
                }
            );
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }
}

/// The next TCP connection that `gate` admits (per source address and in
/// total), with its place in the gate. Accept errors (out of file
/// descriptors, say) are logged and paused, never returned: no accept error
/// ends a daemon. Refused connections are closed at once.
pub async fn next_tcp(
    listener: &tokio::net::TcpListener,
    gate: &std::sync::Arc<crate::Gate>,
    errors: &mut AcceptErrors,
) -> (tokio::net::TcpStream, std::net::SocketAddr, crate::Admission) {
    loop {
        let (tcp, peer) = errors.retry(|| listener.accept()).await;
        if let Some(admission) = gate.admit(crate::Source::from_ip(peer.ip()), &peer) {
            return (tcp, peer, admission);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_errors() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(Errno::MFILE.raw_os_error())));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(Errno::NFILE.raw_os_error())));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(Errno::ADDRINUSE.raw_os_error())));
        assert!(!is_exhaustion(&io::Error::other("x")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_grows_to_a_second_and_resets() {
        let mut errors = AcceptErrors::new("test");
        let e = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        let mut pauses = Vec::new();
        for _ in 0..7 {
            let start = tokio::time::Instant::now();
            errors.pause(&e).await;
            pauses.push(start.elapsed().as_millis());
        }
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        errors.accepted();
        let start = tokio::time::Instant::now();
        errors.pause(&e).await;
        assert_eq!(start.elapsed().as_millis(), 50);
    }
}
