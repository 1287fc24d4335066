//! The embedded action store: one SQLite file in WAL mode.
//!
//! SQLite calls block, so none runs on an actor's thread. Inserts go to one
//! thread of their own with one connection (see [`writer`]), and another
//! copies what they commit from the WAL into the file ([`checkpointer`]);
//! reads (and the schema, made once at start) run on tokio's blocking pool,
//! each blocking thread keeping its own connection per database file (a
//! thread-local cache), so there is no shared connection and no lock of
//! ours. A semaphore caps the reads running at once: without it, thousands
//! of orgs loading together grow the blocking pool to hundreds of threads,
//! each with a connection and its page cache (a gigabyte at 200,000 orgs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{PaymentIntentOwner, StoreError};
use crate::model::{Action, ActionKind, ActionStatus};

mod checkpointer;
mod page_cache;

const COLUMNS: &str = "id, org_id, seq, kind, status, sku, external_id, event_id, amount, currency, created_at_ms, simulated";

/// The rows the PaymentIntent index holds. The owner lookup names the same
/// condition: SQLite uses a partial index only for a query that implies it.
const DELIVERED_PAYMENT: &str = "kind = 'payment' AND status = 'delivered'";

#[derive(Clone)]
pub struct EmbeddedStore {
    path: Arc<PathBuf>,
    operations: Arc<Semaphore>,
    writes: mpsc::Sender<Write>,
}

/// SQLite reads at once: enough to keep reads beside the writer busy
/// on a few cores, few enough to keep a handful of connections.
const MAX_CONCURRENT_READS: usize = 8;

/// Batches queued for the writer thread beyond the one it is writing; the
/// PersistenceActor has one in flight, so more only wait here briefly.
const WRITE_QUEUE: usize = 4;

