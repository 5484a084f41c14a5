//! The consume → process → publish → store-offset loop.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::clients::{LoopClients, LoopContext};
use super::delivery::{Offsets, Position, deliver};
use super::transaction::{TxnFailure, publish_in_transaction, rewind};
use super::{
    ConsumedMessage, FIRST_BACKOFF, KafkaError, Limits, MAX_BACKOFF, MAX_CONFLICTS, OutgoingMessage, ProcessError,
    Processor,
};
use crate::ops::Health;

pub(super) fn detach(m: &rdkafka::message::BorrowedMessage<'_>) -> ConsumedMessage {
    let headers = m
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
        .unwrap_or_default();
    ConsumedMessage {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

/// A batch taken from the consumer and being prepared on a blocking thread.
type Ahead<P> = tokio::task::JoinHandle<(Vec<ConsumedMessage>, <P as Processor>::Prepared)>;

fn prepare_ahead<P: Processor>(processor: &Arc<P>, batch: Vec<ConsumedMessage>) -> Ahead<P> {
    let processor = processor.clone();
    tokio::task::spawn_blocking(move || {
        let prepared = processor.prepare(&batch);
        (batch, prepared)
    })
}

async fn prepared<P: Processor>(ahead: &mut Ahead<P>) -> (Vec<ConsumedMessage>, P::Prepared) {
    match ahead.await {
        Ok(done) => done,
        // A panic in `prepare` is a bug; it is not turned into a decision.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `first` and whatever else has already arrived, up to `max` inputs: one
/// database transaction and one round of produce for all of it.
fn gather(consumer: &StreamConsumer<LoopContext>, first: ConsumedMessage, max: usize) -> Vec<ConsumedMessage> {
    let mut batch = vec![first];
    while batch.len() < max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(detach(&m)),
            _ => break,
        }
    }
    batch
}

/// Drops inputs of partitions no longer assigned: they belong to another
/// instance now, which re-processes them. Returns whether any were dropped.
fn retain_assigned(consumer: &StreamConsumer<LoopContext>, batch: &mut Vec<ConsumedMessage>) -> bool {
    let before = batch.len();
    if let Ok(assigned) = consumer.assignment() {
        batch.retain(|m| assigned.find_partition(&m.topic, m.partition).is_some());
    }
    batch.len() != before
}

/// Runs until `shutdown` is cancelled (then drains within `grace`) or a fatal
/// error.
///
/// Batches are processed one at a time, in order; while one is processed
/// the loop keeps storing offsets of delivered outputs and takes the next
/// batch, whose [`Processor::prepare`] runs meanwhile on another thread.
///
/// When processing fails retryably (the database is down), the batch is held
/// and retried with backoff while every assigned partition is paused: the
/// consumer keeps polling, so the instance stays in its group however long
/// the outage lasts, but takes no new work, stores no offsets and reports
/// not-ready. Inputs that still arrive (from partitions assigned during the
/// outage) queue behind the held batch, so nothing overtakes anything.
pub async fn run<P: Processor>(
    clients: LoopClients,
    processor: Arc<P>,
    shutdown: CancellationToken,
    grace: Duration,
    limits: Limits,
    health: &Health,
) -> Result<(), KafkaError> {
    let mut state = ConsumeLoop::new(clients, processor, limits, health);
    health.set_consuming(true);
    let result = state.run_until(&shutdown).await;
    health.set_stopping();
    health.set_step("delivering in-flight outputs, committing offsets, leaving the group");
    state.drain(grace, result).await
}

/// One input's outputs on their way to the broker.
type Delivering<'h> = futures_util::future::BoxFuture<'h, Result<Position, KafkaError>>;

/// The loop's state between two steps. Its transitions are named for what
/// happened: an input arrived (`take`), outputs were acknowledged
/// (`Offsets::on_delivered`), a batch was decided (`publish`), held for an
/// unavailable dependency (`hold_for_retry`), raced by another instance
/// (`retry_at_once`), its transaction aborted (`rewind_aborted`), the loop
/// ends (`drain`).
struct ConsumeLoop<'h, P: Processor> {
    consumer: StreamConsumer<LoopContext>,
    producer: FutureProducer,
    transactional: bool,
    processor: Arc<P>,
    limits: Limits,
    health: &'h Health,
    /// Deliveries in input order; offsets are stored as they resolve.
    pending: FuturesOrdered<Delivering<'h>>,
    offsets: Offsets,
    /// A batch waiting for its dependency, tried again at `retry`.
    held: Option<Vec<ConsumedMessage>>,
    /// A batch raced by another instance, decided again before anything else.
    again: Option<Vec<ConsumedMessage>>,
    retry: Pin<Box<tokio::time::Sleep>>,
    /// The batch after the current one; never set while a batch is held.
    ahead: Option<Ahead<P>>,
    /// When the batch in `ahead` (or held) was taken off the consumer.
    taken_at: Instant,
    backoff: Duration,
    paused: bool,
    /// Conflicts in a row: past [`MAX_CONFLICTS`], handled as an outage.
    conflicts: u32,
}

/// What the loop waits for between batches.
enum Event<P: Processor> {
    Stop,
    RetryDue,
    Prepared((Vec<ConsumedMessage>, P::Prepared)),
    Meanwhile(Meanwhile),
}

/// What can happen while a batch is being decided, too.
enum Meanwhile {
    Delivered(Result<Position, KafkaError>),
    Received(Result<ConsumedMessage, rdkafka::error::KafkaError>),
}

impl<'h, P: Processor> ConsumeLoop<'h, P> {
    fn new(clients: LoopClients, processor: Arc<P>, limits: Limits, health: &'h Health) -> Self {
        let LoopClients { consumer, producer, transactional } = clients;
        ConsumeLoop {
            consumer,
            producer,
            transactional,
            processor,
            limits,
            health,
            pending: FuturesOrdered::new(),
            offsets: Offsets::default(),
            held: None,
            again: None,
            retry: Box::pin(tokio::time::sleep(Duration::ZERO)),
            ahead: None,
            taken_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            paused: false,
            conflicts: 0,
        }
    }

    async fn run_until(&mut self, shutdown: &CancellationToken) -> Result<(), KafkaError> {
        while let Some((batch, ready)) = self.next_batch(shutdown).await? {
            self.health.timings.wait.observe_since(self.taken_at);
            self.health.timings.batch_inputs.observe(batch.len() as f64);
            match self.process(&batch, ready, shutdown).await {
                Ok(outputs) => self.publish(batch, outputs).await?,
                Err(Attempt::Conflict(error)) if self.conflicts < MAX_CONFLICTS => {
                    self.retry_at_once(batch, error).await
                }
                Err(Attempt::Retry(error) | Attempt::Conflict(error)) => self.hold_for_retry(batch, error).await,
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for the next batch to decide (None: stop), meanwhile storing
    /// offsets as outputs are acknowledged and taking inputs.
    async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(Vec<ConsumedMessage>, P::Prepared)>, KafkaError> {
        loop {
            if let Some(batch) = self.again.take() {
                match self.prepare_remaining(batch).await {
                    Some(taken) => return Ok(Some(taken)),
                    None => continue,
                }
            }
            let taken = match self.wait(shutdown).await {
                Event::Stop => return Ok(None),
                Event::Meanwhile(m) => {
                    self.on_meanwhile(m)?;
                    continue;
                }
                Event::RetryDue => self.take_held().await,
                Event::Prepared(taken) => self.take_prepared(taken).await,
            };
            if taken.is_some() {
                return Ok(taken);
            }
        }
    }

    async fn wait(&mut self, shutdown: &CancellationToken) -> Event<P> {
        let Self { consumer, pending, held, retry, ahead, limits, .. } = self;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Event::Stop,
            Some(done) = pending.next(), if !pending.is_empty() => Event::Meanwhile(Meanwhile::Delivered(done)),
            _ = retry.as_mut(), if held.is_some() => Event::RetryDue,
            taken = async { prepared::<P>(ahead.as_mut().expect("checked")).await }, if ahead.is_some() => {
                Event::Prepared(taken)
            }
            received = consumer.recv(), if ahead.is_none() && (held.is_some() || pending.len() < limits.max_in_flight) => {
                Event::Meanwhile(Meanwhile::Received(received.map(|m| detach(&m))))
            }
        }
    }

    fn on_meanwhile(&mut self, event: Meanwhile) -> Result<(), KafkaError> {
        match event {
            Meanwhile::Delivered(done) => self.offsets.on_delivered(&self.consumer, done)?,
            Meanwhile::Received(Ok(first)) => self.take(first),
            Meanwhile::Received(Err(error)) => warn!(message = "consumer error", %error),
        }
        Ok(())
    }

    /// An input arrived: queued behind a held batch, or the start of the
    /// next batch, prepared on a blocking thread.
    fn take(&mut self, first: ConsumedMessage) {
        if let Some(waiting) = self.held.as_mut() {
            waiting.push(first);
            // Partitions assigned since the pause are paused too.
            pause_all(&self.consumer);
            return;
        }
        self.ahead = Some(prepare_ahead(&self.processor, gather(&self.consumer, first, self.limits.max_batch)));
        self.taken_at = Instant::now();
    }

    /// The held batch, due again; None when a rebalance took all of it
    /// (then the outage is over as far as this instance is concerned).
    async fn take_held(&mut self) -> Option<(Vec<ConsumedMessage>, P::Prepared)> {
        let batch = self.held.take().unwrap_or_default();
        let taken = self.prepare_remaining(batch).await;
        if taken.is_none() {
            self.paused = false;
            self.backoff = FIRST_BACKOFF;
            resume_all(&self.consumer);
            self.health.set_blocked(None);
        }
        taken
    }

    /// A batch to decide again, prepared anew; inputs of partitions revoked
    /// meanwhile belong to another instance now, which re-processes them.
    /// None when nothing of it is left.
    async fn prepare_remaining(
        &mut self,
        mut batch: Vec<ConsumedMessage>,
    ) -> Option<(Vec<ConsumedMessage>, P::Prepared)> {
        retain_assigned(&self.consumer, &mut batch);
        if batch.is_empty() {
            return None;
        }
        Some(prepared::<P>(&mut prepare_ahead(&self.processor, batch)).await)
    }

    /// The batch taken ahead, prepared; inputs of partitions a rebalance
    /// moved meanwhile are dropped (and the rest prepared again).
    async fn take_prepared(
        &mut self,
        (mut batch, ready): (Vec<ConsumedMessage>, P::Prepared),
    ) -> Option<(Vec<ConsumedMessage>, P::Prepared)> {
        self.ahead = None;
        if !retain_assigned(&self.consumer, &mut batch) {
            return Some((batch, ready));
        }
        self.prepare_remaining(batch).await
    }

    /// Decides a batch, meanwhile storing offsets of delivered outputs and
    /// taking the next batch (its preparation overlaps this one).
    async fn process(
        &mut self,
        batch: &[ConsumedMessage],
        ready: P::Prepared,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Vec<OutgoingMessage>>, Attempt> {
        let processor = self.processor.clone();
        let work = attempt(&*processor, batch, ready);
        tokio::pin!(work);
        loop {
            let Self { consumer, pending, ahead, limits, .. } = &mut *self;
            let event = tokio::select! {
                biased;
                done = &mut work => return done,
                Some(done) = pending.next(), if !pending.is_empty() => Meanwhile::Delivered(done),
                received = consumer.recv(), if ahead.is_none() && !shutdown.is_cancelled() && pending.len() < limits.max_in_flight => {
                    Meanwhile::Received(received.map(|m| detach(&m)))
                }
            };
            self.on_meanwhile(event).map_err(Attempt::Fatal)?;
        }
    }

    /// A batch was decided: its outputs go to the broker (in a transaction
    /// with its offsets, in transactional mode).
    async fn publish(
        &mut self,
        batch: Vec<ConsumedMessage>,
        outputs: Vec<Vec<OutgoingMessage>>,
    ) -> Result<(), KafkaError> {
        self.conflicts = 0;
        if std::mem::take(&mut self.paused) {
            self.backoff = FIRST_BACKOFF;
            info!(message = "processing resumed");
            resume_all(&self.consumer);
            self.health.set_blocked(None);
        }
        if !self.transactional {
            for (msg, out) in batch.into_iter().zip(outputs) {
                let delivery = deliver(self.producer.clone(), self.processor.clone(), msg, out, self.health);
                self.pending.push_back(Box::pin(delivery));
            }
            return Ok(());
        }
        let started = std::time::SystemTime::now();
        let traced = if self.health.tracing.enabled() { outputs.clone() } else { Vec::new() };
        match publish_in_transaction(&self.producer, &self.consumer, &*self.processor, &batch, outputs).await {
            Ok(()) => {
                self.health.set_blocked(None);
                traced.iter().for_each(|out| super::delivery::trace_delivery(self.health, out, started));
            }
            Err(TxnFailure::Fatal(e)) => {
                error!(message = "transactional producer failed for good (fenced by a newer instance with the same transactional.id?)", error = %e);
                return Err(e);
            }
            Err(TxnFailure::Aborted(error)) => self.rewind_aborted(batch, error).await,
        }
        Ok(())
    }

    /// The batch comes round again and finds its stored outcome: the same
    /// bytes, in a new transaction. The batch taken after it is read again too.
    async fn rewind_aborted(&mut self, batch: Vec<ConsumedMessage>, error: KafkaError) {
        warn!(message = "transaction aborted; the batch will be re-read", %error);
        self.health.set_blocked(Some(format!("kafka transaction aborted: {error}")));
        Health::count(&self.health.counters.processing_retries);
        let read = self.with_ahead(batch).await;
        rewind(&self.consumer, &read);
        tokio::time::sleep(FIRST_BACKOFF).await;
    }

    /// A dependency (the database) is unavailable: the batch waits, with
    /// backoff, every partition paused and the instance not ready.
    async fn hold_for_retry(&mut self, batch: Vec<ConsumedMessage>, error: String) {
        let first = &batch[0];
        warn!(message = "processing paused; will retry", topic = %first.topic, partition = first.partition, offset = first.offset,
              %error, backoff_ms = self.backoff.as_millis() as u64);
        self.health.set_blocked(Some(error));
        Health::count(&self.health.counters.processing_retries);
        pause_all(&self.consumer);
        self.paused = true;
        self.retry.as_mut().reset(tokio::time::Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.held = Some(self.with_ahead(batch).await);
    }

    /// Another instance stored part of what the batch claims first: decided
    /// again at once, ahead of anything taken meanwhile; no pause, readiness
    /// unchanged.
    async fn retry_at_once(&mut self, batch: Vec<ConsumedMessage>, error: String) {
        self.conflicts += 1;
        info!(message = "another instance stored part of this batch first; deciding it again", %error);
        Health::count(&self.health.counters.conflicts);
        self.again = Some(self.with_ahead(batch).await);
    }

    /// `batch` followed by the batch taken after it, if any, in order.
    async fn with_ahead(&mut self, mut batch: Vec<ConsumedMessage>) -> Vec<ConsumedMessage> {
        if let Some(mut next) = self.ahead.take() {
            batch.extend(prepared::<P>(&mut next).await.0);
        }
        batch
    }

    /// What was decided gets delivered and its offset stored, within the
    /// grace period; anything left is re-delivered to the next owner. A
    /// partition whose delivery failed stores nothing more.
    async fn drain(self, grace: Duration, mut result: Result<(), KafkaError>) -> Result<(), KafkaError> {
        let Self { consumer, producer, mut pending, mut offsets, .. } = self;
        let drain = async {
            let mut failed = Ok(());
            while let Some(done) = pending.next().await {
                if let Err(e) = offsets.on_delivered(&consumer, done) {
                    failed = failed.and(Err(e));
                }
            }
            failed
        };
        let stop_by = tokio::time::Instant::now() + grace;
        match tokio::time::timeout_at(stop_by, drain).await {
            Ok(Err(e)) if result.is_ok() => result = Err(e),
            Ok(_) => {}
            Err(_) => warn!(message = "grace period ended with outputs unacknowledged; they will be re-delivered"),
        }
        // Flushing and closing share what is left of the grace period.
        let last = stop_by.max(tokio::time::Instant::now() + CLOSE_AT_LEAST);
        let left = || last.saturating_duration_since(tokio::time::Instant::now());
        let _ = producer.flush(rdkafka::util::Timeout::After(left()));
        close(consumer, left()).await;
        result
    }
}

/// What flushing the producer and closing the consumer get even after a
/// drain that used the whole grace period.
const CLOSE_AT_LEAST: Duration = Duration::from_secs(2);

/// Commits the stored offsets and leaves the group, on a thread of its own,
/// waiting for it `within` at most. librdkafka's close waits for the
/// group's answers (a join under way, the final commit), which a slow or
/// overloaded broker can hold up for minutes; a stop must not wait for
/// that. An instance that stops without leaving is dropped from the group
/// after `session.timeout.ms`, and offsets not committed re-deliver their
/// inputs (whose outputs are then re-published as they were).
async fn close(consumer: StreamConsumer<LoopContext>, within: Duration) {
    let (closed, done) = tokio::sync::oneshot::channel();
    let closing = std::thread::Builder::new().name("tollgate-consumer-close".into()).spawn(move || {
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
            && error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset)
        {
            warn!(message = "final offset commit failed", %error);
        }
        consumer.unsubscribe();
        drop(consumer);
        let _ = closed.send(());
    });
    if let Err(error) = closing {
        warn!(message = "could not start closing the consumer; it is dropped without leaving its group", %error);
        return;
    }
    if tokio::time::timeout(within, done).await.is_err() {
        warn!(
            message = "the consumer did not close in time; it leaves its group when its session times out",
            within_secs = within.as_secs()
        );
    }
}

fn pause_all(consumer: &StreamConsumer<LoopContext>) {
    if let Err(error) = consumer.assignment().and_then(|a| consumer.pause(&a)) {
        warn!(message = "pausing partitions failed", %error);
    }
}

fn resume_all(consumer: &StreamConsumer<LoopContext>) {
    if let Err(error) = consumer.assignment().and_then(|a| consumer.resume(&a)) {
        warn!(message = "resuming partitions failed", %error);
    }
}

enum Attempt {
    Retry(String),
    Conflict(String),
    Fatal(KafkaError),
}

async fn attempt<P: Processor>(
    processor: &P,
    batch: &[ConsumedMessage],
    prepared: P::Prepared,
) -> Result<Vec<Vec<OutgoingMessage>>, Attempt> {
    let msg = &batch[0];
    let fatal = |message: String| {
        Attempt::Fatal(KafkaError::Processing {
            topic: msg.topic.clone(),
            partition: msg.partition,
            offset: msg.offset,
            message,
        })
    };
    match processor.process_batch(batch, prepared).await {
        Ok(out) if out.len() == batch.len() => Ok(out),
        Ok(out) => Err(fatal(format!("{} outputs for a batch of {}", out.len(), batch.len()))),
        Err(ProcessError::Retryable(error)) => Err(Attempt::Retry(error)),
        Err(ProcessError::Conflict(error)) => Err(Attempt::Conflict(error)),
        Err(ProcessError::Fatal(message)) => {
            error!(message = "processing failed", topic = %msg.topic, partition = msg.partition, offset = msg.offset, error = %message);
            Err(fatal(message))
        }
    }
}
