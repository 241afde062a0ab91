//! ferry-cluster: the directory several `ferry serve` instances share, so
//! that they hand out nameplates and rejoin channels as one server.
//!
//! It holds very little: which instance is the *home* of a nameplate or a
//! rejoin channel (the instance where its first side arrived), and one
//! inbox per instance through which instances pass each other frames.
//! Everything else (claims, the one-guess rule, mailboxes, relay tokens)
//! stays in the home instance's sans-IO rendezvous core; see
//! `ferry_rendezvous::server` for how the driver uses this crate.
//!
//! ```text
//!  instance A                   directory                  instance B
//!  reserve(np 17, ttl) ------> SET ferry:np:17 A NX PX ttl
//!                               (one winner, cluster-wide)
//!                               GET ferry:np:17 -> A  <---- lookup(np 17)
//!  inbox ferry:inbox:A  <----- PUBLISH ferry:inbox:A ------ publish(A, frame)
//!  publish(B, frame) -------->  PUBLISH ferry:inbox:B ----> inbox ferry:inbox:B
//!  release(np 17) -----------> DEL ferry:np:17 if it is still A's
//!  every 2 s (probe) ---------> SET ferry:alive:A PX 6000
//! ```
//!
//! An instance that is gone (killed: its `alive` key expired; stopped:
//! [`Directory::leave`] deleted it) holds nothing any more: a reservation
//! of one of its keys takes the key over ([`Holder::TookOver`]) and a
//! lookup finds it free, so that its clients, reconnecting through
//! another instance, rejoin there (and a waiting sender's code keeps
//! working) instead of being sent to an instance that cannot answer.
//!
//! Two backends behind one [`Directory`]: [`MemoryDirectory`] (instances in
//! one process share a [`MemoryCluster`]; for tests and as the reference)
//! and [`RedisDirectory`] (the `redis` crate: a [`ConnectionManager`]
//! for commands, which reconnects by itself, and a pub/sub connection of
//! its own for the inbox, which a task re-subscribes with back-off).
//! No protocol logic here, and no ferry types: keys, instance names and
//! opaque payloads only.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The largest payload an inbox accepts; larger ones are dropped (a
/// rendezvous frame is at most 64 KiB, plus its envelope).
pub const MAX_PAYLOAD: usize = 80 * 1024;

/// Payloads an inbox holds before new ones are dropped.
pub const INBOX_DEPTH: usize = 4096;

/// How long one directory command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a Redis directory is pinged while nothing else asks it, so
/// that its health is known (and its connection comes back) when idle.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long an instance counts as alive after its latest probe: a killed
/// instance's keys can be taken over this long after it died.
pub const ALIVE_TTL: Duration = Duration::from_secs(6);

/// The longest instance name: 1 to 64 of `a-z 0-9 -`.
pub const MAX_INSTANCE_LEN: usize = 64;

/// What the directory names: a nameplate number, or a rejoin channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A nameplate as codes carry it.
    Nameplate(u32),
    /// A rejoin channel (hex digits; the rendezvous core checks them).
    Channel(String),
}

impl Key {
    fn redis_key(&self) -> String {
        match self {
            Key::Nameplate(number) => format!("ferry:np:{number}"),
            Key::Channel(channel) => format!("ferry:rj:{channel}"),
        }
    }
}

/// Who holds a key after [`Directory::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This instance: the reservation took.
    Me,
    /// This instance held it already (an earlier reservation).
    AlreadyMine,
    /// Another instance, by name.
    Other(String),
    /// This instance, now: the one that held it, by name, is gone.
    TookOver(String),
}

