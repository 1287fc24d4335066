//! The writers whose rows the PersistenceActor refuses outright.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::OrgActorId;

/// How long after its last refused row a writer is remembered. An org actor
/// goes on sending rows until its writes before the refused one are back
/// (each bounded by `write_timeout`, 3 s in the service), then stops; every
/// row it sends in between is refused and renews the entry.
const REFUSED_WRITER_MEMORY: Duration = Duration::from_secs(60);
const MIN_PRUNE_AT: usize = 1024;

/// Writers that had a row refused or not stored, and when. Their later rows
/// were decided assuming that one, so they are refused too, even once the
/// store is back; the org's next actor writes under a new id.
pub(super) struct RefusedWriters {
    last_refused: HashMap<OrgActorId, Instant>,
    /// Entries older than the memory are pruned when it reaches this size.
    prune_at: usize,
}

impl RefusedWriters {
    pub(super) fn new() -> Self {
        Self {
            last_refused: HashMap::new(),
            prune_at: MIN_PRUNE_AT,
        }
    }

    pub(super) fn contains(&self, writer: &OrgActorId) -> bool {
        self.last_refused.contains_key(writer)
    }

    pub(super) fn insert(&mut self, writer: OrgActorId, now: Instant) {
        if self.last_refused.len() >= self.prune_at {
            self.last_refused
                .retain(|_, at| now.duration_since(*at) < REFUSED_WRITER_MEMORY);
            self.prune_at = (self.last_refused.len() * 2).max(MIN_PRUNE_AT);
        }
        self.last_refused.insert(writer, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_refused_long_ago_are_forgotten_once_the_map_is_full() {
        let mut refused = RefusedWriters::new();
        let start = Instant::now();
        let old: Vec<OrgActorId> = (0..MIN_PRUNE_AT).map(|_| OrgActorId::next()).collect();
        for writer in &old {
            refused.insert(*writer, start);
        }
        let recent = OrgActorId::next();
        refused.insert(recent, start + REFUSED_WRITER_MEMORY);
        assert!(refused.contains(&recent));
        assert!(old.iter().all(|w| !refused.contains(w)));
    }
}
