//! The mapping guard: keeps mappings alive while ferry runs (a background
//! task renews each lease on the [`RenewSchedule`] of the schedule module)
//! and removes them on exit ([`MappingGuard::close`], or best effort on
//! drop).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::schedule::RenewSchedule;
use super::{Gateway, Mapping, Protocol, UpnpError};

/// Bound on the renewal task's inbox; `add` waits when it is full.
const RENEW_INBOX: usize = 32;

/// Keeps mappings alive: renews each at half its lease in a background task,
/// and removes them all on [`close`](MappingGuard::close) — or, best effort,
/// on drop (a removal task is spawned if a tokio runtime is running;
/// otherwise the mappings expire with their leases).
///
/// ```text
/// add() --Mapping--> renewal task (mpsc inbox, bounded)
///                      sleeps until the next RenewSchedule deadline,
///                      re-adds due mappings, reschedules (lease/2, or a
///                      retry after a failure)
/// close() -- aborts the task, then DeletePortMapping for each mapping
/// ```
#[derive(Debug)]
pub struct MappingGuard {
    gateway: Gateway,
    mappings: Vec<Mapping>,
    renewer: Option<Renewer>,
}

#[derive(Debug)]
struct Renewer {
    inbox: mpsc::Sender<Mapping>,
    task: JoinHandle<()>,
}

impl MappingGuard {
    /// A guard for mappings on `gateway`; it holds none yet.
    pub fn new(gateway: Gateway) -> Self {
        MappingGuard {
            gateway,
            mappings: Vec::new(),
            renewer: None,
        }
    }

    /// Adds a mapping (see [`Gateway::add_mapping`]) and keeps it alive until
    /// the guard is closed or dropped. Must be called inside a tokio runtime.
    pub async fn add(
        &mut self,
        protocol: Protocol,
        local: SocketAddrV4,
        lease: Duration,
        description: &str,
    ) -> Result<Mapping, UpnpError> {
        let mapping = self
            .gateway
            .add_mapping(protocol, local, lease, description)
            .await?;
        let key = (mapping.protocol, mapping.external.port());
        self.mappings
            .retain(|m| (m.protocol, m.external.port()) != key);
        self.mappings.push(mapping.clone());
        if !mapping.lease.is_zero() {
            self.track(mapping.clone()).await;
        }
        Ok(mapping)
    }

    /// The mappings held, in the order they were added.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The gateway the mappings live on.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Stops renewing and removes every mapping from the router. Tries them
    /// all; returns the first error, if any.
    pub async fn close(mut self) -> Result<(), UpnpError> {
        if let Some(renewer) = self.renewer.take() {
            renewer.task.abort();
            // Wait for it to stop so no renewal races the removals.
            let _ = renewer.task.await;
        }
        let mappings = std::mem::take(&mut self.mappings);
        remove_all(&self.gateway, &mappings).await
    }

    /// Stops renewing and lets go of the mappings without removing them:
    /// they expire with their leases. For a mapping that another guard
    /// also holds (a gateway whose UPnP and PCP/NAT-PMP share one table
    /// hands both the same rule), which removing would take from it.
    pub fn forget(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.task.abort();
        }
        self.mappings.clear();
    }

    /// Hands `mapping` (already in `self.mappings`) to the renewal task,
    /// starting the task if needed.
    async fn track(&mut self, mapping: Mapping) {
        let delivered = match &self.renewer {
            Some(renewer) => renewer.inbox.send(mapping).await.is_ok(),
            None => false,
        };
        if !delivered {
            self.start_renewer();
        }
    }

    /// Starts a renewal task for every leased mapping this guard holds.
    fn start_renewer(&mut self) {
        if let Some(old) = self.renewer.take() {
            debug!("UPnP: restarting the renewal task");
            old.task.abort();
        }
        let (inbox, rx) = mpsc::channel(RENEW_INBOX);
        let initial: Vec<Mapping> = self
            .mappings
            .iter()
            .filter(|m| !m.lease.is_zero())
            .cloned()
            .collect();
        let task = tokio::spawn(renew_loop(self.gateway.clone(), initial, rx));
        self.renewer = Some(Renewer { inbox, task });
    }
}

impl Drop for MappingGuard {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.task.abort();
        }
        if self.mappings.is_empty() {
            return;
        }
        let mappings = std::mem::take(&mut self.mappings);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let gateway = self.gateway.clone();
                handle.spawn(async move {
                    if let Err(e) = remove_all(&gateway, &mappings).await {
                        debug!("UPnP: removing mappings on drop failed: {e}");
                    }
                });
            }
            Err(_) => debug!(
                count = mappings.len(),
                "UPnP: guard dropped outside a runtime; mappings expire with their leases"
            ),
        }
    }
}

async fn remove_all(gateway: &Gateway, mappings: &[Mapping]) -> Result<(), UpnpError> {
    let mut first_error = None;
    for mapping in mappings {
        match gateway
            .remove_mapping(mapping.protocol, mapping.external.port())
            .await
        {
            Ok(()) => {
                debug!(external = %mapping.external, protocol = %mapping.protocol, "UPnP: mapping removed")
            }
            Err(e) => {
                debug!(external = %mapping.external, "UPnP: removing mapping failed: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

pub(crate) type MappingKey = (Protocol, u16);

async fn renew_loop(gateway: Gateway, initial: Vec<Mapping>, mut inbox: mpsc::Receiver<Mapping>) {
    let mut schedule = RenewSchedule::default();
    let mut held: HashMap<MappingKey, Mapping> = HashMap::new();
    let now = tokio::time::Instant::now().into_std();
    for mapping in initial {
        let key = (mapping.protocol, mapping.external.port());
        schedule.insert(key, mapping.lease, now);
        held.insert(key, mapping);
    }
    loop {
        let deadline = schedule.next_deadline();
        tokio::select! {
            biased;
            message = inbox.recv() => match message {
                Some(mapping) => {
                    let key = (mapping.protocol, mapping.external.port());
                    schedule.insert(key, mapping.lease, tokio::time::Instant::now().into_std());
                    held.insert(key, mapping);
                }
                None => return,
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = tokio::time::Instant::now().into_std();
                for key in schedule.due(now) {
                    let Some(mapping) = held.get(&key) else {
                        schedule.remove(&key);
                        continue;
                    };
                    let result = gateway.renew(mapping).await;
                    let now = tokio::time::Instant::now().into_std();
                    match result {
                        Ok(()) => {
                            debug!(external = %mapping.external, "UPnP: lease renewed");
                            schedule.renewed(&key, now);
                        }
                        Err(UpnpError::PortInUse { .. }) => {
                            debug!(external = %mapping.external,
                                "UPnP: mapping lost to another host; no longer renewed");
                            schedule.remove(&key);
                            held.remove(&key);
                        }
                        Err(e) => {
                            debug!(external = %mapping.external, "UPnP: renewal failed: {e}");
                            schedule.failed(&key, now);
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}
