//! Watching the proxy and the store: metrics, alerts to a webhook, the
//! anomaly (ransomware) detector and the background scrub.

pub mod alerts;
pub mod detect;
pub mod metrics;
pub mod scrub;
