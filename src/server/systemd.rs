//! systemd's service notifications (`Type=notify`): readiness, shutdown and the watchdog.
//! Every call is a no-op when asmux does not run under systemd.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::tasks::Tasks;

/// Tells systemd that the listener is up.
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Tells systemd that shutdown has begun.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

fn notify(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Pings systemd's watchdog at half its interval for as long as the runtime schedules
/// this task and the store answers a read, so a wedged runtime or a hung disk gets the
/// service restarted instead of leaving it up but dead.
pub async fn watchdog(interval: Duration, store: Arc<Store>, tasks: Tasks) {
    let period = interval / 2;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        let probe = tasks.spawn_blocking(move || store.is_readable());
        match tokio::time::timeout(period, probe).await {
            Ok(Ok(true)) => notify(sd_notify::NotifyState::Watchdog),
            Ok(_) => tracing::error!("the store cannot be read; not pinging the watchdog"),
            Err(_) => tracing::error!("the store did not answer in time; not pinging the watchdog"),
        }
    }
}
