//! The proxy's background work: verifying the audit chain at start,
//! shipping sealed audit segments, polling the admin's switches, watching
//! for overdue repositories, and writing throttled refusals.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::audit::{Draft, Outcome};
use crate::monitor::alerts::Severity;

/// At start: is the local audit chain whole? If not, an alert (and the
/// proxy keeps serving: the evidence is kept as it is).
pub(super) async fn check_audit_chain(app: &App, spool: &crate::audit::SpoolConfig) {
    let verdict = crate::audit::local_trail(spool).map_err(|e| e.to_string()).and_then(|(segments, live)| {
        let key = crate::audit::public_key(spool).ok();
        crate::audit::verify(&segments, Some(&live), key.as_deref()).map_err(|b| b.to_string())
    });
    if let Err(e) = verdict {
        app.watch.alerts.raise("audit-chain", Severity::Critical, None, None, e, None).await;
    }
}

/// Checks RPOs every `check_secs`, after learning each repository's last
/// commit from its index segments.
pub(super) async fn watch_overdue(app: Arc<App>) {
    if !app.watch.has_rpo() {
        return;
    }
    match app.store.list("").await {
        Ok(keys) => {
            for key in keys.iter().filter(|k| k.contains("/index/") && !coffer_proto::layout::is_pack(k)) {
                let Some((repo, id)) = key.split_once("/index/") else { continue };
                let (Ok(repo), Ok(bytes)) = (repo.parse::<coffer_proto::RepoName>(), app.store.get(key).await) else {
                    continue;
                };
                let index = bytes.and_then(|b| coffer_proto::snapshot::IndexSegment::decode(&b).ok());
                if let Some(index) = index.filter(|i| i.snapshot.to_string() == id) {
                    app.watch.seen(repo, index.committed);
                }
            }
        }
        Err(e) => tracing::warn!("cannot learn the repositories' last snapshots: {e}"),
    }
    let mut tick = tokio::time::interval(Duration::from_secs(app.watch.check_secs));
    loop {
        tick.tick().await;
        app.watch.check_overdue(crate::unix_now()).await;
    }
}

