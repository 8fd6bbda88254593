//! Connection slots, so that no one client can hold the proxy's
//! connections: a cap per source address (taken before the handshake), a
//! cap per identity (after it), and a reserve that only admins may keep,
//! so an operator can always get in to revoke or lock down. Also the
//! throttle on audit events of refused connections, which a flood of bad
//! handshakes would otherwise turn into a flood of disk writes: beyond a
//! few per source per minute they are counted, and the count is written
//! as one event when the minute ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Of the proxy's connections, how many are kept for identities with the
/// admin role once the rest are taken.
pub const ADMIN_RESERVED: usize = 32;
/// Audit events of refused connections per source address per minute;
/// the rest are counted.
pub const REFUSALS_AUDITED_PER_MINUTE: u32 = 10;

#[derive(Default)]
struct Counts {
    by_source: HashMap<IpAddr, usize>,
    by_identity: HashMap<String, usize>,
}

/// Open connections per source address and per identity.
pub struct Slots {
    per_source: usize,
    per_identity: usize,
    counts: Mutex<Counts>,
}

/// A connection's place in the count of its source address, or identity;
/// given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    key: SlotKey,
}

enum SlotKey {
    Source(IpAddr),
    Identity(String),
}

impl Slots {
    pub fn new(per_source: usize, per_identity: usize) -> Arc<Self> {
        Arc::new(Self { per_source, per_identity, counts: Mutex::default() })
    }

    /// A slot for a new connection from `ip`, unless it has its fill. An
    /// IPv6 address counts as its /64: one host commonly holds a whole one.
    pub fn source(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = source_key(ip);
        let mut c = self.counts.lock().expect("not poisoned");
        let n = c.by_source.entry(ip).or_default();
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), key: SlotKey::Source(ip) })
    }

    /// A slot for a connection that authenticated as `identity`.
    pub fn identity(self: &Arc<Self>, identity: &str) -> Option<Slot> {
        let mut c = self.counts.lock().expect("not poisoned");
        let n = c.by_identity.entry(identity.to_string()).or_default();
        if *n >= self.per_identity {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), key: SlotKey::Identity(identity.to_string()) })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().expect("not poisoned");
        let (map_len, left) = match &self.key {
            SlotKey::Source(ip) => {
                let n = c.by_source.get_mut(ip).map(|n| {
                    *n -= 1;
                    *n
                });
                if n == Some(0) {
                    c.by_source.remove(ip);
                }
                (c.by_source.len(), n)
            }
            SlotKey::Identity(id) => {
                let n = c.by_identity.get_mut(id).map(|n| {
                    *n -= 1;
                    *n
                });
                if n == Some(0) {
                    c.by_identity.remove(id);
                }
                (c.by_identity.len(), n)
            }
        };
        debug_assert!(left.is_some(), "a slot is given back once ({map_len} keys)");
    }
}

/// The address a source is counted under: itself, or its /64 for IPv6
/// (an IPv4-mapped IPv6 address is its IPv4 address).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Which refusals of a source get their own audit event.
#[derive(Default)]
pub struct RefusalThrottle {
    inner: Mutex<Throttle>,
}

#[derive(Default)]
struct Throttle {
    /// Per source: the minute counted, events written in it, and refusals
    /// counted but not written.
    minutes: HashMap<IpAddr, (u64, u32, u64)>,
    /// Counts of ended minutes not yet taken.
    ended: Vec<(IpAddr, u64)>,
}

impl RefusalThrottle {
    /// Whether a refusal from `ip` at `now` (unix s) gets its own event.
    pub fn admit(&self, ip: IpAddr, now: u64) -> bool {
        let ip = source_key(ip);
        let mut t = self.inner.lock().expect("not poisoned");
        let e = *t.minutes.entry(ip).or_insert((now / 60, 0, 0));
        if e.0 != now / 60 {
            if e.2 > 0 {
                t.ended.push((ip, e.2));
            }
            t.minutes.insert(ip, (now / 60, 0, 0));
        }
        let e = t.minutes.get_mut(&ip).expect("inserted above");
        if e.1 < REFUSALS_AUDITED_PER_MINUTE {
            e.1 += 1;
            return true;
        }
        e.2 += 1;
        false
    }

    /// The counts of refusals not written, per source, for minutes that
    /// have ended by `now`; each is handed out once.
    pub fn take_ended(&self, now: u64) -> Vec<(IpAddr, u64)> {
        let mut t = self.inner.lock().expect("not poisoned");
        let mut out = std::mem::take(&mut t.ended);
        t.minutes.retain(|ip, (minute, _, suppressed)| {
            if *minute >= now / 60 {
                return true;
            }
            if *suppressed > 0 {
                out.push((*ip, *suppressed));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_per_source_and_identity_are_given_back() {
        let s = Slots::new(2, 1);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let (a, b) = (s.source(ip).unwrap(), s.source(ip).unwrap());
        assert!(s.source(ip).is_none(), "the third from one address");
        assert!(s.source("127.0.0.3".parse().unwrap()).is_some(), "other addresses are not affected");
        drop(a);
        assert!(s.source(ip).is_some());
        drop(b);
        let w = s.identity("dev\0writer").unwrap();
        assert!(s.identity("dev\0writer").is_none());
        assert!(s.identity("dev\0admin").is_some());
        drop(w);
        assert!(s.identity("dev\0writer").is_some());
    }

    #[test]
    fn an_ipv6_source_counts_as_its_slash_64() {
        let s = Slots::new(1, 1);
        let a = s.source("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(s.source("2001:db8:1:2:ffff::9".parse().unwrap()).is_none(), "same /64");
        assert!(s.source("2001:db8:1:3::1".parse().unwrap()).is_some(), "another /64");
        let b = s.source("::ffff:127.0.0.2".parse().unwrap()).unwrap();
        assert!(s.source("127.0.0.2".parse().unwrap()).is_none(), "a mapped IPv4 address is that address");
        drop((a, b));
    }

    #[test]
    fn refusals_beyond_the_allowance_are_counted_and_reported_once() {
        let t = RefusalThrottle::default();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let now = 6_000;
        let written = (0..100).filter(|_| t.admit(ip, now)).count();
        assert_eq!(written, REFUSALS_AUDITED_PER_MINUTE as usize);
        assert!(t.take_ended(now).is_empty(), "the minute has not ended");
        assert_eq!(t.take_ended(now + 60), [(ip, 100 - REFUSALS_AUDITED_PER_MINUTE as u64)]);
        assert!(t.take_ended(now + 120).is_empty(), "reported once");
        assert!(t.admit(ip, now + 120), "a new minute, a new allowance");
        // A minute that ends with no flush in between is still reported.
        let later = now + 600;
        assert_eq!((0..12).filter(|_| t.admit(ip, later)).count(), 10);
        assert!(t.admit(ip, later + 60));
        assert_eq!(t.take_ended(later + 60), [(ip, 2)]);
    }
}
