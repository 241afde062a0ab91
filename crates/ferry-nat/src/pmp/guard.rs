//! The mapping guard: renews each mapping at half its lifetime in a
//! background task (on the same sans-IO schedule as UPnP's guard) and
//! deletes them all on [`PmpGuard::close`], or best effort on drop.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;
use tracing::debug;

use super::PmpError;
use super::client::Mapping;
use super::gateway::PmpGateway;
use crate::upnp::Protocol;
use crate::upnp::schedule::RenewSchedule;

/// Keeps NAT-PMP/PCP mappings alive and deletes them when done.
///
/// ```text
/// add() --map--> gateway; the mapping joins the shared list and the
///                renewal task is restarted over the whole list
/// renewal task: sleeps to the next lifetime/2, re-asks (same nonce and
///               external port), stores what was granted
/// close(): stops the task, deletes each mapping (lifetime 0)
/// ```
#[derive(Debug)]
pub struct PmpGuard {
    gateway: PmpGateway,
    mappings: Arc<Mutex<Vec<Mapping>>>,
    renewer: Option<JoinHandle<()>>,
}

type Key = (Protocol, u16);

impl PmpGuard {
    /// A guard for mappings on `gateway`; it holds none yet.
    pub fn new(gateway: PmpGateway) -> PmpGuard {
        PmpGuard {
            gateway,
            mappings: Arc::new(Mutex::new(Vec::new())),
            renewer: None,
        }
    }

    /// The gateway the mappings live on.
    pub fn gateway(&self) -> &PmpGateway {
        &self.gateway
    }

    /// The mappings held now (renewals may have changed them).
    pub fn mappings(&self) -> Vec<Mapping> {
        lock(&self.mappings).clone()
    }

    /// Maps `internal_port` (see [`PmpGateway::map`]) and keeps the mapping
    /// alive until the guard is closed or dropped. Inside a tokio runtime.
    pub async fn add(
        &mut self,
        protocol: Protocol,
        internal_port: u16,
        lifetime: std::time::Duration,
    ) -> Result<Mapping, PmpError> {
        let mapping = self.gateway.map(protocol, internal_port, lifetime).await?;
        {
            let mut held = lock(&self.mappings);
            held.retain(|m| key(m) != key(&mapping));
            held.push(mapping.clone());
        }
        if let Some(old) = self.renewer.take() {
            old.abort();
        }
        self.renewer = Some(tokio::spawn(renew_loop(
            self.gateway.clone(),
            Arc::clone(&self.mappings),
        )));
        Ok(mapping)
    }

    /// Stops renewing and deletes every mapping. Tries them all; returns
    /// the first error, if any.
    pub async fn close(mut self) -> Result<(), PmpError> {
        if let Some(task) = self.renewer.take() {
            task.abort();
            // So no renewal races the deletes.
            let _ = task.await;
        }
        let mappings = std::mem::take(&mut *lock(&self.mappings));
        remove_all(&self.gateway, &mappings).await
    }

    /// Stops renewing and lets go of the mappings without deleting them:
    /// they expire with their lifetimes. For a mapping that another guard
    /// also holds (see [`crate::upnp::MappingGuard::forget`]).
    pub fn forget(mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        lock(&self.mappings).clear();
    }
}

impl Drop for PmpGuard {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        let mappings = std::mem::take(&mut *lock(&self.mappings));
        if mappings.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let gateway = self.gateway.clone();
                handle.spawn(async move {
                    if let Err(e) = remove_all(&gateway, &mappings).await {
                        debug!("PCP/NAT-PMP: deleting mappings on drop failed: {e}");
                    }
                });
            }
            Err(_) => debug!(
                count = mappings.len(),
                "PCP/NAT-PMP: guard dropped outside a runtime; mappings expire with their lifetimes"
            ),
        }
    }
}

fn key(m: &Mapping) -> Key {
    (m.protocol, m.internal_port)
}

/// The list is only touched between awaits; a poisoned lock still holds
/// a usable list.
fn lock(m: &Mutex<Vec<Mapping>>) -> std::sync::MutexGuard<'_, Vec<Mapping>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn remove_all(gateway: &PmpGateway, mappings: &[Mapping]) -> Result<(), PmpError> {
    let mut first_error = None;
    for mapping in mappings {
        match gateway.remove(mapping).await {
            Ok(()) => debug!(external = %mapping.external, protocol = %mapping.protocol,
                version = %mapping.version, "PCP/NAT-PMP: mapping deleted"),
            Err(e) => {
                debug!(external = %mapping.external, "PCP/NAT-PMP: deleting mapping failed: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn renew_loop(gateway: PmpGateway, mappings: Arc<Mutex<Vec<Mapping>>>) {
    let mut schedule = RenewSchedule::<Key>::default();
    let now = tokio_now();
    for m in lock(&mappings).iter() {
        schedule.insert(key(m), m.lifetime, now);
    }
    while let Some(deadline) = schedule.next_deadline() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        for k in schedule.due(tokio_now()) {
            let Some(mapping) = lock(&mappings).iter().find(|m| key(m) == k).cloned() else {
                schedule.remove(&k);
                continue;
            };
            let result = gateway.renew(&mapping).await;
            let now = tokio_now();
            match result {
                Ok(granted) => {
                    if granted.external != mapping.external {
                        debug!(old = %mapping.external, new = %granted.external,
                            "PCP/NAT-PMP: the renewal moved the external port");
                    }
                    schedule.insert(k, granted.lifetime, now);
                    if let Some(m) = lock(&mappings).iter_mut().find(|m| key(m) == k) {
                        *m = granted;
                    }
                }
                Err(e) => {
                    debug!(external = %mapping.external, "PCP/NAT-PMP: renewal failed: {e}");
                    schedule.failed(&k, now);
                }
            }
        }
    }
}

fn tokio_now() -> Instant {
    tokio::time::Instant::now().into_std()
}
