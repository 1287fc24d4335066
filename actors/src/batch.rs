//! Group commit: the one state machine behind the actors that gather work
//! and send it to the store in batches (the PersistenceActor's writes, the
//! StoreReader's reads, the IntentIndexer's index writes).
//!
//! A new item does not start a batch by itself: [`schedule_flush`] queues
//! one flush behind the messages already in the mailbox (actix handles
//! every queued message before the context's own items), so items that
//! arrive together go together. A flush starts a round when a slot is free
//! and `min_interval` has passed since the last round began; a round fills
//! every free slot. A lone item after a quiet spell therefore goes at once,
//! and items arriving while the slots are busy wait and go together in the
//! next round, so batches grow with load instead of queries multiplying.
//!
//! [`GroupCommit`] holds the rules and is tested apart; [`flush`] and
//! [`spawn`] wire them into an actor that implements [`Batched`].

use std::future::Future;
use std::time::{Duration, Instant};

use actix::prelude::*;

/// When the next batch may start, and what is in flight.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// Least time between the starts of two rounds.
    min_interval: Duration,
    max_in_flight: usize,
    in_flight: usize,
    last_round: Option<Instant>,
    flush_queued: bool,
    timer_armed: bool,
}

/// What an actor has waiting for its next batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    Nothing,
    Some,
    /// A whole batch (or a drain that must not wait): goes without waiting
    /// out `min_interval`, though not before a backoff.
    Full,
}

/// What a flush should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing waits and nothing is in flight.
    Drained,
    /// Every slot is busy, or nothing waits but a batch is in flight: the
    /// batch coming back flushes again.
    Busy,
    /// Start again after this long.
    Wait(Duration),
    /// Start a round: a batch in each free slot while items wait.
    Start,
}

impl GroupCommit {
    pub(crate) fn new(min_interval: Duration, max_in_flight: usize) -> Self {
        Self {
            min_interval,
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            last_round: None,
            flush_queued: false,
            timer_armed: false,
        }
    }

    /// The rule. `not_before` is a backoff the caller keeps (after a failed
    /// write); while it is set a full batch waits out `min_interval` too.
    pub(crate) fn next(&self, now: Instant, waiting: Waiting, not_before: Option<Instant>) -> Next {
        if self.in_flight >= self.max_in_flight {
            return Next::Busy;
        }
        if waiting == Waiting::Nothing {
            return match self.in_flight {
                0 => Next::Drained,
                _ => Next::Busy,
            };
        }
        let spacing = self
            .last_round
            .map(|t| {
                self.min_interval
                    .saturating_sub(now.saturating_duration_since(t))
            })
            .unwrap_or_default();
        let wait = match (waiting, not_before) {
            (Waiting::Full, None) => Duration::ZERO,
            _ => spacing,
        };
        let backoff = not_before
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default();
        match wait.max(backoff) {
            Duration::ZERO => Next::Start,
            wait => Next::Wait(wait),
        }
    }

    fn free_slots(&self) -> usize {
        self.max_in_flight.saturating_sub(self.in_flight)
    }

    /// Whether a flush must be queued (none is yet).
    fn queue_flush(&mut self) -> bool {
        !std::mem::replace(&mut self.flush_queued, true)
    }

    /// Whether a timer must be armed (none is yet).
    fn arm_timer(&mut self) -> bool {
        !std::mem::replace(&mut self.timer_armed, true)
    }
}

/// An actor that sends its work in batches under a [`GroupCommit`].
pub(crate) trait Batched: Actor<Context = Context<Self>> {
    fn group_commit(&mut self) -> &mut GroupCommit;

    fn waiting(&self) -> Waiting;

    /// A backoff after a failure, when the actor keeps one.
    fn not_before(&self) -> Option<Instant> {
        None
    }

    /// Takes one batch of what waits and starts it with [`spawn`].
    fn start_batch(&mut self, ctx: &mut Context<Self>);

    /// Nothing waits and nothing is in flight (drain waiters may go).
    fn drained(&mut self) {}
}

/// Flushes once the messages already in the mailbox are handled.
pub(crate) fn schedule_flush<A: Batched>(act: &mut A, ctx: &mut Context<A>) {
    if act.group_commit().queue_flush() {
        // What `ctx.notify` does, without a message type per actor.
        ctx.spawn(fut::ready(()).map(|(), act: &mut A, ctx| {
            act.group_commit().flush_queued = false;
            flush(act, ctx);
        }));
    }
}

/// Starts what may start now, or arms the one timer that will try again.
pub(crate) fn flush<A: Batched>(act: &mut A, ctx: &mut Context<A>) {
    let now = Instant::now();
    let (waiting, not_before) = (act.waiting(), act.not_before());
    match act.group_commit().next(now, waiting, not_before) {
        Next::Drained => act.drained(),
        Next::Busy => {}
        Next::Wait(wait) => {
            if act.group_commit().arm_timer() {
                ctx.run_later(wait, |act, ctx| {
                    act.group_commit().timer_armed = false;
                    flush(act, ctx);
                });
            }
        }
        Next::Start => {
            act.group_commit().last_round = Some(now);
            for _ in 0..act.group_commit().free_slots() {
                if act.waiting() == Waiting::Nothing {
                    break;
                }
                act.start_batch(ctx);
            }
        }
    }
}

