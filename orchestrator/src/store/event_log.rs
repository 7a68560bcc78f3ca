//! How a run's events are kept in the `events` tree: the events of one decision under one key,
//! the run id and the first event's number, so a step costs one insert, not three.
//!
//! A step's output is not stored twice: a `StepFinished` whose output is the output of a
//! `TaskSucceeded` of the same step earlier in the same decision (a step without `for_each`
//! that succeeded) is stored without it and names that event instead. Stores written before
//! this layout hold one event per key; both are read.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{Store, decode, storage};
use crate::error::{Error, Result};
use crate::state::{EventKind, RunEvent};

pub(super) fn event_key(run_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 9);
    key.extend_from_slice(run_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// One decision's events as stored: the events, and for each `StepFinished` stored without its
/// output, `(its index, the index of the TaskSucceeded whose output it is)`.
#[derive(Serialize)]
struct BatchOut<'a>(Vec<Cow<'a, RunEvent>>, Vec<(u32, u32)>);

#[derive(Deserialize)]
struct BatchIn(Vec<RunEvent>, Vec<(u32, u32)>);

/// The index of the event before `i` that is the successful attempt whose output `finished`
/// (a `StepFinished`) repeats.
fn same_output(events: &[RunEvent], i: usize) -> Option<usize> {
    let EventKind::StepFinished {
        step,
        output: Some(output),
        ..
    } = &events[i].kind
    else {
        return None;
    };
    events[..i].iter().rposition(|e| {
        matches!(&e.kind, EventKind::TaskSucceeded { step: s, item: None, output: o, .. }
            if s == step && o == output)
    })
}

pub(super) fn encode_batch(events: &[RunEvent]) -> Result<Vec<u8>> {
    let mut stored = Vec::with_capacity(events.len());
    let mut shared = Vec::new();
    for (i, event) in events.iter().enumerate() {
        match (same_output(events, i), &event.kind) {
            (
                Some(from),
                EventKind::StepFinished {
                    step,
                    outcome,
                    error,
                    ..
                },
            ) => {
                shared.push((index(i)?, index(from)?));
                stored.push(Cow::Owned(RunEvent {
                    seq: event.seq,
                    at_ms: event.at_ms,
                    kind: EventKind::StepFinished {
                        step: step.clone(),
                        outcome: *outcome,
                        output: None,
                        error: error.clone(),
                    },
                }));
            }
            _ => stored.push(Cow::Borrowed(event)),
        }
    }
    serde_json::to_vec(&BatchOut(stored, shared))
        .map_err(|e| Error::Internal(format!("cannot encode run events: {e}")))
}

fn index(i: usize) -> Result<u32> {
    u32::try_from(i).map_err(|_| Error::Internal("too many events in one decision".into()))
}

/// The events stored under one key: a batch, or (stores written before batches) one event.
pub(super) fn decode_value(bytes: &[u8]) -> Result<Vec<RunEvent>> {
    if bytes.first() != Some(&b'[') {
        return decode(bytes, "event").map(|event| vec![event]);
    }
    let BatchIn(mut events, shared) = decode(bytes, "event batch")?;
    for (finished, from) in shared {
        let output = match events.get(from as usize).map(|e| &e.kind) {
            Some(EventKind::TaskSucceeded { output, .. }) => output.clone(),
            _ => {
                return Err(Error::Internal(format!(
                    "corrupt event batch: event {from} is not a succeeded attempt"
                )));
            }
        };
        match events.get_mut(finished as usize).map(|e| &mut e.kind) {
            Some(EventKind::StepFinished { output: slot, .. }) => *slot = Some(output),
            _ => {
                return Err(Error::Internal(format!(
                    "corrupt event batch: event {finished} is not a finished step"
                )));
            }
        }
    }
    Ok(events)
}

