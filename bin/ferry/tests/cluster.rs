//! Several real `ferry serve --cluster` instances on 127.0.0.1 sharing one
//! real `redis-server` (started here, killed by its PID at the end): a
//! sender on one instance and a receiver on another pair and transfer; a
//! wrong code burns the nameplate everywhere; an unreachable Redis stops
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
