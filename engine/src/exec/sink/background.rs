//! A sink on a thread of its own, fed through a queue of reserved batches.

use std::sync::Arc;

use arrow::array::RecordBatch;

use super::{Sink, WriteSummary};
use crate::error::{Error, Result};
use crate::memory::{MemoryPool, MemoryReservation};

/// A sink running on a thread of its own, so that encoding and compressing the output overlaps
/// with the work that makes it: the merge of an external sort, the last partitions of an
/// aggregation, anything the query's consumer thread does (the scan workers are often idle by
/// then). Batches wait in a queue, each still under the reservation that paid for it upstream
/// (moved to the queue, not reserved again).
///
/// The queue always takes [`QUEUE`](Self::QUEUE) batches. It takes more, up to a 32nd of the
/// budget in bytes, while the pool has at least that much free: a Parquet writer stops for a while
/// at the end of each row group (closing its column chunks and writing them out: about 50 ms for
/// the lineitem sort at scale factor 10), and with two batches queued the sort's merge waited out
/// most of each stop, 3 to 4 s in all. A pool short of memory keeps the queue at two batches, so
/// that the operators feeding it, sized without it, still find what they reserve.
///
/// The file is completed only by [`finish`](Self::finish): dropped before that (the query
/// failed), the writer drops its sink, which removes the temporary file, and is waited for.
pub(crate) struct BackgroundSink<W: Background = Box<dyn Sink + Send>> {
    queue: Option<std::sync::mpsc::Sender<Queued>>,
    waiting: Arc<Waiting>,
    pool: MemoryPool,
    writer: Option<std::thread::JoinHandle<Result<Option<W::Done>>>>,
}

/// What a [`BackgroundSink`] runs: a file sink, or a writer of many files (partitioned).
pub(crate) trait Background: Send + 'static {
    /// What finishing gives.
    type Done: Send + 'static;
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    fn finish(self) -> Result<Self::Done>;
}

impl Background for Box<dyn Sink + Send> {
    type Done = WriteSummary;
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Sink::write(self.as_mut(), batch)
    }
    fn finish(self) -> Result<WriteSummary> {
        Sink::finish(self)
    }
}

enum Queued {
    /// A batch, the reservation that holds it and its bytes as counted in [`Waiting`].
    Batch(RecordBatch, MemoryReservation, u64),
    Finish,
}

/// What waits for the writer, and whether it stopped; the writer signals each batch it is done
/// with.
#[derive(Default)]
struct Waiting {
    state: std::sync::Mutex<Queue>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    batches: usize,
    bytes: u64,
    stopped: bool,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks the writer stopped when its thread ends, however it ends.
struct Stopped(Arc<Waiting>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.done.notify_all();
    }
}

impl<W: Background> BackgroundSink<W> {
    /// Batches the queue always takes.
    const QUEUE: usize = 2;

    pub(crate) fn start(mut sink: W, pool: &MemoryPool) -> Result<BackgroundSink<W>> {
        let (queue, batches) = std::sync::mpsc::channel::<Queued>();
        let waiting = Arc::new(Waiting::default());
        let stopped = Stopped(waiting.clone());
        let writer = std::thread::Builder::new()
            .name("flow-writer".into())
            .spawn(move || {
                // Moved in whole, so that it drops (and marks the writer stopped) as the thread ends.
                let guard = stopped;
                while let Ok(item) = batches.recv() {
                    match item {
                        Queued::Batch(batch, reservation, bytes) => {
                            sink.write(&batch)?;
                            drop((batch, reservation));
                            let mut queue = guard.0.lock();
                            queue.batches -= 1;
                            queue.bytes -= bytes;
                            guard.0.done.notify_one();
                        }
                        Queued::Finish => return sink.finish().map(Some),
                    }
                }
                // Abandoned: dropping the sink removes its temporary file.
                Ok(None)
            })
            .map_err(|e| Error::Execution(format!("cannot start the output writer: {e}")))?;
        Ok(BackgroundSink { queue: Some(queue), waiting, pool: pool.clone(), writer: Some(writer) })
    }

