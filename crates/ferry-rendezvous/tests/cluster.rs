//! Three rendezvous servers on 127.0.0.1 sharing one directory act as one
//! server: each test runs against the in-memory directory and against a
//! real `redis-server`.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use ferry_cluster::testing::RedisServer;
use ferry_cluster::{Directory, MemoryCluster, RedisDirectory};
use ferry_proto::signal::ErrorCode;
use ferry_rendezvous::{
    Config, ReleaseReason, ServerConfig, SignalClient, SignalError, SignalEvent, serve,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;

struct Instance {
    addr: String,
    _stop: oneshot::Sender<()>,
}

async fn start(directory: Directory) -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServerConfig {
        rendezvous: Config {
            heartbeat: Duration::from_secs(1),
            ..Config::default()
        },
        // All clients come from 127.0.0.1.
        max_connections_per_ip: 1000,
        connections_per_second: 1000.0,
        connection_burst: 1000.0,
        cluster: Some(directory),
        ..ServerConfig::default()
    };
    tokio::spawn(serve(listener, config, async {
        let _ = stopped.await;
    }));
    Instance { addr, _stop: stop }
}

async fn cluster(dirs: [Directory; 3]) -> [Instance; 3] {
    let [a, b, c] = dirs;
    [start(a).await, start(b).await, start(c).await]
}

fn memory() -> [Directory; 3] {
    let cluster = MemoryCluster::new();
    ["one", "two", "three"].map(|name| cluster.join(name).unwrap())
}

async fn redis(server: &RedisServer) -> [Directory; 3] {
    let mut dirs = Vec::new();
    for name in ["one", "two", "three"] {
        dirs.push(RedisDirectory::connect(&server.url(), name).await.unwrap());
    }
    dirs.try_into().unwrap()
}

async fn client(instance: &Instance) -> SignalClient {
    SignalClient::connect(&instance.addr).await.unwrap().0
}

async fn event(client: &mut SignalClient) -> SignalEvent {
    timeout(Duration::from_secs(10), client.recv())
        .await
        .unwrap()
        .unwrap()
}

/// A sender on instance 1 and a receiver on instance 2 pair and talk both
/// ways, messages sent before the claim included.
async fn pair_across_instances(nodes: &[Instance; 3]) {
    let mut sender = client(&nodes[0]).await;
    let nameplate = sender.allocate().await.unwrap();
    sender.send("early".into()).await.unwrap();
    let mut receiver = client(&nodes[1]).await;
    receiver.claim(nameplate).await.unwrap();
    assert_eq!(event(&mut sender).await, SignalEvent::PeerJoined);
    assert_eq!(
        event(&mut receiver).await,
        SignalEvent::Message("early".into())
    );
    receiver.send("hello from two".into()).await.unwrap();
    assert_eq!(
        event(&mut sender).await,
        SignalEvent::Message("hello from two".into())
    );
    // Beyond a heartbeat or two: the proxied side answers the home's pings.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sender.send("still here".into()).await.unwrap();
    assert_eq!(
        event(&mut receiver).await,
        SignalEvent::Message("still here".into())
    );
    receiver.release(Some(ReleaseReason::Done)).await.unwrap();
    assert_eq!(
        event(&mut sender).await,
        SignalEvent::PeerLeft(Some(ReleaseReason::Done))
    );
}

/// A wrong code burns the nameplate on every instance; a third claimant
/// is refused as taken.
async fn one_guess_and_two_sides_everywhere(nodes: &[Instance; 3]) {
    let mut sender = client(&nodes[0]).await;
    let nameplate = sender.allocate().await.unwrap();
    let mut receiver = client(&nodes[1]).await;
    receiver.claim(nameplate).await.unwrap();
    assert_eq!(event(&mut sender).await, SignalEvent::PeerJoined);
    let mut third = client(&nodes[2]).await;
    let taken = third.claim(nameplate).await.unwrap_err();
    assert!(
        matches!(taken, SignalError::NameplateTaken { .. }),
        "{taken:?}"
    );
    receiver
        .release(Some(ReleaseReason::BadCode))
        .await
        .unwrap();
    assert_eq!(
        event(&mut sender).await,
        SignalEvent::PeerLeft(Some(ReleaseReason::BadCode))
    );
    // Burnt: unknown on the home and on the others.
    for node in nodes {
        let mut late = client(node).await;
        let unknown = late.claim(nameplate).await.unwrap_err();
        assert!(
            matches!(unknown, SignalError::UnknownNameplate { .. }),
            "{unknown:?}"
        );
    }
}

