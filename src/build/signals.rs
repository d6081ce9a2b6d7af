//! Ctrl-C and SIGTERM: the first one asks the build to stop (the step's
//! container is removed and nothing is recorded for that step); a second
//! Ctrl-C exits at once.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}")]
pub struct Interrupted {
    pub name: &'static str,
    pub exit_code: u8,
}

#[derive(Clone)]
pub struct Signals {
    rx: watch::Receiver<u8>,
    count: Arc<AtomicU8>,
}

impl Signals {
    pub fn install() -> Self {
        let (tx, rx) = watch::channel(0u8);
        let count = Arc::new(AtomicU8::new(0));
        let tx = Arc::new(tx);
        {
            let tx = tx.clone();
            let count = count.clone();
            tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if count.fetch_add(1, Ordering::SeqCst) >= 1 {
                        eprintln!("second interrupt: exiting now");
                        std::process::exit(130);
                    }
                    eprintln!(
                        "interrupt: stopping the step and cleaning up (Ctrl-C again to force)"
                    );
                    let _ = tx.send(130);
                }
            });
        }
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(mut s) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    if s.recv().await.is_some() {
                        let _ = tx.send(143);
                    }
                }
            });
        }
        Signals { rx, count }
    }

    fn current(&self) -> Option<Interrupted> {
        match *self.rx.borrow() {
            130 => Some(Interrupted {
                name: "Ctrl-C",
                exit_code: 130,
            }),
            143 => Some(Interrupted {
                name: "SIGTERM",
                exit_code: 143,
            }),
            _ => None,
        }
    }

    /// Err if a signal has arrived.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.current() {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }

    /// Resolves when a signal arrives.
    pub async fn wait(&self) -> Interrupted {
        let mut rx = self.rx.clone();
        loop {
            if let Some(i) = self.current() {
                return i;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Signals that only the returned sender raises (130 = Ctrl-C), for
    /// tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> (Self, watch::Sender<u8>) {
        let (tx, rx) = watch::channel(0u8);
        let count = Arc::new(AtomicU8::new(0));
        (Signals { rx, count }, tx)
    }

    pub fn count(&self) -> u8 {
        self.count.load(Ordering::SeqCst)
    }
}
