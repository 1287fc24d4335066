//! What a reconnecting browser gets: the events it missed, from the org's
//! recent events in memory or, when they are older than that, rebuilt from
//! the store through the StoreReader; or a snapshot, when the gap is too
//! wide or unknown.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use actix::Recipient;

use crate::ledger::{EventFacts, Ledger, Standing};
use crate::model::Action;
use crate::org_event::{OrgEvent, Snapshot};
use crate::store_reader::{self, LoadOrg};

use super::messages::Replay;

/// The org's newest stream events, oldest first, at most `capacity`.
pub struct RecentEvents {
    events: VecDeque<Recent>,
    capacity: usize,
}

/// One of the org's newest changes. Most are never streamed (no browser
/// watches the org, none reconnects), so its stream event is serialised
/// the first time one is needed, not on every change.
// Unboxed: most entries stay `Unbuilt`, and a box would cost every change
// an allocation to save memory on the orgs browsers watch.
enum Recent {
    Built(Arc<OrgEvent>),
    Unbuilt {
        facts: EventFacts,
        standing: Standing,
    },
}

impl Recent {
    fn seq(&self) -> u64 {
        match self {
            Recent::Built(event) => event.seq,
            Recent::Unbuilt { facts, .. } => facts.seq(),
        }
    }

    fn event(&mut self) -> Arc<OrgEvent> {
        match self {
            Recent::Built(event) => event.clone(),
            Recent::Unbuilt { facts, standing } => {
                let event = Arc::new(standing.event_of(facts));
                *self = Recent::Built(event.clone());
                event
            }
        }
    }
}

/// How a reconnect after `last_event_id` is answered.
#[derive(Debug, PartialEq)]
pub enum ReplayPlan {
    /// The events after it, all still in memory (possibly none).
    Events(Vec<Arc<OrgEvent>>),
    /// Older than memory but within `max_replay`: rebuilt from the store.
    FromStore,
    /// Ahead of the org (an id from elsewhere) or too far behind: start over.
    Snapshot,
}

impl RecentEvents {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Keeps a change whose event is already built (it was streamed).
    pub fn remember(&mut self, event: Arc<OrgEvent>) {
        self.push(Recent::Built(event));
    }

    /// Keeps a change, its event to be built if a browser ever needs it;
    /// `standing` is the org as of `action`.
    pub fn remember_unbuilt(&mut self, action: Action, standing: Standing) {
        self.push(Recent::Unbuilt {
            facts: action.into(),
            standing,
        });
    }

