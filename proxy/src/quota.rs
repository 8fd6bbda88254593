//! Per-identity daily upload quotas (`limits.identity_upload_bytes_per_day`,
//! SPEC §12): every new object is locked for retention + slack at once (or
//! for the upload lock, which a commit or an upload sent again extends), so
//! what a stolen writer certificate uploads, referenced or not, the bucket
//! must keep. The count is per proxy and per UTC day, by upload scope (an
//! identity in its current generation).

use std::collections::HashMap;
use std::sync::Mutex;

use coffer_proto::Scope;

/// Identities counted at most before older days are forgotten.
const TRACKED_MAX: usize = 100_000;

pub struct UploadQuota {
    per_day: u64,
    /// Per scope: (UTC day number, bytes stored that day).
    used: Mutex<HashMap<Scope, (u64, u64)>>,
}

impl UploadQuota {
    /// `per_day` bytes per identity and UTC day; 0: no quota.
    pub fn new(per_day: u64) -> Self {
        Self { per_day, used: Mutex::default() }
    }

    pub fn per_day(&self) -> u64 {
        self.per_day
    }

    /// Takes `bytes` of `who`'s quota for the day of `now`, if they fit;
    /// if not, what it has taken today. Taken before the upload is stored,
    /// so uploads in flight at once cannot together pass the quota.
    pub fn take(&self, who: &Scope, bytes: u64, now: u64) -> Result<(), u64> {
        if self.per_day == 0 {
            return Ok(());
        }
        let day = now / 86_400;
        let mut used = self.used.lock().expect("not poisoned");
        if used.len() >= TRACKED_MAX {
            used.retain(|_, (d, _)| *d == day);
        }
        let entry = used.entry(*who).or_insert((day, 0));
        if entry.0 != day {
            *entry = (day, 0);
        }
        match entry.1.checked_add(bytes).filter(|n| *n <= self.per_day) {
            Some(n) => {
                entry.1 = n;
                Ok(())
            }
            None => Err(entry.1),
        }
    }

    /// Gives back what [`Self::take`] took at `now`, for an upload that
    /// stored nothing new (it failed, or the object was there already).
    pub fn give_back(&self, who: &Scope, bytes: u64, now: u64) {
        if self.per_day == 0 {
            return;
        }
        let mut used = self.used.lock().expect("not poisoned");
        if let Some(entry) = used.get_mut(who).filter(|(d, _)| *d == now / 86_400) {
            entry.1 = entry.1.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_s_quota_is_per_identity_and_starts_again_the_next_day() {
        let q = UploadQuota::new(100);
        let (a, b) = (Scope::of("d", "a", 0), Scope::of("d", "b", 0));
        let day = 20_000 * 86_400;
        q.take(&a, 60, day).unwrap();
        assert_eq!(q.take(&a, 41, day + 10), Err(60), "refused, and nothing taken");
        q.take(&a, 40, day + 10).unwrap();
        assert_eq!(q.take(&a, 1, day + 20), Err(100));
        q.give_back(&a, 30, day + 30);
        q.take(&a, 30, day + 40).unwrap();
        q.take(&b, 100, day).unwrap();
        q.take(&a, 100, day + 86_400).unwrap();
        assert_eq!(q.take(&a, 1, day + 86_400), Err(100));
        UploadQuota::new(0).take(&a, u64::MAX, day).unwrap();
    }
}