/// Runs one batch in a slot; `done` sees its output, then the actor
/// flushes again (what waited meanwhile is the next batch).
pub(crate) fn spawn<A, F>(
    act: &mut A,
    ctx: &mut Context<A>,
    batch: F,
    done: impl FnOnce(F::Output, &mut A, &mut Context<A>) + 'static,
) where
    A: Batched,
    F: Future + 'static,
{
    act.group_commit().in_flight += 1;
    ctx.spawn(batch.into_actor(act).map(move |output, act, ctx| {
        act.group_commit().in_flight -= 1;
        done(output, act, ctx);
        flush(act, ctx);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACING: Duration = Duration::from_millis(20);

    fn started(min_interval: Duration, max_in_flight: usize, at: Instant) -> GroupCommit {
        let mut commit = GroupCommit::new(min_interval, max_in_flight);
        commit.last_round = Some(at);
        commit.in_flight = 1;
        commit
    }

    #[test]
    fn a_lone_item_after_a_quiet_spell_goes_at_once() {
        let commit = GroupCommit::new(SPACING, 1);
        let now = Instant::now();
        assert_eq!(commit.next(now, Waiting::Some, None), Next::Start);
        assert_eq!(commit.next(now, Waiting::Nothing, None), Next::Drained);
    }

    #[test]
    fn items_wait_for_the_batch_in_flight() {
        let now = Instant::now();
        let commit = started(Duration::ZERO, 1, now);
        assert_eq!(commit.next(now, Waiting::Full, None), Next::Busy);
        assert_eq!(commit.next(now, Waiting::Nothing, None), Next::Busy);
    }

    #[test]
    fn rounds_are_spaced_unless_a_whole_batch_waits() {
        let now = Instant::now();
        let mut commit = started(SPACING, 1, now);
        commit.in_flight = 0;
        let later = now + Duration::from_millis(5);
        assert_eq!(
            commit.next(later, Waiting::Some, None),
            Next::Wait(Duration::from_millis(15))
        );
        assert_eq!(commit.next(later, Waiting::Full, None), Next::Start);
        assert_eq!(commit.next(now + SPACING, Waiting::Some, None), Next::Start);
    }

    #[test]
    fn a_backoff_holds_even_a_whole_batch_and_keeps_the_spacing() {
        let now = Instant::now();
        let mut commit = started(SPACING, 1, now);
        commit.in_flight = 0;
        let retry_at = now + Duration::from_millis(100);
        assert_eq!(
            commit.next(now, Waiting::Full, Some(retry_at)),
            Next::Wait(Duration::from_millis(100))
        );
        // Past the backoff but still set (no write has succeeded since),
        // a whole batch waits out the spacing.
        let past = now - Duration::from_millis(1);
        assert_eq!(
            commit.next(now + Duration::from_millis(5), Waiting::Full, Some(past)),
            Next::Wait(Duration::from_millis(15))
        );
    }

    #[test]
    fn several_slots_take_batches_until_all_are_busy() {
        let now = Instant::now();
        let mut commit = started(Duration::ZERO, 4, now);
        assert_eq!(commit.free_slots(), 3);
        assert_eq!(commit.next(now, Waiting::Some, None), Next::Start);
        commit.in_flight = 4;
        assert_eq!(commit.next(now, Waiting::Some, None), Next::Busy);
    }

    #[test]
    fn one_flush_and_one_timer_at_a_time() {
        let mut commit = GroupCommit::new(SPACING, 1);
        assert!(commit.queue_flush());
        assert!(!commit.queue_flush());
        assert!(commit.arm_timer());
        assert!(!commit.arm_timer());
    }

    /// Records the size of each batch; a batch takes `hold` to come back.
    struct Recorder {
        commit: GroupCommit,
        waiting: Vec<u32>,
        batches: Vec<usize>,
        hold: Duration,
    }

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Batched for Recorder {
        fn group_commit(&mut self) -> &mut GroupCommit {
            &mut self.commit
        }

        fn waiting(&self) -> Waiting {
            match self.waiting.is_empty() {
                true => Waiting::Nothing,
                false => Waiting::Some,
            }
        }

        fn start_batch(&mut self, ctx: &mut Context<Self>) {
            let batch = std::mem::take(&mut self.waiting);
            let hold = self.hold;
            spawn(self, ctx, tokio::time::sleep(hold), move |(), act, _| {
                act.batches.push(batch.len());
            });
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Item(u32);

    impl Handler<Item> for Recorder {
        type Result = ();

        fn handle(&mut self, Item(item): Item, ctx: &mut Context<Self>) {
            self.waiting.push(item);
            schedule_flush(self, ctx);
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<usize>")]
    struct Batches;

    impl Handler<Batches> for Recorder {
        type Result = MessageResult<Batches>;

        fn handle(&mut self, _: Batches, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.batches.clone())
        }
    }

    #[actix::test]
    async fn items_queued_together_go_in_one_batch_and_later_ones_in_the_next() {
        let addr = Recorder {
            commit: GroupCommit::new(Duration::ZERO, 1),
            waiting: Vec::new(),
            batches: Vec::new(),
            hold: Duration::from_millis(50),
        }
        .start();
        // All five are in the mailbox before the actor first runs.
        for i in 0..5 {
            addr.do_send(Item(i));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // These arrive while the first batch is in flight.
        for i in 5..8 {
            addr.do_send(Item(i));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(addr.send(Batches).await.unwrap(), [5, 3]);
    }
}
