//! Content-defined chunking of a stream, cut exactly where fastcdc's
//! `v2020::StreamCDC` cuts, with the reading on a thread of its own and no
//! copy of the data.
//!
//! A reader thread reads the stream in blocks ([`read_blocks`]); the
//! [`Cutter`] scans them with FastCDC's gear hash, resuming where one block
//! ends and the next begins, and hands each chunk over as slices of the
//! blocks it spans ([`Pieces`]). fastcdc's own cutters need a chunk's bytes in
//! one buffer, so they copy each chunk's bytes at least once and read on the
//! cutting thread; here the kernel's copy into the blocks is the only copy,
//! and it runs beside the cut.
//!
//! The scan is FastCDC v2020's as the crate runs it (`FastCDC::new`:
//! normalization level 1, the crate's gear tables and masks, two bytes a
//! step): a chunk's first `min` bytes are skipped, its hash starts at zero
//! there, the small-chunk mask applies before `avg` and the large-chunk mask
//! after, and a chunk that reaches `max` is cut there. A pair of bytes is
//! judged only when both are at hand, so a cut never depends on what follows
//! it. A proptest checks the cuts against `StreamCDC` however the stream is
//! split into reads and blocks.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

use bytes::Bytes;
use fastcdc::v2020::{get_gear_with_seed, logarithm2, MASKS};

use coffer_proto::repo::ChunkerParams;

/// The reader's block size: one average chunk.
pub const BLOCK: usize = 1 << 20;
/// Blocks read and waiting for the cutter.
pub const READ_AHEAD: usize = 2;

/// Reads `reader` to its end in blocks of `block` bytes (only the last may be
/// shorter), sending each to `tx`, then an empty block to mark the end, or
/// the error that stopped the reading. Returns early if the receiver has
/// gone.
pub fn read_blocks(mut reader: impl Read, block: usize, tx: &SyncSender<io::Result<Bytes>>) {
    loop {
        let mut buf = Vec::with_capacity(block);
        let n = match (&mut reader).take(block as u64).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if n > 0 && tx.send(Ok(Bytes::from(buf))).is_err() {
            return;
        }
        // A short block is the last: `read_to_end` stops early only at the end.
        if n < block {
            let _ = tx.send(Ok(Bytes::new()));
            return;
        }
    }
}

/// A chunk as cut: slices of the blocks it spans, in order.
#[derive(Default)]
pub struct Pieces {
    parts: Vec<Bytes>,
    len: usize,
}

impl Pieces {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }
}

/// Only the sizes: a chunk is backup plaintext, never for logs.
impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pieces({} bytes in {} parts)", self.len, self.parts.len())
    }
}

impl From<Bytes> for Pieces {
    fn from(b: Bytes) -> Self {
        let mut p = Pieces::default();
        p.push(b);
        p
    }
}

/// FastCDC v2020's cut parameters, as `FastCDC::new` derives them.
struct Gear {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    /// Where the hash starts: the first position fastcdc looks at.
    first: usize,
    /// Pairs before this position use `mask_s`, the rest `mask_l`.
    center: usize,
    max: usize,
}

/// A gear table and the same shifted left by one (see
/// `IdKey::gear_tables`): a repository's keyed tables, or FastCDC's public
/// ones for a legacy repository.
pub type GearTables = (Box<[u64; 256]>, Box<[u64; 256]>);

impl Gear {
    fn new(p: ChunkerParams, tables: Option<GearTables>) -> Self {
        let (gear, gear_ls) = tables.unwrap_or_else(|| get_gear_with_seed(0));
        let bits = logarithm2(p.avg_size) as usize;
        // Normalization level 1, `FastCDC::new`'s.
        Gear {
            gear,
            gear_ls,
            mask_s: MASKS[bits + 1],
            mask_l: MASKS[bits - 1],
            first: 2 * (p.min_size as usize / 2),
            center: 2 * (p.avg_size as usize / 2),
            max: p.max_size as usize,
        }
    }

