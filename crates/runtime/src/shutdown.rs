//! Process shutdown: one token every server and background task watches.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal. Servers stop accepting when it fires and finish in-flight
/// work within their grace period.
#[derive(Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self(CancellationToken::new())
    }

    /// A shutdown fired by the first SIGINT or SIGTERM. A second signal exits at once
    /// (code 1), for an operator whose patience ran out before the grace period did.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Self::new();
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let fire = shutdown.clone();
        tokio::spawn(async move {
            for round in 0..2 {
                let name = tokio::select! {
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sigint.recv() => "SIGINT",
                };
                if round == 0 {
                    tracing::info!(signal = name, "shutting down gracefully");
                    fire.trigger();
                } else {
                    tracing::warn!(signal = name, "second signal: exiting immediately");
                    std::process::exit(1);
                }
            }
        });
        Ok(shutdown)
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when shutdown is triggered.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }
}
