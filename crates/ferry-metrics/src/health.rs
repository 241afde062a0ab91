//! What `GET /health` answers and `ferry_health_check_up` shows: the
//! parts of a server that can fail while it runs (the cluster directory)
//! each register a probe; a scrape or a health request asks every probe.
//!
//! ```text
//! Metrics::add_health_check(HealthCheck::Cluster, probe)
//! GET /health -> every probe -> all up: 200 "ok\n" + one line each
//!                               one down: 503 "unhealthy\n" + one line each
//! GET /metrics -> every probe -> ferry_health_check_up{check=...} 1 or 0
//! ```
//!
//! A server without probes answers `ok`: nothing it depends on can be
//! lost while it runs. Probes must be cheap and must not block (they read
//! state the part keeps up to date; they do not do I/O).

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::{HealthCheck, HealthLabels};

/// What one probe says: whether its part works, and a line for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// Whether the part works.
    pub up: bool,
    /// What it sees, in one line (no newline), e.g. where it is.
    pub detail: String,
}

type Probe = Arc<dyn Fn() -> Probed + Send + Sync>;

/// The probes of one server, and the gauge they set.
#[derive(Clone, Default)]
pub(crate) struct Health {
    probes: Arc<Mutex<Vec<(HealthCheck, Probe)>>>,
    pub(crate) up: Family<HealthLabels, Gauge>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checks: Vec<HealthCheck> = self.lock().iter().map(|(check, _)| *check).collect();
        f.debug_struct("Health").field("checks", &checks).finish()
    }
}

/// What every probe said, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// One entry per probe, in the order they were added.
    pub checks: Vec<(HealthCheck, Probed)>,
}

impl HealthReport {
    /// Whether every part is up (also when there are no probes).
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|(_, probed)| probed.up)
    }

    /// The body of `GET /health`: `ok` or `unhealthy`, then a line per
    /// check (`cluster: up, redis://...`).
    pub fn text(&self) -> String {
        let mut text = String::from(if self.healthy() {
            "ok\n"
        } else {
            "unhealthy\n"
        });
        for (check, probed) in &self.checks {
            let state = if probed.up { "up" } else { "down" };
            // A detail is one line; a newline in it would forge another.
            let detail = probed.detail.replace(['\n', '\r'], " ");
            text.push_str(&format!("{}: {state}, {detail}\n", check.as_str()));
        }
        text
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(HealthCheck, Probe)>> {
        // A poisoned lock means a probe panicked once; the list is whole.
        self.probes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn add(&self, check: HealthCheck, probe: Probe) {
        let _ = self.up.get_or_create(&HealthLabels { check });
        self.lock().push((check, probe));
    }

    /// Asks every probe and sets the gauge from what they say.
    pub(crate) fn report(&self) -> HealthReport {
        let probes: Vec<(HealthCheck, Probe)> = self.lock().clone();
        let checks: Vec<(HealthCheck, Probed)> = probes
            .into_iter()
            .map(|(check, probe)| (check, probe()))
            .collect();
        for (check, probed) in &checks {
            self.up
                .get_or_create(&HealthLabels { check: *check })
                .set(i64::from(probed.up));
        }
        HealthReport { checks }
    }
}