    /// Queues a batch with the reservation that holds it; waits while the queue is full.
    pub(crate) fn write(&mut self, batch: RecordBatch, reservation: MemoryReservation) -> Result<()> {
        let bytes = reservation.size();
        let most = self.pool.budget() / 32;
        let mut queue = self.waiting.lock();
        while !queue.stopped
            && queue.batches >= Self::QUEUE
            && (queue.bytes + bytes > most || self.pool.available() < most)
        {
            queue = self.waiting.done.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        if queue.stopped {
            // The writer stopped on an error: that is the one to report.
            drop(queue);
            return Err(self.stopped());
        }
        queue.batches += 1;
        queue.bytes += bytes;
        drop(queue);
        let sent = self.queue.as_ref().expect("open until finished").send(Queued::Batch(batch, reservation, bytes));
        if sent.is_err() {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Writes what is queued and completes the file.
    pub(crate) fn finish(mut self) -> Result<W::Done> {
        // A writer that stopped on an error no longer listens: `join` gives its error.
        let _ = self.queue.take().expect("open until finished").send(Queued::Finish);
        match self.join()? {
            Some(summary) => Ok(summary),
            None => Err(Error::Execution("the output writer stopped before the end".into())),
        }
    }

    /// The writer's error, once it stopped early.
    fn stopped(&mut self) -> Error {
        self.queue = None;
        match self.join() {
            Err(e) => e,
            Ok(_) => Error::Execution("the output writer stopped before the end".into()),
        }
    }

    fn join(&mut self) -> Result<Option<W::Done>> {
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Execution("internal error: the output writer panicked".into())),
            None => Ok(None),
        }
    }
}

impl<W: Background> Drop for BackgroundSink<W> {
    fn drop(&mut self) {
        // Closing the queue makes the writer drop its sink (and the temporary file) and return.
        self.queue = None;
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::{Receiver, Sender};
    use std::time::Duration;

    use arrow::array::Int64Array;

    use super::*;
    use crate::error::Error;
    use arrow::array::ArrayRef;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// A sink that writes a batch only once the test lets it.
    struct Gated(Receiver<()>);

    impl Sink for Gated {
        fn write(&mut self, _batch: &RecordBatch) -> Result<()> {
            self.0.recv().map_err(|_| Error::Execution("closed".into()))
        }
        fn finish(self: Box<Self>) -> Result<WriteSummary> {
            Ok(WriteSummary::default())
        }
        fn size(&self) -> u64 {
            0
        }
    }

    /// How many batches of 100 KB a background sink takes while its writer is stuck, with `held`
    /// bytes of a 32 MiB pool taken by others (the queue's bytes are a 32nd of it: 1 MiB): waits
    /// until `expected` are queued (however slowly the producer runs), then a while longer for
    /// any more the queue would wrongly take.
    fn queued_while_stuck(held: u64, expected: usize) -> usize {
        let pool = MemoryPool::new(32 << 20);
        let mut others = pool.register("others", false);
        others.try_grow(held).unwrap();
        let (gate, gated): (Sender<()>, Receiver<()>) = std::sync::mpsc::channel();
        let sink: Box<dyn Sink + Send> = Box::new(Gated(gated));
        let mut sink = BackgroundSink::start(sink, &pool).unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        let counter = queued.clone();
        let producer = std::thread::spawn(move || {
            let batch = RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).unwrap();
            for _ in 0..20 {
                let mut reservation = pool.register("batch", false);
                reservation.try_grow(100_000).unwrap();
                sink.write(batch.clone(), reservation).unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            }
            sink.finish().unwrap();
        });
        let start = std::time::Instant::now();
        while queued.load(Ordering::SeqCst) < expected && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        let n = queued.load(Ordering::SeqCst);
        for _ in 0..20 {
            gate.send(()).unwrap();
        }
        producer.join().unwrap();
        n
    }

    #[test]
    fn the_output_queue_grows_only_while_the_pool_has_room() {
        // Ten batches make 1 MiB less 48 KB; the writer holds none of them yet.
        assert_eq!(queued_while_stuck(0, 10), 10);
        // Less than 1 MiB free: two batches, as the queue always takes.
        assert_eq!(queued_while_stuck(31 << 20, 2), 2);
    }
}
