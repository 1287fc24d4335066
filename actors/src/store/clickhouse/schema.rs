//! Creating the ClickHouse tables, and moving older layouts to the current one.

use std::time::Duration;

use super::ClickHouseStore;
use crate::store::StoreError;

/// How long building the PaymentIntent index may take: on first start
/// against a large existing table it copies a column of every row.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(600);

impl ClickHouseStore {
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // No version column: copies of one action are identical, so
        // whichever copy the merge keeps is right.
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS `{}` (
                id String,
                org_id String,
                seq UInt64,
                kind String,
                status String,
                sku String,
                external_id String,
                event_id String,
                amount Int64,
                currency String,
                created_at_ms Int64,
                simulated UInt8
            ) ENGINE = ReplacingMergeTree() ORDER BY (org_id, id)",
            self.table
        );
        self.bounded("migrate", self.client.query(&sql).execute())
            .await?;
        self.migrate_intent_owners().await
    }

    /// Refunds and disputes often carry no metadata, so their org is found
    /// from the PaymentIntent. The actions table is sorted by org, so that
    /// lookup would scan it whole; `<table>_intent_owners` keeps each
    /// PaymentIntent's org sorted by PaymentIntent. It is written apart from
    /// the actions (see `IntentIndexer`). When it is missing it is built from
    /// the actions under another name and renamed once complete, so an
    /// interrupted build is redone at the next start; on a large table this
    /// may take up to `BACKFILL_TIMEOUT`.
    async fn migrate_intent_owners(&self) -> Result<(), StoreError> {
        let owners = Self::intent_owners_table(&self.table);
        // EXISTS looks at this one table. A query of `system.tables` lists
        // every table, and on ClickHouse 18.16 fails ("Table ... doesn't
        // exist") when another of them is dropped or renamed meanwhile, as
        // other tests' and services' tables are: a start then failed.
        let exists = self
            .client
            .query(&format!("EXISTS TABLE `{owners}`"))
            .fetch_one::<u8>();
        if self.bounded("migrate", exists).await? == 0 {
            let building = format!("{owners}_building");
            let steps = [
                format!("DROP TABLE IF EXISTS `{building}`"),
                format!(
                    "CREATE TABLE `{building}` (
                        external_id String,
                        org_id String,
                        sku String
                    ) ENGINE = ReplacingMergeTree() ORDER BY external_id"
                ),
                format!(
                    "INSERT INTO `{building}` SELECT external_id, org_id, sku FROM `{}`",
                    self.table
                ),
                format!("RENAME TABLE `{building}` TO `{owners}`"),
            ];
            for sql in steps {
                let step = self.client.query(&sql).execute();
                self.bounded_for("migrate", BACKFILL_TIMEOUT, step).await?;
            }
        }
        // Earlier versions kept this index as a materialized view, which
        // wrote a second part with every INSERT of actions.
        let view = format!("DROP TABLE IF EXISTS `{}_by_intent`", self.table);
        self.bounded("migrate", self.client.query(&view).execute())
            .await
    }

    /// The table of `table`'s PaymentIntent owners.
    pub fn intent_owners_table(table: &str) -> String {
        format!("{table}_intent_owners")
    }
}
