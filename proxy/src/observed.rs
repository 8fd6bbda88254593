//! What each upload scope stored in each repository through this proxy
//! since its last commit here: the proxy's own view of a run's new data. A
//! commit's stats may not claim less (SPEC §8 "Commit stats"), so a host
//! cannot report encrypted (ransomed) data as old to keep the detector
//! quiet.

use std::collections::HashMap;
use std::sync::Mutex;

use coffer_proto::{RepoName, Scope};

/// (repository, scope) pairs followed at most; beyond, at least the older
/// half is forgotten (a forgotten run only lets its next commit claim
/// less; a writer able to fill the table can make its own run forgotten,
/// as it could by spreading the run over proxies).
const TRACKED_MAX: usize = 100_000;

/// New objects stored in a run: how many, and their envelope bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub chunks: u64,
    pub bytes: u64,
    /// When the first of them was stored (unix seconds).
    since: u64,
}

impl Seen {
    /// What a commit referencing `referenced` chunks of `referenced_bytes`
    /// can account for of this: no more than it references. What it takes
    /// off the count is that, so a decoy commit referencing little does
    /// not clear a run.
    pub fn credited(self, referenced: u64, referenced_bytes: u64) -> Self {
        Self { chunks: self.chunks.min(referenced), bytes: self.bytes.min(referenced_bytes), ..self }
    }
}

#[derive(Default)]
pub struct Observed {
    runs: Mutex<HashMap<(RepoName, Scope), Seen>>,
}

impl Observed {
    /// Counts a new object of `bytes` that `scope` stored in `repo` at `now`.
    pub fn stored(&self, repo: &RepoName, scope: &Scope, bytes: u64, now: u64) {
        let mut runs = self.runs.lock().expect("not poisoned");
        if runs.len() >= TRACKED_MAX && !runs.contains_key(&(repo.clone(), *scope)) {
            let mut ages: Vec<u64> = runs.values().map(|s| s.since).collect();
            ages.sort_unstable();
            let median = ages[ages.len() / 2];
            runs.retain(|_, s| s.since > median);
        }
        let seen = runs.entry((repo.clone(), *scope)).or_insert(Seen { since: now, ..Seen::default() });
        seen.chunks = seen.chunks.saturating_add(1);
        seen.bytes = seen.bytes.saturating_add(bytes);
    }

    /// What `scope` stored in `repo` since its last commit here.
    pub fn seen(&self, repo: &RepoName, scope: &Scope) -> Seen {
        self.runs.lock().expect("not poisoned").get(&(repo.clone(), *scope)).copied().unwrap_or_default()
    }

    /// A commit of `scope` in `repo` accounted for `seen`: what was stored
    /// since (another run already under way) stays counted.
    pub fn committed(&self, repo: &RepoName, scope: &Scope, seen: Seen) {
        let mut runs = self.runs.lock().expect("not poisoned");
        let key = (repo.clone(), *scope);
        if let Some(now) = runs.get_mut(&key) {
            now.chunks = now.chunks.saturating_sub(seen.chunks);
            now.bytes = now.bytes.saturating_sub(seen.bytes);
            // Two commits at once may each take the same: never leave
            // chunks without bytes, or bytes without chunks.
            if now.chunks == 0 || now.bytes == 0 {
                runs.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_counted_per_repository_and_scope_until_its_commit() {
        let o = Observed::default();
        let (repo, other): (RepoName, RepoName) = ("dev/a".parse().unwrap(), "dev/b".parse().unwrap());
        let (a, b) = (Scope::of("d", "a", 0), Scope::of("d", "b", 0));
        o.stored(&repo, &a, 100, 1);
        o.stored(&repo, &a, 50, 2);
        o.stored(&repo, &b, 7, 2);
        o.stored(&other, &a, 9, 2);
        let seen = o.seen(&repo, &a);
        assert_eq!((seen.chunks, seen.bytes), (2, 150));
        // An upload of the next run lands before the commit is done.
        o.stored(&repo, &a, 30, 3);
        o.committed(&repo, &a, seen);
        let left = o.seen(&repo, &a);
        assert_eq!((left.chunks, left.bytes), (1, 30));
        assert_eq!(o.seen(&repo, &b).bytes, 7, "another scope's run is its own");
        assert_eq!(o.seen(&other, &a).bytes, 9, "and another repository's");
        // A decoy commit referencing one small chunk takes off only that.
        o.stored(&repo, &b, 1_000_000, 4);
        let decoy = o.seen(&repo, &b).credited(1, 60);
        o.committed(&repo, &b, decoy);
        assert_eq!(o.seen(&repo, &b).bytes, 1_000_007 - 60, "the rest still counts");
    }
}
