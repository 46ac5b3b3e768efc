//! A TCP proxy between the app and a real service, that can cut the line.
//!
//! `ChaosProxy::start(target)` listens on `127.0.0.1:0` and forwards every
//! connection to `target`. [`ChaosProxy::cut`] closes every live connection and
//! refuses new ones (accepted, then closed at once, so the client's handshake
//! fails immediately, as against a broker that is down); [`ChaosProxy::restore`]
//! forwards again. Dropping the proxy stops it and closes everything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Whether the line is cut, the token every live connection dies with, and
/// how many connections were refused so far.
struct Line {
    cut: bool,
    live: CancellationToken,
    refused: usize,
}

pub struct ChaosProxy {
    addr: SocketAddr,
    line: Arc<Mutex<Line>>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let line = Arc::new(Mutex::new(Line { cut: false, live: CancellationToken::new(), refused: 0 }));
        let accept = tokio::spawn(accept_loop(listener, target, line.clone()));
        Self { addr, line, accept }
    }

    /// The address clients connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        let mut line = self.line.lock().unwrap();
        line.cut = true;
        line.live.cancel();
        line.live = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.line.lock().unwrap().cut = false;
    }

    /// How many connection attempts were refused while cut.
    pub fn refused(&self) -> usize {
        self.line.lock().unwrap().refused
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.line.lock().unwrap().live.cancel();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, line: Arc<Mutex<Line>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        let live = {
            let mut line = line.lock().unwrap();
            if line.cut {
                line.refused += 1;
                // Refused: the client sees its connection closed before any byte.
                drop(client);
                continue;
            }
            line.live.clone()
        };
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(target).await else { return };
            tokio::select! {
                _ = live.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
            // Both sockets close here.
        });
    }
}

/// `url` (`amqp://user:pass@host:port/vhost`) with its host and port replaced by `addr`.
pub fn redirect_url(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{userinfo}{addr}/{path}")
}

/// The `host:port` of `url`, resolved (AMQP's default port when none is given).
pub async fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL with a scheme").1;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5672") };
    tokio::net::lookup_host(&host_port).await.expect("broker host resolves").next().expect("an address")
}

#[test]
fn urls_are_redirected_to_the_proxy_keeping_credentials_and_vhost() {
    let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
    assert_eq!(redirect_url("amqp://guest:guest@127.0.0.1:5672/%2f", addr), "amqp://guest:guest@127.0.0.1:4242/%2f");
    assert_eq!(redirect_url("amqp://rabbit", addr), "amqp://127.0.0.1:4242/");
}
