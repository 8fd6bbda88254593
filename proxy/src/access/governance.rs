//! Repository policies: per repository pattern, a classification, a
//! retention, the regions data and keys may live in, the KEKs allowed, and
//! an RPO. Enforced on every write (once any policy exists, a repository no
//! policy covers cannot be written). A reload may make policies stricter;
//! making one looser needs the admin API (admin role + TOTP), and is audited.

use serde::{Deserialize, Serialize};

use coffer_proto::RepoName;

use crate::access::policy::{Denied, PolicyError, RepoPattern};
use crate::keycheck::arn_region;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    Restricted,
}

/// One `[[repo_policies]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoPolicyConfig {
    /// The repositories it covers (the first matching entry applies).
    pub repos: String,
    pub classification: Classification,
    /// Retention of this policy's snapshots (default: `retention.days`).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Regions the bucket and the KEKs must be in; empty means any.
    #[serde(default)]
    pub regions: Vec<String>,
    /// KEKs allowed for these repositories; empty means any.
    #[serde(default)]
    pub keks: Vec<String>,
    /// Longest time without a snapshot before an overdue alert.
    #[serde(default)]
    pub rpo_secs: Option<u64>,
    /// The Object Lock mode these repositories need; a bucket whose mode is
    /// weaker refuses their writes (`governance` < `compliance`).
    #[serde(default)]
    pub lock_mode: Option<crate::store::LockMode>,
    /// A schedule (`keep = { daily = 7, monthly = 12 }`): which snapshots
    /// the lifecycle keeps, and until when (docs/lifecycle.md).
    #[serde(default)]
    pub keep: Option<crate::keep::KeepConfig>,
}

pub struct RepoPolicies {
    list: Vec<(RepoPattern, RepoPolicyConfig)>,
    /// The bucket's region, when the store has one.
    bucket_region: Option<String>,
    /// The bucket's lock mode (S3); None for the filesystem store, whose
    /// write-once rule Coffer enforces itself.
    bucket_mode: Option<crate::store::LockMode>,
}

