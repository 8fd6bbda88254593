//! Relays that fail on purpose: S3 answering 503, connections cut or frozen.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

/// An HTTP/1 relay in front of the S3 emulator that answers some requests
/// itself with `503 SlowDown`, as S3 does under load, and forwards the rest.
pub struct FaultRelay {
    pub endpoint: String,
    /// Requests answered with a fault so far.
    pub faults: Arc<std::sync::atomic::AtomicUsize>,
    /// The path of each faulted request, in order: a path faulted twice was
    /// tried again.
    pub faulted: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    /// Relays to `upstream` (`http://host:port`); `fault(method, path, n)`
    /// decides, for the n-th request (from 0), whether to answer 503.
    pub async fn start(
        upstream: &str,
        fault: impl Fn(&http::Method, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(upstream, false, fault).await
    }

    /// Like [`FaultRelay::start`], but a faulted request is never answered:
    /// a store that accepts a call and then hangs.
    pub async fn stalling(
        upstream: &str,
        fault: impl Fn(&http::Method, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(upstream, true, fault).await
    }

    async fn start_with(
        upstream: &str,
        stall: bool,
        fault: impl Fn(&http::Method, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream: std::net::SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let faults = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let faulted: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let paths = faulted.clone();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fault = Arc::new(fault);
        let counter = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (fault, counter, seen, paths) = (fault.clone(), counter.clone(), seen.clone(), paths.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (fault, counter, seen, paths) =
                            (fault.clone(), counter.clone(), seen.clone(), paths.clone());
                        async move {
                            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if fault(req.method(), req.uri().path(), n) {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                paths.lock().unwrap().push(req.uri().path().to_string());
                                if stall {
                                    std::future::pending::<()>().await;
                                }
                                let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                                return Ok::<_, hyper::Error>(
                                    http::Response::builder()
                                        .status(503)
                                        .header("content-type", "application/xml")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                        .unwrap(),
                                );
                            }
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let tcp = tokio::net::TcpStream::connect(upstream).await.expect("upstream");
                            let (mut send, conn) =
                                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
                            tokio::spawn(conn);
                            let resp = send
                                .send_request(http::Request::from_parts(parts, http_body_util::Full::new(body)))
                                .await?;
                            let (parts, body) = resp.into_parts();
                            let body = body.collect().await?.to_bytes();
                            Ok(http::Response::from_parts(parts, http_body_util::Full::new(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { endpoint, faults, faulted, task }
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay between agents and a proxy that can cut or freeze the
/// connections open at a given moment (later ones pass normally).
pub struct TcpRelay {
    pub addr: String,
    /// Connections opened before this generation are cut...
    cut_before: Arc<std::sync::atomic::AtomicU64>,
    /// ...or frozen: held open, nothing forwarded.
    freeze_before: Arc<std::sync::atomic::AtomicU64>,
    next: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TcpRelay {
    pub fn start(upstream: &str) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut_before, freeze_before) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (next, stop) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicBool::new(false)));
        let (c, f, n, s, up) =
            (cut_before.clone(), freeze_before.clone(), next.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            while !s.load(SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let gen = n.fetch_add(1, SeqCst);
                let Ok(server) = std::net::TcpStream::connect(&up) else { continue };
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let (c, f, s) = (c.clone(), f.clone(), s.clone());
                    std::thread::spawn(move || {
                        let (mut from, mut to) = (from, to);
                        from.set_nonblocking(false).unwrap();
                        from.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            if s.load(SeqCst) || gen < c.load(SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            if gen < f.load(SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(50));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Self { addr, cut_before, freeze_before, next, stop }
    }

    /// How many connections the relay has accepted so far.
    pub fn connections(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::SeqCst) - 1
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        let now = self.next.load(std::sync::atomic::Ordering::SeqCst);
        self.cut_before.store(now, std::sync::atomic::Ordering::SeqCst);
    }

    /// Freezes every connection, open now or made later: a proxy that
    /// accepts and never answers.
    pub fn freeze_all(&self) {
        self.freeze_before.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// Freezes every connection open now: held open, nothing forwarded.
    pub fn freeze(&self) {
        let now = self.next.load(std::sync::atomic::Ordering::SeqCst);
        self.freeze_before.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
