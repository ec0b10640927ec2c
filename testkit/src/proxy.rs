//! A TCP proxy a test puts between the system and one of its dependencies (Postgres, Redis,
//! RabbitMQ), to take that dependency away from this test's system only: [`TcpProxy::cut`]
//! resets every open connection and every new one until [`TcpProxy::restore`], which is what a
//! restarting server looks like from the client's side. Other tests, on the same servers, are
//! not touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: open connections watch it and close.
    cuts: watch::Sender<u64>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let accepting = tokio::spawn({
            let (up, cuts) = (up.clone(), cuts.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // reset: the server is "down"
                        continue;
                    }
                    let mut cut = cuts.subscribe();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let mut client = client;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            }
        });
        Self {
            addr,
            up,
            cuts,
            accepting,
        }
    }

    /// A proxy in front of the server `url` names (`postgres://`, `redis://`, `amqp://`; the
    /// scheme's usual port when none is given).
    pub async fn in_front_of(url: &str) -> Self {
        let parsed = reqwest::Url::parse(url).expect("a URL");
        let port = parsed.port().unwrap_or(match parsed.scheme() {
            "postgres" | "postgresql" => 5432,
            "redis" => 6379,
            "amqp" => 5672,
            other => panic!("no usual port for {other}://"),
        });
        Self::start(&format!("{}:{port}", parsed.host_str().expect("a host"))).await
    }

    /// `url` (of the server this proxy is in front of) going through the proxy instead.
    pub fn redirect(&self, url: &str) -> String {
        let mut parsed = reqwest::Url::parse(url).expect("a URL");
        parsed.set_host(Some("127.0.0.1")).expect("host");
        parsed.set_port(Some(self.addr.port())).expect("port");
        parsed.to_string()
    }

    /// `host:port` to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dependency goes away: open connections are closed, new ones reset.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The dependency is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}
