//! `GET /health` on a loopback address: each job's state and the socket's
//! counters, as JSON; `GET /metrics`, the same for Prometheus.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;

use super::Daemon;

pub(super) async fn serve_health(daemon: Arc<Daemon>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("accepting on the health endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let d = d.clone();
                async move {
                    const JSON: &str = "application/json";
                    let get = req.method() == hyper::Method::GET;
                    let (status, body, media) = match req.uri().path() {
                        "/health" if get => {
                            (hyper::StatusCode::OK, serde_json::to_vec(&d.health()).unwrap_or_default(), JSON)
                        }
                        "/metrics" if get => (
                            hyper::StatusCode::OK,
                            super::metrics::encode(&d.health()).into_bytes(),
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                        _ => (hyper::StatusCode::NOT_FOUND, b"{\"error\":\"GET /health or /metrics\"}".to_vec(), JSON),
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut()
                        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(media));
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