impl Store {
    pub(super) fn write_events(&self, run_id: &str, events: &[RunEvent]) -> Result<()> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        self.inner
            .events
            .insert(event_key(run_id, first.seq), encode_batch(events)?)
            .map(|_| ())
            .map_err(storage("append events"))
    }

    /// A run's events with `seq >= from_seq`, in order.
    pub fn events(&self, run_id: &str, from_seq: u64) -> Result<Vec<RunEvent>> {
        let from_seq = from_seq.max(1);
        let end = event_key(run_id, u64::MAX);
        // The batch holding `from_seq` may start before it.
        let start = match self
            .inner
            .events
            .range(event_key(run_id, 0)..=event_key(run_id, from_seq))
            .next_back()
        {
            Some(found) => found.map_err(storage("read events"))?.0.to_vec(),
            None => event_key(run_id, from_seq),
        };
        let mut out = Vec::new();
        for value in self.inner.events.range(start..=end).values() {
            let batch = decode_value(&value.map_err(storage("read events"))?)?;
            out.extend(batch.into_iter().filter(|e| e.seq >= from_seq));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::StepOutcome;

    fn at(seq: u64, kind: EventKind) -> RunEvent {
        RunEvent {
            seq,
            at_ms: 7,
            kind,
        }
    }

    fn step_done(seq: u64, output: serde_json::Value) -> Vec<RunEvent> {
        vec![
            at(
                seq,
                EventKind::TaskSucceeded {
                    step: "a".into(),
                    item: None,
                    attempt: 1,
                    output: output.clone(),
                },
            ),
            at(
                seq + 1,
                EventKind::StepFinished {
                    step: "a".into(),
                    outcome: StepOutcome::Succeeded,
                    output: Some(output),
                    error: None,
                },
            ),
        ]
    }

    #[test]
    fn a_finished_steps_output_is_stored_once_and_read_back_whole() {
        let big = json!({ "text": "x".repeat(10_000) });
        let events = step_done(3, big.clone());
        let bytes = encode_batch(&events).unwrap();
        assert!(bytes.len() < 10_000 + 500, "stored {} bytes", bytes.len());
        assert_eq!(decode_value(&bytes).unwrap(), events);
    }

    #[test]
    fn a_different_output_is_stored_as_it_is() {
        // A for_each step's output is its items' outputs, not one attempt's.
        let mut events = step_done(1, json!(1));
        if let EventKind::StepFinished { output, .. } = &mut events[1].kind {
            *output = Some(json!([1]));
        }
        let bytes = encode_batch(&events).unwrap();
        assert_eq!(decode_value(&bytes).unwrap(), events);
    }

    #[test]
    fn one_event_per_key_from_older_stores_is_read() {
        let event = &step_done(1, json!("x"))[0];
        let bytes = serde_json::to_vec(event).unwrap();
        assert_eq!(decode_value(&bytes).unwrap(), vec![event.clone()]);
    }

    #[test]
    fn a_batch_naming_the_wrong_event_is_an_error() {
        let events = step_done(1, json!("x"));
        let bytes = serde_json::to_vec(&(events, vec![(0u32, 1u32)])).unwrap();
        let err = decode_value(&bytes).unwrap_err().to_string();
        assert!(err.contains("corrupt event batch"), "{err}");
    }

    #[tokio::test]
    async fn events_are_read_from_inside_a_batch_and_across_older_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // An event stored one per key (as older stores did), then two batches.
        let old = at(1, EventKind::RunCancelled { reason: "1".into() });
        store
            .inner
            .events
            .insert(event_key("r", 1), serde_json::to_vec(&old).unwrap())
            .unwrap();
        store.write_events("r", &step_done(2, json!(2))).unwrap();
        store.write_events("r", &step_done(4, json!(4))).unwrap();
        store.write_events("q", &step_done(1, json!(0))).unwrap();
        let seqs = |from| {
            store
                .events("r", from)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(0), vec![1, 2, 3, 4, 5]);
        assert_eq!(seqs(3), vec![3, 4, 5]);
        assert_eq!(seqs(5), vec![5]);
        assert_eq!(seqs(6), Vec::<u64>::new());
        assert_eq!(store.events("r", 3).unwrap()[0], step_done(2, json!(2))[1]);
    }
}