/// Reads the admin state (revocations, lockdown) from the store again and
/// again, so an admin call made through another proxy on the same store
/// takes effect here within `every` (aborted at shutdown).
pub(super) async fn watch_admin_state(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.load_revocations().await {
            tracing::warn!("reading revocations from the store failed (will retry): {e}");
        }
        let before = app.lockdown.load(std::sync::atomic::Ordering::Acquire);
        match app.load_lockdown().await {
            Ok(on) if on != before => {
                tracing::warn!(
                    "lockdown {} by an administrator (through another proxy)",
                    if on { "entered" } else { "lifted" }
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the lockdown state from the store failed (will retry): {e}"),
        }
    }
}

/// Runs the lifecycle pass every interval, after a random delay of up to
/// `jitter_secs`, when this proxy takes the interval's lease (aborted at
/// shutdown; a pass cut off half way is finished by the next one).
pub(super) async fn lifecycle_loop(app: Arc<App>, cfg: crate::config::LifecycleConfig) {
    if cfg.interval_secs == 0 {
        return;
    }
    // The wall clock and the monotonic one at the last pass: a wall clock
    // that ran ahead of the monotonic one jumped (by hand, a bad time
    // source), and a pass after a jump deletes nothing. S3 judges locks by
    // its own clock; the filesystem store by this one.
    let mut last: Option<(u64, std::time::Instant)> = None;
    loop {
        let now = crate::unix_now();
        let next = (now / cfg.interval_secs + 1) * cfg.interval_secs;
        let jitter = random_below(cfg.jitter_secs.min(cfg.interval_secs.saturating_sub(1)) + 1);
        tokio::time::sleep(Duration::from_secs(next - now + jitter)).await;
        let now = crate::unix_now();
        let jumped = last.and_then(|(wall, mono)| {
            let ahead = now.saturating_sub(wall).saturating_sub(mono.elapsed().as_secs());
            (ahead > crate::lifecycle::pass::CLOCK_TOLERANCE_SECS)
                .then(|| format!("the clock jumped {ahead} s ahead since the last pass"))
        });
        // Both clocks read at once, before the pass: its own length is no jump.
        let mark = (now, std::time::Instant::now());
        lifecycle_once(&app, cfg.interval_secs, now, jumped.as_deref()).await;
        last = Some(mark);
    }
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("the system RNG failed");
    u64::from_le_bytes(b) % n.max(1)
}

/// One interval's pass, if this proxy takes its lease: audited (one event
/// per repository that changed or failed), counted, and alerted on failure.
pub(crate) async fn lifecycle_once(app: &App, interval_secs: u64, now: u64, hold_deletions: Option<&str>) {
    use crate::lifecycle::pass::{pass, take_lease, Lease};
    let label = |kind: &str| crate::monitor::metrics::KindLabel { kind: kind.to_string() };
    let m = &app.metrics;
    let failed = |msg: String| async move {
        tracing::error!("{msg}");
        m.lifecycle_passes.get_or_create(&label("failed")).inc();
        app.watch.alerts.raise("lifecycle", Severity::High, None, None, msg, None).await;
    };
    match take_lease(&*app.store, interval_secs, now).await {
        Ok(Lease::Taken) => return,
        Ok(Lease::ClockOff { store }) => {
            m.lifecycle_passes.get_or_create(&label("skipped")).inc();
            let msg = format!(
                "lifecycle pass not run: this proxy's clock says {now}, the store's {store}; nothing is \
                 deleted while they disagree by more than {} s",
                crate::lifecycle::pass::CLOCK_TOLERANCE_SECS
            );
            app.watch.alerts.raise("lifecycle", Severity::High, None, None, msg, None).await;
            return;
        }
        Ok(Lease::Ours) => {}
        Err(e) => return failed(format!("lifecycle pass not run: taking its lease failed: {e}")).await,
    }
    let repos = match pass(app, now, hold_deletions).await {
        Ok(r) => r,
        Err(e) => return failed(format!("lifecycle pass failed: {e}")).await,
    };
    m.lifecycle_last_pass.set(now as f64);
    let mut problems = Vec::new();
    for r in &repos {
        let extended: u64 = r.promoted.iter().map(|p| p.objects).sum();
        m.lifecycle_objects.get_or_create(&label("extended")).inc_by(extended);
        m.lifecycle_objects.get_or_create(&label("deleted")).inc_by(r.deleted.len() as u64);
        let trouble = r
            .error
            .clone()
            .or_else(|| r.skipped.clone())
            .or_else(|| (!r.failed.is_empty()).then(|| format!("{} objects could not be deleted", r.failed.len())));
        if r.promoted.is_empty() && r.deleted.is_empty() && trouble.is_none() {
            continue;
        }
        let promoted: Vec<String> = r.promoted.iter().map(|p| format!("{} until {}", p.snapshot, p.until)).collect();
        let reason = format!(
            "kept [{}]; {extended} locks extended; {} objects deleted{}",
            promoted.join(", "),
            r.deleted.len(),
            trouble.as_ref().map(|t| format!("; {t}")).unwrap_or_default()
        );
        let draft = Draft {
            peer: "proxy".into(),
            action: "lifecycle",
            repo: Some(r.repo.clone()),
            bytes: r.deleted.len() as u64,
            outcome: Some(if trouble.is_some() { Outcome::Error } else { Outcome::Ok }),
            reason: Some(reason),
            ..Default::default()
        };
        let _ = app.audit.record(draft, true).await;
        if let Some(t) = trouble {
            problems.push(format!("{}: {t}", r.repo));
        }
    }
    if problems.is_empty() {
        m.lifecycle_passes.get_or_create(&label("ok")).inc();
    } else {
        failed(format!("lifecycle pass: {}", problems.join("; "))).await;
    }
}

/// Seals by age and ships sealed segments, forever (aborted at shutdown).
pub(super) async fn ship_audit(app: Arc<App>, sealed: PathBuf, proxy_id: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        app.audit.tick();
        let pass = crate::audit::ship::ship_pending(&sealed, &*app.store, &proxy_id, app.new_retain_until()).await;
        if !pass.shipped.is_empty() {
            tracing::info!("shipped {} audit segments", pass.shipped.len());
        }
        // Each segment's hash goes to the webhook too (those shipped before
        // a failure included): a copy of the trail's anchor that root on
        // this host cannot rewrite.
        for s in &pass.shipped {
            let msg = crate::audit::ship::seal_message(s);
            app.watch.alerts.raise("audit-seal", Severity::Info, None, Some(s.key.clone()), msg, None).await;
        }
        if let Some(e) = pass.failed {
            tracing::warn!("shipping audit segments failed (will retry): {e}");
        }
    }
}

