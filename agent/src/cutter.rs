//! Content-defined chunking of a stream, cut exactly where fastcdc's
//! `v2020::StreamCDC` cuts, with less copying and less waiting.
//!
//! `StreamCDC` keeps a buffer of one maximum chunk (8 MiB), filled to the
//! brim before each cut; it then copies the chunk out and shifts the rest of
//! the buffer down. With chunks averaging 1 MiB that moves several times the
//! stream's size through memory, and a paused producer leaves up to 8 MiB
//! waiting. The cut point, though, only depends on the bytes from the chunk's
//! start up to the point itself: a boundary found before the end of the data
//! at hand is the one more data would give. So this reads ahead only twice the
//! average size, looks further (doubling up to the maximum) only when no
//! boundary is found in what it has, hands the buffer itself over as the
//! chunk, and copies only the few bytes read past the cut.

use std::io::{self, Read};

use fastcdc::v2020::FastCDC;

use coffer_proto::repo::ChunkerParams;

pub struct Cutter<R> {
    reader: R,
    params: ChunkerParams,
    /// Read but not yet cut: the start of the next chunk.
    pending: Vec<u8>,
    eof: bool,
}

impl<R: Read> Cutter<R> {
    pub fn new(reader: R, params: ChunkerParams) -> Self {
        Self { reader, params, pending: Vec::new(), eof: false }
    }

    /// Reads until `pending` holds `want` bytes or the stream ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while !self.eof && self.pending.len() < want {
            let need = want - self.pending.len();
            self.pending.reserve_exact(need);
            if (&mut self.reader).take(need as u64).read_to_end(&mut self.pending)? < need {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let (min, avg, max) = (self.params.min_size, self.params.avg_size, self.params.max_size);
        let mut want = (2 * avg as usize).clamp(min as usize, max as usize);
        loop {
            self.fill(want)?;
            if self.pending.is_empty() {
                return Ok(None);
            }
            let have = self.pending.len();
            let (_, cut) = FastCDC::new(&self.pending, min, avg, max).cut(0, have);
            // A cut before the end of the data at hand is final; at its end it
            // is final only if there is no more data to look at.
            if cut < have || self.eof || have >= max as usize {
                let rest = self.pending[cut..].to_vec();
                let mut chunk = std::mem::replace(&mut self.pending, rest);
                chunk.truncate(cut);
                chunk.shrink_to_fit();
                return Ok(Some(chunk));
            }
            want = (want * 2).min(max as usize);
        }
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

    fn cutter_chunks(data: &[u8], step: usize, params: ChunkerParams) -> Vec<Vec<u8>> {
        let mut cutter = Cutter::new(Trickle { data, step }, params);
        std::iter::from_fn(|| cutter.next_chunk().unwrap()).collect()
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
        fn cuts_where_stream_cdc_cuts(seed in any::<u64>(), len in 0usize..60_000, step in 1usize..5000, avg_log in 8u32..11) {
            let avg = 1u32 << avg_log;
            let params = ChunkerParams { min_size: avg / 4, avg_size: avg, max_size: (avg * 8).max(1024) };
            let data = stream(seed, len);
            let ours = cutter_chunks(&data, step, params);
            prop_assert_eq!(ours.concat(), data.clone());
            prop_assert_eq!(ours, stream_cdc_chunks(&data, params));
        }
    }

    #[test]
    fn the_default_parameters_cut_like_stream_cdc_on_a_large_stream() {
        let params = ChunkerParams::default();
        let data = stream(7, 24 << 20);
        let ours = cutter_chunks(&data, 1 << 16, params);
        assert!(ours.len() > 10, "{} chunks", ours.len());
        assert_eq!(ours, stream_cdc_chunks(&data, params));
    }

    #[test]
    fn read_errors_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err = Cutter::new(Broken, ChunkerParams::default()).next_chunk().unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }
}
