//! Several real `ferry serve --cluster` instances on 127.0.0.1 sharing one
//! real `redis-server` (started here, killed by its PID at the end): a
//! sender on one instance and a receiver on another pair and transfer; a
//! split pair meets at the relay of the sender's instance (plain and in
//! TLS); a wrong code burns the nameplate everywhere; an unreachable Redis stops
//! `ferry serve` at start with a clear error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferry_cluster::testing::{RedisServer, free_port};

fn instance(redis: &RedisServer, name: &str) -> Server {
    Server::start_with(&["--cluster", &redis.url(), "--instance-id", name])
}

#[test]
fn a_sender_on_one_instance_and_a_receiver_on_another_transfer_a_file() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let one = instance(&redis, "one");
    let two = instance(&redis, "two");
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("photo.bin");
    random_file(&file, 2_000_000);
    let (mut send, code) = start_send(&one, &[file.to_str().unwrap()]);
    let mut recv = start_receive(&two, &code, dst.path(), &["--yes"]);
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("photo.bin"));
}

#[test]
fn a_pair_split_over_two_instances_meets_at_the_relay_of_the_senders() {
    // Each instance runs a relay of its own: the sender's instance (the
    // nameplate's home) names its relay with the token, and the receiver,
    // which came in through the other instance, joins it there.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let one = instance(&redis, "one");
    let two = instance(&redis, "two");
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("photo.bin");
    random_file(&file, 3_000_000);
    let relay = ["--force-path", "relay"];
    let (mut send, code) = start_send(&one, &[file.to_str().unwrap(), relay[0], relay[1]]);
    let mut recv = start_receive(&two, &code, dst.path(), &["--yes", relay[0], relay[1]]);
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("photo.bin"));
    for side in [&send, &recv] {
        let path = &side.events("path")[0];
        assert_eq!(path["path"], "relay", "{path}");
        assert_eq!(path["remote"], one.addr.as_str(), "{path}");
    }
}

#[test]
fn in_tls_the_receiver_joins_the_senders_relay_verified_as_its_own_server() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, pem) = certs::ca_and_leaf(dir.path());
    let tls = [
        "--tls-cert",
        pem.cert.to_str().unwrap(),
        "--tls-key",
        pem.key.to_str().unwrap(),
    ];
    let url = redis.url();
    let tls_instance = |name: &str| {
        let mut args = vec!["--cluster", url.as_str(), "--instance-id", name];
        args.extend(tls);
        Server::start_with(&args)
    };
    let one = tls_instance("one");
    let two = tls_instance("two");
    let dst = tempfile::tempdir().unwrap();
    let client = ["--tls-ca", ca.to_str().unwrap(), "--force-path", "relay"];
    let mut args = client.to_vec();
    args.extend(["--text", "across instances, in tls"]);
    let (mut send, code) = start_send(&one, &args);
    let mut args = client.to_vec();
    args.push("--yes");
    let mut recv = start_receive(&two, &code, dst.path(), &args);
    finish_both(&mut send, &mut recv);
    assert_eq!(recv.events("text")[0]["text"], "across instances, in tls");
    let path = &recv.events("path")[0];
    assert_eq!(path["path"], "relay", "{path}");
    assert_eq!(path["remote"], one.addr.as_str(), "{path}");
}

#[test]
fn a_cluster_instance_on_every_address_wants_its_own_address_for_its_relay() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let output = ferry()
        .args(["serve", "--listen", "0.0.0.0:0", "--no-stun", "--cluster"])
        .arg(redis.url())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--advertise HOST:PORT"), "{stderr}");
}

#[test]
fn a_wrong_code_on_another_instance_burns_the_nameplate_on_all() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let one = instance(&redis, "one");
    let two = instance(&redis, "two");
    let three = instance(&redis, "three");
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&one, &["--text", "secret"]);
    let wrong = wrong_code_for(&code);
    let mut recv = start_receive(&two, &wrong, dst.path(), &["--yes"]);
    assert_eq!(recv.finish(), 3, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 3, "sender: {:?}", send.seen);
    let err = &recv.events("error")[0];
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("the code did not match"),
        "{err}"
    );
    // Burnt: the right code finds no sender, on the home nor elsewhere.
    for server in [&one, &three] {
        let mut late = start_receive(server, &code, dst.path(), &["--yes"]);
        assert_ne!(late.finish(), 0, "{:?}", late.seen);
    }
}

#[test]
fn an_unreachable_redis_at_start_is_a_clear_error() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let out = ferry()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-stun",
            "--cluster",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&url[..url.len() - 2]), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.contains("without --cluster"), "{stderr}");
}

#[test]
fn the_cluster_option_shows_in_print_config() {
    let out = ferry()
        .args(["serve", "--print-config"])
        .env("FERRY_CLUSTER", "redis://127.0.0.1:6379/0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster = \"redis://127.0.0.1:6379/0\""),
        "{text}"
    );
}

/// Polls `GET /health` on `metrics` until its status is `want` (at most
/// `secs`); the body then.
fn health_until(metrics: &str, want: u16, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (status, body) = http_get(metrics, "/health");
        if status == want {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health stayed {status} {body:?}, wanted {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn health_reports_the_directory_lost_and_back_and_pairings_resume_by_themselves() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let one = Server::start_with(&[
        "--cluster",
        &redis.url(),
        "--instance-id",
        "one",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = one.listening["metrics"].as_str().unwrap().to_string();
    let body = health_until(&metrics, 200, 5);
    assert_eq!(
        body,
        format!("ok\ncluster: up, {} as instance one\n", redis.url())
    );

    // Redis gone: health says so (the probe notices with no traffic), and
    // a new pairing is refused with a message that says what to do.
    redis.stop();
    let body = health_until(&metrics, 503, 10);
    assert!(body.starts_with("unhealthy\ncluster: down, "), "{body}");
    // The inbox's loss shows at once; the commands' at the next probe.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !http_get(&metrics, "/health").1.contains("does not answer") {
        assert!(std::time::Instant::now() < deadline, "no probe noticed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let scrape = http_get(&metrics, "/metrics").1;
    assert!(
        scrape.contains("\nferry_health_check_up{check=\"cluster\"} 0\n"),
        "{scrape}"
    );
    let mut cmd = ferry();
    cmd.args(["send", "--json", "--server", &one.addr])
        .args(["--text", "while redis is down"]);
    let mut send = Proc::spawn(cmd);
    assert_ne!(send.finish(), 0, "{:?}", send.seen);
    let error = &send.events("error")[0];
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("cannot reach the directory") && message.contains("try again"),
        "{error}"
    );

    // Back: health and pairings recover without restarting ferry.
    redis.restart();
    health_until(&metrics, 200, 20);
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&one, &["--text", "redis is back"]);
    let mut recv = start_receive(&one, &code, dst.path(), &["--yes"]);
    finish_both(&mut send, &mut recv);
    assert_eq!(recv.events("text")[0]["text"], "redis is back");
}
