//! The Stripe catalog: each configured product exists in Stripe as a
//! Product whose id is its SKU, with one active Price of its amount and
//! currency whose `lookup_key` is the SKU.
//!
//! Several nodes may start at once. The Product cannot be made twice (its id
//! is fixed), and a new Price is created with an idempotency key made of
//! what it replaces, so nodes that see the same catalog send the same
//! request and Stripe makes one Price.

use miniserde::json::{Number, Object, Value};
use sha2::{Digest, Sha256};
use stripe_client_core::{RequestBuilder, RequestStrategy, StripeMethod};

use crate::stripe_api::{str_field, StripeApi, StripeError};

/// One pack for sale, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub amount: i64,
    pub currency: String,
}

/// An active Price of a Product, as Stripe lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceRecord {
    pub id: String,
    pub unit_amount: Option<i64>,
    pub currency: String,
    pub lookup_key: Option<String>,
}

/// What to do with a Product's active Prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PricePlan {
    /// This Price is right; the others are deactivated.
    Keep {
        price_id: String,
        deactivate: Vec<String>,
    },
    /// No Price is right: create one, then deactivate these.
    Create { deactivate: Vec<String> },
}

/// The rule: the Price to use carries the SKU as `lookup_key` and the
/// product's amount and currency; every other active Price of the Product
/// is an old one (a changed amount, or a node stopped between creating a
/// Price and deactivating the one before).
pub fn plan(product: &Product, active: &[PriceRecord]) -> PricePlan {
    let right = |p: &&PriceRecord| {
        p.lookup_key.as_deref() == Some(product.sku.as_str())
            && p.unit_amount == Some(product.amount)
            && p.currency.eq_ignore_ascii_case(&product.currency)
    };
    let keep = active.iter().find(right).map(|p| p.id.clone());
    let deactivate = active
        .iter()
        .filter(|p| Some(&p.id) != keep.as_ref())
        .map(|p| p.id.clone())
        .collect();
    match keep {
        Some(price_id) => PricePlan::Keep {
            price_id,
            deactivate,
        },
        None => PricePlan::Create { deactivate },
    }
}

/// The idempotency key of a Price's creation: the product's terms and the
/// Prices it replaces. Nodes that see the same catalog make one Price;
/// going back to an earlier amount (whose Price is now inactive) replaces
/// other Prices, so it gets a new key and a new Price.
pub fn creation_key(product: &Product, replaced: &[String]) -> String {
    let mut replaced = replaced.to_vec();
    replaced.sort();
    let mut hash = Sha256::new();
    for part in [&product.sku, &product.amount.to_string(), &product.currency] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for id in &replaced {
        hash.update(id.as_bytes());
        hash.update([0]);
    }
    format!("entitlements-price-{}", hex::encode(hash.finalize()))
}

#[derive(serde::Serialize)]
struct NewProduct<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(serde::Serialize)]
struct ProductUpdate<'a> {
    name: &'a str,
    active: bool,
}

#[derive(serde::Serialize)]
struct ActivePricesOf<'a> {
    product: &'a str,
    active: bool,
    limit: u32,
}

#[derive(serde::Serialize)]
struct NewPrice<'a> {
    product: &'a str,
    unit_amount: i64,
    currency: &'a str,
    lookup_key: &'a str,
    transfer_lookup_key: bool,
}

#[derive(serde::Serialize)]
struct Deactivate {
    active: bool,
}

/// Brings one product's Product and Price into place; answers the Price id.
pub async fn ensure_product(api: &StripeApi, product: &Product) -> Result<String, StripeError> {
    ensure_product_object(api, product).await?;
    let listed = api
        .call_json(
            RequestBuilder::new(StripeMethod::Get, "/prices").query(&ActivePricesOf {
                product: &product.sku,
                active: true,
                limit: 100,
            }),
            RequestStrategy::Once,
        )
        .await?;
    let active = price_records(&listed)?;
    let (price_id, deactivate) = match plan(product, &active) {
        PricePlan::Keep {
            price_id,
            deactivate,
        } => (price_id, deactivate),
        PricePlan::Create { deactivate } => {
            let key = creation_key(product, &deactivate);
            let key = stripe_client_core::IdempotencyKey::new(key)
                .map_err(|e| StripeError::new(format!("bad idempotency key: {e}")))?;
            let created = api
                .call_json(
                    RequestBuilder::new(StripeMethod::Post, "/prices").form(&NewPrice {
                        product: &product.sku,
                        unit_amount: product.amount,
                        currency: &product.currency,
                        lookup_key: &product.sku,
                        transfer_lookup_key: true,
                    }),
                    RequestStrategy::Idempotent(key),
                )
                .await?;
            let id = str_field(&created, "id")
                .ok_or_else(|| StripeError::new("Stripe created a Price without an id"))?;
            tracing::info!(sku = %product.sku, price_id = %id, amount = product.amount, "Stripe price created");
            (id.to_owned(), deactivate)
        }
    };
    for old in deactivate {
        api.call_json(
            RequestBuilder::new(StripeMethod::Post, format!("/prices/{old}"))
                .form(&Deactivate { active: false }),
            RequestStrategy::Once,
        )
        .await?;
        tracing::info!(sku = %product.sku, price_id = %old, "old Stripe price deactivated");
    }
    Ok(price_id)
}