/// Writes, once a minute has ended, how many refused connections of each
/// source were counted but not written one by one (aborted at shutdown).
pub(super) async fn flush_refusals(app: Arc<App>, throttle: Arc<crate::server::conns::RefusalThrottle>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        for (ip, n) in throttle.take_ended(crate::unix_now()) {
            let reason = format!(
                "{n} more connections from {ip} were refused in that minute (beyond {} a minute, counted, not written one by one)",
                crate::server::conns::REFUSALS_AUDITED_PER_MINUTE
            );
            let draft = Draft {
                peer: ip.to_string(),
                action: "connect",
                outcome: Some(Outcome::Denied),
                reason: Some(reason),
                bytes: n,
                ..Default::default()
            };
            let _ = app.audit.record(draft, false).await;
        }
    }
}

/// Runs `assess` every `interval_secs` (the first after one interval) and
/// raises an alert for each high finding not seen before.
pub(super) async fn assess_loop(app: Arc<App>, cfg: Arc<crate::config::ProxyConfig>, interval_secs: u64) {
    if interval_secs == 0 {
        return;
    }
    let every = Duration::from_secs(interval_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut seen = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        match crate::compliance::assess::assess(&cfg).await {
            Ok(findings) => {
                for f in findings.into_iter().filter(|f| f.severity == crate::compliance::assess::Level::High) {
                    if seen.insert((f.check, f.subject.clone(), f.problem.clone())) {
                        let msg = format!("{}: {} (fix: {})", f.subject, f.problem, f.fix);
                        app.watch.alerts.raise("assess", Severity::High, None, Some(f.subject), msg, None).await;
                    }
                }
            }
            Err(e) => tracing::warn!("assessment failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    /// Two proxies on one store trying the same interval's pass at once:
    /// exactly one runs it; the next interval runs again.
    #[tokio::test]
    async fn two_proxies_run_one_pass_per_interval() {
        let t = testkit::app().await;
        let other = testkit::app_on(&t).await;
        let now = crate::unix_now();
        tokio::join!(lifecycle_once(&t.app, 1, now, None), lifecycle_once(&other, 1, now, None));
        let ran = |app: &App| {
            let label = crate::monitor::metrics::KindLabel { kind: "ok".into() };
            app.metrics.lifecycle_passes.get_or_create(&label).get()
        };
        assert_eq!(ran(&t.app) + ran(&other), 1, "one pass for the interval");
        // The next interval (one second on: the store's clock must agree).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        lifecycle_once(&other, 1, crate::unix_now(), None).await;
        assert_eq!(ran(&t.app) + ran(&other), 2, "and one for the next");
        // A proxy whose clock is a day ahead of the store's runs none.
        lifecycle_once(&other, 1, crate::unix_now() + 86_400, None).await;
        let skipped = crate::monitor::metrics::KindLabel { kind: "skipped".into() };
        assert_eq!(other.metrics.lifecycle_passes.get_or_create(&skipped).get(), 1);
    }
}
