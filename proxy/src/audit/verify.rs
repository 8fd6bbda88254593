//! Verifying an audit trail: sealed segments in order, then (optionally)
//! the live file. The first broken link is reported with the seq it
//! concerns: an edited event (its hash), a deleted one (a seq gap), events
//! out of order, a missing segment, a bad signature, a truncated segment.

use super::segment::{self, Parsed};
use super::{render, Event, GENESIS};

/// The first break found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq} (in {place}): {reason}")]
pub struct ChainBreak {
    pub seq: u64,
    pub place: String,
    pub reason: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub events: u64,
    pub segments: usize,
    pub last_seq: u64,
}

struct Walk {
    expect: u64,
    prev: String,
    events: u64,
    /// Every seq present anywhere, to tell a moved event from a deleted one.
    present: std::collections::HashSet<u64>,
}

impl Walk {
    /// Checks one event line against the chain so far.
    fn event(&mut self, place: &str, line: &str) -> Result<(), ChainBreak> {
        let brk = |seq, reason: String| ChainBreak { seq, place: place.to_string(), reason };
        let event: Event =
            serde_json::from_str(line).map_err(|e| brk(self.expect, format!("unreadable event: {e}")))?;
        if event.seq > self.expect && self.present.contains(&self.expect) {
            return Err(brk(
                event.seq,
                format!("event {} is out of order (it comes before event {})", event.seq, self.expect),
            ));
        }
        if event.seq > self.expect {
            return Err(brk(self.expect, format!("event {} is missing (the next one is {})", self.expect, event.seq)));
        }
        if event.seq < self.expect {
            return Err(brk(event.seq, format!("event {} is out of order (expected {})", event.seq, self.expect)));
        }
        if event.prev != self.prev {
            return Err(brk(event.seq, "its prev does not match the previous event's hash".into()));
        }
        let (rendered, hash) = render(&event);
        if rendered != line || hash != event.hash {
            return Err(brk(event.seq, "the event was altered (its hash does not match its contents)".into()));
        }
        self.prev = hash;
        self.expect += 1;
        self.events += 1;
        Ok(())
    }

    fn segment(&mut self, place: &str, p: &Parsed<'_>, key: Option<&[u8]>) -> Result<(), ChainBreak> {
        let h = &p.header;
        let brk = |seq, reason: String| ChainBreak { seq, place: place.to_string(), reason };
        if h.first_seq > self.expect {
            return Err(brk(
                self.expect,
                format!("segment(s) missing: events {}..{} are absent", self.expect, h.first_seq - 1),
            ));
        }
        let public = match key {
            Some(k) => k.to_vec(),
            None => {
                hex::decode(&h.public_key).map_err(|_| brk(h.first_seq, "the seal's public key is not hex".into()))?
            }
        };
        if !segment::signature_ok(p, &public) {
            return Err(brk(h.first_seq, "the seal's signature is not valid for the audit key".into()));
        }
        for line in &p.events {
            self.event(place, line)?;
        }
        if blake3::hash(p.events_text.as_bytes()).to_hex().as_str() != h.events_blake3 {
            return Err(brk(h.first_seq, "the events do not match their signed seal (rewritten?)".into()));
        }
        if self.expect - 1 != h.last_seq || p.events.len() as u64 != h.count || self.prev != h.last_hash {
            return Err(brk(self.expect, format!("segment truncated: the seal covers events up to {}", h.last_seq)));
        }
        Ok(())
    }
}

/// The hashes of events `seqs` in a trail (segments, then the live
/// file), in one pass over it.
pub fn hashes_at(
    segments: &[(String, String)],
    live: Option<&str>,
    seqs: &std::collections::BTreeSet<u64>,
) -> std::collections::HashMap<u64, String> {
    let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else { return Default::default() };
    // Only the lines of segments that may hold one are parsed.
    let wanted = |(_, text): &&(String, String)| {
        segment::parse(text).is_none_or(|p| p.header.last_seq >= *first && p.header.first_seq <= *last)
    };
    segments
        .iter()
        .filter(wanted)
        .flat_map(|(_, text)| text.lines())
        .chain(live.into_iter().flat_map(str::lines))
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .filter(|e| seqs.contains(&e.seq))
        .map(|e| (e.seq, e.hash))
        .collect()
}

/// Verifies `segments` (name, contents; in order) and then `live`, from
/// event 1. `public_key` pins the audit key; without it each seal's own key
/// is used (which proves integrity, not origin).
pub fn verify(
    segments: &[(String, String)],
    live: Option<&str>,
    public_key: Option<&[u8]>,
) -> Result<Report, ChainBreak> {
    let seq_of = |line: &str| serde_json::from_str::<Event>(line).ok().map(|e| e.seq);
    let present = segments
        .iter()
        .flat_map(|(_, text)| text.lines())
        .chain(live.into_iter().flat_map(str::lines))
        .filter_map(seq_of)
        .collect();
    let mut walk = Walk { expect: 1, prev: GENESIS.to_string(), events: 0, present };
    for (name, text) in segments {
        let p = segment::parse(text).ok_or_else(|| ChainBreak {
            seq: walk.expect,
            place: name.clone(),
            reason: "the segment has no valid seal line (truncated or altered)".into(),
        })?;
        walk.segment(name, &p, public_key)?;
    }
    if let Some(live) = live {
        for line in live.lines() {
            walk.event("live log", line)?;
        }
    }
    Ok(Report { events: walk.events, segments: segments.len(), last_seq: walk.expect - 1 })
}
