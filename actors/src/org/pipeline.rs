//! The org's writes in flight and the refusal rule, without actix.
//!
//! Changes are decided one after another, each against the ledger ahead
//! (every durable action plus every write still in flight), and their writes go
//! out at once. Writes may come back in any order; changes are settled
//! (applied and answered) strictly in the order they were decided, each
//! once its own write and every write before it is back. A change that
//! writes nothing (a duplicate of a change still being written) waits for
//! the writes before it, so its answer never runs ahead of the effect it
//! reports.
//!
//! When a write is refused, that change and every change decided after it
//! (they assumed it) are refused with the same error, and the pipeline
//! takes no new change: the actor stops once every write still in flight
//! is back, so the next one reads the store, the truth even about a write
//! that timed out but landed.
//!
//! On the JetStream backend writes are appends to the org's subject, one in
//! flight at a time: changes decided meanwhile wait in `unsent` and go out
//! together in the next append.

use std::collections::VecDeque;

use crate::model::Action;

use super::messages::OrgError;

/// Names a change in the pipeline.
pub type Ticket = u64;

/// A change decided but not yet settled. `A` is how it will be answered.
struct Pending<A> {
    ticket: Ticket,
    /// `None` for a change that writes nothing and only waits.
    action: Option<Action>,
    /// The write's result, once it is back.
    written: Option<Result<(), OrgError>>,
    answer: A,
}

/// A change whose turn has come, in the order changes were decided.
#[derive(Debug)]
pub enum Settled<A> {
    /// Durable (or nothing to write): apply `action` if any, then answer.
    Applied { action: Option<Action>, answer: A },
    /// Refused: answer with `error` and apply nothing. `first` is set on the
    /// change whose own write was refused; the rest were decided after it.
    Refused {
        error: OrgError,
        answer: A,
        first: bool,
    },
}

pub struct Pipeline<A> {
    pending: VecDeque<Pending<A>>,
    next_ticket: Ticket,
    writes_in_flight: usize,
    refusal: Option<OrgError>,
    /// JetStream: decided changes waiting for the append in flight.
    unsent: Vec<(Ticket, Action)>,
    /// JetStream: the tickets of the append in flight.
    appending: Vec<Ticket>,
}

impl<A> Default for Pipeline<A> {
    fn default() -> Self {
        Self {
            pending: VecDeque::new(),
            next_ticket: 0,
            writes_in_flight: 0,
            refusal: None,
            unsent: Vec::new(),
            appending: Vec::new(),
        }
    }
}

impl<A> Pipeline<A> {
    /// Why no new change may be decided: a write was refused.
    pub fn refusal(&self) -> Option<&OrgError> {
        self.refusal.as_ref()
    }

    /// Nothing in flight and nothing waiting to be answered.
    pub fn is_idle(&self) -> bool {
        self.writes_in_flight == 0 && self.pending.is_empty()
    }

    /// A write was refused and every write is back: the actor stops, so that
    /// the next one reads whatever of them landed.
    pub fn should_stop(&self) -> bool {
        self.refusal.is_some() && self.writes_in_flight == 0
    }

