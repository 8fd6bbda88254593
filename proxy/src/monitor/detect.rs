//! Detectors that raise alerts: the ransomware signature and other
//! anomalous snapshots, overdue backups, bursts of handshake failures and
//! denials, store errors, broken audit chains, unusable KEKs, bad reloads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use coffer_proto::snapshot::SnapshotStats;
use coffer_proto::RepoName;
use serde::Deserialize;

use crate::access::policy::{PolicyError, RepoPattern};
use crate::monitor::alerts::{Alerts, Burst, Severity, WebhookConfig};

/// Snapshots of history needed before a repository has a baseline.
pub const BASELINE_MIN: usize = 3;
/// Snapshots of history a baseline looks at, newest first.
pub const BASELINE_MAX: usize = 20;
/// How long a given alert stays quiet after it fired (bursts, store errors).
pub const QUIET_SECS: u64 = 600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpoRule {
    /// Repositories this recovery point objective applies to.
    pub repos: String,
    /// The longest a repository may go without a snapshot, in seconds.
    pub secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub webhook: Option<WebhookConfig>,
    /// Handshake failures per minute from one address that raise an alert.
    pub handshake_burst: u32,
    /// Denials per minute for one identity that raise an alert.
    pub denial_burst: u32,
    /// How often overdue backups are checked.
    pub check_secs: u64,
    pub rpo: Vec<RpoRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { webhook: None, handshake_burst: 20, denial_burst: 20, check_secs: 60, rpo: Vec::new() }
    }
}