/// The writer connection's page cache, in KiB (SQLite's default is 2 MiB):
/// room for the upper levels of the table and its indexes, which
/// every insert walks, as the file grows. Not more: 64 MiB cost about 3% of
/// the webhook rate against 2 or 16 MiB, which measured alike (alternated
/// runs on a 50 MB store, 2026-12-03), through a walk of the whole cache at
/// nearly every commit that [`page_cache`] has since taken out; a larger
/// cache has not been measured again.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// WAL pages before the writer checkpoints them itself (SQLite's default
/// is 1,000). Most of them are copied sooner, beside the commits, by the
/// [`checkpointer`] thread; the writer's checkpoint at this mark copies what
/// is left, and is what lets its next transaction start the WAL over: about
/// 40 MB of WAL between restarts (more while a long read holds an older
/// snapshot). When the commits alone checkpointed, this longer WAL wrote 15%
/// fewer bytes and gave a few percent more webhooks a second than the
/// default (alternated runs, 2026-12-03), but the commit that crossed the
/// mark held up every webhook behind it.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// One batch for the writer thread, and where its outcome goes.
struct Write {
    rows: Vec<Action>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

thread_local! {
    static CONNECTIONS: RefCell<HashMap<PathBuf, Connection>> = RefCell::new(HashMap::new());
}

impl EmbeddedStore {
    /// Starts the store's writer thread, which ends once every clone of
    /// the store is dropped.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = Arc::new(path.into());
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer(&writer_path, queue))
            .expect("spawn the SQLite writer thread");
        Self {
            path,
            operations: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
            writes,
        }
    }

    /// Runs `f` with this thread's connection to the store, on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let path = self.path.clone();
        let permit = self
            .operations
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            CONNECTIONS.with(|cell| {
                let mut conns = cell.borrow_mut();
                if !conns.contains_key(path.as_path()) {
                    conns.insert(path.to_path_buf(), open(&path)?);
                }
                let conn = conns.get_mut(path.as_path()).expect("inserted above");
                let result = f(conn);
                if matches!(result, Err(StoreError::Unavailable { .. })) {
                    // A broken connection must not be reused by the next call.
                    conns.remove(path.as_path());
                }
                result
            })
        })
        .await
        .map_err(|e| StoreError::unavailable_from("SQLite task", e))?
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::unavailable_from(format_args!("cannot create {}", dir.display()), e)
            })?;
        }
        // No index on `id`: ids are unique by construction (each names the
        // event, PaymentIntent or seq that made it, and the org actor records
        // each once), and `(org_id, seq)` is what the store must guard. A
        // fourth b-tree, keyed at random, cost about a third of the pages
        // each commit wrote (2.7 against 4.0 KB per webhook) and about 7% of
        // the webhook rate. Files made before keep their `id` primary key;
        // the insert below works on both.
        //
        // The PaymentIntent index holds delivered payments only: the
        // refunds and disputes we look up nearly always follow one, and one
        // heard before its payment's success is routed by the live org actor
        // or by Stripe (as the JetStream backend's owner bucket does). A
        // b-tree keyed by random ids costs about a page write per row, and
        // the benchmark's failed payments and refunds are a third of its
        // rows: 13 to 19% fewer bytes written and about 5% less CPU a
        // webhook (alternated runs, 2026-12-03). Files made before lose the
        // full index at start and build this one (one scan of the table).
        //
        // The rows stay in rowid order with `(org_id, seq)` an index beside
        // them. Clustered by `(org_id, seq)` (WITHOUT ROWID), a leaf holds
        // whole rows, far fewer than the index's leaf holds keys, and the
        // random inserts dirty and split more pages: 6.5 against 2.9 KB
        // written per webhook and 17% fewer webhooks/s. Pages smaller than
        // SQLite's 4 KiB wrote less (1.9 KB per webhook at 1 KiB, 2.4 at
        // 2 KiB) but cost more CPU in deeper b-trees: 1 to 6% fewer
        // webhooks/s (alternated runs, 2026-12-03).
        self.with_conn(|c| {
            c.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS actions (
                    id            TEXT NOT NULL,
                    org_id        TEXT NOT NULL,
                    seq           INTEGER NOT NULL,
                    kind          TEXT NOT NULL,
                    status        TEXT NOT NULL,
                    sku           TEXT NOT NULL,
                    external_id   TEXT NOT NULL,
                    event_id      TEXT,
                    amount        INTEGER NOT NULL,
                    currency      TEXT NOT NULL,
                    created_at_ms INTEGER NOT NULL,
                    simulated     INTEGER NOT NULL
                 );
                 CREATE UNIQUE INDEX IF NOT EXISTS actions_org_seq ON actions (org_id, seq);
                 CREATE INDEX IF NOT EXISTS actions_paid_intent ON actions (external_id)
                    WHERE {DELIVERED_PAYMENT};
                 DROP INDEX IF EXISTS actions_external_id;"
            ))?;
            Ok(())
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.writes.is_closed() {
            return Err(writer_gone());
        }
        self.with_conn(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// Writes `rows` in one transaction, fsynced, on the writer thread.
    pub async fn insert_batch(&self, rows: Vec<Action>) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        self.writes
            .send(Write { rows, done })
            .await
            .map_err(|_| writer_gone())?;
        outcome.await.map_err(|_| writer_gone())?
    }

    /// Every action of each org, read on one connection.
    pub async fn actions_of_orgs(
        &self,
        org_ids: &[String],
    ) -> Result<HashMap<String, Vec<Action>>, StoreError> {
        let org_ids = org_ids.to_vec();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM actions WHERE org_id = ?1 ORDER BY seq ASC"
            ))?;
            let mut orgs = HashMap::with_capacity(org_ids.len());
            for org_id in org_ids {
                let mut rows = stmt.query([&org_id])?;
                let mut actions = Vec::new();
                while let Some(row) = rows.next()? {
                    actions.push(action_from_row(row)?);
                }
                orgs.insert(org_id, actions);
            }
            Ok(orgs)
        })
        .await
    }

    pub async fn recent_actions(
        &self,
        org_id: &str,
        limit: u32,
    ) -> Result<Vec<Action>, StoreError> {
        let org_id = org_id.to_owned();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM actions WHERE org_id = ?1 ORDER BY seq DESC LIMIT ?2"
            ))?;
            let mut rows = stmt.query(params![org_id, limit])?;
            let mut actions = Vec::new();
            while let Some(row) = rows.next()? {
                actions.push(action_from_row(row)?);
            }
            Ok(actions)
        })
        .await
    }

    pub async fn owners_of_intents(
        &self,
        payment_intent_ids: &[String],
    ) -> Result<HashMap<String, PaymentIntentOwner>, StoreError> {
        let ids = payment_intent_ids.to_vec();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT org_id, sku FROM actions
                 WHERE external_id = ?1 AND {DELIVERED_PAYMENT} LIMIT 1"
            ))?;
            let mut owners = HashMap::new();
            for id in ids {
                let owner = stmt
                    .query_row([&id], |r| {
                        Ok(PaymentIntentOwner {
                            org_id: r.get(0)?,
                            sku: r.get(1)?,
                        })
                    })
                    .optional()?;
                if let Some(owner) = owner {
                    owners.insert(id, owner);
                }
            }
            Ok(owners)
        })
        .await
    }

    /// When the newest action caused by a Stripe event was recorded.
    pub async fn newest_event_action_ms(&self) -> Result<Option<i64>, StoreError> {
        self.with_conn(|c| {
            Ok(c.query_row(
                "SELECT max(created_at_ms) FROM actions WHERE event_id IS NOT NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

/// The writer thread: every batch on one connection, kept open between
/// batches. Why a thread of its own: in WAL mode a connection discards its
/// page cache whenever another connection wrote since its last transaction,
/// so when the blocking pool handed each batch to whichever thread was free,
/// nearly every commit began by reading its b-tree pages back from the file.
fn writer(path: &Path, mut queue: mpsc::Receiver<Write>) {
    // Woken for every batch: it waits for a free CPU rather than preempting
    // the threads that hand it work.
    crate::scheduling::hand_off_thread();
    // Detached: it ends when `checkpoints` is dropped, with this thread.
    let (mut checkpoints, _) = checkpointer::Checkpoints::start(path.to_path_buf());
    let mut conn: Option<Connection> = None;
    while let Some(Write { rows, done }) = queue.blocking_recv() {
        // Its caller gave up (the write timed out and was answered 503):
        // leave it unwritten, so that 503 means "not recorded" whenever it
        // can. The org's actor has stopped and reads the org again anyway.
        if done.is_closed() {
            continue;
        }
        let result = match &mut conn {
            Some(c) => insert_rows(c, &rows),
            None => open_writer(path)
                .map_err(StoreError::from)
                .and_then(|c| insert_rows(conn.insert(c), &rows)),
        };
        match &result {
            Ok(()) => checkpoints.committed(),
            // A broken connection must not be reused by the next batch.
            Err(StoreError::Unavailable { .. }) => conn = None,
            Err(_) => {}
        }
        let _ = done.send(result);
    }
}

/// The writer's connection: a reader's, with its own cache and checkpoint mark.
fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let c = open(path)?;
    c.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    c.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    Ok(c)
}

/// What a write or a ping meets once the writer thread has ended.
fn writer_gone() -> StoreError {
    StoreError::unavailable("SQLite: the writer thread stopped")
}

fn insert_rows(c: &mut Connection, rows: &[Action]) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    {
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO actions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (org_id, seq) DO NOTHING"
        ))?;
        for a in rows {
            let inserted = insert
                .execute(params![
                    a.id,
                    a.org_id,
                    a.seq as i64,
                    a.kind.as_str(),
                    a.status.as_str(),
                    a.sku,
                    a.external_id,
                    a.event_id,
                    a.amount,
                    a.currency,
                    a.created_at_ms,
                    a.simulated,
                ])
                .map_err(|e| conflict_or_unavailable(e, a))?;
            if inserted == 0 {
                already_stored(&tx, a)?;
            }
        }
    }
    Ok(tx.commit()?)
}

/// The org's `seq` is taken. By this very action (the batch written again
/// after it landed), that is a no-op; by another one, a conflict, and the
/// whole batch fails rather than lose a row.
fn already_stored(tx: &rusqlite::Transaction<'_>, a: &Action) -> Result<(), StoreError> {
    let stored: String = tx
        .prepare_cached("SELECT id FROM actions WHERE org_id = ?1 AND seq = ?2")?
        .query_row(params![a.org_id, a.seq as i64], |r| r.get(0))?;
    if stored == a.id {
        return Ok(());
    }
    Err(StoreError::Conflict {
        org_id: a.org_id.clone(),
        seq: a.seq,
        action_id: a.id.clone(),
        source: None,
    })
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    page_cache::install();
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer; FULL sync makes a committed
    // batch survive power loss, which is what "durable" promises Stripe.
    // The wait for that fsync is not what bounds the webhook rate: NORMAL
    // (no fsync at commit, not durable) measured only 5% more webhooks/s,
    // so the commit is not worth pipelining behind a separate fsync.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Every other SQLite failure is the store being unavailable: the file
/// cannot be opened, is locked past the busy timeout, the disk is full...
/// Conflicts and corrupt rows are told apart where they can arise.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::unavailable_from("SQLite", e)
    }
}

