//! One contract, both backends: the in-memory directory and a real
//! `redis-server` on loopback pass the same test.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use ferry_cluster::testing::RedisServer;
use ferry_cluster::{
    ALIVE_TTL, ClusterError, Directory, Holder, Key, MemoryCluster, PROBE_INTERVAL, RedisDirectory,
};
use tokio::time::timeout;

/// What every backend must do, for three instances `a`, `b`, `c`.
async fn contract(a: Directory, b: Directory, c: Directory) {
    let np = Key::Nameplate(17);
    let ttl = Duration::from_secs(60);
    // One winner; the others learn who holds it.
    assert_eq!(a.reserve(&np, ttl).await.unwrap(), Holder::Me);
    assert_eq!(a.reserve(&np, ttl).await.unwrap(), Holder::AlreadyMine);
    assert_eq!(
        b.reserve(&np, ttl).await.unwrap(),
        Holder::Other("a".into())
    );
    assert_eq!(c.lookup(&np).await.unwrap().as_deref(), Some("a"));
    assert_eq!(c.lookup(&Key::Nameplate(18)).await.unwrap(), None);
    // Only the holder releases it.
    b.release(&np).await.unwrap();
    assert_eq!(c.lookup(&np).await.unwrap().as_deref(), Some("a"));
    a.release(&np).await.unwrap();
    assert_eq!(c.lookup(&np).await.unwrap(), None);
    assert_eq!(b.reserve(&np, ttl).await.unwrap(), Holder::Me);
    // Channels are another name space.
    let channel = Key::Channel("ab".repeat(16));
    assert_eq!(c.reserve(&channel, ttl).await.unwrap(), Holder::Me);
    assert_eq!(a.lookup(&channel).await.unwrap().as_deref(), Some("c"));
    // Keys expire with their TTL.
    let short = Key::Nameplate(99);
    assert_eq!(
        a.reserve(&short, Duration::from_millis(50)).await.unwrap(),
        Holder::Me
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(b.lookup(&short).await.unwrap(), None);
    assert_eq!(b.reserve(&short, ttl).await.unwrap(), Holder::Me);

    // Inboxes: in order, only to the one named, oversized ones dropped.
    let mut inbox_b = b.subscribe().await.unwrap();
    let mut inbox_c = c.subscribe().await.unwrap();
    for i in 0..50u8 {
        a.publish("b", vec![i; 10]).await.unwrap();
    }
    a.publish("b", vec![0; ferry_cluster::MAX_PAYLOAD + 1])
        .await
        .unwrap();
    a.publish("b", b"last".to_vec()).await.unwrap();
    for i in 0..50u8 {
        let got = timeout(Duration::from_secs(5), inbox_b.recv())
            .await
            .unwrap();
        assert_eq!(got.unwrap(), vec![i; 10]);
    }
    let last = timeout(Duration::from_secs(5), inbox_b.recv())
        .await
        .unwrap();
    assert_eq!(last.unwrap(), b"last");
    assert!(b.dropped() >= 1);
    assert!(inbox_c.try_recv().is_err(), "c got b's payloads");
    // Nobody listens for "nobody": published and lost, not an error.
    a.publish("nobody", b"x".to_vec()).await.unwrap();
    assert!(a.healthy() && b.healthy() && c.healthy());

    // A key held already gets its TTL afresh.
    let renewed = Key::Nameplate(77);
    let brief = Duration::from_millis(300);
    assert_eq!(a.reserve(&renewed, brief).await.unwrap(), Holder::Me);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.reserve(&renewed, brief).await.unwrap(),
        Holder::AlreadyMine
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.lookup(&renewed).await.unwrap().as_deref(), Some("a"));

    // An instance that left holds nothing: a lookup finds its keys free,
    // a reservation takes them over.
    let channel = Key::Channel("cd".repeat(16));
    assert_eq!(a.reserve(&channel, ttl).await.unwrap(), Holder::Me);
    assert_eq!(
        b.reserve(&channel, ttl).await.unwrap(),
        Holder::Other("a".into())
    );
    a.leave().await.unwrap();
    assert_eq!(c.lookup(&channel).await.unwrap(), None);
    assert_eq!(
        b.reserve(&channel, ttl).await.unwrap(),
        Holder::TookOver("a".into())
    );
    assert_eq!(c.lookup(&channel).await.unwrap().as_deref(), Some("b"));
    assert_eq!(
        c.reserve(&channel, ttl).await.unwrap(),
        Holder::Other("b".into())
    );
}