/// The Product whose id is the SKU, created if missing, its name and
/// `active` brought to the config's.
async fn ensure_product_object(api: &StripeApi, product: &Product) -> Result<(), StripeError> {
    let path = format!("/products/{}", product.sku);
    let existing = match api
        .call_json(
            RequestBuilder::new(StripeMethod::Get, path.clone()),
            RequestStrategy::Once,
        )
        .await
    {
        Ok(existing) => existing,
        Err(e) if e.status == Some(404) => {
            let create = RequestBuilder::new(StripeMethod::Post, "/products").form(&NewProduct {
                id: &product.sku,
                name: &product.name,
            });
            match api.call_json(create, RequestStrategy::Once).await {
                Ok(_) => {
                    tracing::info!(sku = %product.sku, "Stripe product created");
                    return Ok(());
                }
                // Another node created it first (Stripe answers 400
                // `resource_already_exists`): read what it made.
                Err(create_error) => {
                    match api
                        .call_json(
                            RequestBuilder::new(StripeMethod::Get, path.clone()),
                            RequestStrategy::Once,
                        )
                        .await
                    {
                        Ok(existing) => existing,
                        Err(_) => return Err(create_error),
                    }
                }
            }
        }
        Err(e) => return Err(e),
    };
    let up_to_date = str_field(&existing, "name") == Some(product.name.as_str())
        && matches!(existing.get("active"), Some(Value::Bool(true)));
    if !up_to_date {
        let update = RequestBuilder::new(StripeMethod::Post, path).form(&ProductUpdate {
            name: &product.name,
            active: true,
        });
        api.call_json(update, RequestStrategy::Once).await?;
        tracing::info!(sku = %product.sku, "Stripe product updated");
    }
    Ok(())
}

fn price_records(list: &Object) -> Result<Vec<PriceRecord>, StripeError> {
    let Some(Value::Array(data)) = list.get("data") else {
        return Err(StripeError::new("the price list has no data"));
    };
    if matches!(list.get("has_more"), Some(Value::Bool(true))) {
        // 100 active Prices on one of our Products is not a state this
        // service makes; refuse to guess which ones are old.
        return Err(StripeError::new(
            "more than 100 active prices on one product",
        ));
    }
    data.iter()
        .map(|price| {
            let Value::Object(price) = price else {
                return Err(StripeError::new("a listed price is not an object"));
            };
            let id = str_field(price, "id")
                .ok_or_else(|| StripeError::new("a listed price has no id"))?;
            let unit_amount = match price.get("unit_amount") {
                Some(Value::Number(Number::U64(n))) => i64::try_from(*n).ok(),
                Some(Value::Number(Number::I64(n))) => Some(*n),
                _ => None,
            };
            Ok(PriceRecord {
                id: id.to_owned(),
                unit_amount,
                currency: str_field(price, "currency").unwrap_or_default().to_owned(),
                lookup_key: str_field(price, "lookup_key").map(str::to_owned),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(amount: i64) -> Product {
        Product {
            sku: "compliance-pack".into(),
            name: "Compliance Pack".into(),
            amount,
            currency: "usd".into(),
        }
    }

    fn price(id: &str, amount: i64, lookup_key: Option<&str>) -> PriceRecord {
        PriceRecord {
            id: id.into(),
            unit_amount: Some(amount),
            currency: "usd".into(),
            lookup_key: lookup_key.map(Into::into),
        }
    }

    #[test]
    fn no_price_yet_creates_one() {
        assert_eq!(
            plan(&product(99900), &[]),
            PricePlan::Create { deactivate: vec![] }
        );
    }

    #[test]
    fn the_right_price_is_kept() {
        let active = [price("price_a", 99900, Some("compliance-pack"))];
        assert_eq!(
            plan(&product(99900), &active),
            PricePlan::Keep {
                price_id: "price_a".into(),
                deactivate: vec![]
            }
        );
    }

    #[test]
    fn a_changed_amount_replaces_the_old_price() {
        let active = [price("price_a", 99900, Some("compliance-pack"))];
        assert_eq!(
            plan(&product(120000), &active),
            PricePlan::Create {
                deactivate: vec!["price_a".into()]
            }
        );
    }

    #[test]
    fn old_prices_left_active_are_deactivated() {
        // A node stopped after creating price_b and before deactivating
        // price_a: price_a lost the lookup key to price_b.
        let active = [
            price("price_b", 120000, Some("compliance-pack")),
            price("price_a", 99900, None),
        ];
        assert_eq!(
            plan(&product(120000), &active),
            PricePlan::Keep {
                price_id: "price_b".into(),
                deactivate: vec!["price_a".into()]
            }
        );
    }

    #[test]
    fn a_price_of_the_right_amount_without_the_lookup_key_is_not_ours() {
        let active = [price("price_a", 99900, None)];
        assert_eq!(
            plan(&product(99900), &active),
            PricePlan::Create {
                deactivate: vec!["price_a".into()]
            }
        );
    }

    #[test]
    fn currency_counts() {
        let mut eur = price("price_a", 99900, Some("compliance-pack"));
        eur.currency = "eur".into();
        assert!(matches!(
            plan(&product(99900), &[eur]),
            PricePlan::Create { .. }
        ));
    }

    #[test]
    fn creation_keys_are_shared_by_nodes_and_change_with_what_is_replaced() {
        let a = creation_key(&product(99900), &["price_x".into(), "price_y".into()]);
        let b = creation_key(&product(99900), &["price_y".into(), "price_x".into()]);
        assert_eq!(a, b, "the order of the listing does not matter");
        assert_ne!(a, creation_key(&product(99900), &[]));
        assert_ne!(
            a,
            creation_key(&product(120000), &["price_x".into(), "price_y".into()])
        );
        assert!(a.len() <= 255, "Stripe's limit for idempotency keys");
    }
}
