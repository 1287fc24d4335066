//! Checkpoints of the WAL on a thread of their own, beside the writer.
//!
//! Left to itself SQLite checkpoints in the commit that takes the WAL past
//! `wal_autocheckpoint`: that batch, and every webhook queued behind it,
//! waits while thousands of pages are copied into the file and fsynced. On a
//! store of 790,000 actions such commits took 32 to 64 ms, and the webhooks'
//! p99 at half the peak rate was 46 ms (2026-12-07). This thread checkpoints
//! soon after commits instead, so that the writer's own checkpoint, still
//! due at the mark, finds little left to copy. That one is kept: SQLite
//! starts the WAL over only in a transaction that begins with every frame
//! copied, which under steady commits is the writer's next one after its
//! own checkpoint (the WAL stayed at about 44 MB over 790,000 actions).
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

/// Least time between two checkpoints. On 5,000 orgs × 100 payments paced
/// at 15,000/s, no commit took over 32 ms with it (p99 14.0 ms), against 75
/// and 84 such commits without this thread and 47 with a checkpoint only
/// every 200 ms (2026-12-07). At the benchmark's shape the thread took 0.6
/// to 0.8 µs of CPU a webhook at full speed.
const SPACING: Duration = Duration::from_millis(30);

/// The writer's side: tells the thread that a commit added frames.
pub(super) struct Checkpoints {
    commits: SyncSender<()>,
    /// The thread is gone (it can only panic): said once, not per commit.
    gone: bool,
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
            .spawn(move || run(&path, pending))
            .expect("spawn the SQLite checkpoint thread");
        let checkpoints = Self {
            commits,
            gone: false,
        };
        (checkpoints, thread)
    }

    /// Never waits: a checkpoint already due covers this commit too.
    pub(super) fn committed(&mut self) {
        match self.commits.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) if !self.gone => {
                self.gone = true;
                tracing::warn!(
                    "the SQLite checkpoint thread has stopped; only the writer checkpoints now"
                );
            }
            Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn run(path: &Path, commits: Receiver<()>) {
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
        std::thread::sleep(SPACING);
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
        let (mut checkpoints, thread) = Checkpoints::start(dir.path().join("actions.db"));
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
