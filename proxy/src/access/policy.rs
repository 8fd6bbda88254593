//! Authorization: may this identity, from this address, do this action on
//! this repository? Deny by default: an identity matching no rule has no
//! rights, and every decision names the rule that made it.
//!
//! Rights are role × repository patterns × source CIDRs (× allowed KEKs,
//! checked on key uploads). A rule's repositories are always intersected
//! with its trust domain's own namespace, so a domain's identities can only
//! ever be granted rights inside it. The one way across is a `[[grants]]`
//! entry, which gives another domain's identities read access, nothing more.

use std::fmt;
use std::net::IpAddr;

use coffer_proto::RepoName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use coffer_proto::endpoint::Action;

use crate::access::identity::Identity;
use crate::access::trust::TrustDomainConfig;

/// Roles with fixed verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Adds objects: whoami, create and read the config, put key, missing
    /// query, put chunk, commit. Never reads data, never deletes.
    Writer,
    /// Reads: config, keys, chunks, snapshot listings and roots.
    Reader,
    /// Metadata only: snapshot listings (plain stats), audit and reports.
    Auditor,
    /// The admin API (with a TOTP code); no data access.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Whether the role may do `action`.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Writer => {
                matches!(
                    action,
                    Whoami | PutConfig | GetConfig | PutKey | Missing | PutChunk | Commit | PutEpoch | ListEpochs
                )
            }
            Role::Reader => {
                matches!(
                    action,
                    Whoami | GetConfig | GetKey | GetChunk | ListCopies | ListSnapshots | GetSnapshot | ListEpochs
                )
            }
            Role::Auditor => matches!(action, Whoami | ListSnapshots),
            Role::Admin => {
                matches!(
                    action,
                    Whoami | AdminRevoke | AdminQuarantine | AdminReload | AdminHold | AdminLockdown | AdminExpire
                )
            }
        }
    }
}

/// A repository pattern: `/`-separated segments, each a literal, `*` (any
/// one segment) or, last only, `**` (one or more segments).
#[derive(Clone, PartialEq, Eq)]
pub struct RepoPattern(Vec<String>);

impl RepoPattern {
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let segs: Vec<String> = s.split('/').map(str::to_string).collect();
        for (i, seg) in segs.iter().enumerate() {
            match seg.as_str() {
                "*" => {}
                "**" if i == segs.len() - 1 => {}
                "**" => return Err(PolicyError(format!("repo pattern {s:?}: `**` may only be the last segment"))),
                lit => {
                    lit.parse::<RepoName>().map_err(|e| PolicyError(format!("repo pattern {s:?}: {e}")))?;
                }
            }
        }
        Ok(Self(segs))
    }

    pub fn matches(&self, repo: &RepoName) -> bool {
        let segs: Vec<&str> = repo.as_str().split('/').collect();
        for (i, pat) in self.0.iter().enumerate() {
            match pat.as_str() {
                "**" => return segs.len() > i,
                "*" if i < segs.len() => {}
                lit if segs.get(i) == Some(&lit) => {}
                _ => return false,
            }
        }
        segs.len() == self.0.len()
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// An identity pattern: exact, or with `*` standing for any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NamePattern(String);

impl NamePattern {
    fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = self.0.split('*').collect();
        if parts.len() == 1 {
            return self.0 == name;
        }
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
            return false;
        }
        let mut rest = &name[first.len()..name.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(mid) {
                Some(i) => rest = &rest[i + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

/// One `[[rules]]` entry of the proxy config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in decisions and audit events (default `rules[N]`).
    #[serde(default)]
    pub name: Option<String>,
    /// The trust domain the identity's certificate must chain to.
    pub trust_domain: String,
    /// The identity (SAN URI, SAN DNS or CN); `*` matches any characters.
    pub identity: String,
    pub roles: Vec<Role>,
    /// Repository patterns the roles apply to (within the domain's namespace).
    #[serde(default)]
    pub repos: Vec<String>,
    /// Source addresses allowed; empty means any.
    #[serde(default)]
    pub source_cidrs: Vec<IpNet>,
    /// KEKs the identity may wrap keys with; empty means any the proxy's
    /// key checker accepts.
    #[serde(default)]
    pub kms_keys: Vec<String>,
    /// Requests under this rule need a TOTP code once per connection
    /// ("MFA for backup access"). Admin calls always need one.
    #[serde(default)]
    pub mfa: bool,
}

/// One `[[grants]]` entry: read access for another domain's identities.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// The grantee's trust domain.
    pub trust_domain: String,
    pub identity: String,
    /// The domain whose repositories are shared.
    pub from_domain: String,
    /// Repository patterns shared (within `from_domain`'s namespace).
    pub repos: Vec<String>,
    #[serde(default)]
    pub source_cidrs: Vec<IpNet>,
    /// As for rules: a TOTP code once per connection.
    #[serde(default)]
    pub mfa: bool,
}

struct Rule {
    name: String,
    domain: String,
    identity: NamePattern,
    roles: Vec<Role>,
    repos: Vec<RepoPattern>,
    /// The namespace of the domain whose repositories this rule reaches.
    namespace: Vec<RepoPattern>,
    sources: Vec<IpNet>,
    kms_keys: Vec<String>,
    mfa: bool,
    cross_domain: Option<String>,
}

impl Rule {
    fn repo_ok(&self, repo: &RepoName) -> bool {
        self.repos.iter().any(|p| p.matches(repo)) && self.namespace.iter().any(|p| p.matches(repo))
    }

    fn source_ok(&self, ip: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&ip))
    }
}

