//! Runs the real `ferry` binary: a real server on 127.0.0.1 and real
//! clients, with JSON output parsed line by line.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod certs;
pub mod http;

#[allow(unused_imports)]
pub use http::http_get;

/// How long any one ferry process may run in a test.
pub const LIMIT: Duration = Duration::from_secs(120);

/// The binary under test.
pub fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // No config from the machine: no FERRY_* settings, and a client
    // config folder that holds nothing.
    cmd.env_remove("FERRY_SERVER")
        .env_remove("FERRY_CODE")
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_LOG_FORMAT")
        .env("XDG_CONFIG_HOME", "/nonexistent/ferry-tests")
        .env("NO_COLOR", "1");
    cmd
}

/// A running ferry process whose stdout lines are collected.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    stderr: Receiver<String>,
    stdin: Option<ChildStdin>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Proc {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stdin,
        }
    }

    /// Waits for a JSON event named `name` on stdout and returns it.
    pub fn wait_event(&mut self, name: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["event"] == name {
                            return v;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {name:?} event within {within:?}; stdout so far: {:?}; stderr: {}",
                        self.seen,
                        self.stderr_text()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "ferry exited before a {name:?} event; stdout: {:?}; stderr: {}",
                        self.seen,
                        self.stderr_text()
                    )
                }
            }
        }
    }

    /// Waits for a stdout line for which `pred` holds and returns it (for
    /// human output, without `--json`).
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line within {within:?}; stdout so far: {:?}; stderr: {}",
                    self.seen,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Writes a line to the process's stdin.
    pub fn answer(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the exit (killing it after `LIMIT`); returns the exit code
    /// and collects the remaining stdout.
    pub fn finish(&mut self) -> i32 {
        self.stdin.take();
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "ferry did not finish within {LIMIT:?}; stdout: {:?}",
                    self.seen
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        status.code().unwrap_or(-1)
    }

    /// All JSON events named `name` seen so far.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == name)
            .collect()
    }

    /// What the process printed on stderr (after it exited).
    pub fn stderr_text(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferry serve --json` signalling on `listen`, STUN on loopback
/// ports the system picks, with `extra` flags.
fn serve_on(listen: &str, extra: &[&str]) -> Proc {
    serve_with_stun(listen, "127.0.0.1:0", extra)
}

/// [`serve_on`] with STUN on `stun` (port 0: one the system picks).
fn serve_with_stun(listen: &str, stun: &str, extra: &[&str]) -> Proc {
    let mut cmd = ferry();
    cmd.args([
        "serve",
        "--json",
        "--listen",
        listen,
        "--stun-listen",
        stun,
        "--stun-second-port",
        "0",
    ])
    .args(extra);
    Proc::spawn(cmd)
}

/// Waits for both sides and asserts both exited 0 (with what they said
/// otherwise).
pub fn finish_both(send: &mut Proc, recv: &mut Proc) {
    assert_eq!(
        recv.finish(),
        0,
        "receiver: {:?} {}",
        recv.seen,
        recv.stderr_text()
    );
    assert_eq!(
        send.finish(),
        0,
        "sender: {:?} {}",
        send.seen,
        send.stderr_text()
    );
}

/// A real `ferry serve` on 127.0.0.1 with an ephemeral port.
pub struct Server {
    pub addr: String,
    /// Its `listening` event.
    pub listening: Value,
    proc: Proc,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        Self::start_on("127.0.0.1:0", "127.0.0.1:0", extra)
    }

    /// A server signalling on `listen` with STUN on `stun` (e.g. both
    /// on `[::1]:0`).
    pub fn start_on(listen: &str, stun: &str, extra: &[&str]) -> Server {
        let mut proc = serve_with_stun(listen, stun, extra);
        let ev = proc.wait_event("listening", Duration::from_secs(20));
        let addr = ev["signal"].as_str().unwrap().to_string();
        Server {
            addr,
            listening: ev,
            proc,
        }
    }

    /// Kills the server: every connection through it breaks at once.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Stops the server as a service manager does (SIGTERM, by its PID),
    /// waits for it to exit, and starts a fresh one on the same address
    /// after `down`.
    pub fn restart_gracefully(&mut self, down: Duration, extra: &[&str]) {
        let status = Command::new("kill")
            .args(["-TERM", &self.proc.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.proc.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "ferry serve ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(down);
        self.proc = serve_on(&self.addr, extra);
        self.proc.wait_event("listening", Duration::from_secs(20));
    }

    /// Kills the server (every connection through it breaks at once, the
    /// relayed ones included) and starts a fresh one on the same address
    /// after `down`.
    pub fn restart(&mut self, down: Duration, extra: &[&str]) {
        self.proc.kill();
        thread::sleep(down);
        self.proc = serve_on(&self.addr, extra);
        self.proc.wait_event("listening", Duration::from_secs(20));
    }
}

/// A real `ferry relay` (the relay alone) on `listen` (e.g. 127.0.0.2:0),
/// checking tokens with the secret in `secret_file`.
pub struct Relay {
    pub addr: String,
    proc: Proc,
}

impl Relay {
    pub fn start(listen: &str, secret_file: &Path) -> Relay {
        let mut cmd = ferry();
        cmd.args(["relay", "--json", "--listen", listen, "--relay-secret-file"])
            .arg(secret_file);
        let mut proc = Proc::spawn(cmd);
        let ev = proc.wait_event("listening", Duration::from_secs(20));
        let addr = ev["relay"].as_str().unwrap().to_string();
        Relay { addr, proc }
    }
}

/// The first word of `line` shaped like a ferry code (`7-orbit-lantern`).
pub fn code_in(line: &str) -> Option<String> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| {
            let parts: Vec<&str> = w.split('-').collect();
            parts.len() == 3
                && parts[0].parse::<u32>().is_ok()
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        })
        .map(str::to_string)
}

/// Writes a fresh relay secret (32 random bytes as hex) to `path`.
pub fn relay_secret(path: &Path) {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, text + "\n").unwrap();
}

/// Starts `ferry send --json` and waits for its code.
/// A code for the same nameplate as `code` with other words: a wrong
/// guess that reaches the sender's nameplate.
pub fn wrong_code_for(code: &str) -> String {
    let nameplate = code.split('-').next().unwrap();
    let words = ferry_proto::code::WORDS;
    let (w1, w2) = if code.ends_with(&format!("-{}-{}", words[0], words[0])) {
        (words[1], words[1])
    } else {
        (words[0], words[0])
    };
    format!("{nameplate}-{w1}-{w2}")
}

pub fn start_send(server: &Server, args: &[&str]) -> (Proc, String) {
    let mut cmd = ferry();
    cmd.args(["send", "--json", "--server", &server.addr])
        .args(args);
    let mut proc = Proc::spawn(cmd);
    let code = proc.wait_event("code", Duration::from_secs(30))["code"]
        .as_str()
        .unwrap()
        .to_string();
    (proc, code)
}

/// Starts `ferry receive --json CODE --out OUT` with extra arguments.
pub fn start_receive(server: &Server, code: &str, out: &Path, args: &[&str]) -> Proc {
    let mut cmd = ferry();
    cmd.args(["receive", "--json", "--server", &server.addr, "--out"])
        .arg(out)
        .arg(code)
        .args(args);
    Proc::spawn(cmd)
}

/// A slowed-down transfer of one random file, both sides running, for
/// tests that break or stop it halfway.
pub struct Halfway {
    pub send: Proc,
    pub recv: Proc,
    /// The file sent.
    pub file: std::path::PathBuf,
    /// The receiver's `--out`.
    pub dst: tempfile::TempDir,
    /// Where the receiver keeps the verified bytes so far.
    pub part: std::path::PathBuf,
    _src: tempfile::TempDir,
}

impl Halfway {
    /// Sends `name` (`len` random bytes) at `rate` (`--limit-rate`), both
    /// sides with `extra` arguments, and returns once the receiver holds
    /// `at_least` bytes.
    pub fn start(
        server: &Server,
        name: &str,
        len: usize,
        rate: &str,
        extra: &[&str],
        at_least: u64,
    ) -> Halfway {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let file = src.path().join(name);
        random_file(&file, len);
        let part = dst.path().join(format!("{name}.ferry-part"));
        let send_args = [extra, &["--limit-rate", rate, file.to_str().unwrap()]].concat();
        let (send, code) = start_send(server, &send_args);
        let recv = start_receive(server, &code, dst.path(), &[extra, &["--yes"]].concat());
        wait_for_part(&part, at_least, &recv);
        Halfway {
            send,
            recv,
            file,
            dst,
            part,
            _src: src,
        }
    }
}

/// Waits (at most 60 s) until the receiver's part file holds `at_least`
/// bytes: the moment to break or stop a transfer halfway.
pub fn wait_for_part(part: &Path, at_least: u64, recv: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(part).map(|m| m.len()).unwrap_or(0) < at_least {
        assert!(
            Instant::now() < deadline,
            "the part file never grew: {:?}",
            recv.seen
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `len` random bytes to `path`.
pub fn random_file(path: &Path, len: usize) {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(path, data).unwrap();
}

/// Asserts that two files have the same bytes (without printing them).
pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("read {}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("read {}: {e}", b.display()));
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}
