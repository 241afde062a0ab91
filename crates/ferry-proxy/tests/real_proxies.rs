//! The dialer against real proxies from Debian's packages, tinyproxy
//! (HTTP CONNECT) and microsocks (SOCKS5), all on loopback, with a real
//! echo server as the target.
//!
//! Ignored by default, as they need the two programs:
//! `scripts/e2e-proxy.sh` installs them and runs these with `--ignored`
//! (or: `apt-get install tinyproxy microsocks` and
//! `cargo test -p ferry-proxy --test real_proxies -- --ignored`).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_proxy::{ProxyError, ProxyUrl, Target, connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(5);

/// A proxy process, killed (by its own PID) when dropped.
struct Proxy {
    child: Child,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy did not start listening on port {port}");
}

/// tinyproxy on loopback, CONNECT allowed only to `connect_port`.
async fn tinyproxy(connect_port: u16, auth: Option<(&str, &str)>) -> Proxy {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = format!(
        "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 10\nMaxClients 10\n\
         LogLevel Info\nConnectPort {connect_port}\n"
    );
    if is_root() {
        conf.push_str("User nobody\nGroup nogroup\n");
    }
    if let Some((user, password)) = auth {
        conf.push_str(&format!("BasicAuth {user} {password}\n"));
    }
    let path = dir.path().join("tinyproxy.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tinyproxy (apt-get install tinyproxy)");
    wait_listening(port).await;
    Proxy {
        child,
        port,
        _dir: Some(dir),
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

async fn microsocks(auth: Option<(&str, &str)>) -> Proxy {
    let port = free_port();
    let mut command = Command::new("microsocks");
    command.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((user, password)) = auth {
        command.args(["-u", user, "-P", password]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("microsocks (apt-get install microsocks)");
    wait_listening(port).await;
    Proxy {
        child,
        port,
        _dir: None,
    }
}

/// An echo server: answers each connection's bytes with the same bytes.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn url(text: &str) -> ProxyUrl {
    text.parse().unwrap()
}

async fn echoes(proxy: &ProxyUrl, target: &Target) {
    let mut stream = connect(proxy, target, WAIT).await.unwrap();
    // The first bytes the target sends back are ours: nothing of the
    // handshake is left in the stream.
    stream.write_all(b"ferry through the proxy").await.unwrap();
    let mut back = [0u8; 23];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ferry through the proxy");
}

fn closed_port() -> u16 {
    free_port()
}

#[tokio::test]
#[ignore = "needs tinyproxy: scripts/e2e-proxy.sh runs it"]
async fn http_connect_through_tinyproxy_with_and_without_auth() {
    let target: Target = echo().await.into();
    let proxy = tinyproxy(target.port, None).await;
    echoes(&url(&format!("http://127.0.0.1:{}", proxy.port)), &target).await;
    // The host name goes to the proxy.
    let named: Target = format!("localhost:{}", target.port).parse().unwrap();
    echoes(&url(&format!("http://localhost:{}", proxy.port)), &named).await;

    // A port its ConnectPort does not allow: 403, named as a refusal.
    let other: Target = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let err = connect(
        &url(&format!("http://127.0.0.1:{}", proxy.port)),
        &other,
        WAIT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProxyError::Refused { .. }), "{err}");
    assert!(err.to_string().contains(&other.to_string()), "{err}");

    let locked = tinyproxy(target.port, Some(("alice", "s3cret"))).await;
    echoes(
        &url(&format!("http://alice:s3cret@127.0.0.1:{}", locked.port)),
        &target,
    )
    .await;
    for wrong in [
        format!("http://127.0.0.1:{}", locked.port),
        format!("http://alice:guess@127.0.0.1:{}", locked.port),
    ] {
        let err = connect(&url(&wrong), &target, WAIT).await.unwrap_err();
        assert!(matches!(err, ProxyError::Auth { .. }), "{err}");
        assert!(err.to_string().contains("user name"), "{err}");
        assert!(!err.to_string().contains("guess"), "{err}");
    }
}

#[tokio::test]
#[ignore = "needs tinyproxy: scripts/e2e-proxy.sh runs it"]
async fn tinyproxy_that_cannot_reach_the_target_says_so() {
    let port = closed_port();
    let proxy = tinyproxy(port, None).await;
    let target: Target = format!("127.0.0.1:{port}").parse().unwrap();
    let err = connect(
        &url(&format!("http://127.0.0.1:{}", proxy.port)),
        &target,
        WAIT,
    )
    .await
    .unwrap_err();
    assert!(err.is_target_unreachable(), "{err}");
}

#[tokio::test]
#[ignore = "needs microsocks: scripts/e2e-proxy.sh runs it"]
async fn socks5_through_microsocks_with_and_without_auth() {
    let target: Target = echo().await.into();
    let named: Target = format!("localhost:{}", target.port).parse().unwrap();
    let open = microsocks(None).await;
    for scheme in ["socks5", "socks5h"] {
        let proxy = url(&format!("{scheme}://127.0.0.1:{}", open.port));
        echoes(&proxy, &target).await;
        echoes(&proxy, &named).await;
    }
    let closed: Target = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let err = connect(
        &url(&format!("socks5h://127.0.0.1:{}", open.port)),
        &closed,
        WAIT,
    )
    .await
    .unwrap_err();
    assert!(err.is_target_unreachable(), "{err}");

    let locked = microsocks(Some(("bob", "pa55"))).await;
    echoes(
        &url(&format!("socks5h://bob:pa55@127.0.0.1:{}", locked.port)),
        &named,
    )
    .await;
    for wrong in [
        format!("socks5h://127.0.0.1:{}", locked.port),
        format!("socks5h://bob:nope@127.0.0.1:{}", locked.port),
    ] {
        let err = connect(&url(&wrong), &named, WAIT).await.unwrap_err();
        assert!(matches!(err, ProxyError::Auth { .. }), "{wrong}: {err}");
    }
}

#[tokio::test]
async fn a_proxy_that_is_not_there_is_named_as_unreachable() {
    let target: Target = echo().await.into();
    for scheme in ["http", "socks5h"] {
        let proxy = url(&format!("{scheme}://127.0.0.1:{}", closed_port()));
        let err = connect(&proxy, &target, WAIT).await.unwrap_err();
        assert!(matches!(err, ProxyError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&proxy.to_string()), "{err}");
    }
}

#[tokio::test]
async fn something_that_is_not_a_proxy_is_a_protocol_error() {
    // A real server of another protocol: our echo server answers CONNECT
    // with CONNECT.
    let not_a_proxy = echo().await;
    let target: Target = echo().await.into();
    let err = connect(&url(&format!("http://{not_a_proxy}")), &target, WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Protocol { .. }), "{err}");
    let err = connect(&url(&format!("socks5h://{not_a_proxy}")), &target, WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Protocol { .. }), "{err}");
}
