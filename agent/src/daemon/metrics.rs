//! `GET /metrics` on the health listener: what `GET /health` says, in
//! Prometheus's text format, for the alerting rules and the dashboard in
//! `packaging/monitoring/`. Built from the state at each scrape, so it can
//! never disagree with `/health`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Health, JobStatus, SocketStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    /// Not `job`, the label Prometheus gives every scraped series.
    job_name: String,
    repo: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

type Gauges = Family<JobLabels, Gauge<f64, AtomicU64>>;
type Counters = Family<JobLabels, Counter>;

/// The text exposition of `health`.
pub(super) fn encode(health: &Health) -> String {
    let (runs, failures, hook_failures) = (Counters::default(), Counters::default(), Counters::default());
    let [running, failing, last_success, last_start, next_run, bytes_in, bytes_new, duration] =
        std::array::from_fn(|_| Gauges::default());
    for (name, s) in &health.jobs {
        let l = JobLabels { job_name: name.clone(), repo: s.repo.clone() };
        runs.get_or_create(&l).inc_by(s.runs);
        failures.get_or_create(&l).inc_by(s.failures);
        hook_failures.get_or_create(&l).inc_by(s.hook_failures);
        running.get_or_create(&l).set(f64::from(u8::from(s.running)));
        failing.get_or_create(&l).set(f64::from(u8::from(s.last_error.is_some())));
        // A time not yet known is left out rather than exported as 0, which
        // an age rule would read as half a century old.
        let optional = [
            (&last_success, s.last_success.map(|t| t as f64)),
            (&last_start, s.last_started.map(|t| t as f64)),
            (&next_run, s.next_run.map(|t| t as f64)),
            (&bytes_in, s.last_bytes_in.map(|b| b as f64)),
            (&bytes_new, s.last_bytes_new.map(|b| b as f64)),
            (&duration, s.last_duration_secs),
        ];
        for (family, value) in optional {
            if let Some(v) = value {
                family.get_or_create(&l).set(v);
            }
        }
    }
    let mut r = Registry::with_prefix("coffer_agent");
    r.register("job_runs", "Runs of each job, committed or not", runs);
    r.register("job_failures", "Runs of each job that committed nothing", failures);
    r.register("job_hook_failures", "Hooks of each job that failed or timed out", hook_failures);
    r.register("job_running", "1 while a run of the job is going", running);
    r.register("job_failing", "1 while the job's last run failed", failing);
    r.register("job_last_success_timestamp_seconds", "When the job last committed a snapshot", last_success);
    r.register("job_last_start_timestamp_seconds", "When the job last started", last_start);
    r.register("job_next_run_timestamp_seconds", "When the job runs next", next_run);
    r.register("job_last_bytes_in", "Stream bytes of the job's last committed run", bytes_in);
    r.register("job_last_bytes_new", "New (not deduplicated) stream bytes of the job's last committed run", bytes_new);
    r.register("job_last_duration_seconds", "Seconds the job's last committed run took", duration);
    if let Some(socket) = &health.socket {
        let sends = Family::<OutcomeLabel, Counter>::default();
        let label = |outcome: &str| OutcomeLabel { outcome: outcome.to_string() };
        sends.get_or_create(&label("committed")).inc_by(socket.committed);
        sends.get_or_create(&label("failed")).inc_by(socket.failed);
        let in_progress = Gauge::<i64>::default();
        in_progress.set(i64::try_from(socket.running).unwrap_or(i64::MAX));
        r.register("socket_sends", "Backups sent over the sidecar socket, by outcome", sends);
        r.register("socket_sends_running", "Backups being sent over the sidecar socket", in_progress);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

/// The exposition of a daemon with one job that has done everything and a
/// socket: every name the shipped alerting rules and dashboard may query
/// (tests/packaging.rs checks them).
pub fn every_family() -> String {
    let job = JobStatus {
        last_success: Some(1),
        last_started: Some(1),
        next_run: Some(1),
        last_bytes_in: Some(1),
        last_bytes_new: Some(1),
        last_duration_secs: Some(1.0),
        ..Default::default()
    };
    let socket = SocketStatus::default();
    encode(&Health { status: "ok", jobs: [(String::new(), job)].into(), socket: Some(socket) })
}

#[cfg(test)]
mod tests {
    use super::super::{Health, JobStatus};

    #[test]
    fn each_job_is_a_labelled_series_and_unknown_times_are_absent() {
        let mut jobs = std::collections::BTreeMap::new();
        let ok = JobStatus {
            repo: "prod/db".into(),
            runs: 3,
            failures: 1,
            last_success: Some(1_800_000_000),
            ..Default::default()
        };
        let never = JobStatus {
            repo: "prod/files".into(),
            runs: 1,
            failures: 1,
            last_error: Some("no".into()),
            ..Default::default()
        };
        jobs.insert("db".to_string(), ok);
        jobs.insert("files".to_string(), never);
        let text = super::encode(&Health { status: "failing", jobs, socket: None });
        for line in [
            "coffer_agent_job_runs_total{job_name=\"db\",repo=\"prod/db\"} 3",
            "coffer_agent_job_failures_total{job_name=\"db\",repo=\"prod/db\"} 1",
            "coffer_agent_job_failing{job_name=\"files\",repo=\"prod/files\"} 1",
            "coffer_agent_job_failing{job_name=\"db\",repo=\"prod/db\"} 0",
            "coffer_agent_job_last_success_timestamp_seconds{job_name=\"db\",repo=\"prod/db\"} 1800000000",
        ] {
            assert!(text.lines().any(|l| l.starts_with(line)), "{line} in:\n{text}");
        }
        assert!(!text.contains("coffer_agent_job_last_success_timestamp_seconds{job_name=\"files\""), "{text}");
        assert!(!text.contains("socket"), "{text}");
    }
}