    /// Runs the hash over the pairs of `data` (which starts at an even
    /// position of its chunk) under one mask, as fastcdc's `cut_gear` does;
    /// returns the offset in `data` of the first cut. An odd last byte is
    /// left for the next call.
    fn pairs(&self, data: &[u8], hash: &mut u64, mask: u64) -> Option<usize> {
        let mask_ls = mask << 1;
        let mut h = *hash;
        for (k, pair) in data.chunks_exact(2).enumerate() {
            h = (h << 2).wrapping_add(self.gear_ls[usize::from(pair[0])]);
            if h & mask_ls == 0 {
                *hash = h;
                return Some(2 * k);
            }
            h = h.wrapping_add(self.gear[usize::from(pair[1])]);
            if h & mask == 0 {
                *hash = h;
                return Some(2 * k + 1);
            }
        }
        *hash = h;
        None
    }

    fn mask(&self, pos: usize) -> u64 {
        if pos < self.center {
            self.mask_s
        } else {
            self.mask_l
        }
    }
}

/// Cuts the blocks [`read_blocks`] sends into chunks.
pub struct Cutter {
    gear: Gear,
    blocks: Receiver<io::Result<Bytes>>,
    /// What is left of the current block, not yet scanned.
    rest: Bytes,
    /// The chunk being cut, as far as it is scanned.
    chunk: Pieces,
    hash: u64,
    ended: bool,
}

