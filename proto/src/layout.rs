//! Where a repository's objects live in the store (SPEC "Object layout").
//! Every key is `<repo>/<kind>/…`; a repository name never ends in a kind's
//! name (those segments are reserved), so one repository's objects never
//! fall under another's prefix.

use crate::{ChunkId, KeyId, RepoName, Scope, SnapshotId};

/// The kinds of object a repository holds, each under `<repo>/<kind>/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Keys,
    Chunks,
    Snapshots,
    Index,
    Epochs,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::Keys => "keys",
            Kind::Chunks => "chunks",
            Kind::Snapshots => "snapshots",
            Kind::Index => "index",
            Kind::Epochs => "epochs",
        }
    }
}

/// `<repo>/<kind>/`: what to list for every object of one kind.
pub fn prefix(repo: &RepoName, kind: Kind) -> String {
    format!("{repo}/{}/", kind.segment())
}

pub fn config(repo: &RepoName) -> String {
    format!("{repo}/config")
}

pub fn key(repo: &RepoName, id: &KeyId) -> String {
    format!("{repo}/keys/{id}")
}

/// Chunks fan out over 256 folders by their id's first byte.
pub fn chunk(repo: &RepoName, id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("{repo}/chunks/{}/{hex}", &hex[..2])
}

/// A copy of chunk `id` uploaded in `scope`, beside the first upload of
/// the id (which another scope made, or which was quarantined): the
/// first upload is locked and can be neither replaced nor trusted.
pub fn chunk_copy(repo: &RepoName, id: &ChunkId, scope: &Scope) -> String {
    format!("{}.{scope}", chunk(repo, id))
}

/// The name of a scope's copy of `id`: the last segment of its key, and
/// what a reader asks for in place of the id (`GET …/chunks/<name>`).
pub fn copy_name(id: &ChunkId, scope: &Scope) -> String {
    format!("{id}.{scope}")
}

/// The first upload of `id` (`None`) or a scope's copy of it.
pub fn chunk_at(repo: &RepoName, id: &ChunkId, copy: Option<&Scope>) -> String {
    match copy {
        Some(scope) => chunk_copy(repo, id, scope),
        None => chunk(repo, id),
    }
}

/// The chunk id, and the scope of a copy, of a key listed under
/// `prefix(repo, Kind::Chunks)`; `None` for anything else.
pub fn chunk_of(key: &str) -> Option<(ChunkId, Option<Scope>)> {
    let name = key.rsplit('/').next()?;
    match name.split_once('.') {
        Some((id, scope)) => Some((id.parse().ok()?, Some(scope.parse().ok()?))),
        None => Some((name.parse().ok()?, None)),
    }
}

pub fn snapshot(repo: &RepoName, id: &SnapshotId) -> String {
    format!("{repo}/snapshots/{id}")
}

pub fn index(repo: &RepoName, id: &SnapshotId) -> String {
    format!("{repo}/index/{id}")
}

pub fn epoch(repo: &RepoName, id: &KeyId) -> String {
    format!("{repo}/epochs/{id}")
}

/// `<repo>/index/packs/`: the listing packs (SPEC §7 "Listing packs"),
/// listed with the index segments beside them.
pub fn packs(repo: &RepoName) -> String {
    format!("{repo}/index/packs/")
}

/// A listing pack's key; `id` is the pack's 64-digit BLAKE3.
pub fn pack(repo: &RepoName, id: &str) -> String {
    format!("{repo}/index/packs/{id}")
}

/// Whether a store key is a listing pack's: under some repository's
/// `index/packs/`, named by 64 lowercase hex digits.
pub fn is_pack(key: &str) -> bool {
    key.rsplit_once("/index/packs/")
        .is_some_and(|(_, id)| id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The id at the end of a key listed under `prefix(repo, kind)`, if the
/// key is one of that kind's objects.
pub fn id_of<T: std::str::FromStr>(key: &str) -> Option<T> {
    key.rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_differ_by_domain_name_and_generation() {
        let a = Scope::of("prod", "host-a", 0);
        assert_eq!(a, Scope::of("prod", "host-a", 0), "every proxy computes the same scope");
        assert_ne!(a, Scope::of("dev", "host-a", 0));
        assert_ne!(a, Scope::of("prod", "host-b", 0));
        assert_ne!(a, Scope::of("prod", "host-a", 1));
        assert_ne!(Scope::of("ab", "c", 0), Scope::of("a", "bc", 0), "lengths are hashed");
    }

    use super::*;

    #[test]
    fn every_key_is_under_its_kinds_prefix_and_gives_its_id_back() {
        let repo: RepoName = "prod/db".parse().unwrap();
        let (c, k, s) = (ChunkId::from_bytes([0xab; 32]), KeyId::from_bytes([1; 16]), SnapshotId::from_bytes([2; 16]));
        assert!(chunk(&repo, &c).starts_with(&prefix(&repo, Kind::Chunks)));
        assert_eq!(chunk(&repo, &c), format!("prod/db/chunks/ab/{}", c.to_hex()));
        assert_eq!(id_of::<ChunkId>(&chunk(&repo, &c)), Some(c));
        assert!(key(&repo, &k).starts_with(&prefix(&repo, Kind::Keys)));
        assert_eq!(id_of::<KeyId>(&key(&repo, &k)), Some(k));
        assert!(epoch(&repo, &k).starts_with(&prefix(&repo, Kind::Epochs)));
        assert!(snapshot(&repo, &s).starts_with(&prefix(&repo, Kind::Snapshots)));
        assert!(index(&repo, &s).starts_with(&prefix(&repo, Kind::Index)));
        assert_eq!(id_of::<SnapshotId>(&index(&repo, &s)), Some(s));
        assert_eq!(id_of::<SnapshotId>("prod/db/index/not-an-id"), None);
        let p = pack(&repo, &"ab".repeat(32));
        assert!(p.starts_with(&prefix(&repo, Kind::Index)) && p.starts_with(&packs(&repo)));
        assert!(is_pack(&p) && !is_pack(&index(&repo, &s)));
        assert_eq!(id_of::<SnapshotId>(&p), None, "a pack is never read as a snapshot's index");
        assert!(!is_pack(&pack(&repo, &"AB".repeat(32))) && !is_pack(&pack(&repo, "ab")));
        let scope = Scope::of("prod", "spiffe://prod/host/a", 0);
        let copy = chunk_copy(&repo, &c, &scope);
        assert!(copy.starts_with(&prefix(&repo, Kind::Chunks)));
        assert_eq!(copy, format!("{}.{scope}", chunk(&repo, &c)));
        assert_eq!(chunk_of(&copy), Some((c, Some(scope))));
        assert!(copy.ends_with(&format!("/{}", copy_name(&c, &scope))));
        assert_eq!(chunk_of(&copy_name(&c, &scope)), Some((c, Some(scope))), "a name alone parses too");
        assert_eq!(chunk_of(&chunk(&repo, &c)), Some((c, None)));
        assert_eq!(chunk_at(&repo, &c, None), chunk(&repo, &c));
        assert_eq!(chunk_of(&format!("{}.xyz", chunk(&repo, &c))), None, "not a scope");
        assert_eq!(chunk_of("prod/db/chunks/ab/short"), None);
    }
}
