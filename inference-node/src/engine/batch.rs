//! The engine loop: admit requests between steps, prefill them (left-padded), merge them into the
//! running batch, decode one token for every running sequence, and let finished or cancelled
//! sequences leave. Runs on the engine thread only.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokenizers::Tokenizer;
use tracing::{debug, error, info, trace};

use super::{
    Completion, Delivery, Event, FinishReason, Finished, Request, Shared, Timings, TokenEvent,
    metrics, sampling::Sampler, text::TextStream,
};
use crate::{
    engine::EngineConfig,
    error::{Error, Result},
    model::{KvCache, KvLayout, Model, Pick, StepInput},
};

/// A sequence in the running batch.
#[derive(Debug)]
struct Sequence {
    request: Request,
    sampler: Sampler,
    text: TextStream,
    /// The text so far, for [`Delivery::Whole`].
    whole_text: String,
    generated: Vec<u32>,
    /// Positions this sequence has in the cache (right-aligned in its row).
    kv_len: usize,
    /// Its row in the current cache.
    row: usize,
    admitted: Instant,
    first_token: Option<Instant>,
    done: bool,
}

pub(super) struct Runner {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    layout: KvLayout,
    shared: Arc<Shared>,
    config: EngineConfig,
    eos: u32,
    seqs: Vec<Sequence>,
    kv: Option<KvCache>,
    logits_scratch: Vec<f32>,
    sample_scratch: Vec<f32>,
}

