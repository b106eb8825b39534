//! One engine per device, shared by all of a worker's compute slots (issue 14).
//!
//! Each slot works on its own shard: it reads and decodes the shard's rows on CPU threads and
//! sends each decoded chunk to the device's hub. The hub's thread owns the only [`Engine`] (one
//! copy of the models in device memory, whatever the slot count) and batches across shards:
//! whenever it is free it takes every queued chunk up to `max_batch` images, runs them as one
//! batch, and hands each slot its own results. Chunks of different step parameters (another
//! round or threshold) are never mixed in a batch.
//!
//! ```text
//!   slot 1 (shard A) --chunk--\
//!   slot 2 (shard B) --chunk---+--> queue --> hub thread: drain queued chunks (<= max_batch
//!   slot 3 (shard C) --chunk--/                 images, same parameters) -> Engine::run
//!                                                 -> results split back to each slot
//! ```
//!
//! With continuous batching (the default on CUDA, `[worker] continuous_batching`), the hub keeps
//! the captioner decoding without pause: images of every queued chunk join the running batch as
//! other images' captions finish (see `Captioner::caption_continuous`), and a chunk is judged
//! by the filter and handed back as soon as its last image has its captions.
//!
//! The hub of bundles no lease uses any more is dropped by the worker when a lease of other
//! bundles arrives; its thread ends once the slots still using it finish, and its sessions and
//! device memory go with it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use capfilt_schemas::bundle::Preprocessing;

use crate::captioner::{Caption, CaptionFeed, FeedImage};
use crate::engine::{Engine, Judged, PreparedImage, StepParams, StepRunner, StepTimings, judge};
use crate::engine_error::EngineError;
use crate::filter::Filter;

type Reply = Result<(Vec<Vec<Judged>>, StepTimings), EngineError>;

struct Job {
    images: Vec<PreparedImage>,
    params: StepParams,
    reply: mpsc::SyncSender<Reply>,
}

/// Counters of a hub (for tests and logs).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Engine runs (batches).
    pub batches: AtomicU64,
    /// Chunks received.
    pub chunks: AtomicU64,
    /// Images run.
    pub images: AtomicU64,
    /// Batches that held chunks of more than one caller.
    pub merged_batches: AtomicU64,
    /// Continuous batching: images that joined a batch while other images were decoding.
    pub joined_running: AtomicU64,
}

/// A device's shared engine and the thread that runs it.
pub struct EngineHub {
    sender: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    captioner_pre: Preprocessing,
    filter_pre: Option<Preprocessing>,
    stats: Arc<HubStats>,
    max_batch: usize,
}

impl std::fmt::Debug for EngineHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHub")
            .field("max_batch", &self.max_batch)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl EngineHub {
    /// Starts the hub's thread with `engine`; batches hold at most `max_batch` images (more
    /// only when one chunk alone is larger). With `continuous`, the captioner decodes up to
    /// `max_batch` images' rows at a time and images join as others finish (greedy and nucleus
    /// decoding; beam search runs batch by batch).
    pub fn start(
        engine: Engine,
        max_batch: usize,
        continuous: bool,
    ) -> Result<Arc<Self>, EngineError> {
        let captioner_pre = engine.captioner.preprocessing().clone();
        let filter_pre = (!engine.shared_pixels()).then(|| engine.filter.preprocessing().clone());
        let (sender, receiver) = mpsc::channel::<Job>();
        let stats = Arc::new(HubStats::default());
        let thread_stats = stats.clone();
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("capfilt-engine".into())
            .spawn(move || {
                if continuous {
                    serve_continuous(engine, &receiver, max_batch, &thread_stats);
                } else {
                    serve(engine, &receiver, max_batch, &thread_stats);
                }
            })
            .map_err(|e| EngineError::Shared(format!("cannot start the engine thread: {e}")))?;
        Ok(Arc::new(Self {
            sender: Some(sender),
            thread: Some(thread),
            captioner_pre,
            filter_pre,
            stats,
            max_batch,
        }))
    }

    /// Whether the engine thread still runs (it ends only when the hub is dropped, or when it
    /// panicked).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The hub's counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// A caller's handle running steps with `params`.
    pub fn client(self: &Arc<Self>, params: StepParams) -> HubClient {
        HubClient {
            hub: self.clone(),
            params,
        }
    }
}

impl Drop for EngineHub {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the jobs already queued.
        self.sender.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }
}

/// One caller's handle on a hub: a [`StepRunner`] whose steps run in the shared batches.
pub struct HubClient {
    hub: Arc<EngineHub>,
    params: StepParams,
}

impl StepRunner for HubClient {
    fn captioner_preprocessing(&self) -> &Preprocessing {
        &self.hub.captioner_pre
    }