    fn push(&mut self, recent: Recent) {
        if self.capacity == 0 {
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(recent);
    }

    /// Every event kept, oldest first (built now where they are not yet).
    pub fn events(&mut self) -> Vec<Arc<OrgEvent>> {
        self.events.iter_mut().map(Recent::event).collect()
    }

    /// `seq` is the org's newest; a reconnect missing more than
    /// `max_replay` events gets a snapshot.
    pub fn plan(&mut self, last_event_id: u64, seq: u64, max_replay: usize) -> ReplayPlan {
        let after = last_event_id;
        if after > seq || (seq - after) as usize > max_replay {
            return ReplayPlan::Snapshot;
        }
        let covered = after == seq || self.events.front().is_some_and(|e| e.seq() <= after + 1);
        if !covered {
            return ReplayPlan::FromStore;
        }
        ReplayPlan::Events(
            self.events
                .iter_mut()
                .filter(|e| e.seq() > after)
                .map(Recent::event)
                .collect(),
        )
    }
}

/// The events after `after`, rebuilt from the org's actions (oldest first).
pub fn events_after(
    org_id: String,
    skus: Arc<[String]>,
    actions: &[Action],
    after: u64,
) -> Vec<Arc<OrgEvent>> {
    let mut replayed = Ledger::new(org_id, skus);
    actions
        .iter()
        .map(|a| replayed.apply(a))
        .filter(|e| e.seq > after)
        .map(Arc::new)
        .collect()
}

/// Reads the org's actions through the StoreReader (grouped with other
/// reads, within its cap) and rebuilds the events after `after`; if the
/// read fails, the stream starts over from `fallback`.
pub fn from_store(
    loader: &Recipient<LoadOrg>,
    org_id: String,
    skus: Arc<[String]>,
    after: u64,
    fallback: Snapshot,
) -> impl Future<Output = Replay> + 'static {
    let load = store_reader::load_org(loader, org_id.clone());
    async move {
        match load.await {
            Ok(actions) => Replay::Events(events_after(org_id, skus, &actions, after)),
            Err(e) => {
                tracing::warn!(error = %e, "reading the org for a replay failed; sending a snapshot");
                Replay::Snapshot(fallback)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActionStatus;

    fn failed_payment(seq: u64) -> Action {
        Action {
            status: ActionStatus::Failed,
            ..Action::test_payment("acme", &format!("fail_evt_{seq}"), seq)
        }
    }

    fn skus() -> Arc<[String]> {
        Arc::from(vec!["pro".to_owned()])
    }

    /// Events 1..=n, of which memory keeps the newest `capacity`.
    fn recent(n: u64, capacity: usize) -> RecentEvents {
        let actions: Vec<Action> = (1..=n).map(failed_payment).collect();
        let mut recent = RecentEvents::new(capacity);
        for event in events_after("acme".into(), skus(), &actions, 0) {
            recent.remember(event);
        }
        recent
    }

    fn seqs(plan: ReplayPlan) -> Vec<u64> {
        match plan {
            ReplayPlan::Events(events) => events.iter().map(|e| e.seq).collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn memory_keeps_the_newest_events() {
        let mut recent = recent(10, 3);
        let seqs: Vec<u64> = recent.events().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [8, 9, 10]);
        assert_eq!(RecentEvents::new(0).events().len(), 0);
    }

    #[test]
    fn an_event_built_when_needed_is_the_one_built_at_once() {
        let mut ledger = Ledger::new("acme".into(), skus());
        let mut lazily = RecentEvents::new(8);
        let mut actions = Vec::new();
        for seq in 1..=4 {
            let mut action = Action::test_payment("acme", &format!("a{seq}"), seq);
            if seq == 2 {
                action.status = ActionStatus::Failed;
            }
            ledger.fold(&action);
            let standing = ledger.standing();
            actions.push(action.clone());
            // One kept built (as a streamed change is), the others not.
            if seq == 3 {
                lazily.remember(Arc::new(standing.event_for(&action)));
            } else {
                lazily.remember_unbuilt(action, standing);
            }
        }
        // The same events a replay rebuilds from the store.
        let from_store = events_after("acme".into(), skus(), &actions, 0);
        assert_eq!(lazily.events(), from_store);
        assert_eq!(seqs(lazily.plan(2, 4, 100)), [3, 4]);
    }

    #[test]
    fn a_gap_still_in_memory_is_replayed_in_order() {
        let mut recent = recent(10, 3);
        assert_eq!(seqs(recent.plan(8, 10, 100)), [9, 10]);
        // The one just before the oldest kept: still exactly covered.
        assert_eq!(seqs(recent.plan(7, 10, 100)), [8, 9, 10]);
        assert_eq!(seqs(recent.plan(10, 10, 100)), Vec::<u64>::new());
    }

    #[test]
    fn an_older_gap_is_read_from_the_store_and_a_wide_or_unknown_one_starts_over() {
        let mut recent = recent(10, 3);
        assert_eq!(recent.plan(6, 10, 100), ReplayPlan::FromStore);
        assert_eq!(
            recent.plan(0, 10, 9),
            ReplayPlan::Snapshot,
            "10 missed, 9 allowed"
        );
        assert_eq!(
            recent.plan(11, 10, 100),
            ReplayPlan::Snapshot,
            "ahead of the org"
        );
    }

    #[test]
    fn events_rebuilt_from_the_store_are_the_ones_after_the_gap() {
        let actions: Vec<Action> = (1..=5).map(failed_payment).collect();
        let events = events_after("acme".into(), skus(), &actions, 3);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    }
}
