//! The endpoints of the `/v1` HTTP API, in one table: each action's method
//! and path, the media type of its body and the protocol's limits. The
//! proxy routes with [`route`], the client builds paths with
//! [`Action::path`]: a path exists once.

use crate::{ChunkId, RepoName};

/// Largest JSON or key-record body (config, key records, epochs, admin calls).
pub const SMALL_BODY_MAX: usize = 64 * 1024;
/// A commit's allowance beyond the request timeout, on both sides: a
/// second per this many bytes of its body (256 chunk ids). The proxy's work
/// grows with the chunks a commit names (with a cold catalog a HEAD of
/// each; with an upload lock a lock extension of each new one, SPEC §10),
/// `limits.store_fan_out` at a time: about 1.3 ms per chunk at 20 ms per
/// store request; this allows 4 ms.
pub const COMMIT_BYTES_PER_SEC: usize = 8 * 1024;
/// Most ids in one dedup query (`POST …/chunks/missing`).
pub const MISSING_IDS_MAX: usize = 4096;
/// Largest dedup query body.
pub const MISSING_BODY_MAX: usize = MISSING_IDS_MAX * ChunkId::LEN;

/// What a request asks for; also what a policy rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Whoami,
    PutConfig,
    GetConfig,
    PutKey,
    GetKey,
    Missing,
    PutChunk,
    GetChunk,
    /// The scopes that hold a copy of a chunk beside its first upload
    /// (SPEC §9 "Dedup scopes"): where a reader looks when the first
    /// upload does not match its id.
    ListCopies,
    Commit,
    ListSnapshots,
    GetSnapshot,
    /// Add a chunk-id key epoch (`coffer key rotate`).
    PutEpoch,
    /// Read the repository's chunk-id key epochs.
    ListEpochs,
    /// Admin: deny an identity from now on.
    AdminRevoke,
    /// Admin: make an identity's uploads so far stop counting for dedup,
    /// even its own (SPEC §9 "Dedup scopes").
    AdminQuarantine,
    /// Admin: reload the configuration file.
    AdminReload,
    /// Admin: put or lift legal holds on snapshots.
    AdminHold,
    /// Admin: enter or leave lockdown.
    AdminLockdown,
    /// Admin: delete what retention no longer protects.
    AdminExpire,
}

/// Where an action lives. `{repo}` is one or more segments (a repository
/// name), `{id}` exactly one; everything else is literal.
struct Endpoint {
    action: Action,
    method: &'static str,
    path: &'static str,
}

const fn ep(action: Action, method: &'static str, path: &'static str) -> Endpoint {
    Endpoint { action, method, path }
}

/// Every endpoint. Order matters when routing: the first path that matches
/// decides (so `chunks/missing` is never read as a chunk named "missing"),
/// then the method picks among the endpoints sharing that path.
const ENDPOINTS: [Endpoint; 20] = [
    ep(Action::Whoami, "GET", "whoami"),
    ep(Action::AdminRevoke, "POST", "admin/revoke"),
    ep(Action::AdminQuarantine, "POST", "admin/quarantine"),
    ep(Action::AdminReload, "POST", "admin/reload"),
    ep(Action::AdminHold, "POST", "admin/hold"),
    ep(Action::AdminLockdown, "POST", "admin/lockdown"),
    ep(Action::AdminExpire, "POST", "admin/expire"),
    ep(Action::GetConfig, "GET", "repos/{repo}/config"),
    ep(Action::PutConfig, "PUT", "repos/{repo}/config"),
    ep(Action::ListEpochs, "GET", "repos/{repo}/epochs"),
    ep(Action::PutEpoch, "PUT", "repos/{repo}/epochs/{id}"),
    ep(Action::ListSnapshots, "GET", "repos/{repo}/snapshots"),
    ep(Action::Commit, "POST", "repos/{repo}/snapshots"),
    ep(Action::Missing, "POST", "repos/{repo}/chunks/missing"),
    ep(Action::GetKey, "GET", "repos/{repo}/keys/{id}"),
    ep(Action::PutKey, "PUT", "repos/{repo}/keys/{id}"),
    ep(Action::GetChunk, "GET", "repos/{repo}/chunks/{id}"),
    ep(Action::ListCopies, "GET", "repos/{repo}/chunks/{id}/copies"),
    ep(Action::PutChunk, "PUT", "repos/{repo}/chunks/{id}"),
    ep(Action::GetSnapshot, "GET", "repos/{repo}/snapshots/{id}"),
];