/// What went wrong with the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL is not a Redis URL.
    #[error("{url} is not a Redis URL (redis://HOST:PORT/DB): {reason}")]
    BadUrl {
        /// The URL as given (without a password).
        url: String,
        /// Why.
        reason: String,
    },
    /// Redis did not answer (at start, or while running).
    #[error("the cluster directory at {url} is unreachable: {reason}")]
    Unreachable {
        /// Where it was looked for (without a password).
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The instance name is not 1 to 64 of `a-z 0-9 -`.
    #[error("instance id {0:?} is not 1 to 64 of a-z, 0-9 and -")]
    BadInstance(String),
    /// The directory holds something this version did not write.
    #[error("the cluster directory holds an entry this version cannot read")]
    Corrupt,
}

/// The shared directory of one instance, whichever backend holds it.
#[derive(Clone)]
pub enum Directory {
    /// Instances in one process (tests, the reference behaviour).
    Memory(MemoryDirectory),
    /// Instances anywhere, through one Redis.
    Redis(RedisDirectory),
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Directory::Memory(d) => write!(f, "Directory::Memory({})", d.instance),
            Directory::Redis(d) => write!(f, "Directory::Redis({}, {})", d.instance, d.url),
        }
    }
}

impl Directory {
    /// This instance's name.
    pub fn instance(&self) -> &str {
        match self {
            Directory::Memory(d) => &d.instance,
            Directory::Redis(d) => &d.instance,
        }
    }

    /// Takes `key` for this instance for `ttl`, unless another instance
    /// that is alive holds it: atomic across all instances. A key this
    /// instance holds already gets `ttl` afresh.
    pub async fn reserve(&self, key: &Key, ttl: Duration) -> Result<Holder, ClusterError> {
        match self {
            Directory::Memory(d) => Ok(d.reserve(key, ttl)),
            Directory::Redis(d) => d.reserve(key, ttl).await,
        }
    }

    /// Which instance holds `key`, if any that is alive.
    pub async fn lookup(&self, key: &Key) -> Result<Option<String>, ClusterError> {
        match self {
            Directory::Memory(d) => Ok(d.lookup(key)),
            Directory::Redis(d) => d.lookup(key).await,
        }
    }

    /// Gives `key` up, if this instance still holds it.
    pub async fn release(&self, key: &Key) -> Result<(), ClusterError> {
        match self {
            Directory::Memory(d) => {
                d.release(key);
                Ok(())
            }
            Directory::Redis(d) => d.release(key).await,
        }
    }

