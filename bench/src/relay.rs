//! A TCP relay in front of an S3 endpoint that holds back each HTTP request
//! by a fixed delay, the way a regional endpoint's round trip does, and
//! counts the requests by kind. The delay can change between phases.
//!
//! HTTP/1.1 clients (the AWS SDK's) send one request at a time on a
//! connection and wait for its answer, so a request starts with the first
//! bytes a client sends after the server last spoke; those bytes begin with
//! a method. Only they are delayed, once per request, whatever its size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const METHODS: [&str; 5] = ["GET ", "PUT ", "HEAD ", "POST ", "DELETE "];

#[derive(Default)]
struct Shared {
    latency_ms: AtomicU64,
    counts: Mutex<BTreeMap<String, u64>>,
}

/// A running relay; it stops accepting when dropped (open connections end
/// with their clients).
pub struct LatencyRelay {
    /// `http://127.0.0.1:PORT`, to use as the S3 endpoint.
    pub endpoint: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl LatencyRelay {
    /// Relays `127.0.0.1:<free port>` to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (shared, stop) = (Arc::new(Shared::default()), Arc::new(AtomicBool::new(false)));
        let (s, st, upstream) = (shared.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                relay(client, server, s.clone());
            }
        });
        Ok(Self { endpoint, shared, stop })
    }

    /// Every request from now on waits `ms` before it is sent on.
    pub fn set_latency_ms(&self, ms: u64) {
        self.shared.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// The requests seen since the last call, by kind, and resets them.
    pub fn take_counts(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.shared.counts.lock().expect("not poisoned"))
    }
}

impl Drop for LatencyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

/// What an S3 request does, from its request line: `HEAD object`,
/// `PUT object`, `PUT ?retention`, `GET ?list-type` and so on.
pub fn kind(request_line: &str) -> String {
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    // The SDK names most operations itself (`x-id=PutObject`).
    if let Some(op) = query.split('&').find_map(|p| p.strip_prefix("x-id=")) {
        return op.to_string();
    }
    match query.split('&').next().and_then(|p| p.split('=').next()).filter(|p| !p.is_empty()) {
        Some(sub) => format!("{method} ?{sub}"),
        None => format!("{method} object"),
    }
}

fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (Ok(client_r), Ok(server_w), Ok(server_r), Ok(client_w)) =
        (client.try_clone(), server.try_clone(), server.try_clone(), client.try_clone())
    else {
        return;
    };
    // Whether the server has answered since the client last sent: the next
    // bytes from the client start a new request.
    let idle = Arc::new(AtomicBool::new(true));
    let up_idle = idle.clone();
    std::thread::spawn(move || {
        let (mut from, mut to) = (client_r, server_w);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let head = String::from_utf8_lossy(&buf[..n.min(512)]);
            if up_idle.swap(false, Ordering::AcqRel) && METHODS.iter().any(|m| head.starts_with(m)) {
                let line = head.lines().next().unwrap_or_default().to_string();
                *shared.counts.lock().expect("not poisoned").entry(kind(&line)).or_default() += 1;
                let ms = shared.latency_ms.load(Ordering::Relaxed);
                if ms > 0 {
                    std::thread::sleep(Duration::from_millis(ms));
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut from, mut to) = (server_r, client_w);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            idle.store(true, Ordering::Release);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_by_method_and_subresource() {
        assert_eq!(kind("HEAD /bucket/dev/db/chunks/ab/abcd HTTP/1.1"), "HEAD object");
        assert_eq!(kind("PUT /bucket/key?retention HTTP/1.1"), "PUT ?retention");
        assert_eq!(kind("GET /bucket?list-type=2&prefix=dev%2F HTTP/1.1"), "GET ?list-type");
        assert_eq!(kind("GET /bucket/key?x-id=GetObject HTTP/1.1"), "GetObject");
        assert_eq!(kind("PUT /bucket/key?x-id=PutObject HTTP/1.1"), "PutObject");
    }

    #[test]
    fn each_request_is_delayed_once_and_counted() {
        // An upstream that answers every request line with one byte.
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = upstream.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = upstream.accept().unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(b"k").is_err() {
                    break;
                }
            }
        });
        let relay = LatencyRelay::start(&addr).unwrap();
        relay.set_latency_ms(100);
        let mut c = TcpStream::connect(relay.endpoint.trim_start_matches("http://")).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..3 {
            c.write_all(b"HEAD /b/k HTTP/1.1\r\n\r\n").unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).unwrap();
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300), "three requests, three delays: {took:?}");
        assert_eq!(relay.take_counts(), BTreeMap::from([("HEAD object".to_string(), 3)]));
        assert!(relay.take_counts().is_empty(), "taking resets");
    }
}
