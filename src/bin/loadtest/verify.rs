//! After the load: every org's actions and entitlements against its model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::script::{self, OrgModel, Product};
use crate::workers::run_jobs;
use crate::Ctx;

/// A GET with the org's token, retried on 503; the JSON body.
pub async fn get_json(ctx: &Ctx, org: &str, path: &str) -> Result<Value, String> {
    let url = format!("{}{path}", ctx.base);
    let token = ctx.token(org);
    let mut backoff = Duration::from_millis(50);
    for _ in 0..ctx.args.max_attempts {
        let res = ctx.client.get(&url).bearer_auth(&token).send().await;
        match res {
            Ok(res) if res.status() == 200 => {
                return res.json().await.map_err(|e| format!("GET {path}: {e}"))
            }
            Ok(res) if res.status() == 503 => {}
            Ok(res) => {
                let status = res.status();
                let text = res.text().await.unwrap_or_default();
                return Err(format!("GET {path} answered {status}: {text}"));
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(format!("GET {path} kept failing"))
}

/// Checks every org's actions and entitlements; returns the seqs read.
pub async fn verify(
    ctx: &Arc<Ctx>,
    prefix: &str,
    products: &[Product],
    models: &[OrgModel],
) -> Vec<Option<u64>> {
    let seqs = Arc::new(Mutex::new(vec![None; models.len()]));
    let check = {
        let (ctx, seqs) = (ctx.clone(), seqs.clone());
        let models = Arc::new(models.to_vec());
        let skus: Arc<Vec<String>> = Arc::new(products.iter().map(|p| p.sku.clone()).collect());
        let prefix = prefix.to_owned();
        move |o: usize| {
            let (ctx, seqs, models, skus) =
                (ctx.clone(), seqs.clone(), models.clone(), skus.clone());
            let org = script::org_id(&prefix, o);
            async move {
                let seq = verify_org(&ctx, &org, &models[o], &skus).await;
                seqs.lock().unwrap()[o] = seq;
            }
        }
    };
    let _ = run_jobs(ctx.args.concurrency.min(models.len()), models.len(), check).await;
    let seqs = seqs.lock().unwrap().clone();
    seqs
}

pub async fn verify_org(ctx: &Ctx, org: &str, model: &OrgModel, skus: &[String]) -> Option<u64> {
    let expected = model.actions.len() as u64;
    let ent = match get_json(ctx, org, "/v1/entitlements").await {
        Ok(v) => v,
        Err(e) => {
            ctx.violation("unexpected_status", 1, || format!("{org}: {e}"));
            return None;
        }
    };
    let actions = match get_json(ctx, org, "/v1/actions?limit=500").await {
        Ok(v) => v["actions"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            ctx.violation("unexpected_status", 1, || format!("{org}: {e}"));
            return None;
        }
    };

    // seq = number of actions.
    let seq = ent["seq"].as_u64();
    if seq != Some(expected) {
        ctx.violation("seq_mismatch", 1, || {
            format!("{org}: seq {}, expected {expected}", ent["seq"])
        });
    }
    // Entitlements equal the model, listing every SKU.
    let got: BTreeMap<String, bool> = ent["entitlements"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false)))
                .collect()
        })
        .unwrap_or_default();
    let listed: HashSet<&String> = got.keys().collect();
    if got != model.entitlements || skus.iter().any(|s| !listed.contains(s)) {
        ctx.violation("wrong_entitlements", 1, || {
            format!("{org}: {:?}, expected {:?}", got, model.entitlements)
        });
    }

    // Actions: none lost, none doubled, none unexpected, fields right.
    let mut by_id: HashMap<&str, u32> = HashMap::new();
    let mut by_event: HashMap<&str, u32> = HashMap::new();
    let mut delivered_by_pi: HashMap<&str, u32> = HashMap::new();
    let mut seqs: Vec<u64> = Vec::new();
    for a in &actions {
        let id = a["id"].as_str().unwrap_or("");
        *by_id.entry(id).or_default() += 1;
        if let Some(e) = a["eventId"].as_str() {
            *by_event.entry(e).or_default() += 1;
        }
        if a["kind"] == "payment" && a["status"] == "delivered" {
            *delivered_by_pi
                .entry(a["externalId"].as_str().unwrap_or(""))
                .or_default() += 1;
        }
        seqs.push(a["seq"].as_u64().unwrap_or(0));
        match model.actions.get(id) {
            None => ctx.violation("unexpected_action", 1, || format!("{org}: {a}")),
            Some(x) => {
                let event_ok = a["eventId"]
                    .as_str()
                    .is_some_and(|e| x.event_ids.contains(e));
                if a["kind"] != x.kind
                    || a["status"] != x.status
                    || a["sku"] != x.sku.as_str()
                    || a["externalId"] != x.external_id.as_str()
                    || !event_ok
                {
                    ctx.violation("wrong_action", 1, || format!("{org}: {a}, expected {x:?}"));
                }
            }
        }
    }
    let doubled = by_id.values().filter(|&&n| n > 1).count()
        + by_event.values().filter(|&&n| n > 1).count()
        + delivered_by_pi.values().filter(|&&n| n > 1).count();
    ctx.violation("doubled", doubled as u64, || {
        format!("{org}: an action, event or PaymentIntent recorded twice: {actions:?}")
    });
    let lost: Vec<&String> = model
        .actions
        .keys()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    ctx.violation("lost", lost.len() as u64, || {
        format!("{org}: missing {lost:?}")
    });
    seqs.sort_unstable();
    if doubled == 0 && seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
        ctx.violation("seq_mismatch", 1, || {
            format!("{org}: action seqs are not 1..={}: {seqs:?}", seqs.len())
        });
    }
    seq
}