    /// Says that this instance is gone (it stops): the keys it holds can
    /// be taken over at once, not only after [`ALIVE_TTL`]. Commands after
    /// this still work; the probe stops.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        match self {
            Directory::Memory(d) => {
                d.leave();
                Ok(())
            }
            Directory::Redis(d) => d.leave().await,
        }
    }

    /// Sends `payload` to `instance`'s inbox (at most once; lost if that
    /// instance is gone). Payloads from one instance to another arrive in
    /// the order they were published.
    pub async fn publish(&self, instance: &str, payload: Vec<u8>) -> Result<(), ClusterError> {
        match self {
            Directory::Memory(d) => {
                d.publish(instance, payload);
                Ok(())
            }
            Directory::Redis(d) => d.publish(instance, payload).await,
        }
    }

    /// This instance's inbox: payloads others publish to it, up to
    /// [`MAX_PAYLOAD`] bytes each and [`INBOX_DEPTH`] waiting (beyond
    /// that they are dropped and counted in [`Directory::dropped`]). Call
    /// once.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<Vec<u8>>, ClusterError> {
        match self {
            Directory::Memory(d) => Ok(d.subscribe()),
            Directory::Redis(d) => d.subscribe().await,
        }
    }

    /// Whether the directory answered its latest command (and, for Redis,
    /// the inbox, if any, is subscribed).
    pub fn healthy(&self) -> bool {
        match self {
            Directory::Memory(_) => true,
            Directory::Redis(d) => {
                d.state.commands_ok.load(Ordering::Relaxed)
                    && d.state.subscribed.load(Ordering::Relaxed)
            }
        }
    }

    /// Whether it is healthy (as [`Directory::healthy`]) and a line for
    /// people: where it is, as which instance, and since when it is down.
    pub fn status(&self) -> (bool, String) {
        match self {
            Directory::Memory(d) => (true, format!("in memory as instance {}", d.instance)),
            Directory::Redis(d) => {
                let mut line = format!("{} as instance {}", d.url, d.instance);
                let commands = d.state.commands_ok.load(Ordering::Relaxed);
                let subscribed = d.state.subscribed.load(Ordering::Relaxed);
                if !commands {
                    line.push_str(": does not answer");
                    if let Some(since) = d.state.down_since() {
                        line.push_str(&format!(" for {} s", since.elapsed().as_secs()));
                    }
                    line.push_str("; new pairings are refused meanwhile, retrying");
                } else if !subscribed {
                    line.push_str(
                        ": this instance's inbox is not subscribed (frames from other \
                         instances do not arrive); subscribing again",
                    );
                }
                (commands && subscribed, line)
            }
        }
    }

    /// Inbox payloads dropped so far (too large, or the inbox full).
    pub fn dropped(&self) -> u64 {
        match self {
            Directory::Memory(d) => d.shared.dropped.load(Ordering::Relaxed),
            Directory::Redis(d) => d.state.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Checks an instance name: 1 to [`MAX_INSTANCE_LEN`] of `a-z 0-9 -`.
pub fn check_instance(name: &str) -> Result<(), ClusterError> {
    let ok = (1..=MAX_INSTANCE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadInstance(name.to_string()))
    }
}

/// A random instance name, `i-` and 16 hex digits.
pub fn random_instance() -> String {
    format!("i-{:016x}", rand::random::<u64>())
}

/// Instances in one process share one of these.
#[derive(Debug, Clone, Default)]
pub struct MemoryCluster {
    inner: Arc<MemoryShared>,
}

#[derive(Debug, Default)]
struct MemoryShared {
    keys: Mutex<HashMap<Key, (String, Instant)>>,
    inboxes: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
    /// Instances that left.
    gone: Mutex<std::collections::HashSet<String>>,
    dropped: AtomicU64,
}

impl MemoryCluster {
    /// A fresh, empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// The directory of instance `instance` in this cluster.
    pub fn join(&self, instance: &str) -> Result<Directory, ClusterError> {
        check_instance(instance)?;
        // Alive again, as a restarted instance renews its alive key.
        self.inner
            .gone
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(instance);
        Ok(Directory::Memory(MemoryDirectory {
            instance: instance.to_string(),
            shared: self.inner.clone(),
        }))
    }
}

/// One instance's view of a [`MemoryCluster`].
#[derive(Debug, Clone)]
pub struct MemoryDirectory {
    instance: String,
    shared: Arc<MemoryShared>,
}

impl MemoryDirectory {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (String, Instant)>> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still whole.
        self.shared
            .keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether `instance` is alive: it has not left, and its inbox, if it
    /// subscribed one, is still read (an instance dropped is gone).
    fn alive(&self, instance: &str) -> bool {
        let gone = self
            .shared
            .gone
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(instance);
        let closed = self
            .shared
            .inboxes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(instance)
            .is_some_and(mpsc::Sender::is_closed);
        !gone && !closed
    }

    fn reserve(&self, key: &Key, ttl: Duration) -> Holder {
        let now = Instant::now();
        // One lock over the check and the insert: atomic, as the script.
        let mut keys = self.keys();
        let held = keys
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(holder, _)| holder.clone());
        let holder = match held {
            Some(holder) if holder == self.instance => Holder::AlreadyMine,
            Some(holder) if self.alive(&holder) => return Holder::Other(holder),
            Some(holder) => Holder::TookOver(holder),
            None => Holder::Me,
        };
        keys.insert(key.clone(), (self.instance.clone(), now + ttl));
        holder
    }

    fn lookup(&self, key: &Key) -> Option<String> {
        let now = Instant::now();
        let holder = self
            .keys()
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(holder, _)| holder.clone())?;
        self.alive(&holder).then_some(holder)
    }

    fn leave(&self) {
        self.shared
            .gone
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(self.instance.clone());
    }

    fn release(&self, key: &Key) {
        let mut keys = self.keys();
        if keys
            .get(key)
            .is_some_and(|(holder, _)| *holder == self.instance)
        {
            keys.remove(key);
        }
    }

    fn publish(&self, instance: &str, payload: Vec<u8>) {
        let inboxes = self
            .shared
            .inboxes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(inbox) = inboxes.get(instance) else {
            return;
        };
        if payload.len() > MAX_PAYLOAD || inbox.try_send(payload).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn subscribe(&self) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(INBOX_DEPTH);
        self.shared
            .inboxes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(self.instance.clone(), tx);
        rx
    }
}

