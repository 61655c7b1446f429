//! systemd notifications through `sd-notify`. Every call is a no-op outside systemd
//! (no NOTIFY_SOCKET), so the daemon behaves the same under Kubernetes or a shell.

use std::time::Duration;

use sd_notify::NotifyState;

/// Connected and verified: systemd may consider the unit started.
pub(crate) fn ready() {
    notify(&[NotifyState::Ready]);
}

/// The scheduler loop made progress; only ever sent from that loop.
pub(crate) fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// One line for `systemctl status`.
pub(crate) fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
}

pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Half the watchdog interval systemd asked for, if it asked.
pub(crate) fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
