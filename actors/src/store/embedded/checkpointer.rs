//! Checkpoints of the WAL on a thread of their own, beside the writer.
//!
//! Left to itself SQLite checkpoints in the commit that takes the WAL past
//! `wal_autocheckpoint`: that batch, and every webhook queued behind it,
//! waits while thousands of pages are copied into the file and fsynced. On a
//! store of 790,000 actions such commits took 32 to 64 ms, and the webhooks'
//! p99 at half the peak rate was 46 ms (2026-12-07). This thread checkpoints
//! soon after commits instead, so that the writer's own checkpoint, still
//! due at the mark, finds little left to copy; it is kept because only a
//! checkpoint on the writer's thread, right before its next transaction,
//! reliably lets that transaction start the WAL over while commits go on.
//!
//! Its checkpoints are PASSIVE: they never wait for, nor block, the writer
//! or a reader; a reader's older snapshot only holds back what can be
//! copied. A failed checkpoint loses nothing (the WAL keeps every frame),
//! so it is logged and the next commit tries again.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Least time between two checkpoints. Measured on 5,000 orgs × 100
/// payments: 30 ms left one commit in 72,000 over 32 ms at half the peak
/// rate (p99 14.8 ms), where 200 ms left 47 and none 84; the checkpoints
/// cost 0.6 to 0.8 µs of CPU a webhook at full speed.
pub(super) const SPACING: Duration = Duration::from_millis(30);

/// The writer's side: tells the thread that a commit added frames.
pub(super) struct Checkpoints {
    commits: SyncSender<()>,
}

impl Checkpoints {
    /// Starts the thread for the store at `path`. It ends once this handle
    /// is dropped (the writer thread ended), after a checkpoint under way.
    pub(super) fn start(path: PathBuf) -> (Self, JoinHandle<()>) {
        // One slot: commits made while a checkpoint runs or the thread
        // waits out the spacing come to one more checkpoint.
        let (commits, pending) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpt".into())
            .spawn(move || run(&path, pending, SPACING))
            .expect("spawn the SQLite checkpoint thread");
        (Self { commits }, thread)
    }

    /// Never waits: a checkpoint already due covers this commit too.
    pub(super) fn committed(&self) {
        match self.commits.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::warn!("the SQLite checkpoint thread has stopped; the writer checkpoints");
            }
        }
    }
}

fn run(path: &Path, commits: Receiver<()>, spacing: Duration) {
    // Background work: it waits for a free CPU rather than preempting the
    // threads a webhook waits on.
    crate::scheduling::hand_off_thread();
    let mut conn: Option<Connection> = None;
    while commits.recv().is_ok() {
        let result = match &conn {
            Some(c) => checkpoint(c),
            None => super::open(path).and_then(|c| checkpoint(conn.insert(c))),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next commit tries again");
            conn = None;
        }
        std::thread::sleep(spacing);
    }
}

/// Copies what it can of the WAL into the file; SQLite fsyncs both.
fn checkpoint(c: &Connection) -> rusqlite::Result<()> {
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_ends_once_the_writer_lets_go() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (checkpoints, thread) = Checkpoints::start(dir.path().join("actions.db"));
        checkpoints.committed();
        drop(checkpoints);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            thread.is_finished(),
            "the checkpoint thread outlived its writer"
        );
        thread.join().expect("ended without a panic");
    }
}
