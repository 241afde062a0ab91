//! `ferry serve --config FILE` and the FERRY_* variables, with the real
//! binary: a server started from a config file serves a real transfer,
//! and `--print-config` shows which of flag, environment, file and
//! default each option came from.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::Duration;

use common::*;

#[test]
fn a_server_from_a_config_file_serves_a_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    fs::write(
        &config,
        "# the server of this test\nlisten = \"127.0.0.1:0\"\nstun-listen = \"127.0.0.1:0\"\n\
         stun_second_port = 0\nno_relay = true\n",
    )
    .unwrap();
    let mut cmd = ferry();
    cmd.args(["serve", "--json", "--config"]).arg(&config);
    let mut server = Proc::spawn(cmd);
    let listening = server.wait_event("listening", Duration::from_secs(20));
    assert_eq!(
        listening["relay"], false,
        "no_relay from the file: {listening}"
    );
    let signal = listening["signal"].as_str().unwrap().to_string();
    assert!(signal.starts_with("127.0.0.1:"), "{signal}");

    let src = dir.path().join("f.bin");
    random_file(&src, 300 * 1024);
    let out = dir.path().join("out");
    let mut send = ferry();
    send.args(["send", "--json", "--server", &signal]).arg(&src);
    let mut send = Proc::spawn(send);
    let code = send.wait_event("code", Duration::from_secs(20))["code"]
        .as_str()
        .unwrap()
        .to_string();
    let mut recv = ferry();
    recv.args(["receive", "--json", "--yes", "--server", &signal, "--out"])
        .arg(&out)
        .env("FERRY_CODE", &code);
    let mut recv = Proc::spawn(recv);
    finish_both(&mut send, &mut recv);
    assert_same_file(&src, &out.join("f.bin"));
    server.kill();
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    fs::write(
        &config,
        "nameplate_ttl = 60\nmax_nameplates = 7\nrelay_rate = \"1M\"\nmax_connections = 9\n",
    )
    .unwrap();
    let output = ferry()
        .args(["serve", "--print-config", "--max-connections", "3"])
        .env("FERRY_CONFIG", &config)
        .env("FERRY_NAMEPLATE_TTL", "90")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("max_connections = 3  # command line"),
        "{text}"
    );
    assert!(
        text.contains("nameplate_ttl = 90  # environment FERRY_NAMEPLATE_TTL"),
        "{text}"
    );
    assert!(text.contains("max_nameplates = 7  # config file"), "{text}");
    assert!(
        text.contains("relay_rate = \"1M\"  # config file"),
        "{text}"
    );
    assert!(text.contains("shutdown_grace = 5  # default"), "{text}");
}

#[test]
fn an_unknown_key_is_a_usage_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    fs::write(&config, "listen = \"127.0.0.1:0\"\nrelay_rat = \"1M\"\n").unwrap();
    let output = ferry()
        .args(["relay", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("unknown key relay_rat"), "{text}");
    assert!(text.contains("relay_rate"), "lists the keys: {text}");
}

#[test]
fn log_format_json_writes_one_object_per_line_on_stderr() {
    use std::io::BufRead;
    let mut child = ferry()
        .args([
            "serve",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--stun-listen",
            "127.0.0.1:0",
            "--stun-second-port",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Every line is an object; one of the first says the server listens.
    let mut listening = None;
    for line in std::io::BufReader::new(stderr).lines().take(10) {
        let line = line.unwrap();
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {line}");
        });
        if log["message"] == "server listening" {
            listening = Some(log);
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let log = listening.expect("no 'server listening' in the first lines");
    assert_eq!(log["level"], "INFO", "{log}");
    assert_eq!(log["message"], "server listening", "{log}");
    assert!(
        log["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{log}"
    );
    assert!(log["timestamp"].is_string(), "{log}");
}

#[test]
fn the_example_config_in_contrib_is_a_good_one() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/serve.example.toml");
    let output = ferry()
        .args(["serve", "--print-config", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("listen = \"0.0.0.0:443\"  # config file"),
        "{text}"
    );
    assert!(
        text.contains("relay_rate = \"64M\"  # config file"),
        "{text}"
    );
}

#[test]
fn both_peers_take_the_server_and_the_folder_from_their_client_file() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("config");
    fs::create_dir_all(xdg.join("ferry")).unwrap();
    let out = dir.path().join("received");
    fs::write(
        xdg.join("ferry/config.toml"),
        format!(
            "server = \"{}\"\n[receive]\nout = \"{}\"\n",
            server.addr,
            out.display()
        ),
    )
    .unwrap();
    let src = dir.path().join("f.bin");
    random_file(&src, 100 * 1024);
    let mut send = ferry();
    send.args(["send", "--json"])
        .arg(&src)
        .env("XDG_CONFIG_HOME", &xdg);
    let mut send = Proc::spawn(send);
    let code = send.wait_event("code", Duration::from_secs(20))["code"]
        .as_str()
        .unwrap()
        .to_string();
    let mut recv = ferry();
    recv.args(["receive", "--json", "--yes"])
        .env("XDG_CONFIG_HOME", &xdg)
        .env("FERRY_CODE", &code);
    let mut recv = Proc::spawn(recv);
    finish_both(&mut send, &mut recv);
    assert_same_file(&src, &out.join("f.bin"));

    let shown = ferry()
        .args(["config", "--json"])
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let event: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(event["client_file_exists"], true, "{event}");
    assert!(
        event["client_file"]
            .as_str()
            .unwrap()
            .ends_with("ferry/config.toml"),
        "{event}"
    );
}
