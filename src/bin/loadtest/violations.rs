//! Violations of what the load must mean, counted by kind, with the first
//! few of each described.

use std::collections::BTreeMap;

const EXAMPLES: usize = 20;
const EXAMPLES_PER_KIND: usize = 3;

/// Violations by kind, with the first few described.
#[derive(Default)]
pub struct Violations {
    pub counts: BTreeMap<&'static str, u64>,
    pub examples: Vec<String>,
}

impl Violations {
    pub fn add(&mut self, kind: &'static str, n: u64, example: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        let count = self.counts.entry(kind).or_default();
        let first = *count == 0;
        *count += n;
        // A few examples of each kind, so that one flood hides no other kind.
        let of_kind = self
            .examples
            .iter()
            .filter(|e| e.starts_with(&format!("{kind}: ")))
            .count();
        if first || (of_kind < EXAMPLES_PER_KIND && self.examples.len() < EXAMPLES) {
            self.examples.push(format!("{kind}: {}", example()));
        }
    }

    pub fn get(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}
