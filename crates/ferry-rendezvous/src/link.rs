//! The actor's link to the other instances of a cluster: it runs the
//! core's directory requests (each a task of its own; answers come back to
//! the actor), and carries proxied clients' frames through the instances'
//! inboxes ([`Hop`]), in order, from one publisher task.
//!
//! ```text
//!  actor --request()--> task: directory.reserve/lookup --answer--> actor
//!  actor --proxy()/forward()/gone()--------> publisher --> home's inbox
//!  actor --send_to_remote()/close_remote()-> publisher --> origin's inbox
//!  inbox --next()--> actor: handle() feeds the core (remote clients) or
//!                    the connection (proxied clients)
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use ferry_cluster::{Directory, Holder, Key};
use ferry_proto::signal::{ErrorCode, ServerToClient};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::hop::Hop;
use crate::server::Outbox;
use crate::state::{ClientId, DirectoryAnswer, DirectoryKey, DirectoryRequest, Proxy, Rendezvous};

/// Remote clients one instance serves at once; more are refused.
pub const MAX_REMOTE_CLIENTS: usize = 4096;

/// Payloads waiting for the publisher; when full, the client concerned
/// is dropped rather than the queue growing.
const PUBLISH_QUEUE: usize = 4096;

/// Ids of remote clients start here, far from the accept loop's.
const REMOTE_IDS: ClientId = 1 << 62;

/// What came to the actor from the cluster.
pub(crate) enum ClusterInput {
    /// The directory answered about `key` for `client`.
    Answer {
        client: ClientId,
        key: DirectoryKey,
        answer: DirectoryAnswer,
    },
    /// A payload in this instance's inbox.
    Inbox(Vec<u8>),
    /// The inbox ended (the directory's task stopped).
    Closed,
}

pub(crate) struct ClusterLink {
    directory: Directory,
    inbox: mpsc::Receiver<Vec<u8>>,
    answers_tx: mpsc::UnboundedSender<ClusterInput>,
    answers: mpsc::UnboundedReceiver<ClusterInput>,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    /// Local connections whose nameplate lives elsewhere: id -> home.
    pub(crate) proxied: HashMap<ClientId, String>,
    /// Remote clients served here: id -> (origin, its id there).
    remotes: HashMap<ClientId, (String, u64)>,
    remote_ids: HashMap<(String, u64), ClientId>,
    next_remote: ClientId,
    inbox_open: bool,
}

impl ClusterLink {
    pub(crate) fn new(directory: Directory, inbox: mpsc::Receiver<Vec<u8>>) -> Self {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let (publish, mut queue) = mpsc::channel::<(String, Vec<u8>)>(PUBLISH_QUEUE);
        let publisher = directory.clone();
        // One task, one publish at a time: hops between two instances
        // arrive in the order they were made.
        tokio::spawn(async move {
            while let Some((instance, payload)) = queue.recv().await {
                if let Err(error) = publisher.publish(&instance, payload).await {
                    debug!(%error, "could not pass a frame to another instance");
                }
            }
        });
        ClusterLink {
            directory,
            inbox,
            answers_tx,
            answers,
            publish,
            proxied: HashMap::new(),
            remotes: HashMap::new(),
            remote_ids: HashMap::new(),
            next_remote: REMOTE_IDS,
            inbox_open: true,
        }
    }

    /// The next input; pending forever when nothing can come.
    pub(crate) async fn next(&mut self) -> ClusterInput {
        tokio::select! {
            Some(answer) = self.answers.recv() => answer,
            payload = self.inbox.recv(), if self.inbox_open => match payload {
                Some(payload) => ClusterInput::Inbox(payload),
                None => {
                    self.inbox_open = false;
                    ClusterInput::Closed
                }
            },
        }
    }

