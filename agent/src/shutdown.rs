//! Shutdown signals, shared by berthd and berth-dns: both stop cleanly on
//! SIGTERM or SIGINT.

/// Returns on SIGTERM or SIGINT (berthd and berth-dns both stop on them);
/// never, when the handlers cannot be installed.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the agent could only be killed; keep serving.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
