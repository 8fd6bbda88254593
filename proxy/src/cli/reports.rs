//! What the proxy reports without running: the compliance report, the
//! self-assessment, the keys report, and a test alert.

use std::path::PathBuf;
use std::process::ExitCode;

use coffer_client::exit::{FAILURE, USAGE};

use super::{block_on, fail, load_config};

pub(crate) fn alerts_test(config: Option<PathBuf>) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(hook) = cfg.alerts.webhook else {
        return fail(USAGE, "no alerts.webhook is configured");
    };
    let alert = coffer_proxy::monitor::alerts::Alert {
        id: "test".into(),
        kind: "test".into(),
        severity: coffer_proxy::monitor::alerts::Severity::Info,
        time: coffer_proxy::unix_now(),
        proxy: cfg.proxy_id.clone(),
        repo: None,
        subject: None,
        message: "a test alert from coffer-proxy alerts test".into(),
    };
    let posted = coffer_proxy::monitor::alerts::post(&hook, &alert);
    match block_on(async { posted.await.map_err(|e| format!("test alert not delivered to {}: {e}", hook.url)) }) {
        Ok(()) => {
            println!("test alert delivered to {}", hook.url);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub(crate) fn keys_report(config: Option<PathBuf>, json: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = match block_on(coffer_proxy::compliance::report::keys_report(&cfg)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialises"));
        return ExitCode::SUCCESS;
    }
    for k in &report.keks {
        let state = match (&k.state, &k.state_error) {
            (Some(s), _) => format!(
                "{}, rotation {}",
                s.status,
                s.rotation.map_or("n/a".to_string(), |r| if r { "on".into() } else { "off".into() })
            ),
            (None, Some(e)) => format!("unknown: {e}"),
            (None, None) => "unknown".into(),
        };
        println!("{}  ({state})", k.kek);
        for key in &k.keys {
            println!(
                "  {:<24} {} {:<8} uploaded by {}",
                key.repo,
                key.key_id,
                key.purpose,
                key.uploaded_by.as_deref().unwrap_or("(not in the local audit trail)")
            );
        }
    }
    ExitCode::SUCCESS
}

pub(crate) fn compliance_report(
    config: Option<PathBuf>,
    format: &str,
    output: Option<PathBuf>,
    since: Option<u64>,
) -> ExitCode {
    if !matches!(format, "json" | "html") {
        return fail(USAGE, format!("unknown --format {format:?}: json or html"));
    }
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = since.unwrap_or_else(|| coffer_proxy::unix_now().saturating_sub(30 * 86_400));
    let report = match block_on(coffer_proxy::compliance::report::compliance_report(&cfg, since)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let text = match format {
        "html" => coffer_proxy::compliance::report_html::render(&report),
        _ => serde_json::to_string_pretty(&report).expect("serialises") + "\n",
    };
    match output {
        None => print!("{text}"),
        Some(out) => {
            if let Err(e) = std::fs::write(&out, text) {
                return fail(FAILURE, format!("{}: {e}", out.display()));
            }
        }
    }
    ExitCode::SUCCESS
}

pub(crate) fn assess(config: Option<PathBuf>, json: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let findings = match block_on(coffer_proxy::compliance::assess::assess(&cfg)) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&findings).expect("serialises"));
    } else {
        for f in &findings {
            println!("{:?}\t{}\t{}: {}\n\tfix: {}", f.severity, f.check, f.subject, f.problem, f.fix);
        }
        println!("{} findings", findings.len());
    }
    if findings.iter().any(|f| f.severity == coffer_proxy::compliance::assess::Level::High) {
        ExitCode::from(FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// A repository's plan, and what could be deleted now.
#[derive(serde::Serialize)]
struct PlanReport {
    #[serde(flatten)]
    plan: coffer_proxy::lifecycle::plan::Plan,
    due_now: coffer_proxy::lifecycle::plan::Due,
}

/// `coffer-proxy lifecycle plan [--repo R]`.
pub(crate) fn lifecycle_plan(config: Option<PathBuf>, repo: Option<&coffer_proto::RepoName>, json: bool) -> ExitCode {
    use coffer_proxy::lifecycle::{pass, plan};
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policies = match cfg.repo_policies() {
        Ok(p) => p,
        Err(e) => return fail(USAGE, e),
    };
    if let Some(repo) = repo.filter(|r| policies.keep_rules(r).is_none()) {
        return fail(USAGE, format!("the repo policy of {repo} has no `keep` schedule (docs/lifecycle.md)"));
    }
    let reports = match block_on(async {
        let store = coffer_proxy::parts::open_store_to_read(&cfg).await?;
        let repos = match repo {
            Some(r) => vec![r.clone()],
            None => pass::repositories(&*store).await?,
        };
        let now = coffer_proxy::unix_now();
        let mut out = Vec::new();
        for repo in repos {
            let Some(rules) = policies.keep_rules(&repo) else { continue };
            let plan = plan::plan(&*store, &repo, &rules).await?;
            let due_now = plan::due(&*store, &repo, &plan, now).await?;
            out.push(PlanReport { plan, due_now });
        }
        Ok::<_, coffer_proxy::parts::SetupError>(out)
    }) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if json {
        let text = match (repo, reports.first()) {
            (Some(_), Some(one)) => serde_json::to_string_pretty(one),
            _ => serde_json::to_string_pretty(&reports),
        };
        println!("{}", text.expect("serialises"));
        return ExitCode::SUCCESS;
    }
    let date = |secs: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
    };
    if reports.is_empty() {
        println!("no repository has a `keep` schedule (docs/lifecycle.md)");
    }
    for PlanReport { plan, due_now } in &reports {
        println!(
            "{}: {} kept, {} let go; deletable now: {} objects, {} bytes",
            plan.repo,
            plan.keep.len(),
            plan.let_go.len(),
            due_now.objects,
            due_now.bytes
        );
        for k in &plan.keep {
            let until = if k.keep_until == 0 {
                "while among the newest".into()
            } else {
                format!("until {}", date(k.keep_until))
            };
            println!("  keep    {}  {}  {until}  ({})", k.id, date(k.committed), k.reasons.join(", "));
        }
        for l in &plan.let_go {
            let note = if l.held { "legal hold: kept" } else { "may go once its lock ends" };
            println!("  let go  {}  {}  lock ends {}  ({note})", l.id, date(l.committed), date(l.retain_until));
        }
    }
    ExitCode::SUCCESS
}