/// Allocations from all instances at once never get the same number,
/// though each instance picks from 1..=99 by its own count.
async fn allocations_never_collide(nodes: &[Instance; 3]) {
    let mut tasks = Vec::new();
    for node in nodes {
        for _ in 0..20 {
            let addr = node.addr.clone();
            tasks.push(tokio::spawn(async move {
                let (mut client, _) = SignalClient::connect(&addr).await.unwrap();
                let number = client.allocate().await.unwrap();
                (number, client)
            }));
        }
    }
    let mut numbers = Vec::new();
    let mut holders = Vec::new();
    for task in tasks {
        let (number, client) = task.await.unwrap();
        numbers.push(number);
        holders.push(client);
    }
    let distinct: HashSet<_> = numbers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        numbers.len(),
        "a nameplate was handed out twice: {numbers:?}"
    );
    // Each of them is claimable, from any instance.
    for (i, number) in numbers.iter().enumerate().take(6) {
        let mut claimer = client(&nodes[i % 3]).await;
        claimer.claim(*number).await.unwrap();
    }
}

async fn reserve_of_a_number_held_elsewhere_is_taken(nodes: &[Instance; 3]) {
    let mut first = client(&nodes[0]).await;
    first.reserve(4242).await.unwrap();
    let mut second = client(&nodes[1]).await;
    let error = second.reserve(4242).await.unwrap_err();
    assert!(
        matches!(
            error,
            SignalError::Server {
                code: ErrorCode::NameplateTaken,
                ..
            }
        ),
        "{error:?}"
    );
}

/// The home of a rejoin channel stops while a peer waits there: the
/// peers, back through the other instances, meet (the channel taken over
/// by the first to come back), at once, as the home left the directory.
async fn a_stopped_home_hands_its_channels_over(nodes: [Instance; 3]) {
    let [one, two, three] = nodes;
    let channel = "cd".repeat(16);
    let mut first = client(&one).await;
    assert!(!first.rejoin(&channel).await.unwrap(), "nobody there yet");
    drop(one);
    // Told the server stops (it has left the directory by then).
    let told = timeout(Duration::from_secs(10), async {
        loop {
            match first.recv().await {
                Ok(event) => eprintln!("while the home stops: {event:?}"),
                Err(error) => return error,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(
            told,
            SignalError::Server {
                code: ErrorCode::ShuttingDown,
                ..
            } | SignalError::ServerGone { .. }
        ),
        "{told:?}"
    );
    let mut first = client(&two).await;
    assert!(!first.rejoin(&channel).await.unwrap(), "waits at two");
    let mut second = client(&three).await;
    assert!(second.rejoin(&channel).await.unwrap(), "joined at two");
    assert_eq!(event(&mut first).await, SignalEvent::PeerJoined);
    second.send("back".into()).await.unwrap();
    assert_eq!(event(&mut first).await, SignalEvent::Message("back".into()));
}

async fn all(nodes: [Instance; 3]) {
    pair_across_instances(&nodes).await;
    one_guess_and_two_sides_everywhere(&nodes).await;
    allocations_never_collide(&nodes).await;
    reserve_of_a_number_held_elsewhere_is_taken(&nodes).await;
    a_stopped_home_hands_its_channels_over(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_memory_act_as_one_server() {
    all(cluster(memory()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_act_as_one_server() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    all(cluster(redis(&server).await).await).await;
}

/// Redis gone: new pairings are refused with server-full and a message
/// that says to try again; Redis back: they work again, ferry untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_refuses_pairings_then_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let nodes = cluster(redis(&server).await).await;
    server.stop();
    let mut sender = client(&nodes[0]).await;
    let error = sender.allocate().await.unwrap_err();
    let SignalError::Server { code, message } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*code, ErrorCode::ServerFull);
    assert!(message.contains("try again"), "{message}");
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let nameplate = loop {
        let mut sender = client(&nodes[0]).await;
        if let Ok(nameplate) = sender.allocate().await {
            break (nameplate, sender);
        }
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (nameplate, mut sender) = nameplate;
    // The inbox may need its back-off to re-subscribe; retry the claim.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut receiver = loop {
        let mut receiver = client(&nodes[1]).await;
        if receiver.claim(nameplate).await.is_ok() {
            break receiver;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery of claims"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(event(&mut sender).await, SignalEvent::PeerJoined);
    receiver.send("back".into()).await.unwrap();
    assert_eq!(
        event(&mut sender).await,
        SignalEvent::Message("back".into())
    );
}