impl Action {
    /// Every action, in the order listings show them.
    pub const ALL: [Action; 20] = [
        Action::Whoami,
        Action::PutConfig,
        Action::GetConfig,
        Action::PutKey,
        Action::GetKey,
        Action::Missing,
        Action::PutChunk,
        Action::GetChunk,
        Action::ListCopies,
        Action::Commit,
        Action::ListSnapshots,
        Action::GetSnapshot,
        Action::PutEpoch,
        Action::ListEpochs,
        Action::AdminRevoke,
        Action::AdminQuarantine,
        Action::AdminReload,
        Action::AdminHold,
        Action::AdminLockdown,
        Action::AdminExpire,
    ];

    fn endpoint(self) -> &'static Endpoint {
        ENDPOINTS.iter().find(|e| e.action == self).expect("every action has an endpoint")
    }

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
            Action::ListCopies => "list-copies",
            Action::Commit => "commit",
            Action::ListSnapshots => "list-snapshots",
            Action::GetSnapshot => "get-snapshot",
            Action::PutEpoch => "put-epoch",
            Action::ListEpochs => "list-epochs",
            Action::AdminRevoke => "admin-revoke",
            Action::AdminQuarantine => "admin-quarantine",
            Action::AdminReload => "admin-reload",
            Action::AdminHold => "admin-hold",
            Action::AdminLockdown => "admin-lockdown",
            Action::AdminExpire => "admin-expire",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The HTTP method.
    pub fn method(self) -> &'static str {
        self.endpoint().method
    }

    /// The request path for `repo` and `id` (each ignored where the path
    /// has no place for it).
    pub fn path(self, repo: Option<&RepoName>, id: Option<&str>) -> String {
        let mut path = String::from("/v1/");
        path.push_str(self.endpoint().path);
        if let Some(repo) = repo {
            path = path.replace("{repo}", repo.as_str());
        }
        if let Some(id) = id {
            path = path.replace("{id}", id);
        }
        path
    }

    /// Whether it changes state: its audit event must be durable before
    /// the response.
    pub fn mutating(self) -> bool {
        matches!(self, Action::PutConfig | Action::PutKey | Action::PutChunk | Action::Commit | Action::PutEpoch)
            || self.admin()
    }

    /// Whether it needs a repository.
    pub fn on_repo(self) -> bool {
        self.endpoint().path.starts_with("repos/")
    }

    /// Admin calls need a fresh TOTP code every time.
    pub fn admin(self) -> bool {
        self.endpoint().path.starts_with("admin/")
    }

    /// The media type of its body: JSON for admin calls, the binary formats
    /// of SPEC.md for the rest.
    pub fn body_type(self) -> &'static str {
        if self.admin() {
            "application/json"
        } else {
            "application/octet-stream"
        }
    }
}

/// A parsed request target.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub action: Action,
    pub repo: Option<RepoName>,
    /// The object id segment, still to be parsed by the handler's id type.
    pub object: Option<String>,
}

/// Why a request target names no endpoint.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint {0}")]
    NotFound(String),
    #[error("method not allowed")]
    Method,
    #[error("{0}")]
    BadRepo(String),
}