    /// Queues a decided change. A change that writes nothing, with nothing
    /// before it, needs no wait: its answer comes back as `Err` to be sent
    /// at once. Otherwise it gets a ticket; the caller writes `action` and
    /// reports with [`Pipeline::write_back`] (or holds it for the next
    /// append with [`Pipeline::hold_for_append`]).
    pub fn push(&mut self, action: Option<Action>, answer: A) -> Result<Ticket, A> {
        if action.is_none() && self.pending.is_empty() {
            return Err(answer);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.push_back(Pending {
            ticket,
            action,
            written: None,
            answer,
        });
        Ok(ticket)
    }

    /// A write of one change went out.
    pub fn write_sent(&mut self) {
        self.writes_in_flight += 1;
    }

    /// The write of `ticket`'s change came back.
    pub fn write_back(&mut self, ticket: Ticket, result: Result<(), OrgError>) {
        self.writes_in_flight -= 1;
        self.record(ticket, result);
    }

    /// JetStream: keeps a decided change for the next append.
    pub fn hold_for_append(&mut self, ticket: Ticket, action: Action) {
        self.unsent.push((ticket, action));
    }

    /// JetStream: every change held since the last append, to go out in one
    /// append now, unless one is in flight (its ack tells the sequence the
    /// next must expect) or a write was refused.
    pub fn next_append(&mut self) -> Option<Vec<Action>> {
        if !self.appending.is_empty() || self.unsent.is_empty() || self.refusal.is_some() {
            return None;
        }
        let (tickets, actions) = self.unsent.drain(..).unzip();
        self.appending = tickets;
        self.writes_in_flight += 1;
        Some(actions)
    }

    /// JetStream: the append in flight came back. A refusal is recorded on
    /// its first change; [`Pipeline::next_settled`] refuses the rest.
    pub fn append_back(&mut self, result: Result<(), OrgError>) {
        self.writes_in_flight -= 1;
        let tickets = std::mem::take(&mut self.appending);
        match result {
            Ok(()) => tickets.into_iter().for_each(|t| self.record(t, Ok(()))),
            Err(e) => self.record(tickets[0], Err(e)),
        }
    }

    /// The first change (in the order decided) that can be settled now, if
    /// any; call until `None`.
    pub fn next_settled(&mut self) -> Option<Settled<A>> {
        if let Some(error) = &self.refusal {
            // Decided after a refused change: it assumed that change.
            let later = self.pending.pop_front()?;
            return Some(Settled::Refused {
                error: error.clone(),
                answer: later.answer,
                first: false,
            });
        }
        let front = self.pending.front()?;
        if front.action.is_some() && front.written.is_none() {
            return None;
        }
        let p = self.pending.pop_front().expect("checked above");
        Some(match p.written {
            None | Some(Ok(())) => Settled::Applied {
                action: p.action,
                answer: p.answer,
            },
            Some(Err(error)) => {
                self.refusal = Some(error.clone());
                self.unsent.clear();
                Settled::Refused {
                    error,
                    answer: p.answer,
                    first: true,
                }
            }
        })
    }

    /// Changes decided but not yet settled.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    fn record(&mut self, ticket: Ticket, result: Result<(), OrgError>) {
        // Tickets in `pending` are consecutive; a missing one was already
        // settled because a write before it was refused.
        let Some(front) = self.pending.front().map(|p| p.ticket) else {
            return;
        };
        if let Some(p) = ticket
            .checked_sub(front)
            .and_then(|i| self.pending.get_mut(i as usize))
        {
            p.written = Some(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(seq: u64) -> Action {
        Action::test_payment("acme", &format!("pay_pi_{seq}"), seq)
    }

    /// Settles what can be, as (answer, applied seq or the error's text).
    fn settle(p: &mut Pipeline<&'static str>) -> Vec<(&'static str, String)> {
        std::iter::from_fn(|| p.next_settled())
            .map(|s| match s {
                Settled::Applied { action, answer } => (
                    answer,
                    action.map_or("nothing".into(), |a| format!("seq {}", a.seq)),
                ),
                Settled::Refused {
                    error,
                    answer,
                    first,
                } => (answer, format!("refused (first: {first}): {error}")),
            })
            .collect()
    }

    /// Queues a write and marks it sent, as the actor does.
    fn write(p: &mut Pipeline<&'static str>, seq: u64, answer: &'static str) -> Ticket {
        let ticket = p
            .push(Some(action(seq)), answer)
            .expect("a write gets a ticket");
        p.write_sent();
        ticket
    }

    #[test]
    fn a_change_that_writes_nothing_with_nothing_before_it_is_answered_at_once() {
        let mut p = Pipeline::default();
        assert_eq!(p.push(None, "dup"), Err("dup"));
        assert!(p.is_idle());
    }

    #[test]
    fn writes_back_out_of_order_are_settled_in_the_order_decided() {
        let mut p = Pipeline::default();
        let first = write(&mut p, 1, "a");
        let second = write(&mut p, 2, "b");
        p.write_back(second, Ok(()));
        assert!(settle(&mut p).is_empty(), "b waits for a");
        p.write_back(first, Ok(()));
        assert_eq!(
            settle(&mut p),
            [("a", "seq 1".to_owned()), ("b", "seq 2".to_owned())]
        );
        assert!(p.is_idle() && !p.should_stop());
    }

    #[test]
    fn a_duplicate_waits_for_the_writes_decided_before_it() {
        let mut p = Pipeline::default();
        let first = write(&mut p, 1, "a");
        p.push(None, "dup").expect("queued behind a");
        assert!(settle(&mut p).is_empty());
        p.write_back(first, Ok(()));
        assert_eq!(
            settle(&mut p),
            [("a", "seq 1".to_owned()), ("dup", "nothing".to_owned())]
        );
    }

    #[test]
    fn a_refused_write_refuses_every_change_after_it_and_none_before() {
        let mut p = Pipeline::default();
        let first = write(&mut p, 1, "a");
        let second = write(&mut p, 2, "b");
        let third = write(&mut p, 3, "c");
        p.push(None, "dup").expect("queued");
        p.write_back(first, Ok(()));
        p.write_back(second, Err(OrgError::Overloaded));
        let refused = OrgError::Overloaded.to_string();
        assert_eq!(
            settle(&mut p),
            [
                ("a", "seq 1".to_owned()),
                ("b", format!("refused (first: true): {refused}")),
                ("c", format!("refused (first: false): {refused}")),
                ("dup", format!("refused (first: false): {refused}")),
            ]
        );
        assert_eq!(p.refusal(), Some(&OrgError::Overloaded));
        // The third write is still out: stop only once it is back, so the
        // next actor reads it if it landed.
        assert!(!p.should_stop());
        p.write_back(third, Ok(()));
        assert!(settle(&mut p).is_empty(), "already answered");
        assert!(p.should_stop());
    }

    #[test]
    fn appends_carry_every_change_decided_while_one_is_in_flight() {
        let mut p = Pipeline::default();
        let t1 = p.push(Some(action(1)), "a").unwrap();
        p.hold_for_append(t1, action(1));
        let first = p.next_append().expect("nothing in flight");
        assert_eq!(first.len(), 1);
        for (seq, answer) in [(2, "b"), (3, "c")] {
            let t = p.push(Some(action(seq)), answer).unwrap();
            p.hold_for_append(t, action(seq));
        }
        assert!(p.next_append().is_none(), "one append in flight at a time");
        p.append_back(Ok(()));
        assert_eq!(settle(&mut p), [("a", "seq 1".to_owned())]);
        let second = p.next_append().expect("the held changes");
        assert_eq!(second.iter().map(|a| a.seq).collect::<Vec<_>>(), [2, 3]);
        p.append_back(Ok(()));
        assert_eq!(
            settle(&mut p),
            [("b", "seq 2".to_owned()), ("c", "seq 3".to_owned())]
        );
        assert!(p.is_idle());
    }

    #[test]
    fn a_refused_append_refuses_its_changes_and_drops_the_held_ones() {
        let mut p = Pipeline::default();
        let t1 = p.push(Some(action(1)), "a").unwrap();
        p.hold_for_append(t1, action(1));
        p.next_append().expect("nothing in flight");
        let t2 = p.push(Some(action(2)), "b").unwrap();
        p.hold_for_append(t2, action(2));
        p.append_back(Err(OrgError::Stale));
        let settled = settle(&mut p);
        assert_eq!(settled.len(), 2);
        assert!(settled.iter().all(|(_, s)| s.starts_with("refused")));
        assert!(p.next_append().is_none(), "nothing more is sent");
        assert!(p.should_stop());
    }
}
