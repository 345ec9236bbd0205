//! Process shutdown: one token every server and background task watches.

use std::time::Duration;

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

    /// Runs `tick` every `period` (first after one period) until shutdown: a component's
    /// background upkeep (key reloads, reapers, reconcilers). A tick in progress finishes.
    pub async fn every<F, Fut>(&self, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            tokio::select! {
                _ = self.wait() => return,
                _ = tokio::time::sleep(period) => tick().await,
            }
        }
    }
}

/// Retries `attempt` every 200 ms while it fails with an error `transient` accepts, for at
/// most `for_at_most`; then returns the last error. For a component's first call to its
/// store: flaredb may still be electing a leader right after the node starts.
pub async fn retry_transient<T, E, F, Fut>(
    what: &str,
    for_at_most: Duration,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + for_at_most;
    loop {
        match attempt().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "{what} not ready; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}