impl Runner {
    pub(super) fn new(model: Model, shared: Arc<Shared>, config: EngineConfig) -> Self {
        Self {
            tokenizer: model.tokenizer(),
            layout: model.kv_layout(),
            eos: model.spec().eos,
            model,
            shared,
            config,
            seqs: Vec::new(),
            kv: None,
            logits_scratch: Vec::new(),
            sample_scratch: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        info!(
            max_batch_size = self.config.max_batch_size,
            max_total_tokens = self.config.max_total_tokens,
            max_queue = self.config.max_queue,
            "inference engine running"
        );
        while let Some(admitted) = self.admit() {
            let started = Instant::now();
            self.drop_cancelled();
            let max_prefill = self.config.max_prefill_tokens;
            for group in prefill_groups(admitted, |r| r.prompt.len(), max_prefill) {
                let n = group.len();
                if let Err(e) = self.prefill(group) {
                    error!(error = %e, requests = n, "prefill failed");
                }
            }
            if !self.seqs.is_empty()
                && let Err(e) = self.decode()
            {
                error!(error = %e, sequences = self.seqs.len(), "decode step failed");
                self.fail_running(&e);
            }
            let mut stats = self.shared.stats();
            stats.busy += started.elapsed();
            stats.running = self.seqs.len() as u32;
        }
        info!("inference engine stopped");
    }

    /// Waits for work and takes the requests that fit the budgets, in arrival order. `None` when
    /// shut down with nothing left to run.
    fn admit(&mut self) -> Option<Vec<Request>> {
        let mut queue = self.shared.queue();
        loop {
            if queue.shutdown {
                for request in queue.waiting.drain(..) {
                    let _ = request.events.send(Event::Failed(Error::Drained));
                }
                if self.seqs.is_empty() {
                    queue.stopped = true;
                    return None;
                }
                return Some(Vec::new());
            }
            let mut reserved: usize = self.seqs.iter().map(|s| s.request.reserved_tokens()).sum();
            let mut admitted = Vec::new();
            while let Some(next) = queue.waiting.front() {
                if next.events.is_closed() {
                    queue.waiting.pop_front();
                    self.shared.stats().requests_cancelled += 1;
                    self.shared.metrics.cancelled(1);
                    continue;
                }
                let fits = self.seqs.len() + admitted.len() < self.config.max_batch_size
                    && reserved + next.reserved_tokens() <= self.config.max_total_tokens;
                if !fits {
                    break;
                }
                reserved += next.reserved_tokens();
                admitted.extend(queue.waiting.pop_front());
            }
            if !admitted.is_empty() || !self.seqs.is_empty() {
                return Some(admitted);
            }
            queue = self
                .shared
                .wake
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sequences whose client went away leave the batch.
    fn drop_cancelled(&mut self) {
        let mut cancelled = 0;
        for seq in &mut self.seqs {
            if seq.request.events.is_closed() {
                seq.done = true;
                cancelled += 1;
                debug!(request_id = seq.request.id, "request cancelled");
            }
        }
        if cancelled > 0 {
            self.shared.stats().requests_cancelled += cancelled;
            self.shared.metrics.cancelled(cancelled);
            if let Err(e) = self.compact(None) {
                self.fail_running(&e);
            }
        }
    }

    /// Runs the prompts of `requests` as one left-padded batch, samples their first tokens, and
    /// merges the survivors into the running batch.
    fn prefill(&mut self, requests: Vec<Request>) -> Result<()> {
        let now = Instant::now();
        let n = requests.len();
        let width = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let mut input = StepInput {
            batch: n,
            seq: width,
            input_ids: Vec::with_capacity(n * width),
            attention_mask: Vec::with_capacity(n * width),
            position_ids: Vec::with_capacity(n * width),
        };
        for r in &requests {
            let pad = width - r.prompt.len();
            input
                .input_ids
                .extend(std::iter::repeat_n(i64::from(self.eos), pad));
            input
                .input_ids
                .extend(r.prompt.iter().map(|&t| i64::from(t)));
            input.attention_mask.extend(std::iter::repeat_n(0, pad));
            input
                .attention_mask
                .extend(std::iter::repeat_n(1, r.prompt.len()));
            // Position ids from the mask; padding gets 1, as Optimum's generation code does.
            input.position_ids.extend(std::iter::repeat_n(1, pad));
            input.position_ids.extend(0..r.prompt.len() as i64);
        }
        let mut new: Vec<Sequence> = requests
            .into_iter()
            .enumerate()
            .map(|(row, request)| {
                let queue = now.duration_since(request.arrived);
                let mut stats = self.shared.stats();
                stats.admitted += 1;
                stats.queue_time += queue;
                drop(stats);
                self.shared.metrics.admitted(queue, request.prompt.len());
                Sequence {
                    sampler: Sampler::new(&request.params, &request.prompt),
                    text: TextStream::new(request.params.stop.clone()),
                    whole_text: String::new(),
                    generated: Vec::new(),
                    kv_len: request.prompt.len(),
                    row,
                    admitted: now,
                    first_token: None,
                    done: false,
                    request,
                }
            })
            .collect();
        let past = KvCache::empty(&self.layout, n)?;
        let forward_started = Instant::now();
        let result = self.model.forward(input, &past);
        let forward_time = forward_started.elapsed();
        self.shared
            .metrics
            .forward(metrics::Pass::prefill, forward_time);
        let (logits, kv) = match result {
            Ok(out) => out,
            Err(e) => {
                for seq in &new {
                    let _ = seq.request.events.send(Event::Failed(Error::Generation {
                        reason: format!("prefill: {e}"),
                    }));
                }
                return Err(e);
            }
        };
        self.shared.stats().prefill_steps += 1;
        let sample_started = Instant::now();
        let rows = logits.last_positions()?;
        for (i, seq) in new.iter_mut().enumerate() {
            let row = rows.row(i, &mut self.logits_scratch);
            let token = seq.sampler.next(row, &mut self.sample_scratch);
            accept(seq, token, &self.tokenizer, self.eos, &self.shared);
        }
        drop(logits);
        trace!(
            batch = n,
            width,
            forward_ms = forward_time.as_secs_f64() * 1e3,
            sample_ms = sample_started.elapsed().as_secs_f64() * 1e3,
            "prefill step"
        );
        self.merge(new, kv)
    }

    /// Puts the surviving new sequences (rows of `kv`) next to the running ones.
    fn merge(&mut self, new: Vec<Sequence>, kv: KvCache) -> Result<()> {
        let all_new_alive = new.iter().all(|s| !s.done);
        if self.seqs.is_empty() && all_new_alive {
            self.seqs = new;
            self.kv = Some(kv);
            return Ok(());
        }
        let offset = self.seqs.len();
        self.seqs.extend(new.into_iter().map(|mut s| {
            s.row += offset;
            s
        }));
        self.compact(Some((kv, offset)))
    }

    /// Removes finished sequences, regathering the cache of the rest. With `extra`, the rows of a
    /// second cache join (sequences from index `offset` on belong to it).
    fn compact(&mut self, extra: Option<(KvCache, usize)>) -> Result<()> {
        let running = self.kv.take();
        let (extra_kv, offset) = match extra {
            Some((kv, offset)) => (Some(kv), offset),
            None => (None, usize::MAX),
        };
        let mut survivors = Vec::with_capacity(self.seqs.len());
        let mut picks = Vec::with_capacity(self.seqs.len());
        for (index, seq) in std::mem::take(&mut self.seqs).into_iter().enumerate() {
            if seq.done {
                continue;
            }
            let pick = if index >= offset {
                Pick {
                    source: 1,
                    row: seq.row - offset,
                    len: seq.kv_len,
                }
            } else {
                Pick {
                    source: 0,
                    row: seq.row,
                    len: seq.kv_len,
                }
            };
            picks.push(pick);
            survivors.push(seq);
        }
        if survivors.is_empty() {
            return Ok(());
        }
        let len = survivors.iter().map(|s| s.kv_len).max().unwrap_or(0);
        let empty;
        let first = match &running {
            Some(kv) => kv,
            None => {
                empty = KvCache::empty(&self.layout, 0)?;
                &empty
            }
        };
        let mut sources = vec![first];
        if let Some(kv) = &extra_kv {
            sources.push(kv);
        }
        let kv = KvCache::regather(&sources, &picks, len, &self.layout)?;
        for (row, seq) in survivors.iter_mut().enumerate() {
            seq.row = row;
        }
        self.seqs = survivors;
        self.kv = Some(kv);
        Ok(())
    }

    /// One token for every running sequence.
    fn decode(&mut self) -> Result<()> {
        let Some(past) = self.kv.take() else {
            return Err(Error::NotRunning);
        };
        let b = self.seqs.len();
        let total = past.len + 1;
        let mut input = StepInput {
            batch: b,
            seq: 1,
            input_ids: Vec::with_capacity(b),
            attention_mask: Vec::with_capacity(b * total),
            position_ids: Vec::with_capacity(b),
        };
        for seq in &self.seqs {
            let last = seq.generated.last().copied().unwrap_or(self.eos);
            input.input_ids.push(i64::from(last));
            input
                .attention_mask
                .extend(std::iter::repeat_n(0, past.len - seq.kv_len));
            input
                .attention_mask
                .extend(std::iter::repeat_n(1, seq.kv_len + 1));
            input.position_ids.push(seq.kv_len as i64);
        }
        let forward_started = Instant::now();
        let (logits, kv) = self.model.forward(input, &past)?;
        let forward_time = forward_started.elapsed();
        drop(past);
        let sample_started = Instant::now();
        let rows = logits.last_positions()?;
        for (i, seq) in self.seqs.iter_mut().enumerate() {
            seq.kv_len += 1;
            let row = rows.row(i, &mut self.logits_scratch);
            let token = seq.sampler.next(row, &mut self.sample_scratch);
            accept(seq, token, &self.tokenizer, self.eos, &self.shared);
        }
        drop(logits);
        trace!(
            batch = b,
            past = total - 1,
            forward_ms = forward_time.as_secs_f64() * 1e3,
            sample_ms = sample_started.elapsed().as_secs_f64() * 1e3,
            "decode step"
        );
        {
            let mut stats = self.shared.stats();
            stats.decode_steps += 1;
            stats.batch_rows += b as u64;
        }
        self.shared.metrics.decoded(b);
        self.shared
            .metrics
            .forward(metrics::Pass::decode, forward_time);
        self.kv = Some(kv);
        if self.seqs.iter().any(|s| s.done) {
            self.compact(None)?;
        }
        Ok(())
    }

    fn fail_running(&mut self, e: &Error) {
        for seq in self.seqs.drain(..) {
            let _ = seq.request.events.send(Event::Failed(Error::Generation {
                reason: e.to_string(),
            }));
        }
        self.kv = None;
    }
}

/// Splits newcomers into prefill batches of similar prompt lengths, each at most `max_tokens`
/// tokens once padded (a longer prompt goes alone): padding costs a pass through the layers per
/// position (logits too, where the graph computes them for every position).
fn prefill_groups<T>(
    mut items: Vec<T>,
    len: impl Fn(&T) -> usize,
    max_tokens: usize,
) -> Vec<Vec<T>> {
    items.sort_by_key(&len);
    let mut groups: Vec<Vec<T>> = Vec::new();
    for request in items {
        let fits = groups
            .last()
            .is_some_and(|g| (g.len() + 1) * len(&request) <= max_tokens);
        match groups.last_mut() {
            Some(group) if fits => group.push(request),
            _ => groups.push(vec![request]),
        }
    }
    groups
}

/// Takes a sampled token: hands out its text, and finishes the sequence when it should end.
fn accept(seq: &mut Sequence, token: u32, tokenizer: &Tokenizer, eos: u32, shared: &Shared) {
    let now = Instant::now();
    seq.generated.push(token);
    let arrived = seq.request.arrived;
    {
        let mut stats = shared.stats();
        stats.generated_tokens += 1;
        if seq.first_token.is_none() {
            stats.first_tokens += 1;
            stats.time_to_first_token += now.duration_since(arrived);
        }
    }
    shared.metrics.token(
        seq.first_token
            .is_none()
            .then(|| now.duration_since(arrived)),
    );
    seq.first_token.get_or_insert(now);
    let outcome = (|| -> Result<(String, Option<FinishReason>)> {
        if token == eos {
            let rest = seq.text.finish(tokenizer, &seq.generated)?;
            return Ok((rest, Some(FinishReason::Eos)));
        }
        let delta = seq.text.push(tokenizer, &seq.generated)?;
        if delta.stopped {
            return Ok((delta.text, Some(FinishReason::Stop)));
        }
        if seq.generated.len() >= seq.request.params.max_new_tokens as usize {
            let rest = seq.text.finish(tokenizer, &seq.generated)?;
            return Ok((delta.text + &rest, Some(FinishReason::Length)));
        }
        Ok((delta.text, None))
    })();
    let (text, reason) = match outcome {
        Ok(out) => out,
        Err(e) => {
            let _ = seq.request.events.send(Event::Failed(e));
            seq.done = true;
            return;
        }
    };
    let finished = reason.map(|reason| {
        let first = seq.first_token.unwrap_or(now);
        Finished {
            reason,
            prompt_tokens: seq.request.prompt.len() as u32,
            generated_tokens: seq.generated.len() as u32,
            seed: seq.sampler.seed(),
            timings: Timings {
                queue: seq.admitted.duration_since(arrived),
                time_to_first_token: first.duration_since(arrived),
                total: now.duration_since(arrived),
            },
        }
    });
    if let Some(f) = &finished {
        seq.done = true;
        {
            // No longer running once its client can know it finished (the batch's own count
            // catches up after the step).
            let mut stats = shared.stats();
            stats.requests_finished += 1;
            stats.running = stats.running.saturating_sub(1);
        }
        shared.metrics.finished(
            f.generated_tokens,
            f.timings.total - f.timings.time_to_first_token,
        );
        let tokens_per_s = f64::from(f.generated_tokens)
            / (f.timings.total - f.timings.queue)
                .max(Duration::from_micros(1))
                .as_secs_f64();
        debug!(
            request_id = seq.request.id,
            reason = ?f.reason,
            prompt_tokens = f.prompt_tokens,
            generated_tokens = f.generated_tokens,
            queue_ms = f.timings.queue.as_secs_f64() * 1e3,
            ttft_ms = f.timings.time_to_first_token.as_secs_f64() * 1e3,
            tokens_per_s,
            "request finished"
        );
    }
    let event = match (seq.request.delivery, finished) {
        (Delivery::Stream, finished) => Event::Token(TokenEvent {
            token_id: token,
            text,
            finished,
        }),
        (Delivery::Whole, None) => {
            seq.whole_text.push_str(&text);
            return;
        }
        (Delivery::Whole, Some(finished)) => {
            seq.whole_text.push_str(&text);
            Event::Completed(Completion {
                text: std::mem::take(&mut seq.whole_text),
                token_ids: seq.generated.clone(),
                finished,
            })
        }
    };
    if seq.request.events.send(event).is_err() && !seq.done {
        // The client went away: the sequence leaves the batch.
        seq.done = true;
        shared.stats().requests_cancelled += 1;
        shared.metrics.cancelled(1);
    }
}

#[cfg(test)]
mod tests {
    use super::prefill_groups;

    #[test]
    fn prefill_groups_bound_padded_tokens() {
        let lengths = vec![30, 2, 9, 3, 31, 8, 100];
        let groups = prefill_groups(lengths, |&l| l, 64);
        assert_eq!(groups, vec![vec![2, 3, 8, 9], vec![30, 31], vec![100]]);
        for g in &groups {
            let padded = g.len() * g.iter().max().copied().unwrap_or(0);
            assert!(padded <= 64 || g.len() == 1);
        }
        assert!(prefill_groups(Vec::<usize>::new(), |&l| l, 64).is_empty());
    }
}
