use std::net::IpAddr;

use super::*;

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

#[test]
fn repo_patterns() {
    let p = |s| RepoPattern::parse(s).unwrap();
    assert!(p("dev/**").matches(&repo("dev/db")));
    assert!(p("dev/**").matches(&repo("dev/a/b/c")));
    assert!(!p("dev/**").matches(&repo("dev")));
    assert!(!p("dev/**").matches(&repo("prod/db")));
    assert!(p("dev/*").matches(&repo("dev/db")));
    assert!(!p("dev/*").matches(&repo("dev/db/x")));
    assert!(p("*/db").matches(&repo("prod/db")));
    assert!(p("dev/db").matches(&repo("dev/db")));
    assert!(!p("dev/db").matches(&repo("dev/db2")));
    assert!(RepoPattern::parse("**/x").is_err());
    assert!(RepoPattern::parse("Dev/*").is_err());
    assert!(RepoPattern::parse("dev//x").is_err());
}

#[test]
fn identity_patterns() {
    let n = |p: &str| NamePattern(p.into());
    assert!(n("spiffe://prod/host/*").matches("spiffe://prod/host/db-01"));
    assert!(!n("spiffe://prod/host/*").matches("spiffe://prod/other/db-01"));
    assert!(n("*.example.com").matches("db.example.com"));
    assert!(!n("*.example.com").matches("example.com"));
    assert!(n("a*b*c").matches("a-b-c") && !n("a*b*c").matches("a-c-b"));
    assert!(n("exact").matches("exact") && !n("exact").matches("exact2"));
}

fn domain(name: &str, repos: &[&str]) -> TrustDomainConfig {
    TrustDomainConfig {
        name: name.into(),
        ca: "ca.pem".into(),
        crls: vec![],
        repos: repos.iter().map(|s| s.to_string()).collect(),
    }
}

fn rule(name: &str, d: &str, id: &str, roles: &[Role], repos: &[&str]) -> RuleConfig {
    RuleConfig {
        name: Some(name.into()),
        trust_domain: d.into(),
        identity: id.into(),
        roles: roles.to_vec(),
        repos: repos.iter().map(|s| s.to_string()).collect(),
        source_cidrs: vec![],
        kms_keys: vec![],
        mfa: false,
    }
}

fn policy() -> Policy {
    let domains = [domain("prod", &["prod/**"]), domain("dr", &["dr/**"])];
    let mut rules = vec![
        rule("w", "prod", "w", &[Role::Writer], &["prod/db/**", "dr/**"]),
        rule("r", "prod", "r", &[Role::Reader], &["prod/**"]),
        rule("a", "prod", "a", &[Role::Auditor], &["prod/**"]),
        rule("adm", "prod", "adm", &[Role::Admin], &["**"]),
        rule("drw", "dr", "w", &[Role::Writer], &["**"]),
    ];
    rules[1].source_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    let grants = vec![GrantConfig {
        name: Some("dr-restore".into()),
        trust_domain: "dr".into(),
        identity: "restore".into(),
        from_domain: "prod".into(),
        repos: vec!["prod/db/**".into()],
        source_cidrs: vec![],
        mfa: false,
    }];
    Policy::new(&domains, &rules, &grants).unwrap()
}

fn decide(p: &Policy, domain: &str, who: &str, action: Action, r: &str, from: &str) -> Result<String, String> {
    let id = Identity::new(domain, who);
    let repo = repo(r);
    let source: IpAddr = from.parse().unwrap();
    let req = AccessRequest { identity: &id, action, repo: action.on_repo().then_some(&repo), source };
    p.decide(&req).map(|a| a.rule).map_err(|d| d.0)
}

