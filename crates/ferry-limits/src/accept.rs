//! One accept loop for ferry's TCP servers (the rendezvous server and the
//! relay on a listener of its own): a cap on connections served at once,
//! back-off when accepting fails (usually out of file descriptors), a
//! bounded number of refused connections lingering to deliver their
//! refusal, and a graceful shutdown.
//!
//! ```text
//! serve(listener, config, shutdown, admit, stopping)
//!   accept -> Accepted { stream, addr, permit: a place under the cap or None }
//!          -> admit(accepted) decides (its own checks, in its own order):
//!               Verdict::Serve(permit, task)  task runs holding the permit
//!               Verdict::Refuse(linger)       runs while fewer than
//!                                             max_lingering_refusals do,
//!                                             else is dropped (closes at once)
//!   accept error -> sleep 10 ms, doubling up to 1 s; reset by a success
//!   shutdown -> the listener closes; stopping(open tasks) runs, and it and
//!               the tasks get shutdown_grace to finish; then the rest are
//!               aborted (and awaited)
//! ```
//!
//! And what both servers' `admit` and tasks share around it:
//! [`BucketSlot`], a connection's share of its address bucket, given back
//! when its task ends; [`refuse`], the refusal frame and the lingering
//! future for [`Verdict::Refuse`]; [`linger`], the close that lets a last
//! frame arrive rather than be lost to a reset.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tracing::warn;

use crate::{AddrBucket, OpenCounts};

/// The first pause after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause after failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long [`linger`] may take to half-close, and then to drain.
const LINGER: Duration = Duration::from_secs(1);
/// How much unread input [`linger`] discards at most.
const LINGER_BYTES: usize = 1 << 20;
/// Its read buffer: on the heap, taken only while lingering, so a task that
/// may linger does not carry it all its life.
const LINGER_CHUNK: usize = 8 * 1024;

/// The longest [`linger`] takes (half-close, then drain).
pub const LINGER_AT_MOST: Duration = Duration::from_secs(2);

/// Settings of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptConfig {
    /// Connections served at once (at least 1).
    pub max_connections: usize,
    /// Refused connections that may linger at once to deliver their
    /// refusal; beyond that they are closed at once.
    pub max_lingering_refusals: usize,
    /// After shutdown, how long the tasks may run on before they are
    /// aborted.
    pub shutdown_grace: Duration,
    /// The server's name in logs.
    pub name: &'static str,
}

/// A place under the connection cap; the connection's task holds it, and
/// dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    _place: OwnedSemaphorePermit,
}

/// A connection just accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub stream: TcpStream,
    /// Its peer.
    pub addr: SocketAddr,
    /// Its place under the connection cap; `None` when the server is full.
    pub permit: Option<ConnectionPermit>,
}

/// What to do with an [`Accepted`] connection.
#[derive(Debug)]
pub enum Verdict<S, R> {
    /// Serve it: `S` runs as a task holding the permit.
    Serve(ConnectionPermit, S),
    /// Refuse it: `R` (which says why and lingers a moment) runs as a task
    /// while there is room for refusals, else it is dropped.
    Refuse(R),
}

/// How the tasks ended at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Tasks open when accepting stopped.
    pub open: usize,
    /// Tasks still open after the grace, and aborted.
    pub cut: usize,
}