/// Three instances reserving at once from a small space never share a key.
async fn concurrent_reservations_never_collide(dirs: [Directory; 3]) {
    let ttl = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for dir in dirs {
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for number in 1000..1100 {
                if dir.reserve(&Key::Nameplate(number), ttl).await.unwrap() == Holder::Me {
                    won.push(number);
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "a number was won twice");
    assert_eq!(all.len(), 100, "every number was won once");
}

fn memory() -> [Directory; 3] {
    let cluster = MemoryCluster::new();
    ["a", "b", "c"].map(|name| cluster.join(name).unwrap())
}

async fn redis(url: &str) -> [Directory; 3] {
    let mut dirs = Vec::new();
    for name in ["a", "b", "c"] {
        dirs.push(RedisDirectory::connect(url, name).await.unwrap());
    }
    dirs.try_into().unwrap()
}

#[tokio::test]
async fn memory_backend_keeps_the_contract() {
    let [a, b, c] = memory();
    contract(a, b, c).await;
    concurrent_reservations_never_collide(memory()).await;
}

#[tokio::test]
async fn redis_backend_keeps_the_contract() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let [a, b, c] = redis(&server.url()).await;
    contract(a, b, c).await;
    concurrent_reservations_never_collide(redis(&server.url()).await).await;
}

/// A killed instance says nothing: its keys go free once its alive key
/// expires (at most ALIVE_TTL after its last renewal).
#[tokio::test]
async fn a_dead_instances_keys_are_taken_over_once_it_stops_renewing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_secs(60);
    let channel = Key::Channel("ef".repeat(16));
    let a = RedisDirectory::connect(&server.url(), "a").await.unwrap();
    let b = RedisDirectory::connect(&server.url(), "b").await.unwrap();
    assert_eq!(a.reserve(&channel, ttl).await.unwrap(), Holder::Me);
    // Alive past its first TTL: the probe renews it.
    tokio::time::sleep(ALIVE_TTL + PROBE_INTERVAL).await;
    assert_eq!(
        b.reserve(&channel, ttl).await.unwrap(),
        Holder::Other("a".into())
    );
    drop(a);
    let started = tokio::time::Instant::now();
    let taken = loop {
        match b.reserve(&channel, ttl).await.unwrap() {
            Holder::Other(_) => {}
            other => break other,
        }
        assert!(
            started.elapsed() < ALIVE_TTL + PROBE_INTERVAL * 2,
            "a stayed alive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(taken, Holder::TookOver("a".into()));

    // In memory, an instance whose inbox is dropped is gone at once.
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.join("a").unwrap(), cluster.join("b").unwrap());
    let inbox = a.subscribe().await.unwrap();
    assert_eq!(a.reserve(&channel, ttl).await.unwrap(), Holder::Me);
    assert_eq!(b.lookup(&channel).await.unwrap().as_deref(), Some("a"));
    drop(inbox);
    assert_eq!(b.lookup(&channel).await.unwrap(), None);
    assert_eq!(
        b.reserve(&channel, ttl).await.unwrap(),
        Holder::TookOver("a".into())
    );
}

#[tokio::test]
async fn unreachable_redis_at_start_is_a_clear_error() {
    let port = ferry_cluster::testing::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let error = RedisDirectory::connect(&url, "a").await.unwrap_err();
    assert!(
        matches!(error, ClusterError::Unreachable { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    let bad = RedisDirectory::connect("http://x", "a").await.unwrap_err();
    assert!(matches!(bad, ClusterError::BadUrl { .. }), "{bad:?}");
}

#[tokio::test]
async fn redis_lost_and_back_recovers_by_itself() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let a = RedisDirectory::connect(&server.url(), "a").await.unwrap();
    let b = RedisDirectory::connect(&server.url(), "b").await.unwrap();
    let mut inbox = b.subscribe().await.unwrap();
    // An idle instance: no commands, no inbox; only the probe asks.
    let idle = RedisDirectory::connect(&server.url(), "idle")
        .await
        .unwrap();
    assert_eq!(
        idle.status(),
        (true, format!("{} as instance idle", server.url()))
    );
    server.stop();
    let deadline = tokio::time::Instant::now() + PROBE_INTERVAL * 4;
    while idle.healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe did not notice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (healthy, line) = idle.status();
    assert!(!healthy);
    assert!(
        line.contains("does not answer") && line.contains("new pairings are refused"),
        "{line}"
    );
    let lost = a.reserve(&Key::Nameplate(5), Duration::from_secs(60)).await;
    assert!(
        matches!(lost, Err(ClusterError::Unreachable { .. })),
        "{lost:?}"
    );
    assert!(!a.healthy());
    server.restart();
    // The connection manager reconnects; the inbox re-subscribes (back-off
    // up to 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reserved = a.reserve(&Key::Nameplate(5), Duration::from_secs(60)).await;
        if reserved.is_ok() && b.healthy() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not recover: {reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a.healthy());
    // The idle one comes back by its probe alone.
    let deadline = tokio::time::Instant::now() + PROBE_INTERVAL * 4;
    while !idle.healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe did not notice Redis back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.publish("b", b"again".to_vec()).await.unwrap();
    let got = timeout(Duration::from_secs(5), inbox.recv()).await.unwrap();
    assert_eq!(got.unwrap(), b"again");
}