/// A constraint the insert's `ON CONFLICT` does not take: in a file made
/// with an `id` primary key, an id already stored at another seq.
fn conflict_or_unavailable(e: rusqlite::Error, action: &Action) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict {
            org_id: action.org_id.clone(),
            seq: action.seq,
            action_id: action.id.clone(),
            source: Some(Arc::new(e)),
        },
        _ => e.into(),
    }
}

/// A row that does not read as an action is `Corrupt`, named by its org and
/// id as far as they can be read.
fn action_from_row(r: &Row<'_>) -> Result<Action, StoreError> {
    read_action(r).map_err(|e| match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt {
            org_id: r.get(1).unwrap_or_default(),
            row: r
                .get(0)
                .unwrap_or_else(|_| "with an unreadable id".to_owned()),
            message: e.to_string(),
            source: Some(Arc::new(e)),
        },
        e => e.into(),
    })
}

fn read_action(r: &Row<'_>) -> rusqlite::Result<Action> {
    let bad = |i: usize, what: &str, value: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown {what} {value:?}").into(),
        )
    };
    let kind: String = r.get(3)?;
    let status: String = r.get(4)?;
    Ok(Action {
        id: r.get(0)?,
        org_id: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        kind: ActionKind::parse(&kind).ok_or_else(|| bad(3, "kind", &kind))?,
        status: ActionStatus::parse(&status).ok_or_else(|| bad(4, "status", &status))?,
        sku: r.get(5)?,
        external_id: r.get(6)?,
        event_id: r.get(7)?,
        amount: r.get(8)?,
        currency: r.get(9)?,
        created_at_ms: r.get(10)?,
        simulated: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreErrorKind;

    /// A store on a new file with its table made; the file lives as long
    /// as the directory.
    async fn migrated_store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedStore::new(dir.path().join("actions.db"));
        store.migrate().await.expect("the table made");
        (dir, store)
    }

    /// Writes acme's payments `a{seq}`, one batch each.
    async fn write_acme_payments(store: &EmbeddedStore, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let id = format!("a{seq}");
            store
                .insert_batch(vec![Action::test_payment("acme", &id, seq)])
                .await
                .expect("written");
        }
    }

    /// acme's action ids in seq order, read on a reader's connection.
    async fn acme_ids(store: &EmbeddedStore) -> Vec<String> {
        let mut orgs = store
            .actions_of_orgs(&["acme".to_owned()])
            .await
            .expect("read back");
        let actions = orgs.remove("acme").unwrap_or_default();
        actions.into_iter().map(|a| a.id).collect()
    }

    #[actix::test]
    async fn a_write_before_the_file_can_be_opened_fails_and_a_later_one_lands() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A directory that does not exist yet: the writer cannot open the file.
        let store = EmbeddedStore::new(dir.path().join("later").join("actions.db"));
        let refused = store
            .insert_batch(vec![Action::test_payment("acme", "a1", 1)])
            .await
            .expect_err("no file to write to");
        assert_eq!(refused.kind(), StoreErrorKind::Unavailable, "{refused}");

        store.migrate().await.expect("the directory and table made");
        // Written once the file can be opened.
        write_acme_payments(&store, 1..=2).await;
        assert_eq!(acme_ids(&store).await, ["a1", "a2"]);
    }

    /// Rows of many orgs, a batch at a time, land all over the `(org_id,
    /// seq)` index and split its pages: SQLite renumbers new pages through
    /// the locking page then, which is what the page cache wrapper is for.
    /// Written here with the writer's own functions on this thread, whose
    /// count of skipped walks is this connection's alone; a batch refused
    /// whole (rolled back) in between, and the file checked after.
    #[actix::test]
    async fn batches_that_split_index_pages_skip_the_cache_walk_and_leave_the_file_whole() {
        let (dir, store) = migrated_store().await;
        let mut writer = open_writer(&dir.path().join("actions.db")).expect("a writer");
        let orgs: Vec<String> = (0..300)
            .map(|i| format!("org_{:03}", (i * 7919) % 1000))
            .collect();
        let batch = |seq: u64| -> Vec<Action> {
            orgs.iter()
                .map(|org| Action::test_payment(org, &format!("{org}_{seq}"), seq))
                .collect()
        };
        let scans_saved_before = page_cache::scans_saved();
        for seq in 1..=20 {
            insert_rows(&mut writer, &batch(seq)).expect("written");
        }
        let mut refused = batch(21);
        refused.push(Action::test_payment(&orgs[0], "taken", 1));
        let conflict = insert_rows(&mut writer, &refused).expect_err("seq 1 is taken");
        assert_eq!(conflict.kind(), StoreErrorKind::Conflict, "{conflict}");
        for seq in 21..=25 {
            insert_rows(&mut writer, &batch(seq)).expect("written after the rollback");
        }
        assert!(
            page_cache::scans_saved() > scans_saved_before,
            "no commit here would have walked the whole page cache"
        );
        let check: String = writer
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("checked");
        assert_eq!(check, "ok");

        let read = store.actions_of_orgs(&orgs).await.expect("read back");
        for org in &orgs {
            let ids: Vec<&str> = read[org].iter().map(|a| a.id.as_str()).collect();
            let expected: Vec<String> = (1..=25).map(|seq| format!("{org}_{seq}")).collect();
            assert_eq!(ids, expected, "{org}'s actions in seq order");
        }
    }

    /// A few commits, far below the writer's own checkpoint mark, still
    /// reach the file itself: the checkpoint thread copies them there.
    #[actix::test]
    async fn commits_are_copied_into_the_file_beside_the_writer() {
        let (dir, store) = migrated_store().await;
        write_acme_payments(&store, 1..=3).await;
        let path = dir.path().join("actions.db");
        // Read through the WAL: the size of the database as of the last commit.
        let bytes: u64 = open(&path)
            .expect("a connection")
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .expect("the database's size");
        let file_len = || std::fs::metadata(&path).expect("the file").len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_len() < bytes && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(file_len(), bytes, "the commits are still only in the WAL");
        assert_eq!(acme_ids(&store).await, ["a1", "a2", "a3"]);
    }

    #[actix::test]
    async fn a_repeated_seq_is_a_conflict_and_the_writer_goes_on() {
        let (_dir, store) = migrated_store().await;
        let first = Action::test_payment("acme", "a1", 1);
        store
            .insert_batch(vec![first.clone()])
            .await
            .expect("written");
        // The same batch again (a retry after it landed) is a no-op...
        store.insert_batch(vec![first]).await.expect("a no-op");
        // ...another action at the same seq is refused whole...
        let conflict = store
            .insert_batch(vec![
                Action::test_payment("acme", "a2", 2),
                Action::test_payment("acme", "other", 1),
            ])
            .await
            .expect_err("seq 1 is taken");
        assert_eq!(conflict.kind(), StoreErrorKind::Conflict, "{conflict}");
        // ...and nothing of that batch landed...
        assert_eq!(acme_ids(&store).await, ["a1"]);
        // ...while the next one does.
        store
            .insert_batch(vec![Action::test_payment("acme", "a2", 2)])
            .await
            .expect("written");
        assert_eq!(acme_ids(&store).await, ["a1", "a2"]);
    }

    #[actix::test]
    async fn only_a_delivered_payment_gives_its_payment_intent_an_owner() {
        let (_dir, store) = migrated_store().await;
        let paid = Action::test_payment("acme", "paid", 1);
        // A refund heard before its payment's success: Stripe knows.
        let refunded_early = Action {
            kind: ActionKind::Refund,
            ..Action::test_payment("acme", "early", 2)
        };
        let failed = Action {
            status: ActionStatus::Failed,
            ..Action::test_payment("acme", "failed", 3)
        };
        store
            .insert_batch(vec![paid.clone(), refunded_early.clone(), failed.clone()])
            .await
            .expect("written");
        let asked = [&paid, &refunded_early, &failed].map(|a| a.external_id.clone());
        let owners = store.owners_of_intents(&asked).await.expect("read");
        let mut found: Vec<_> = owners
            .iter()
            .map(|(pi, o)| (pi.as_str(), o.org_id.as_str()))
            .collect();
        found.sort();
        assert_eq!(found, [("pi_paid", "acme")]);
    }

    #[actix::test]
    async fn a_file_made_with_an_id_primary_key_still_takes_writes_and_refuses_conflicts() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("actions.db");
        // The table as files made before 2026-12-03 have it.
        open(&path)
            .expect("a new file")
            .execute_batch(
                "CREATE TABLE actions (id TEXT PRIMARY KEY, org_id TEXT NOT NULL, seq INTEGER NOT NULL,
                    kind TEXT NOT NULL, status TEXT NOT NULL, sku TEXT NOT NULL, external_id TEXT NOT NULL,
                    event_id TEXT, amount INTEGER NOT NULL, currency TEXT NOT NULL,
                    created_at_ms INTEGER NOT NULL, simulated INTEGER NOT NULL);
                 CREATE UNIQUE INDEX actions_org_seq ON actions (org_id, seq);
                 CREATE INDEX actions_external_id ON actions (external_id);",
            )
            .expect("the old table");
        let store = EmbeddedStore::new(&path);
        store.migrate().await.expect("the old table is kept");
        let first = Action::test_payment("acme", "a1", 1);
        store
            .insert_batch(vec![first.clone()])
            .await
            .expect("written");
        store
            .insert_batch(vec![first])
            .await
            .expect("the same row again: a no-op");
        for refused in [
            Action::test_payment("acme", "other", 1),
            Action::test_payment("acme", "a1", 2),
        ] {
            let conflict = store
                .insert_batch(vec![refused.clone()])
                .await
                .expect_err("seq 1 or id a1 is taken");
            assert_eq!(
                conflict.kind(),
                StoreErrorKind::Conflict,
                "{refused:?}: {conflict}"
            );
        }
        store
            .insert_batch(vec![Action::test_payment("acme", "a2", 2)])
            .await
            .expect("written");
        assert_eq!(acme_ids(&store).await, ["a1", "a2"]);
        // The full PaymentIntent index gave way to the delivered payments' one.
        let indexes: Vec<String> = open(&path)
            .expect("the file")
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
            .expect("a query")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("names");
        assert_eq!(indexes, ["actions_org_seq", "actions_paid_intent"]);
        let owners = store
            .owners_of_intents(&["pi_a2".to_owned()])
            .await
            .expect("read");
        assert_eq!(owners["pi_a2"].org_id, "acme");
    }
}