/// Accepts connections on `listener` until `shutdown` resolves, handing
/// each to `admit`; then closes the listener, calls `stopping` with the
/// number of open tasks and gives its future and the tasks
/// `config.shutdown_grace` to finish before aborting what is left.
pub async fn serve<A, S, R, F, Fut>(
    listener: TcpListener,
    config: AcceptConfig,
    shutdown: impl Future<Output = ()>,
    mut admit: A,
    stopping: F,
) -> Drained
where
    A: FnMut(Accepted) -> Verdict<S, R>,
    S: Future<Output = ()> + Send + 'static,
    R: Future<Output = ()> + Send + 'static,
    F: FnOnce(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let cap = Arc::new(Semaphore::new(
        config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(
        config.max_lingering_refusals.min(Semaphore::MAX_PERMITS),
    ));
    let mut tasks = JoinSet::new();
    let mut backoff = FIRST_BACKOFF;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(server = config.name, %error, "accept failed; backing off {backoff:?}");
                        sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                };
                backoff = FIRST_BACKOFF;
                let permit = cap
                    .clone()
                    .try_acquire_owned()
                    .ok()
                    .map(|place| ConnectionPermit { _place: place });
                match admit(Accepted { stream, addr, permit }) {
                    Verdict::Serve(permit, task) => {
                        tasks.spawn(async move {
                            task.await;
                            drop(permit);
                        });
                    }
                    Verdict::Refuse(linger) => {
                        if let Ok(room) = refusals.clone().try_acquire_owned() {
                            tasks.spawn(async move {
                                linger.await;
                                drop(room);
                            });
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    let open = tasks.len();
    let stopping = stopping(open);
    let drain = async {
        stopping.await;
        while tasks.join_next().await.is_some() {}
    };
    let finished = timeout(config.shutdown_grace, drain).await.is_ok();
    let cut = if finished { 0 } else { tasks.len() };
    tasks.shutdown().await;
    Drained { open, cut }
}

/// Half-closes `stream` and discards its input for a moment (at most
/// [`LINGER_AT_MOST`] and 1 MiB), so the last frame written is read rather
/// than lost to a reset caused by unread data. Any stream: plain TCP, or
/// TLS on the server port.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = timeout(LINGER, stream.shutdown()).await;
    let mut discard = vec![0u8; LINGER_CHUNK];
    let mut total = 0;
    let _ = timeout(LINGER, async {
        while total < LINGER_BYTES {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Refuses a connection just accepted: writes `frame` (the encoded
/// refusal) without waiting, as a fresh socket's send buffer takes one
/// small frame at once, and returns the future that then closes it after a
/// [`linger`] of at most `within`, for [`Verdict::Refuse`]. [`serve`] runs
/// that while fewer than `max_lingering_refusals` do, else drops it: the
/// connection then closes at once. An empty `frame` has nothing to deliver
/// and closes at once too.
pub fn refuse(
    mut stream: TcpStream,
    frame: &[u8],
    within: Duration,
) -> impl Future<Output = ()> + Send + 'static + use<> {
    // `use<>`: the future holds the stream, not the borrowed frame.
    let lingers = !frame.is_empty();
    if lingers {
        let _ = stream.try_write(frame);
    }
    async move {
        if lingers {
            let _ = timeout(within, linger(&mut stream)).await;
        }
    }
}

/// What a [`BucketSlot`] gives its share back to: a table of connections
/// open per address bucket ([`OpenCounts`], or a server's own admission
/// that keeps one).
pub trait Release {
    /// A connection of `bucket` ended.
    fn release(&mut self, bucket: AddrBucket);
}

impl Release for OpenCounts {
    fn release(&mut self, bucket: AddrBucket) {
        self.close(bucket);
    }
}

/// One connection's share of its address bucket in a shared table `T`;
/// given back when dropped (with the connection's task).
#[derive(Debug)]
pub struct BucketSlot<T: Release> {
    table: Arc<Mutex<T>>,
    bucket: AddrBucket,
}

impl<T: Release> BucketSlot<T> {
    /// Takes a share under the table's lock: `take` counts the connection
    /// and says in which bucket, or why not (then there is no share to give
    /// back).
    pub fn take<E>(
        table: &Arc<Mutex<T>>,
        take: impl FnOnce(&mut T) -> Result<AddrBucket, E>,
    ) -> Result<Self, E> {
        let bucket = take(&mut lock(table))?;
        Ok(BucketSlot {
            table: table.clone(),
            bucket,
        })
    }

    /// The bucket this share is of.
    pub fn bucket(&self) -> AddrBucket {
        self.bucket
    }
}

impl<T: Release> Drop for BucketSlot<T> {
    fn drop(&mut self) {
        lock(&self.table).release(self.bucket);
    }
}

/// A table stays usable after a task panicked holding it: its counts are
/// plain numbers, never left half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bucketing;
    use tokio::sync::oneshot;

    fn config(max_connections: usize, grace: Duration) -> AcceptConfig {
        AcceptConfig {
            max_connections,
            max_lingering_refusals: 4,
            shutdown_grace: grace,
            name: "test",
        }
    }

    /// Reads until the server closes; what it sent.
    async fn read_all(addr: SocketAddr) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await;
        got
    }

    #[tokio::test]
    async fn the_cap_refuses_the_connection_over_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            config(1, Duration::from_millis(50)),
            async {
                let _ = stopped.await;
            },
            |accepted: Accepted| {
                let stream = accepted.stream;
                match accepted.permit {
                    // Served: hold the place until the server stops.
                    Some(permit) => Verdict::Serve(permit, async move {
                        let _ = stream.try_write(b"served");
                        std::future::pending::<()>().await;
                    }),
                    None => Verdict::Refuse(async move {
                        let _ = stream.try_write(b"full");
                    }),
                }
            },
            |_| async {},
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 6];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"served");
        assert_eq!(read_all(addr).await, b"full");
        let _ = stop.send(());
        let drained = server.await.unwrap();
        assert_eq!(drained, Drained { open: 1, cut: 1 });
    }

    #[tokio::test]
    async fn shutdown_lets_tasks_finish_within_the_grace() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (told_tx, told_rx) = oneshot::channel::<usize>();
        let (finish_tx, finish_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            config(8, Duration::from_secs(10)),
            async {
                let _ = stopped.await;
            },
            move |accepted: Accepted| {
                let mut finish = finish_rx.clone();
                let stream = accepted.stream;
                let permit = accepted.permit.unwrap();
                Verdict::Serve::<_, std::future::Ready<()>>(permit, async move {
                    let _ = finish.wait_for(|finish| *finish).await;
                    let _ = stream.try_write(b"done");
                })
            },
            move |open| {
                let _ = told_tx.send(open);
                async move {
                    let _ = finish_tx.send(true);
                }
            },
        ));
        let reader = tokio::spawn(read_all(addr));
        // Let the connection be accepted before stopping.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        assert_eq!(told_rx.await.unwrap(), 1);
        assert_eq!(reader.await.unwrap(), b"done");
        let drained = server.await.unwrap();
        assert_eq!(drained, Drained { open: 1, cut: 0 });
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[test]
    fn a_bucket_slot_gives_its_share_back_when_dropped() {
        let bucket = Bucketing::default().bucket("203.0.113.9".parse().unwrap());
        let table = Arc::new(Mutex::new(OpenCounts::default()));
        let take = |open: &mut OpenCounts| open.try_open(bucket, 1).then_some(bucket).ok_or(());
        let slot = BucketSlot::take(&table, take).unwrap();
        assert_eq!(slot.bucket(), bucket);
        assert!(
            BucketSlot::take(&table, take).is_err(),
            "the bucket is full"
        );
        assert_eq!(table.lock().unwrap().count(bucket), 1);
        drop(slot);
        assert!(table.lock().unwrap().is_empty());
        assert!(BucketSlot::take(&table, take).is_ok());
    }

    #[tokio::test]
    async fn a_refusal_is_read_whole_then_the_connection_closes() {
        // Unread input at the server must not turn its close into a reset.
        let (got, _) = refuse_one(b"go away\n", 64 * 1024).await;
        assert_eq!(got, b"go away\n");
    }

    #[tokio::test]
    async fn an_empty_refusal_closes_at_once() {
        let (got, took) = refuse_one(b"", 0).await;
        assert!(got.is_empty());
        // The client does not close its side: a linger would wait its second.
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    /// Refuses one loopback connection with `frame` after the client sent
    /// `sends` bytes; what the client read (a reset fails the test), and
    /// how long the refusal took.
    async fn refuse_one(frame: &'static [u8], sends: usize) -> (Vec<u8>, Duration) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&vec![1u8; sends]).await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        });
        let (stream, _) = listener.accept().await.unwrap();
        let started = tokio::time::Instant::now();
        refuse(stream, frame, LINGER_AT_MOST).await;
        let took = started.elapsed();
        (client.await.unwrap(), took)
    }
}
