//! Authorization: which identity may do which action on which repository.
//! Deny by default: an identity matching no rule has no rights.

use std::fmt;

use coffer_proto::RepoName;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// Roles with fixed verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Adds objects: whoami, create and read the config, put key, missing
    /// query, put chunk, commit. Never reads data, never deletes.
    Writer,
    /// Reads: config, keys, chunks, snapshot listings and roots.
    Reader,
    /// The admin API (legal hold, expiry, revocation); it grants no data access.
    Admin,
}

/// Everything the API can be asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Whoami,
    PutConfig,
    GetConfig,
    PutKey,
    GetKey,
    Missing,
    PutChunk,
    GetChunk,
    Commit,
    ListSnapshots,
    GetSnapshot,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Whoami => "whoami",
            Action::PutConfig => "put-config",
            Action::GetConfig => "get-config",
            Action::PutKey => "put-key",
            Action::GetKey => "get-key",
            Action::Missing => "missing",
            Action::PutChunk => "put-chunk",
            Action::GetChunk => "get-chunk",
            Action::Commit => "commit",
            Action::ListSnapshots => "list-snapshots",
            Action::GetSnapshot => "get-snapshot",
        }
    }

    /// Whether it changes the store: its audit event must be durable before
    /// the response.
    pub fn mutating(self) -> bool {
        matches!(self, Action::PutConfig | Action::PutKey | Action::PutChunk | Action::Commit)
    }

    fn allowed_for(self, role: Role) -> bool {
        use Action::*;
        match role {
            Role::Writer => matches!(self, Whoami | PutConfig | GetConfig | PutKey | Missing | PutChunk | Commit),
            Role::Reader => matches!(self, Whoami | GetConfig | GetKey | GetChunk | ListSnapshots | GetSnapshot),
            Role::Admin => matches!(self, Whoami),
        }
    }
}

/// A repository pattern: `/`-separated segments, each a literal, `*` (any
/// one segment) or, last only, `**` (one or more segments).
#[derive(Clone, PartialEq, Eq)]
pub struct RepoPattern(Vec<String>);

impl RepoPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let segs: Vec<String> = s.split('/').map(str::to_string).collect();
        for (i, seg) in segs.iter().enumerate() {
            match seg.as_str() {
                "*" => {}
                "**" if i == segs.len() - 1 => {}
                "**" => return Err(format!("repo pattern {s:?}: `**` may only be the last segment")),
                lit => {
                    lit.parse::<RepoName>().map_err(|e| format!("repo pattern {s:?}: {e}"))?;
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
                "*" => {
                    if i >= segs.len() {
                        return false;
                    }
                }
                lit => {
                    if segs.get(i) != Some(&lit) {
                        return false;
                    }
                }
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

/// One `[[rules]]` entry of the proxy config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The identity it applies to, exactly (SAN URI, SAN DNS or CN).
    pub identity: String,
    pub roles: Vec<Role>,
    /// Repository patterns the roles apply to.
    #[serde(default)]
    pub repos: Vec<String>,
}

struct Rule {
    identity: Identity,
    roles: Vec<Role>,
    repos: Vec<RepoPattern>,
}

/// Why a request was denied; safe to show the caller and to audit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(rules: &[RuleConfig]) -> Result<Self, String> {
        let rules = rules
            .iter()
            .map(|r| {
                if r.roles.is_empty() {
                    return Err(format!("rule for {:?} grants no role", r.identity));
                }
                Ok(Rule {
                    identity: Identity::from(r.identity.as_str()),
                    roles: r.roles.clone(),
                    repos: r.repos.iter().map(|p| RepoPattern::parse(p)).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Allows `action` on `repo` (None for repo-less actions) if some rule
    /// for `identity` grants a role that allows it on a matching pattern.
    pub fn authorize(&self, identity: &Identity, action: Action, repo: Option<&RepoName>) -> Result<(), Denied> {
        let mut mine = self.rules.iter().filter(|r| r.identity == *identity).peekable();
        if mine.peek().is_none() {
            return Err(Denied(format!("no policy rule for identity {identity}")));
        }
        let mut role_ok = false;
        for rule in mine {
            if !rule.roles.iter().any(|&role| action.allowed_for(role)) {
                continue;
            }
            role_ok = true;
            match repo {
                None => return Ok(()),
                Some(repo) if rule.repos.iter().any(|p| p.matches(repo)) => return Ok(()),
                Some(_) => {}
            }
        }
        Err(Denied(match (role_ok, repo) {
            (false, _) => format!("{identity} has no role that allows {}", action.name()),
            (true, Some(repo)) => format!("{identity} may not {} on repository {repo}", action.name()),
            (true, None) => unreachable!("repo-less actions return above"),
        }))
    }

    /// The roles and repo patterns of every rule for `identity`.
    pub fn grants(&self, identity: &Identity) -> (Vec<Role>, Vec<String>) {
        let (mut roles, mut repos) = (Vec::new(), Vec::new());
        for rule in self.rules.iter().filter(|r| r.identity == *identity) {
            for role in &rule.roles {
                if !roles.contains(role) {
                    roles.push(*role);
                }
            }
            repos.extend(rule.repos.iter().map(ToString::to_string));
        }
        (roles, repos)
    }

    /// One line per rule, for `--check-config`.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| {
                let roles: Vec<String> = r.roles.iter().map(|r| format!("{r:?}").to_lowercase()).collect();
                let repos: Vec<String> = r.repos.iter().map(ToString::to_string).collect();
                format!("{}: roles [{}] on repos [{}]", r.identity, roles.join(", "), repos.join(", "))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn patterns() {
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
    fn deny_by_default_and_per_role() {
        let rules = vec![
            RuleConfig { identity: "w".into(), roles: vec![Role::Writer], repos: vec!["dev/**".into()] },
            RuleConfig { identity: "r".into(), roles: vec![Role::Reader], repos: vec!["dev/**".into()] },
        ];
        let p = Policy::new(&rules).unwrap();
        let (w, r, nobody) = (Identity::from("w"), Identity::from("r"), Identity::from("x"));
        let dev = repo("dev/db");
        assert!(p.authorize(&w, Action::PutChunk, Some(&dev)).is_ok());
        assert!(p.authorize(&w, Action::GetChunk, Some(&dev)).is_err());
        assert!(p.authorize(&w, Action::ListSnapshots, Some(&dev)).is_err());
        assert!(p.authorize(&w, Action::PutChunk, Some(&repo("prod/db"))).is_err());
        assert!(p.authorize(&r, Action::GetChunk, Some(&dev)).is_ok());
        assert!(p.authorize(&r, Action::PutChunk, Some(&dev)).is_err());
        assert!(p.authorize(&r, Action::Commit, Some(&dev)).is_err());
        assert!(p.authorize(&nobody, Action::Whoami, None).is_err());
        assert!(p.authorize(&w, Action::Whoami, None).is_ok());
    }
}
