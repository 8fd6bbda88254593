//! Cutting and hashing the stream: reading, cutting and hashing each on a
//! thread, every chunk holding its share of [`PIPELINE_BYTES`] until it is
//! found stored or uploaded.

use std::io::{self, Read};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{CUT_QUEUE, PIPELINE_BYTES};
use coffer_proto::ChunkId;

use crate::cutter::{self, Cutter, Pieces};
use crate::repo::OpenRepo;

/// A chunk on its way from the cutter to the uploader.
pub(super) struct Chunk {
    pub id: ChunkId,
    pub data: Pieces,
    /// Its share of [`PIPELINE_BYTES`], held until it is found stored or
    /// uploaded (the manifest's chunks, cut after the stream, have none).
    pub lease: Option<Lease>,
    /// A piece of the stream, not of the manifest: only these count as new
    /// stream bytes, so `bytes_new` never exceeds `bytes_in`.
    pub stream: bool,
}

/// The plaintext bytes cut from the stream and not yet found stored or
/// uploaded. The cutter waits while they are spent, so the pipeline's
/// memory is bounded in bytes, whatever the chunk sizes (counts alone let a
/// run of 8 MiB chunks take eight times the memory of 1 MiB ones).
#[derive(Default)]
pub(super) struct Budget {
    spent: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Budget {
    /// Blocks until `n` more bytes fit. A chunk is always admitted into an
    /// empty pipeline, so none is too large to pass.
    fn take(self: &Arc<Self>, n: usize) -> Lease {
        let mut spent = self.spent.lock().expect("not poisoned");
        while *spent > 0 && *spent + n > PIPELINE_BYTES {
            spent = self.freed.wait(spent).expect("not poisoned");
        }
        *spent += n;
        Lease { budget: self.clone(), n }
    }
}

pub(super) struct Lease {
    budget: Arc<Budget>,
    n: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.budget.spent.lock().expect("not poisoned") -= self.n;
        self.budget.freed.notify_all();
    }
}

pub(super) struct StreamSummary {
    pub bytes: u64,
    pub blake3: blake3::Hash,
}

/// Chunks a stream, sending each chunk with its id down `tx`. Stops early
/// if the receiver has gone.
///
/// Reading, cutting and hashing each take a thread, so that on two cores a
/// re-backup, where nothing else is left to do, keeps both busy: a thread
/// of its own reads the stream in blocks, the calling thread cuts them,
/// and a scoped one hashes each chunk (the stream's BLAKE3 and the chunk's
/// keyed id) in order and sends it on.
pub(super) fn chunk_stream(
    reader: impl Read + Send + 'static,
    repo: &OpenRepo,
    tx: &mpsc::Sender<Chunk>,
) -> io::Result<StreamSummary> {
    let (block_tx, block_rx) = std::sync::mpsc::sync_channel(cutter::READ_AHEAD);
    let (cut_tx, cut_rx) = std::sync::mpsc::sync_channel::<(Pieces, Lease)>(CUT_QUEUE);
    let budget = Arc::new(Budget::default());
    // Not scoped: should the pipeline stop while the reader waits on a
    // source that has gone quiet, the failure is reported (and a source
    // command killed) without waiting for that read to return.
    let reading = std::thread::Builder::new()
        .name("coffer-read".into())
        .spawn(move || cutter::read_blocks(reader, cutter::BLOCK, &block_tx))?;
    let (cut, hashed) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut stream = blake3::Hasher::new();
            let mut bytes = 0u64;
            for (data, lease) in cut_rx {
                // Both hashes over each part while it is in cache.
                let mut id = repo.id_key.chunk_hasher();
                for part in data.parts() {
                    stream.update(part);
                    id.update(part);
                }
                bytes += data.len() as u64;
                let id = id.finish();
                if tx.blocking_send(Chunk { id, data, lease: Some(lease), stream: true }).is_err() {
                    return Err(io::Error::other("backup pipeline stopped"));
                }
            }
            Ok(StreamSummary { bytes, blake3: stream.finalize() })
        });
        let mut cutter = Cutter::new(block_rx, repo.config.chunker, repo.gear.clone());
        let cut = (|| -> io::Result<()> {
            while let Some(data) = cutter.next_chunk()? {
                let lease = budget.take(data.len());
                cut_tx.send((data, lease)).map_err(|_| io::Error::other("backup pipeline stopped"))?;
            }
            Ok(())
        })();
        // Closing both ends stops the reader (at its next block) and the hasher.
        drop((cutter, cut_tx));
        (cut, hasher.join().map_err(|_| io::Error::other("the hashing thread panicked")))
    });
    // The hasher's error first: when it stops, it is why cutting stopped.
    let summary = hashed??;
    cut?;
    // The cutter saw the end mark, so the reader has returned or is about to.
    reading.join().map_err(|_| io::Error::other("the reading thread panicked"))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_budget_holds_the_cutter_until_leases_are_returned() {
        let budget = Arc::new(Budget::default());
        let first = budget.take(10 * MIB);
        let second = budget.take(PIPELINE_BYTES - 10 * MIB);
        let (done, admitted) = std::sync::mpsc::channel();
        let waiting = {
            let budget = budget.clone();
            std::thread::spawn(move || done.send(budget.take(MIB)).unwrap())
        };
        let wait = Duration::from_millis(200);
        assert!(admitted.recv_timeout(wait).is_err(), "admitted past the budget");
        drop(first);
        let third = admitted.recv_timeout(Duration::from_secs(5)).expect("admitted once bytes were returned");
        waiting.join().unwrap();
        drop((second, third));
        assert_eq!(*budget.spent.lock().unwrap(), 0, "every lease returns its bytes");
        // A chunk larger than the whole budget passes an empty pipeline.
        let huge = budget.take(2 * PIPELINE_BYTES);
        assert_eq!(*budget.spent.lock().unwrap(), 2 * PIPELINE_BYTES);
        drop(huge);
    }
}