/// The expected answer, written independently of the implementation.
fn expected(role: Role, action: Action) -> bool {
    use Action::*;
    let reads = [Whoami, GetConfig, GetKey, GetChunk, ListCopies, ListSnapshots, GetSnapshot, ListEpochs];
    let writes = [Whoami, PutConfig, GetConfig, PutKey, Missing, PutChunk, Commit, PutEpoch, ListEpochs];
    match role {
        Role::Writer => writes.contains(&action),
        Role::Reader => reads.contains(&action),
        Role::Auditor => [Whoami, ListSnapshots].contains(&action),
        Role::Admin => {
            [Whoami, AdminRevoke, AdminQuarantine, AdminReload, AdminHold, AdminLockdown, AdminExpire].contains(&action)
        }
    }
}

#[test]
fn every_role_every_action_own_repo_other_repo_other_domain() {
    let p = policy();
    let cases = [
        (Role::Writer, "w", "prod/db/x"),
        (Role::Reader, "r", "prod/db/x"),
        (Role::Auditor, "a", "prod/db/x"),
        (Role::Admin, "adm", "prod/db/x"),
    ];
    for (role, who, own) in cases {
        for action in Action::ALL {
            let want = expected(role, action);
            let got = decide(&p, "prod", who, action, own, "10.1.2.3");
            assert_eq!(got.is_ok(), want, "{role:?} {action:?} on own repo: {got:?}");
            if action.on_repo() {
                let other = decide(&p, "prod", who, action, "prod2/x", "10.1.2.3");
                assert!(other.is_err(), "{role:?} {action:?} outside its patterns: {other:?}");
                // dr/** is in the writer's patterns but not prod's namespace.
                let foreign = decide(&p, "prod", who, action, "dr/x", "10.1.2.3");
                assert!(foreign.is_err(), "{role:?} {action:?} in another domain's namespace: {foreign:?}");
            }
        }
    }
}

#[test]
fn same_name_in_another_domain_is_another_identity() {
    let p = policy();
    assert_eq!(decide(&p, "dr", "w", Action::PutChunk, "dr/x", "1.2.3.4"), Ok("drw".into()));
    assert!(decide(&p, "dr", "w", Action::PutChunk, "prod/db/x", "1.2.3.4").is_err());
    assert!(decide(&p, "dr", "r", Action::GetChunk, "prod/db/x", "10.0.0.1").is_err());
    assert!(decide(&p, "other", "w", Action::Whoami, "x", "1.2.3.4").unwrap_err().contains("no policy rule"));
}

#[test]
fn cross_domain_grant_reads_only() {
    let p = policy();
    for action in Action::ALL {
        let got = decide(&p, "dr", "restore", action, "prod/db/main", "1.2.3.4");
        assert_eq!(got.is_ok(), expected(Role::Reader, action), "{action:?}: {got:?}");
    }
    assert!(decide(&p, "dr", "restore", Action::GetChunk, "prod/web", "1.2.3.4").is_err(), "outside the grant");
    let bad = Policy::new(
        &[domain("prod", &["prod/**"])],
        &[],
        &[GrantConfig {
            name: None,
            trust_domain: "prod".into(),
            identity: "x".into(),
            from_domain: "prod".into(),
            repos: vec!["prod/**".into()],
            source_cidrs: vec![],
            mfa: false,
        }],
    );
    assert!(bad.is_err(), "a grant within one domain is a configuration error");
}

#[test]
fn source_cidrs_restrict() {
    let p = policy();
    assert_eq!(decide(&p, "prod", "r", Action::GetChunk, "prod/db", "10.9.9.9"), Ok("r".into()));
    let denied = decide(&p, "prod", "r", Action::GetChunk, "prod/db", "192.0.2.1").unwrap_err();
    assert!(denied.contains("from 192.0.2.1"), "{denied}");
}

#[test]
fn unknown_domain_in_a_rule_is_an_error() {
    let err = Policy::new(&[domain("prod", &["prod/**"])], &[rule("x", "nope", "w", &[Role::Writer], &["**"])], &[]);
    assert!(err.err().unwrap().0.contains("unknown trust domain"));
}