impl RepoPolicies {
    pub fn new(
        configs: &[RepoPolicyConfig],
        bucket_region: Option<String>,
        bucket_mode: Option<crate::store::LockMode>,
    ) -> Result<Self, PolicyError> {
        let list = configs
            .iter()
            .map(|c| {
                if let Some(keep) = &c.keep {
                    keep.rules().map_err(|e| PolicyError(format!("repo policy {}: {e}", c.repos)))?;
                }
                Ok((RepoPattern::parse(&c.repos)?, c.clone()))
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        Ok(Self { list, bucket_region, bucket_mode })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn configs(&self) -> Vec<RepoPolicyConfig> {
        self.list.iter().map(|(_, c)| c.clone()).collect()
    }

    /// The policy covering `repo`: `Ok(None)` when no policy is configured
    /// at all, an error when policies exist but none covers it.
    pub fn for_repo(&self, repo: &RepoName) -> Result<Option<&RepoPolicyConfig>, Denied> {
        if self.list.is_empty() {
            return Ok(None);
        }
        let found = self.list.iter().find(|(p, _)| p.matches(repo)).map(|(_, c)| c);
        let policy =
            found.ok_or_else(|| Denied(format!("no repository policy covers {repo}: it cannot be written")))?;
        if let (Some(region), false) = (&self.bucket_region, policy.regions.is_empty()) {
            if !policy.regions.contains(region) {
                return Err(Denied(format!(
                    "the bucket is in {region}, outside the regions {:?} of the policy for {repo}",
                    policy.regions
                )));
            }
        }
        if let (Some(need), Some(have)) = (policy.lock_mode, self.bucket_mode) {
            if have < need {
                return Err(Denied(format!(
                    "the bucket locks in {have:?} mode; the policy for {repo} requires {need:?}"
                )));
            }
        }
        Ok(Some(policy))
    }

    /// Checks a KEK against the policy of `repo`.
    pub fn check_kek(&self, repo: &RepoName, kek: &str) -> Result<(), Denied> {
        let Some(policy) = self.for_repo(repo)? else { return Ok(()) };
        if !policy.keks.is_empty() && !policy.keks.iter().any(|k| k == kek) {
            return Err(Denied(format!(
                "KEK {kek} is not allowed by the policy for {} ({:?})",
                policy.repos, policy.keks
            )));
        }
        if !policy.regions.is_empty() {
            match arn_region(kek) {
                Some(r) if policy.regions.iter().any(|x| x == r) => {}
                Some(r) => {
                    return Err(Denied(format!(
                        "KEK {kek} is in {r}, outside the regions {:?} of the policy for {}",
                        policy.regions, policy.repos
                    )))
                }
                None => {
                    return Err(Denied(format!(
                        "KEK {kek} has no region, and the policy for {} requires one of {:?}",
                        policy.repos, policy.regions
                    )))
                }
            }
        }
        Ok(())
    }

    /// The schedule of `repo`'s policy, if it has one (checked when loaded).
    pub fn keep_rules(&self, repo: &RepoName) -> Option<crate::keep::KeepRules> {
        let (_, c) = self.list.iter().find(|(p, _)| p.matches(repo))?;
        c.keep.as_ref().and_then(|k| k.rules().ok())
    }

    /// Retention days for `repo`, if its policy sets them.
    pub fn retention_days(&self, repo: &RepoName) -> Option<u32> {
        self.list.iter().find(|(p, _)| p.matches(repo)).and_then(|(_, c)| c.retention_days)
    }
}

/// How `new` loosens `old`, if it does: a policy removed, a shorter
/// retention, a lower classification, more regions or KEKs (or none, that
/// is any), a longer RPO.
/// Whether schedule `new` may keep fewer snapshots, or for less long, than
/// `old`: any count lowered, a shorter `within`, or the schedule removed.
fn keeps_less(old: Option<&crate::keep::KeepConfig>, new: Option<&crate::keep::KeepConfig>) -> bool {
    let (Some(o), n) = (old.and_then(|k| k.rules().ok()), new.and_then(|k| k.rules().ok())) else { return false };
    let Some(n) = n else { return true };
    n.keep_last < o.keep_last
        || n.keep_hourly < o.keep_hourly
        || n.keep_daily < o.keep_daily
        || n.keep_weekly < o.keep_weekly
        || n.keep_monthly < o.keep_monthly
        || n.keep_yearly < o.keep_yearly
        || n.keep_within_secs < o.keep_within_secs
}

pub fn loosening(old: &[RepoPolicyConfig], new: &[RepoPolicyConfig]) -> Option<String> {
    for o in old {
        let Some(n) = new.iter().find(|n| n.repos == o.repos) else {
            return Some(format!("the policy for {} is removed", o.repos));
        };
        let why = if n.classification < o.classification {
            Some("a lower classification")
        } else if n.retention_days.unwrap_or(0) < o.retention_days.unwrap_or(0) {
            Some("a shorter retention")
        } else if !o.regions.is_empty() && (n.regions.is_empty() || n.regions.iter().any(|r| !o.regions.contains(r))) {
            Some("more regions")
        } else if !o.keks.is_empty() && (n.keks.is_empty() || n.keks.iter().any(|k| !o.keks.contains(k))) {
            Some("more KEKs")
        } else if o.rpo_secs.is_some() && n.rpo_secs.is_none_or(|r| r > o.rpo_secs.unwrap_or(u64::MAX)) {
            Some("a longer RPO")
        } else if o.lock_mode.is_some() && n.lock_mode < o.lock_mode {
            Some("a weaker lock mode")
        } else if keeps_less(o.keep.as_ref(), n.keep.as_ref()) {
            Some("a schedule that keeps less")
        } else {
            None
        };
        if let Some(why) = why {
            return Some(format!("the policy for {} gets {why}", o.repos));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(repos: &str, c: Classification, days: Option<u32>, regions: &[&str], keks: &[&str]) -> RepoPolicyConfig {
        RepoPolicyConfig {
            repos: repos.into(),
            classification: c,
            retention_days: days,
            regions: regions.iter().map(|s| s.to_string()).collect(),
            keks: keks.iter().map(|s| s.to_string()).collect(),
            rpo_secs: Some(86_400),
            lock_mode: None,
            keep: None,
        }
    }

    #[test]
    fn enforcement() {
        let kek = "arn:aws:kms:eu-west-1:1:key/a";
        let p = RepoPolicies::new(
            &[pol("prod/**", Classification::Restricted, Some(90), &["eu-west-1"], &[kek])],
            None,
            None,
        )
        .unwrap();
        let prod: RepoName = "prod/db".parse().unwrap();
        assert!(p.for_repo(&"dev/db".parse().unwrap()).is_err(), "no policy, no writes");
        assert!(p.check_kek(&prod, kek).is_ok());
        assert!(p.check_kek(&prod, "arn:aws:kms:eu-west-1:1:key/b").is_err(), "not the policy's KEK");
        let open =
            RepoPolicies::new(&[pol("prod/**", Classification::Restricted, None, &["eu-west-1"], &[])], None, None)
                .unwrap();
        assert!(open.check_kek(&prod, "arn:aws:kms:us-east-1:1:key/a").unwrap_err().0.contains("us-east-1"));
        assert!(open.check_kek(&prod, "local:abcd").is_err(), "a region is required");
        let bucket_elsewhere = RepoPolicies::new(
            &[pol("prod/**", Classification::Restricted, None, &["eu-west-1"], &[])],
            Some("us-east-1".into()),
            None,
        )
        .unwrap();
        assert!(bucket_elsewhere.for_repo(&prod).unwrap_err().0.contains("bucket"));
        assert_eq!(p.retention_days(&prod), Some(90));
        assert!(
            RepoPolicies::new(&[], None, None).unwrap().for_repo(&prod).unwrap().is_none(),
            "no policies: no enforcement"
        );
        use crate::store::LockMode;
        let strict = RepoPolicyConfig {
            lock_mode: Some(LockMode::Compliance),
            ..pol("prod/**", Classification::Restricted, None, &[], &[])
        };
        let governance = RepoPolicies::new(std::slice::from_ref(&strict), None, Some(LockMode::Governance)).unwrap();
        assert!(governance.for_repo(&prod).unwrap_err().0.contains("requires Compliance"));
        assert!(RepoPolicies::new(std::slice::from_ref(&strict), None, Some(LockMode::Compliance))
            .unwrap()
            .for_repo(&prod)
            .is_ok());
        let weaker = RepoPolicyConfig { lock_mode: Some(LockMode::Governance), ..strict.clone() };
        assert!(loosening(&[strict], &[weaker]).unwrap().contains("weaker lock mode"));
    }

    #[test]
    fn stricter_is_fine_looser_is_named() {
        let base = vec![pol("prod/**", Classification::Confidential, Some(30), &["eu-west-1"], &["k1"])];
        let stricter = vec![pol("prod/**", Classification::Restricted, Some(60), &["eu-west-1"], &["k1"])];
        assert_eq!(loosening(&base, &stricter), None);
        for (looser, why) in [
            (vec![], "removed"),
            (vec![pol("prod/**", Classification::Internal, Some(30), &["eu-west-1"], &["k1"])], "classification"),
            (vec![pol("prod/**", Classification::Confidential, Some(7), &["eu-west-1"], &["k1"])], "retention"),
            (
                vec![pol("prod/**", Classification::Confidential, Some(30), &["eu-west-1", "us-east-1"], &["k1"])],
                "regions",
            ),
            (vec![pol("prod/**", Classification::Confidential, Some(30), &["eu-west-1"], &[])], "KEKs"),
        ] {
            assert!(loosening(&base, &looser).unwrap().contains(why), "{why}");
        }
    }

    #[test]
    fn a_schedule_that_keeps_less_is_a_loosening() {
        use crate::keep::KeepConfig;
        let with = |keep: Option<KeepConfig>| {
            vec![RepoPolicyConfig { keep, ..pol("prod/**", Classification::Confidential, Some(30), &[], &[]) }]
        };
        let base = with(Some(KeepConfig { daily: 7, monthly: 12, ..Default::default() }));
        let more = with(Some(KeepConfig { daily: 14, monthly: 12, yearly: 1, ..Default::default() }));
        assert_eq!(loosening(&base, &more), None, "keeping more is stricter");
        for less in [
            with(Some(KeepConfig { daily: 7, monthly: 6, ..Default::default() })),
            with(Some(KeepConfig { daily: 7, ..Default::default() })),
            with(None),
        ] {
            assert!(loosening(&base, &less).unwrap().contains("keeps less"), "{less:?}");
        }
        let bad = with(Some(KeepConfig { within: Some("soon".into()), ..Default::default() }));
        assert!(RepoPolicies::new(&bad, None, None).err().unwrap().0.contains("keep.within"));
        let empty = with(Some(KeepConfig::default()));
        assert!(RepoPolicies::new(&empty, None, None).err().unwrap().0.contains("at least one"));
    }
}