impl Cutter {
    /// A cutter with `tables` (None: FastCDC's public gear, for legacy
    /// repositories).
    pub fn new(blocks: Receiver<io::Result<Bytes>>, params: ChunkerParams, tables: Option<GearTables>) -> Self {
        Cutter {
            gear: Gear::new(params, tables),
            blocks,
            rest: Bytes::new(),
            chunk: Pieces::default(),
            hash: 0,
            ended: false,
        }
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Pieces>> {
        loop {
            if !self.rest.is_empty() {
                if let Some(chunk) = self.scan() {
                    return Ok(Some(chunk));
                }
                continue;
            }
            if self.ended {
                let last = self.take();
                return Ok((last.len() > 0).then_some(last));
            }
            match self.blocks.recv() {
                Ok(Ok(block)) if block.is_empty() => self.ended = true,
                Ok(Ok(block)) => self.rest = block,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the reading thread stopped before the end of the stream")),
            }
        }
    }

    /// Scans the rest of the current block as the chunk's continuation;
    /// returns the chunk if it ends there.
    fn scan(&mut self) -> Option<Pieces> {
        let g = &self.gear;
        let pos = self.chunk.len();
        let n = self.rest.len().min(g.max - pos);
        match self.find(pos, n) {
            Some(cut) if cut < pos => {
                // The cut falls before the chunk's last byte, the first of a
                // pair that ended in this block.
                let last = self.chunk.parts.pop().expect("a chunk past `first` has bytes");
                self.chunk.len -= last.len();
                self.chunk.push(last.slice(..last.len() - 1));
                let chunk = self.take();
                self.chunk.push(last.slice(last.len() - 1..));
                Some(chunk)
            }
            Some(cut) => {
                let head = self.rest.split_to(cut - pos);
                self.chunk.push(head);
                Some(self.take())
            }
            None => {
                let head = self.rest.split_to(n);
                self.chunk.push(head);
                (self.chunk.len() == self.gear.max).then(|| self.take())
            }
        }
    }

    /// The position in the chunk of the first cut among the `n` bytes of
    /// `rest`, which start at chunk position `pos`.
    fn find(&mut self, pos: usize, n: usize) -> Option<usize> {
        let g = &self.gear;
        let mut data = &self.rest[..n];
        let mut p = pos;
        if p < g.first {
            let skip = (g.first - p).min(data.len());
            data = &data[skip..];
            p += skip;
        }
        if data.is_empty() {
            return None;
        }
        if p % 2 == 1 {
            // A pair whose first byte ended the previous block.
            let prev = self.chunk.parts.last().and_then(|b| b.last()).copied().expect("a chunk past `first` has bytes");
            let mask = g.mask(p - 1);
            self.hash = (self.hash << 2).wrapping_add(g.gear_ls[usize::from(prev)]);
            if self.hash & (mask << 1) == 0 {
                return Some(p - 1);
            }
            self.hash = self.hash.wrapping_add(g.gear[usize::from(data[0])]);
            if self.hash & mask == 0 {
                return Some(p);
            }
            data = &data[1..];
            p += 1;
        }
        let small = g.center.saturating_sub(p).min(data.len());
        if let Some(k) = g.pairs(&data[..small], &mut self.hash, g.mask_s) {
            return Some(p + k);
        }
        g.pairs(&data[small..], &mut self.hash, g.mask_l).map(|k| p + small + k)
    }

    /// Ends the current chunk; the next starts empty, its hash at zero.
    fn take(&mut self) -> Pieces {
        self.hash = 0;
        std::mem::take(&mut self.chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns at most `step` bytes per read, as a pipe may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// The chunks of `data`, read `step` bytes at a time in blocks of `block`.
    fn cutter_chunks(data: &[u8], step: usize, block: usize, params: ChunkerParams) -> Vec<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        std::thread::scope(|s| {
            s.spawn(move || read_blocks(Trickle { data, step }, block, &tx));
            let mut cutter = Cutter::new(rx, params, None);
            std::iter::from_fn(|| cutter.next_chunk().unwrap())
                .map(|p| {
                    assert_eq!(p.len(), p.parts().iter().map(Bytes::len).sum::<usize>());
                    p.parts().concat()
                })
                .collect()
        })
    }

    fn stream_cdc_chunks(data: &[u8], params: ChunkerParams) -> Vec<Vec<u8>> {
        fastcdc::v2020::StreamCDC::new(data, params.min_size, params.avg_size, params.max_size)
            .map(|c| c.unwrap().data)
            .collect()
    }

    /// Bytes with boundaries far apart and close together: random runs
    /// (which cut often) between long runs of one byte (which never cut).
    fn stream(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let run = (x % 3000) as usize;
            if x % 4 == 0 {
                out.extend(std::iter::repeat_n((x >> 8) as u8, run));
            } else {
                out.extend((0..run).map(|i| (x >> (i % 56)) as u8 ^ i as u8));
            }
        }
        out.truncate(len);
        out
    }

    proptest! {
        /// Same chunks as fastcdc's own stream chunker, so the chunk ids,
        /// and deduplication against existing repositories, are unchanged,
        /// however the reads are split.
        #[test]
        fn cuts_where_stream_cdc_cuts(
            seed in any::<u64>(),
            len in 0usize..60_000,
            step in 1usize..5000,
            block in 1usize..9000,
            avg_log in 8u32..11,
            odd_min in any::<bool>(),
        ) {
            let avg = 1u32 << avg_log;
            let min = avg / 4 + u32::from(odd_min);
            let params = ChunkerParams { min_size: min, avg_size: avg, max_size: (avg * 8).max(1024) };
            let data = stream(seed, len);
            let ours = cutter_chunks(&data, step, block, params);
            prop_assert_eq!(ours.concat(), data.clone());
            prop_assert_eq!(ours, stream_cdc_chunks(&data, params));
        }
    }

    #[test]
    fn the_default_parameters_cut_like_stream_cdc_on_a_large_stream() {
        let params = ChunkerParams::default();
        let data = stream(7, 24 << 20);
        let ours = cutter_chunks(&data, 1 << 16, BLOCK, params);
        assert!(ours.len() > 10, "{} chunks", ours.len());
        assert_eq!(ours, stream_cdc_chunks(&data, params));
    }

    #[test]
    fn a_chunk_shows_its_sizes_never_its_plaintext() {
        let shown = format!("{:?}", Pieces::from(Bytes::from_static(b"secret plaintext")));
        assert!(!shown.contains("secret") && shown.contains("16 bytes in 1 parts"), "{shown}");
    }

    #[test]
    fn read_errors_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        read_blocks(Broken, BLOCK, &tx);
        let err = Cutter::new(rx, ChunkerParams::default(), None).next_chunk().unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[test]
    fn a_reader_that_stops_without_the_end_mark_is_an_error_not_the_end() {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        tx.send(Ok(Bytes::from(vec![7u8; 1000]))).unwrap();
        drop(tx);
        let err = Cutter::new(rx, ChunkerParams::default(), None).next_chunk().unwrap_err();
        assert!(err.to_string().contains("before the end of the stream"), "{err}");
    }
}
