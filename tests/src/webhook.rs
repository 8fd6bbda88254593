//! A webhook receiver that keeps what it was sent.

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};

/// A webhook receiver on loopback: answers 200 to every POST and keeps the
/// JSON bodies. Stops accepting when dropped.
pub struct Webhook {
    pub port: u16,
    pub received: Arc<Mutex<Vec<serde_json::Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Webhook {
    /// Listens on `port` (0: any free port).
    pub fn start(port: u16) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind webhook port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, halt) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break Some(buf[end + 4..end + 4 + len].to_vec());
                        }
                    }
                };
                if let Some(body) = body {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                }
            }
        });
        Self { port, received, stop }
    }

    /// Waits until an alert of `kind` has arrived, and returns it.
    pub fn wait_for(&self, kind: &str, secs: u64) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(a) = self.received.lock().unwrap().iter().find(|a| a["kind"] == kind) {
                return a.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no {kind} alert; got {:?}", self.received.lock().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn kinds(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|a| a["kind"].as_str().unwrap_or("").to_string()).collect()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