    /// Feeds one input to the core or to a connection.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        input: ClusterInput,
        core: &mut Rendezvous,
        conns: &mut HashMap<ClientId, Outbox>,
    ) {
        match input {
            ClusterInput::Answer {
                client,
                key,
                answer,
            } => core.handle_directory(now, client, key, answer),
            ClusterInput::Closed => {
                debug!("the cluster inbox closed; no more frames from other instances");
            }
            ClusterInput::Inbox(payload) => {
                let Some(hop) = Hop::decode(&payload) else {
                    debug!(
                        len = payload.len(),
                        "unreadable payload in the cluster inbox"
                    );
                    return;
                };
                self.hop(now, hop, core, conns);
            }
        }
    }

    fn hop(
        &mut self,
        now: Instant,
        hop: Hop,
        core: &mut Rendezvous,
        conns: &mut HashMap<ClientId, Outbox>,
    ) {
        match hop {
            Hop::Connect { from, client, addr } => self.connect(now, from, client, addr, core),
            Hop::Frame { from, client, msg } => {
                if let Some(&id) = self.remote_ids.get(&(from, client)) {
                    core.handle_message(now, id, msg);
                }
            }
            Hop::Gone { from, client } => {
                if let Some(id) = self.remote_ids.remove(&(from, client)) {
                    self.remotes.remove(&id);
                    core.handle_disconnect(now, id);
                }
            }
            Hop::ToClient { client, msg } => {
                if !self.proxied.contains_key(&client) {
                    return;
                }
                let delivered = conns.get(&client).is_some_and(|out| out.frame(&msg));
                if !delivered {
                    debug!(client, "proxied client does not keep up; dropping it");
                    if let Some(out) = conns.remove(&client) {
                        out.close();
                    }
                    self.gone(client);
                }
            }
            Hop::Close { client } => {
                if self.proxied.remove(&client).is_some() {
                    if let Some(out) = conns.remove(&client) {
                        out.close();
                    }
                }
            }
        }
    }

    fn connect(
        &mut self,
        now: Instant,
        from: String,
        client: u64,
        addr: SocketAddr,
        core: &mut Rendezvous,
    ) {
        if ferry_cluster::check_instance(&from).is_err() {
            debug!("hop from an instance with an invalid name dropped");
            return;
        }
        if self.remote_ids.contains_key(&(from.clone(), client)) {
            return;
        }
        if self.remotes.len() >= MAX_REMOTE_CLIENTS {
            debug!(%addr, "too many remote clients; refusing one");
            let error = ServerToClient::Error {
                code: ErrorCode::ServerFull,
                message: "the server has too many transfers waiting; try again later".into(),
            };
            self.send(&from, &Hop::ToClient { client, msg: error });
            self.send(&from, &Hop::Close { client });
            return;
        }
        let id = self.next_remote;
        self.next_remote += 1;
        self.remotes.insert(id, (from.clone(), client));
        self.remote_ids.insert((from, client), id);
        core.handle_remote_connect(now, id, addr);
    }

    /// Runs one directory request of the core.
    pub(crate) fn request(&mut self, request: DirectoryRequest) {
        let directory = self.directory.clone();
        let answers = self.answers_tx.clone();
        tokio::spawn(async move {
            let me = directory.instance().to_string();
            let (client, key, answer) = match request {
                DirectoryRequest::Reserve { client, key, ttl } => {
                    let answer = match directory.reserve(&cluster_key(&key), ttl).await {
                        Ok(Holder::Me | Holder::TookOver(_)) => DirectoryAnswer::Reserved,
                        Ok(Holder::AlreadyMine) => DirectoryAnswer::Here,
                        Ok(Holder::Other(home)) if home == me => DirectoryAnswer::Here,
                        Ok(Holder::Other(home)) => DirectoryAnswer::Elsewhere(home),
                        Err(error) => {
                            debug!(%error, "directory reserve failed");
                            DirectoryAnswer::Unavailable
                        }
                    };
                    (client, key, answer)
                }
                DirectoryRequest::Lookup { client, key } => {
                    let answer = match directory.lookup(&cluster_key(&key)).await {
                        Ok(None) => DirectoryAnswer::Free,
                        Ok(Some(home)) if home == me => DirectoryAnswer::Here,
                        Ok(Some(home)) => DirectoryAnswer::Elsewhere(home),
                        Err(error) => {
                            debug!(%error, "directory lookup failed");
                            DirectoryAnswer::Unavailable
                        }
                    };
                    (client, key, answer)
                }
                DirectoryRequest::Renew { key, ttl } => {
                    match directory.reserve(&cluster_key(&key), ttl).await {
                        Ok(Holder::Other(home)) if home != me => {
                            warn!(?key, home, "a channel held here is another instance's now");
                        }
                        Ok(_) => {}
                        Err(error) => debug!(%error, "directory renewal failed"),
                    }
                    return;
                }
                DirectoryRequest::Release { key } => {
                    if let Err(error) = directory.release(&cluster_key(&key)).await {
                        // It expires by itself with the nameplate TTL.
                        debug!(%error, "directory release failed");
                    }
                    return;
                }
            };
            let _ = answers.send(ClusterInput::Answer {
                client,
                key,
                answer,
            });
        });
    }

    /// Starts proxying a local connection to its nameplate's home.
    pub(crate) fn proxy(&mut self, proxy: Proxy) {
        let Proxy {
            client,
            home,
            addr,
            frames,
        } = proxy;
        let from = self.directory.instance().to_string();
        self.send(
            &home,
            &Hop::Connect {
                from: from.clone(),
                client,
                addr,
            },
        );
        for msg in frames {
            self.send(
                &home,
                &Hop::Frame {
                    from: from.clone(),
                    client,
                    msg,
                },
            );
        }
        self.proxied.insert(client, home);
    }

    /// A frame of a proxied connection, for its home.
    pub(crate) fn forward(&mut self, client: ClientId, msg: ferry_proto::signal::ClientToServer) {
        let Some(home) = self.proxied.get(&client).cloned() else {
            return;
        };
        let from = self.directory.instance().to_string();
        self.send(&home, &Hop::Frame { from, client, msg });
    }

    /// A proxied connection closed here.
    pub(crate) fn gone(&mut self, client: ClientId) {
        let Some(home) = self.proxied.remove(&client) else {
            return;
        };
        let from = self.directory.instance().to_string();
        self.send(&home, &Hop::Gone { from, client });
    }

    /// A frame of the core for a remote client; false when it cannot be
    /// passed on (not remote, or the publisher is full).
    pub(crate) fn send_to_remote(&mut self, id: ClientId, msg: ServerToClient) -> bool {
        let Some((origin, client)) = self.remotes.get(&id).cloned() else {
            return true;
        };
        let sent = self.send(&origin, &Hop::ToClient { client, msg });
        if !sent {
            self.remotes.remove(&id);
            self.remote_ids.remove(&(origin, client));
        }
        sent
    }

    /// The core closed a remote client.
    pub(crate) fn close_remote(&mut self, id: ClientId) {
        let Some((origin, client)) = self.remotes.remove(&id) else {
            return;
        };
        self.remote_ids.remove(&(origin.clone(), client));
        self.send(&origin, &Hop::Close { client });
    }

    /// Tells the directory this instance is gone: what it held can be
    /// taken over at once, so clients told to go elsewhere rejoin there.
    /// Before any client hears that it stops.
    pub(crate) async fn leave(&self) {
        if let Err(error) = self.directory.leave().await {
            debug!(%error, "could not tell the directory this instance leaves");
        }
    }

    /// Tells remote clients' origins that this instance stops, and waits a
    /// little for the publisher to pass it on.
    pub(crate) async fn shut_down(&mut self, farewell: &ServerToClient) {
        let remotes: Vec<_> = self.remotes.drain().map(|(_, r)| r).collect();
        for (origin, client) in remotes {
            let msg = farewell.clone();
            self.send(&origin, &Hop::ToClient { client, msg });
            self.send(&origin, &Hop::Close { client });
        }
        let proxied: Vec<_> = self.proxied.keys().copied().collect();
        for client in proxied {
            self.gone(client);
        }
        let publish = self.publish.clone();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async move {
            // Room for every queued hop means the publisher drained them.
            while publish.capacity() < PUBLISH_QUEUE {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Queues `hop` for `instance`; false when the queue is full.
    fn send(&self, instance: &str, hop: &Hop) -> bool {
        let Some(payload) = hop.encode() else {
            return true;
        };
        match self.publish.try_send((instance.to_string(), payload)) {
            Ok(()) => true,
            Err(_) => {
                debug!("publish queue full; a hop is dropped");
                false
            }
        }
    }
}

fn cluster_key(key: &DirectoryKey) -> Key {
    match key {
        DirectoryKey::Nameplate(number) => Key::Nameplate(*number),
        DirectoryKey::Channel(channel) => Key::Channel(channel.clone()),
    }
}