/// Matches `segs` against a path template: the repository segments and the
/// id, or None. A repository is read from the right: the template's
/// segments after `{repo}` are the last ones of the path.
fn matches<'a>(template: &str, segs: &[&'a str]) -> Option<(Option<Vec<&'a str>>, Option<&'a str>)> {
    let parts: Vec<&str> = template.split('/').collect();
    let fit = |pattern: &[&str], given: &[&'a str], id: &mut Option<&'a str>| {
        pattern.len() == given.len()
            && pattern.iter().zip(given).all(|(p, g)| {
                if *p == "{id}" {
                    *id = Some(g);
                    true
                } else {
                    p == g
                }
            })
    };
    let mut id = None;
    match parts.iter().position(|p| *p == "{repo}") {
        None => fit(&parts, segs, &mut id).then_some((None, id)),
        Some(at) => {
            let (before, after) = (&parts[..at], &parts[at + 1..]);
            if segs.len() < before.len() + after.len() + 1 {
                return None;
            }
            let tail = segs.len() - after.len();
            let ok = fit(before, &segs[..before.len()], &mut id) && fit(after, &segs[tail..], &mut id);
            ok.then(|| (Some(segs[before.len()..tail].to_vec()), id))
        }
    }
}

/// Maps method and path to an action. Repository names are parsed here, so
/// a bad name (`..`, `%2e`, empty segments, Unicode) never reaches a store.
pub fn route(method: &str, path: &str) -> Result<Route, RouteError> {
    let not_found = || RouteError::NotFound(path.to_string());
    let rest = path.strip_prefix("/v1/").ok_or_else(not_found)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let (template, (repo, object)) =
        ENDPOINTS.iter().find_map(|e| Some((e.path, matches(e.path, &segs)?))).ok_or_else(not_found)?;
    let action = ENDPOINTS
        .iter()
        .find(|e| e.path == template && e.method == method)
        .map(|e| e.action)
        .ok_or(RouteError::Method)?;
    let repo = match repo {
        Some(segs) => Some(segs.join("/").parse().map_err(|e: crate::FormatError| RouteError::BadRepo(e.to_string()))?),
        None => None,
    };
    Ok(Route { action, repo, object: object.map(str::to_string) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let ok = route("PUT", "/v1/repos/dev/db/chunks/abcd").unwrap();
        assert_eq!(
            (ok.action, ok.repo.unwrap().as_str(), ok.object.unwrap().as_str()),
            (Action::PutChunk, "dev/db", "abcd")
        );
        assert_eq!(route("POST", "/v1/repos/a/b/c/chunks/missing").unwrap().repo.unwrap().as_str(), "a/b/c");
        assert_eq!(route("POST", "/v1/repos/a/b/c/chunks/missing").unwrap().action, Action::Missing);
        assert_eq!(route("GET", "/v1/repos/x/chunks/missing"), Err(RouteError::Method), "never a chunk id");
        let copies = route("GET", "/v1/repos/dev/db/chunks/abcd/copies").unwrap();
        assert_eq!(
            (copies.action, copies.repo.unwrap().as_str(), copies.object.unwrap().as_str()),
            (Action::ListCopies, "dev/db", "abcd")
        );
        assert_eq!(route("GET", "/v1/repos/dev/chunks/ab.cd").unwrap().action, Action::GetChunk, "a copy's name");
        assert_eq!(route("GET", "/v1/repos/x/config").unwrap().action, Action::GetConfig);
        assert_eq!(route("POST", "/v1/repos/x/snapshots").unwrap().action, Action::Commit);
        assert_eq!(route("GET", "/v1/whoami").unwrap().action, Action::Whoami);
        assert_eq!(route("POST", "/v1/admin/expire").unwrap().action, Action::AdminExpire);
        // Read from the right: the segments before an endpoint's name are
        // the repository, whose names may not be an endpoint's.
        assert!(matches!(route("GET", "/v1/repos/x/chunks/config"), Err(RouteError::BadRepo(_))));
        for bad in [
            "/v1/repos/../config",
            "/v1/repos/%2e%2e/config",
            "/v1/repos/a//b/config",
            "/v1/repos//config",
            "/v1/repos/A/config",
            "/v1/repos/a/b/c/d/e/config",
            "/v1/repos/%C3%A9/config",
        ] {
            assert!(matches!(route("GET", bad), Err(RouteError::BadRepo(_))), "{bad}");
        }
        for missing in ["/v1/repos/config", "/v2/whoami", "/v1/whoami/x", "/v1/admin", "/v1/"] {
            assert!(matches!(route("GET", missing), Err(RouteError::NotFound(_))), "{missing}");
        }
        assert_eq!(route("DELETE", "/v1/repos/a/chunks/ab"), Err(RouteError::Method));
        assert_eq!(route("GET", "/v1/admin/expire"), Err(RouteError::Method));
    }

    #[test]
    fn every_path_routes_back_to_its_action() {
        let repo: RepoName = "prod/db".parse().unwrap();
        for action in Action::ALL {
            let path = action.path(Some(&repo), Some("00ff"));
            let r = route(action.method(), &path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(r.action, action, "{path}");
            assert_eq!(r.repo.is_some(), action.on_repo(), "{path}");
            assert_eq!(Action::parse(action.name()), Some(action));
        }
        let names: std::collections::HashSet<_> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), Action::ALL.len(), "one name per action");
        let listed: std::collections::HashSet<_> = ENDPOINTS.iter().map(|e| e.action).collect();
        assert_eq!(listed.len(), ENDPOINTS.len(), "one endpoint per action, each in ALL");
    }
}