/// One instance's view of a Redis directory.
#[derive(Clone)]
pub struct RedisDirectory {
    instance: String,
    /// The URL without its password, for messages.
    url: String,
    client: redis::Client,
    commands: ConnectionManager,
    state: Arc<RedisState>,
}

#[derive(Debug, Default)]
struct RedisState {
    commands_ok: AtomicBool,
    /// False while a subscribed inbox is lost (true before any).
    subscribed: AtomicBool,
    dropped: AtomicU64,
    /// When commands last started failing, while they do.
    down_since: Mutex<Option<Instant>>,
    /// Set by leave(): the probe stops renewing the alive key.
    left: AtomicBool,
}

impl RedisState {
    /// Notes whether the latest command (or probe) was answered; logs
    /// when that changes. Every command calls it: only a change takes the
    /// lock.
    fn set_commands_ok(&self, ok: bool, url: &str) {
        let was = self.commands_ok.swap(ok, Ordering::Relaxed);
        if was == ok {
            return;
        }
        let mut since = self
            .down_since
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match (was, ok) {
            (true, false) => {
                *since = Some(Instant::now());
                warn!(
                    url,
                    "the cluster directory does not answer: new pairings are refused until it does; retrying"
                );
            }
            (false, true) => {
                let down = since.take().map(|at| at.elapsed().as_secs());
                info!(url, down_secs = ?down, "the cluster directory answers again");
            }
            _ => {}
        }
    }

    fn down_since(&self) -> Option<Instant> {
        *self
            .down_since
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Renews this instance's alive key every [`PROBE_INTERVAL`] while any
/// handle of it lives and it has not left: others see it alive, its health
/// stays known when nothing else asks the directory, and the connection
/// manager reconnects by itself once Redis is back.
async fn probe(
    state: Weak<RedisState>,
    mut commands: ConnectionManager,
    url: String,
    instance: String,
) {
    let alive = alive_command(&instance);
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        {
            let Some(state) = state.upgrade() else {
                return;
            };
            if state.left.load(Ordering::Relaxed) {
                return;
            }
            let answered = matches!(
                tokio::time::timeout(COMMAND_TIMEOUT, alive.query_async::<()>(&mut commands)).await,
                Ok(Ok(()))
            );
            state.set_commands_ok(answered, &url);
        }
    }
}

/// `SET ferry:alive:NAME 1 PX ALIVE_TTL`.
fn alive_command(instance: &str) -> redis::Cmd {
    let mut alive = redis::cmd("SET");
    alive
        .arg(alive_key(instance))
        .arg(1)
        .arg("PX")
        .arg(u64::try_from(ALIVE_TTL.as_millis()).unwrap_or(u64::MAX));
    alive
}

fn alive_key(instance: &str) -> String {
    format!("{ALIVE_PREFIX}{instance}")
}

const ALIVE_PREFIX: &str = "ferry:alive:";

/// Takes KEYS[1] for ARGV[1] (this instance) for ARGV[2] ms unless an
/// instance that is alive (its ARGV[3]..name key exists) holds it:
/// `{"new"}`, `{"mine"}` (held already: its TTL renewed), `{"other", who}`,
/// or `{"took", who}` (held by an instance that is gone). It renews this
/// instance's alive key for ARGV[4] ms too, so that a key it just took is
/// never seen as a dead one's (say, right after Redis restarted empty).
const RESERVE_SCRIPT: &str = r"
redis.call('SET', ARGV[3] .. ARGV[1], 1, 'PX', ARGV[4])
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'mine'}
end
if holder and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
  return {'other', holder}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if holder then
  return {'took', holder}