    fn filter_preprocessing(&self) -> Option<&Preprocessing> {
        self.hub.filter_pre.as_ref()
    }

    fn round(&self) -> u32 {
        self.params.round
    }

    fn run_step(
        &mut self,
        images: Vec<PreparedImage>,
        timings: &mut StepTimings,
    ) -> Result<Vec<Vec<Judged>>, EngineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        // The engine validated the parameters it was loaded with; each caller's are checked
        // here (a NaN threshold would never equal itself when chunks are grouped).
        self.params.validate()?;
        let (reply, answer) = mpsc::sync_channel(1);
        let sender = self
            .hub
            .sender
            .as_ref()
            .ok_or_else(|| EngineError::EngineStopped("the engine is shutting down".into()))?;
        sender
            .send(Job {
                images,
                params: self.params.clone(),
                reply,
            })
            .map_err(|_| EngineError::EngineStopped("the engine thread is gone".into()))?;
        let (judged, t) = answer.recv().map_err(|_| {
            EngineError::EngineStopped("the engine thread ended mid-batch".into())
        })??;
        timings.caption += t.caption;
        timings.filter += t.filter;
        Ok(judged)
    }
}

fn serve(mut engine: Engine, receiver: &mpsc::Receiver<Job>, max_batch: usize, stats: &HubStats) {
    while let Ok(first) = receiver.recv() {
        let mut queued = first.images.len();
        let mut jobs = vec![first];
        while queued < max_batch {
            match receiver.try_recv() {
                Ok(job) => {
                    queued += job.images.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        stats.chunks.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        // Jobs of the same parameters run together, in arrival order; the first job is
        // always in its own group, so every pass takes at least one job.
        while !jobs.is_empty() {
            let first = jobs.remove(0);
            let params = first.params.clone();
            let (mut group, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.params == params);
            group.insert(0, first);
            jobs = rest;
            run_group(&mut engine, params, group, stats);
        }
    }
    tracing::info!("engine thread done: its sessions are freed");
}

fn run_group(engine: &mut Engine, params: StepParams, group: Vec<Job>, stats: &HubStats) {
    let sizes: Vec<usize> = group.iter().map(|j| j.images.len()).collect();
    let total: usize = sizes.iter().sum();
    let mut replies = Vec::with_capacity(group.len());
    let mut images = Vec::with_capacity(total);
    for job in group {
        images.extend(job.images);
        replies.push(job.reply);
    }
    engine.params = params;
    let mut timings = StepTimings::default();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.images.fetch_add(total as u64, Ordering::Relaxed);
    if replies.len() > 1 {
        stats.merged_batches.fetch_add(1, Ordering::Relaxed);
    }
    metrics::histogram!(crate::metrics::BATCH_CALLERS).record(replies.len() as f64);
    match engine.run(&images, &mut timings) {
        Ok(judged) => {
            let mut judged = judged.into_iter();
            for (reply, n) in replies.into_iter().zip(sizes) {
                let part: Vec<Vec<Judged>> = judged.by_ref().take(n).collect();
                // Each caller is charged its share of the batch's time.
                let share = n as f64 / total.max(1) as f64;
                let t = StepTimings {
                    caption: timings.caption.mul_f64(share),
                    filter: timings.filter.mul_f64(share),
                };
                // A caller that went away (a cancelled lease) does not matter to the others.
                let _ = reply.send(Ok((part, t)));
            }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(error = %message, images = total, "a shared batch failed");
            for reply in replies {
                let _ = reply.send(Err(EngineError::Shared(message.clone())));
            }
        }
    }
}

/// A chunk being captioned continuously.
struct Pending {
    job: Job,
    captions: Vec<Option<Vec<Caption>>>,
    left: usize,
    accepted: Instant,
}

/// The continuous captioner's feed: images of queued chunks in arrival order; a chunk is
/// judged and answered when its last image has its captions.
struct HubFeed<'a> {
    receiver: &'a mpsc::Receiver<Job>,
    generation: crate::sampling::GenerationParams,
    filter: &'a mut Filter,
    shared_pixels: bool,
    stats: &'a HubStats,
    chunks: HashMap<u64, Pending>,
    queue: VecDeque<(u64, usize)>,
    next_chunk: u64,
    /// A chunk of other generation parameters: it starts the next run.
    held: Option<Job>,
    closed: bool,
}

impl HubFeed<'_> {
    fn accept(&mut self, job: Job) {
        self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .images
            .fetch_add(job.images.len() as u64, Ordering::Relaxed);
        let id = self.next_chunk;
        self.next_chunk += 1;
        let n = job.images.len();
        self.queue.extend((0..n).map(|i| (id, i)));
        self.chunks.insert(
            id,
            Pending {
                captions: vec![None; n],
                left: n,
                job,
                accepted: Instant::now(),
            },
        );
    }

    /// Takes queued chunks of this run's generation parameters from the channel.
    fn poll(&mut self, wait: bool) {
        if self.held.is_some() || self.closed {
            return;
        }
        loop {
            let next = if wait && self.queue.is_empty() {
                self.receiver
                    .recv()
                    .map_err(|_| mpsc::TryRecvError::Disconnected)
            } else {
                self.receiver.try_recv()
            };
            match next {
                Ok(job) if job.params.generation == self.generation => self.accept(job),
                Ok(job) => {
                    self.held = Some(job);
                    return;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => return,
            }
        }
    }

    fn fail_all(&mut self, message: &str) {
        for (_, p) in self.chunks.drain() {
            let _ = p
                .job
                .reply
                .send(Err(EngineError::Shared(message.to_string())));
        }
        self.queue.clear();
    }
}

impl CaptionFeed for HubFeed<'_> {
    fn more(&mut self, max: usize, wait: bool) -> Result<Vec<FeedImage>, EngineError> {
        self.poll(wait);
        let running = !wait;
        let mut out = Vec::with_capacity(max.min(self.queue.len()));
        while out.len() < max {
            let Some((chunk, i)) = self.queue.pop_front() else {
                break;
            };
            let p = self
                .chunks
                .get(&chunk)
                .ok_or_else(|| EngineError::Shared(format!("unknown chunk {chunk}")))?;
            let image = &p.job.images[i];
            out.push(FeedImage {
                id: (chunk << 32) | i as u64,
                pixels: image.captioner_pixels.clone(),
                key: image.key.clone(),
                round: p.job.params.round,
            });
        }
        if running {
            self.stats
                .joined_running
                .fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        Ok(out)
    }

    fn finished(&mut self, id: u64, captions: Vec<Caption>) -> Result<(), EngineError> {
        let (chunk, i) = (id >> 32, (id & 0xffff_ffff) as usize);
        let p = self
            .chunks
            .get_mut(&chunk)
            .ok_or_else(|| EngineError::Shared(format!("captions of unknown chunk {chunk}")))?;
        p.captions[i] = Some(captions);
        p.left -= 1;
        if p.left > 0 {
            return Ok(());
        }
        let Some(p) = self.chunks.remove(&chunk) else {
            return Ok(());
        };
        let captions: Vec<Vec<Caption>> = p
            .captions
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        // The chunk's captioning time: from its arrival to its last caption (shared with the
        // chunks decoding beside it).
        let mut timings = StepTimings {
            caption: p.accepted.elapsed(),
            ..StepTimings::default()
        };
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let judged = judge(
            self.filter,
            &p.job.params,
            &p.job.images,
            None,
            self.shared_pixels,
            captions,
            &mut timings,
        );
        // The filter's error is this chunk's only: the others go on.
        let reply = judged
            .map(|j| (j, timings))
            .map_err(|e| EngineError::Shared(e.to_string()));
        let _ = p.job.reply.send(reply);
        Ok(())
    }
}

fn serve_continuous(
    mut engine: Engine,
    receiver: &mpsc::Receiver<Job>,
    max_batch: usize,
    stats: &HubStats,
) {
    let shared_pixels = engine.shared_pixels();
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match receiver.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        if first.params.generation.decoding == crate::sampling::Decoding::Beam {
            // Beam search keeps its beams together: batch by batch.
            stats.chunks.fetch_add(1, Ordering::Relaxed);
            let params = first.params.clone();
            run_group(&mut engine, params, vec![first], stats);
            continue;
        }
        let generation = first.params.generation.clone();
        let per_image = generation.captions_per_image();
        let Engine {
            captioner, filter, ..
        } = &mut engine;
        let mut feed = HubFeed {
            receiver,
            generation: generation.clone(),
            filter,
            shared_pixels,
            stats,
            chunks: HashMap::new(),
            queue: VecDeque::new(),
            next_chunk: 0,
            held: None,
            closed: false,
        };
        feed.accept(first);
        let t = Instant::now();
        if let Err(e) = captioner.caption_continuous(&mut feed, &generation, max_batch * per_image)
        {
            tracing::warn!(error = %e, "continuous captioning failed");
            feed.fail_all(&e.to_string());
        }
        crate::metrics::stage("captioner", t.elapsed().as_secs_f64());
        held = feed.held.take();
        if feed.closed && held.is_none() {
            break;
        }
    }
    tracing::info!("engine thread done: its sessions are freed");
}
