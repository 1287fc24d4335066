//! The PersistenceActor against real stores: whom it refuses, and why.

use super::*;
use crate::persistence::persist;
use crate::store::{ClickHouseSettings, ClickHouseStore, EmbeddedStore};

fn action(org_id: &str, id: &str, seq: u64) -> Action {
    Action::test_payment(org_id, id, seq)
}

/// An actor writing to a fresh embedded store, with room for `max_pending`
/// rows; the directory lives as long as the store is used.
async fn on_embedded(
    max_pending: usize,
    metrics: Metrics,
) -> (tempfile::TempDir, ActionStore, Recipient<Persist>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = ActionStore::Embedded(EmbeddedStore::new(dir.path().join("actions.db")));
    store.migrate().await.expect("create the store");
    let settings = PersistenceSettings {
        batch_max_rows: 100,
        min_interval: Duration::ZERO,
        write_timeout: Duration::from_secs(10),
        max_pending,
    };
    let to = PersistenceActor::new(store.clone(), settings, metrics)
        .start()
        .recipient();
    (dir, store, to)
}

async fn stored_ids(store: &ActionStore, org_id: &str) -> Vec<String> {
    let mut orgs = store
        .actions_of_orgs(&[org_id.to_owned()])
        .await
        .expect("read the store");
    let actions = orgs.remove(org_id).unwrap_or_default();
    actions.into_iter().map(|a| a.id).collect()
}

/// An org actor decides each change against everything it sent before.
/// Once one of its rows is refused, a later row of it that found room
/// would land without the row it assumed: a gap in the org's seqs.
#[actix::test]
async fn a_refused_writers_later_rows_are_refused_even_when_there_is_room() {
    let (_dir, store, to) = on_embedded(1, Metrics::new()).await;
    let (acme, globex) = (OrgActorId::next(), OrgActorId::next());

    // Both are in the mailbox before the actor runs: the first row
    // waits for its write, the second finds no room.
    let first = persist(&to, acme, action("acme", "a1", 1));
    let second = persist(&to, acme, action("acme", "a2", 2));
    assert_eq!(first.await, Ok(()));
    assert_eq!(second.await, Err(PersistError::Overloaded));

    // There is room again, but a3 was decided assuming a2.
    let third = persist(&to, acme, action("acme", "a3", 3)).await;
    assert!(
        matches!(
            third,
            Err(PersistError::Store(StoreError::Unavailable { .. }))
        ),
        "{third:?}"
    );
    // Other writers are not affected; nor is the org's next actor.
    let acme_again = OrgActorId::next();
    assert_eq!(
        persist(&to, globex, action("globex", "g1", 1)).await,
        Ok(())
    );
    assert_eq!(
        persist(&to, acme_again, action("acme", "a2", 2)).await,
        Ok(())
    );

    assert_eq!(stored_ids(&store, "acme").await, ["a1", "a2"]);
    assert_eq!(stored_ids(&store, "globex").await, ["g1"]);
}

/// The same after a failed write: once the backoff is over the store
/// gets another try, but not with a row that assumed the failed one.
#[actix::test]
async fn a_failed_writers_later_rows_never_reach_the_store() {
    // A ClickHouse address nothing listens on: every write fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let store = ClickHouseStore::new(ClickHouseSettings {
        url: format!("http://127.0.0.1:{port}"),
        database: String::new(),
        user: String::new(),
        password: crate::secret::Secret::default(),
        table: "actions".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("valid settings");
    let settings = PersistenceSettings {
        batch_max_rows: 100,
        min_interval: Duration::ZERO,
        write_timeout: Duration::from_secs(5),
        max_pending: 100,
    };
    let addr =
        PersistenceActor::new(ActionStore::ClickHouse(store), settings, Metrics::new()).start();
    let to = addr.clone().recipient();
    let failed_batches = || async {
        addr.send(GetStats)
            .await
            .expect("actor alive")
            .failed_batches
    };
    let (acme, globex) = (OrgActorId::next(), OrgActorId::next());

    let first = persist(&to, acme, action("acme", "a1", 1)).await;
    assert!(
        matches!(
            first,
            Err(PersistError::Store(StoreError::Unavailable { .. }))
        ),
        "{first:?}"
    );
    assert_eq!(failed_batches().await, 1);

    // Past the first backoff (100 ms), a new writer's row is tried...
    tokio::time::sleep(MIN_BACKOFF + Duration::from_millis(50)).await;
    let other = persist(&to, globex, action("globex", "g1", 1)).await;
    assert!(
        matches!(
            other,
            Err(PersistError::Store(StoreError::Unavailable { .. }))
        ),
        "{other:?}"
    );
    assert_eq!(failed_batches().await, 2);

    // ...and past the next one (200 ms), acme's a2 is refused untried.
    tokio::time::sleep(MIN_BACKOFF * 2 + Duration::from_millis(50)).await;
    let second = persist(&to, acme, action("acme", "a2", 2)).await;
    assert!(
        matches!(
            second,
            Err(PersistError::Store(StoreError::Unavailable { .. }))
        ),
        "{second:?}"
    );
    assert_eq!(failed_batches().await, 2, "a2 must not have been written");
}

/// Two actors of one org (the old one still writing as its successor
/// starts) give the same seq: the second is a conflict, not an outage.
#[actix::test]
async fn a_conflict_is_answered_as_one_and_does_not_hold_back_the_store() {
    let metrics = Metrics::new();
    let (_dir, store, to) = on_embedded(100, metrics.clone()).await;
    let (acme, acme_successor, globex) =
        (OrgActorId::next(), OrgActorId::next(), OrgActorId::next());

    let first = persist(&to, acme, action("acme", "a1", 1)).await;
    assert!(matches!(first, Ok(())), "{first:?}");
    let second = persist(&to, acme_successor, action("acme", "b1", 1)).await;
    assert!(
        matches!(&second, Err(PersistError::Store(StoreError::Conflict { org_id, seq: 1, action_id, .. }))
            if org_id == "acme" && action_id == "b1"),
        "{second:?}"
    );
    // The store answers: no backoff holds other writers back.
    let other = persist(&to, globex, action("globex", "g1", 1)).await;
    assert!(matches!(other, Ok(())), "{other:?}");

    assert_eq!(stored_ids(&store, "acme").await, ["a1"]);
    let text = metrics.render();
    assert!(
        text.contains(
            "entitlements_store_errors_by_kind_total{operation=\"write\",kind=\"conflict\"} 1"
        ),
        "{text}"
    );
}