end
return {'new'}
";

/// The holder of KEYS[1], if it is alive (its ARGV[1]..name key exists).
const LOOKUP_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and redis.call('EXISTS', ARGV[1] .. holder) == 1 then
  return holder
end
return false
";

/// Deletes KEYS[1] only while it holds ARGV[1] (this instance), so that a
/// key that expired and went to another instance is left alone.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisDirectory {
    /// Connects to the Redis at `url` (`redis://HOST:PORT/DB`) as
    /// `instance`, and checks that it answers; an unreachable Redis is an
    /// error here, at start. Later losses are retried by themselves.
    pub async fn connect(url: &str, instance: &str) -> Result<Directory, ClusterError> {
        check_instance(instance)?;
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|error| ClusterError::BadUrl {
            url: shown.clone(),
            reason: error.to_string(),
        })?;
        let unreachable = |reason: String| ClusterError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(COMMAND_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT)
            // Each command fails fast while Redis is away; the manager
            // reconnects on the next one.
            .set_number_of_retries(1)
            .set_max_delay(2_000);
        let mut commands = tokio::time::timeout(
            COMMAND_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unreachable("no answer in time".into()))?
        .map_err(|error| unreachable(error.to_string()))?;
        // Alive from now on (the probe renews it): another instance sees
        // this one's keys as held from its first reservation on.
        let () = alive_command(instance)
            .query_async(&mut commands)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        info!(url = %shown, instance, "cluster directory reached");
        let state = Arc::new(RedisState::default());
        state.commands_ok.store(true, Ordering::Relaxed);
        state.subscribed.store(true, Ordering::Relaxed);
        tokio::spawn(probe(
            Arc::downgrade(&state),
            commands.clone(),
            shown.clone(),
            instance.to_string(),
        ));
        Ok(Directory::Redis(RedisDirectory {
            instance: instance.to_string(),
            url: shown,
            client,
            commands,
            state,
        }))
    }

    fn unreachable(&self, error: impl fmt::Display) -> ClusterError {
        self.state.set_commands_ok(false, &self.url);
        ClusterError::Unreachable {
            url: self.url.clone(),
            reason: error.to_string(),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut conn = self.commands.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.state.set_commands_ok(true, &self.url);
                Ok(value)
            }
            Ok(Err(error)) => Err(self.unreachable(error)),
            Err(_) => Err(self.unreachable("no answer in time")),
        }
    }

    async fn reserve(&self, key: &Key, ttl: Duration) -> Result<Holder, ClusterError> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut eval = redis::cmd("EVAL");
        eval.arg(RESERVE_SCRIPT)
            .arg(1)
            .arg(key.redis_key())
            .arg(&self.instance)
            .arg(millis)
            .arg(ALIVE_PREFIX)
            .arg(u64::try_from(ALIVE_TTL.as_millis()).unwrap_or(u64::MAX));
        let answer: Vec<String> = self.run(&eval).await?;
        Ok(match answer.as_slice() {
            [what] if what == "new" => Holder::Me,
            [what] if what == "mine" => Holder::AlreadyMine,
            [what, holder] if what == "other" && check_instance(holder).is_ok() => {
                Holder::Other(holder.clone())
            }
            [what, holder] if what == "took" => {
                info!(?key, gone = %holder.escape_debug(), "took over a key of an instance that is gone");
                Holder::TookOver(holder.clone())
            }
            _ => return Err(ClusterError::Corrupt),
        })
    }

    async fn lookup(&self, key: &Key) -> Result<Option<String>, ClusterError> {
        let mut get = redis::cmd("EVAL");
        get.arg(LOOKUP_SCRIPT)
            .arg(1)
            .arg(key.redis_key())
            .arg(ALIVE_PREFIX);
        let holder: Option<String> = self.run(&get).await?;
        match holder {
            Some(holder) if check_instance(&holder).is_err() => Err(ClusterError::Corrupt),
            holder => Ok(holder),
        }
    }

    async fn release(&self, key: &Key) -> Result<(), ClusterError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(key.redis_key())
            .arg(&self.instance);
        let _: i64 = self.run(&eval).await?;
        Ok(())
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        self.state.left.store(true, Ordering::Relaxed);
        let mut del = redis::cmd("DEL");
        del.arg(alive_key(&self.instance));
        let _: i64 = self.run(&del).await?;
        info!(url = %self.url, instance = %self.instance, "left the cluster");
        Ok(())
    }

    async fn publish(&self, instance: &str, payload: Vec<u8>) -> Result<(), ClusterError> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(inbox_channel(instance)).arg(payload);
        let _: i64 = self.run(&publish).await?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<Vec<u8>>, ClusterError> {
        let (tx, rx) = mpsc::channel(INBOX_DEPTH);
        let channel = inbox_channel(&self.instance);
        // Redis answered in connect(); if it went away since, the pump
        // subscribes once it is back, like after any later loss.
        let pubsub = match self.open_pubsub(&channel).await {
            Ok(pubsub) => Some(pubsub),
            Err(error) => {
                warn!(%error, "cannot subscribe the cluster inbox yet; retrying");
                self.state.subscribed.store(false, Ordering::Relaxed);
                None
            }
        };
        let this = self.clone();
        tokio::spawn(async move { this.pump(pubsub, channel, tx).await });
        Ok(rx)
    }

    async fn open_pubsub(&self, channel: &str) -> Result<redis::aio::PubSub, ClusterError> {
        let open = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, open).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(ClusterError::Unreachable {
                url: self.url.clone(),
                reason: error.to_string(),
            }),
            Err(_) => Err(ClusterError::Unreachable {
                url: self.url.clone(),
                reason: "no answer in time".into(),
            }),
        }
    }

    /// Forwards the inbox's payloads until the receiver goes away;
    /// re-subscribes with back-off (up to 5 s) when the connection drops.
    async fn pump(
        self,
        mut pubsub: Option<redis::aio::PubSub>,
        channel: String,
        tx: mpsc::Sender<Vec<u8>>,
    ) {
        loop {
            if let Some(pubsub) = pubsub.as_mut() {
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let payload = msg.get_payload_bytes();
                            if payload.len() > MAX_PAYLOAD
                                || tx.try_send(payload.to_vec()).is_err()
                            {
                                self.state.dropped.fetch_add(1, Ordering::Relaxed);
                                debug!("inbox payload dropped (too large, or the inbox is full)");
                            }
                        }
                    }
                }
            }
            if pubsub.take().is_some() {
                warn!(url = %self.url, "lost the cluster inbox subscription; reconnecting");
            }
            self.state.subscribed.store(false, Ordering::Relaxed);
            let mut delay = Duration::from_millis(100);
            let again = loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                match self.open_pubsub(&channel).await {
                    Ok(subscribed) => break subscribed,
                    Err(error) => {
                        debug!(%error, "cluster inbox still unreachable");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            };
            pubsub = Some(again);
            self.state.subscribed.store(true, Ordering::Relaxed);
            info!(url = %self.url, "cluster inbox subscribed again");
        }
    }
}

fn inbox_channel(instance: &str) -> String {
    format!("ferry:inbox:{instance}")
}

/// `url` without a password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(check_instance("i-0123abcd").is_ok());
        assert!(check_instance("").is_err());
        assert!(check_instance("A").is_err());
        assert!(check_instance(&"a".repeat(65)).is_err());
        assert!(check_instance(&random_instance()).is_ok());
    }
}