/// A snapshot's ratios: new bytes per byte read, stored bytes per new byte.
fn ratios(s: &SnapshotStats) -> (Option<f64>, Option<f64>) {
    let new = (s.bytes_in > 0).then(|| s.bytes_new as f64 / s.bytes_in as f64);
    let comp = (s.bytes_new > 0).then(|| s.stored_new as f64 / s.bytes_new as f64);
    (new, comp)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// A snapshot storing this many times the median new bytes of its
/// repository's recent ones (and at least [`STORED_SURGE_MIN`]) is judged
/// anomalous whatever its claimed sizes say: `stored_new` is the one stat a
/// host cannot understate (the proxy raises it to what it saw uploaded,
/// SPEC §8), so a host that hides encrypted data behind an inflated
/// `bytes_in` or `bytes_new` still shows here.
pub const STORED_SURGE_FACTOR: f64 = 10.0;
/// Below this many new stored bytes a surge is not worth an alert.
pub const STORED_SURGE_MIN: u64 = 64 << 20;

/// Judges a new snapshot against the repository's history (oldest first).
/// The ransomware signature: nearly everything new and incompressible where
/// history says little changes and data compresses.
pub fn anomaly(history: &[SnapshotStats], current: &SnapshotStats) -> Option<(&'static str, Severity, String)> {
    let recent: Vec<&SnapshotStats> = history.iter().rev().take(BASELINE_MAX).collect();
    if recent.len() < BASELINE_MIN || current.bytes_in == 0 {
        return None;
    }
    let (new, comp) = ratios(current);
    let base_new = median(recent.iter().filter_map(|s| ratios(s).0).collect())?;
    let base_comp = median(recent.iter().filter_map(|s| ratios(s).1).collect());
    let base_size = median(recent.iter().map(|s| s.bytes_in as f64).collect())?;
    if let (Some(new), Some(comp), Some(base_comp)) = (new, comp, base_comp) {
        if new >= 0.9 && base_new <= 0.5 && comp >= 0.95 && base_comp <= 0.8 {
            return Some((
                "ransomware",
                Severity::Critical,
                format!(
                    "{:.0}% of the data is new and it does not compress ({:.2} stored per byte), where the last {} snapshots had {:.0}% new and compressed to {:.2}: the signature of encrypted (ransomed) data",
                    new * 100.0,
                    comp,
                    recent.len(),
                    base_new * 100.0,
                    base_comp
                ),
            ));
        }
    }
    let base_stored = median(recent.iter().map(|s| s.stored_new as f64).collect())?;
    if current.stored_new >= STORED_SURGE_MIN && current.stored_new as f64 > STORED_SURGE_FACTOR * base_stored {
        return Some((
            "anomalous-snapshot",
            Severity::High,
            format!(
                "{} new bytes stored, against a median of {:.0} over the last {} snapshots: a change this large, \
                 whatever the snapshot's claimed sizes, can be data encrypted in place",
                current.stored_new,
                base_stored,
                recent.len()
            ),
        ));
    }
    let size = current.bytes_in as f64;
    if base_size > 0.0 && (size > 3.0 * base_size || size < base_size / 3.0) {
        return Some((
            "anomalous-snapshot",
            Severity::Medium,
            format!(
                "{} bytes, against a median of {:.0} over the last {} snapshots",
                current.bytes_in,
                base_size,
                recent.len()
            ),
        ));
    }
    None
}

/// The detectors' shared state.
pub struct Watch {
    pub alerts: Arc<Alerts>,
    handshakes: Burst,
    denials: Burst,
    rpo: Vec<(RepoPattern, u64)>,
    /// Last commit time per repository seen by this proxy.
    last_commit: Mutex<HashMap<RepoName, u64>>,
    pub check_secs: u64,
}

impl Watch {
    pub fn new(alerts: Arc<Alerts>, cfg: &AlertsConfig) -> Result<Self, PolicyError> {
        let rpo = cfg
            .rpo
            .iter()
            .map(|r| Ok((RepoPattern::parse(&r.repos)?, r.secs.max(1))))
            .collect::<Result<Vec<_>, PolicyError>>()?;
        Ok(Self {
            alerts,
            handshakes: Burst::new(60, cfg.handshake_burst.max(1)),
            denials: Burst::new(60, cfg.denial_burst.max(1)),
            rpo,
            last_commit: Default::default(),
            check_secs: cfg.check_secs.max(1),
        })
    }

    pub async fn handshake_failed(&self, ip: IpAddr) {
        if self.handshakes.hit(&ip.to_string(), crate::unix_now()) {
            let msg = format!("a burst of failed TLS handshakes from {ip}");
            self.alerts.raise("handshake-burst", Severity::High, None, Some(ip.to_string()), msg, None).await;
        }
    }

    pub async fn denied(&self, who: &str) {
        if self.denials.hit(who, crate::unix_now()) {
            let msg = format!("a burst of denied requests from {who}");
            self.alerts.raise("denial-burst", Severity::High, None, Some(who.to_string()), msg, None).await;
        }
    }

    pub async fn store_error(&self, what: &str) {
        let msg = format!("the object store failed: {what}");
        let dedup = Some(("store-error".to_string(), QUIET_SECS));
        self.alerts.raise("store-error", Severity::High, None, None, msg, dedup).await;
    }

    /// A commit: judge it against history, and note the time for RPO checks.
    pub async fn committed(&self, repo: &RepoName, history: &[SnapshotStats], current: &SnapshotStats, at: u64) {
        self.last_commit.lock().expect("not poisoned").insert(repo.clone(), at);
        self.alerts.clear(&format!("overdue:{repo}"));
        if let Some((kind, severity, message)) = anomaly(history, current) {
            self.alerts.raise(kind, severity, Some(repo.to_string()), None, message, None).await;
        }
    }

    /// Seeds the last commit time of a repository found in the store.
    pub fn seen(&self, repo: RepoName, at: u64) {
        let mut map = self.last_commit.lock().expect("not poisoned");
        let e = map.entry(repo).or_insert(at);
        *e = (*e).max(at);
    }

    /// Raises one alert per repository past its RPO (again only after it
    /// has committed since).
    pub async fn check_overdue(&self, now: u64) {
        let snapshot: Vec<(RepoName, u64)> =
            self.last_commit.lock().expect("not poisoned").iter().map(|(r, t)| (r.clone(), *t)).collect();
        for (repo, last) in snapshot {
            let Some(limit) = self.rpo.iter().find(|(p, _)| p.matches(&repo)).map(|(_, s)| *s) else { continue };
            if now.saturating_sub(last) > limit {
                let msg = format!("no snapshot of {repo} for {}s; its RPO is {limit}s", now - last);
                let dedup = Some((format!("overdue:{repo}"), u64::MAX / 2));
                self.alerts.raise("overdue", Severity::High, Some(repo.to_string()), None, msg, dedup).await;
            }
        }
    }

    pub fn has_rpo(&self) -> bool {
        !self.rpo.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bytes_in: u64, bytes_new: u64, stored_new: u64) -> SnapshotStats {
        SnapshotStats { bytes_in, bytes_new, stored_new, chunks: 1, chunks_new: 1 }
    }

    #[test]
    fn ransomware_signature_and_quiet_nights() {
        let history = vec![s(100, 100, 30), s(100, 2, 1), s(101, 3, 1), s(101, 2, 1)];
        assert!(anomaly(&history, &s(102, 3, 1)).is_none(), "a normal nightly change");
        let (kind, sev, _) = anomaly(&history, &s(100, 100, 101)).unwrap();
        assert_eq!((kind, sev), ("ransomware", Severity::Critical));
        assert!(anomaly(&history[..2], &s(100, 100, 101)).is_none(), "no baseline yet");
        // A repo of incompressible data that always changes is not suspicious.
        let media = vec![s(100, 100, 101), s(100, 100, 101), s(100, 100, 101)];
        assert!(anomaly(&media, &s(100, 100, 101)).is_none());
        assert_eq!(anomaly(&history, &s(1000, 10, 5)).unwrap().0, "anomalous-snapshot");
    }

    /// A host that inflates what it read and calls its new data
    /// compressible hides from the ratios, not from what it stored (which
    /// the proxy raises to what it saw uploaded).
    #[test]
    fn a_surge_of_stored_bytes_shows_whatever_the_claimed_sizes() {
        const G: u64 = 1 << 30;
        let nightly = |stored| s(100 * G, 2 * G, stored);
        let history = vec![nightly(G / 2), nightly(G / 2), nightly(G / 3), nightly(G / 2)];
        assert!(anomaly(&history, &nightly(G)).is_none(), "twice a usual night");
        // 90 GiB encrypted: claimed as 110 GiB read with 200 GiB new (it
        // would compress, it says), so the ratios stay under the signature.
        let hidden = s(110 * G, 200 * G, 90 * G);
        let (kind, sev, msg) = anomaly(&history, &hidden).unwrap();
        assert_eq!((kind, sev), ("anomalous-snapshot", Severity::High), "{msg}");
        assert!(msg.contains("new bytes stored"), "{msg}");
        // A small repository's surge below the floor is not worth one.
        let small = vec![s(1000, 10, 5); 4];
        assert!(anomaly(&small, &s(1000, 100, 90)).is_none());
    }
}
