//! A lease in a JetStream KV bucket: which node does a job that only one
//! node needs to do (reconciliation with Stripe). It saves work, never
//! guards safety: two holders at once (a paused node waking after its lease
//! expired) only do the job twice, and the job is idempotent.

use async_nats::jetstream::kv;
use bytes::Bytes;

pub struct Lease {
    /// Its entries expire a TTL after their last write (the bucket's max age).
    bucket: kv::Store,
    key: String,
    holder: Bytes,
}

impl Lease {
    pub fn new(bucket: kv::Store, key: &str, holder: String) -> Self {
        Self {
            bucket,
            key: key.to_owned(),
            holder: holder.into_bytes().into(),
        }
    }

    /// Takes the lease if nobody holds it, renews it if we do; `false` when
    /// another node holds it or the bucket cannot be reached.
    pub async fn hold(&self) -> bool {
        match self.bucket.entry(&self.key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                entry.value == self.holder
                    && self
                        .bucket
                        .update(&self.key, self.holder.clone(), entry.revision)
                        .await
                        .is_ok()
            }
            // Never taken, expired or deleted: whoever creates it first holds it.
            Ok(_) => self
                .bucket
                .create(&self.key, self.holder.clone())
                .await
                .is_ok(),
            Err(e) => {
                tracing::debug!(error = %e, "lease bucket unreachable");
                false
            }
        }
    }
}