/// A question put to the policy.
#[derive(Clone, Debug)]
pub struct AccessRequest<'a> {
    pub identity: &'a Identity,
    pub action: Action,
    pub repo: Option<&'a RepoName>,
    pub source: IpAddr,
}

/// Why a request was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The rule or grant that allowed it.
    pub rule: String,
    /// KEKs that rule allows (empty: any the key checker accepts).
    pub kms_keys: Vec<String>,
    /// Whether that rule asks for a TOTP code on the connection.
    pub mfa: bool,
}

/// Why a policy (rules, grants, repository patterns) cannot be used as
/// written; names the rule or pattern to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// Why a request was denied; safe to show the caller and to audit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

pub struct Policy {
    rules: Vec<Rule>,
}

fn patterns(list: &[String]) -> Result<Vec<RepoPattern>, PolicyError> {
    list.iter().map(|p| RepoPattern::parse(p)).collect()
}

impl Policy {
    pub fn new(
        domains: &[TrustDomainConfig],
        rules: &[RuleConfig],
        grants: &[GrantConfig],
    ) -> Result<Self, PolicyError> {
        let namespace = |d: &str, what: &str| -> Result<Vec<RepoPattern>, PolicyError> {
            let domain = domains
                .iter()
                .find(|c| c.name == d)
                .ok_or_else(|| PolicyError(format!("{what}: unknown trust domain {d:?}")))?;
            patterns(&domain.repos)
        };
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            if r.roles.is_empty() {
                return Err(PolicyError(format!("{name}: grants no role")));
            }
            out.push(Rule {
                namespace: namespace(&r.trust_domain, &name)?,
                name,
                domain: r.trust_domain.clone(),
                identity: NamePattern(r.identity.clone()),
                roles: r.roles.clone(),
                repos: patterns(&r.repos)?,
                sources: r.source_cidrs.clone(),
                kms_keys: r.kms_keys.clone(),
                mfa: r.mfa,
                cross_domain: None,
            });
        }
        for (i, g) in grants.iter().enumerate() {
            let name = g.name.clone().unwrap_or_else(|| format!("grants[{i}]"));
            namespace(&g.trust_domain, &name)?;
            if g.trust_domain == g.from_domain {
                return Err(PolicyError(format!("{name}: a grant is between two different trust domains")));
            }
            out.push(Rule {
                namespace: namespace(&g.from_domain, &name)?,
                name,
                domain: g.trust_domain.clone(),
                identity: NamePattern(g.identity.clone()),
                roles: vec![Role::Reader],
                repos: patterns(&g.repos)?,
                sources: g.source_cidrs.clone(),
                kms_keys: Vec::new(),
                mfa: g.mfa,
                cross_domain: Some(g.from_domain.clone()),
            });
        }
        Ok(Self { rules: out })
    }

    /// Decides a request: allowed by the first rule or grant that covers
    /// it, else denied with the reason of the closest miss.
    pub fn decide(&self, req: &AccessRequest<'_>) -> Result<Allowed, Denied> {
        let id = req.identity;
        let mine: Vec<&Rule> =
            self.rules.iter().filter(|r| r.domain == id.domain() && r.identity.matches(id.name())).collect();
        if mine.is_empty() {
            return Err(Denied(format!("no policy rule for {id}")));
        }
        let mut miss = format!("{id} has no role that allows {}", req.action.name());
        for rule in mine {
            if !rule.roles.iter().any(|&role| role.allows(req.action)) {
                continue;
            }
            if let Some(repo) = req.repo {
                if !rule.repo_ok(repo) {
                    miss = format!("{id} may not {} on repository {repo}", req.action.name());
                    continue;
                }
            }
            if !rule.source_ok(req.source) {
                miss = format!("{id} may not {} from {}", req.action.name(), req.source);
                continue;
            }
            return Ok(Allowed { rule: rule.name.clone(), kms_keys: rule.kms_keys.clone(), mfa: rule.mfa });
        }
        Err(Denied(miss))
    }

    /// The roles and repository patterns granted to `identity`, and whether
    /// any of its rules asks for MFA (whoami).
    pub fn grants(&self, identity: &Identity) -> (Vec<Role>, Vec<String>, bool) {
        let (mut roles, mut repos, mut mfa) = (Vec::new(), Vec::new(), false);
        for rule in self.rules.iter().filter(|r| r.domain == identity.domain() && r.identity.matches(identity.name())) {
            mfa |= rule.mfa;
            for role in &rule.roles {
                if !roles.contains(role) {
                    roles.push(*role);
                }
            }
            repos.extend(rule.repos.iter().map(ToString::to_string));
        }
        (roles, repos, mfa)
    }

    /// The effective rights of every rule, one line each (`--check-config`).
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| {
                let roles: Vec<&str> = r.roles.iter().map(|r| r.name()).collect();
                let actions: Vec<&str> = Action::ALL
                    .into_iter()
                    .filter(|a| r.roles.iter().any(|&role| role.allows(*a)))
                    .map(Action::name)
                    .collect();
                let list = |v: Vec<String>| if v.is_empty() { "any".to_string() } else { v.join(", ") };
                let reach = match &r.cross_domain {
                    Some(from) => format!(" (grant from trust domain {from})"),
                    None => String::new(),
                };
                let mfa = if r.mfa { ", TOTP required" } else { "" };
                format!(
                    "{}: {} in trust domain {}: roles [{}] -> [{}] on repos [{}] within [{}]{reach}, from {}, KEKs {}{mfa}",
                    r.name,
                    r.identity.0,
                    r.domain,
                    roles.join(", "),
                    actions.join(", "),
                    r.repos.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    r.namespace.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    list(r.sources.iter().map(ToString::to_string).collect()),
                    list(r.kms_keys.clone()),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
