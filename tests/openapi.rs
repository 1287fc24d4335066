//! `GET /openapi.json` against the running service: it is OpenAPI 3.x, every
//! operation it documents exists, every contract endpoint is in it with its
//! statuses, auth and headers, and real answers match its schemas.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The contract's endpoints (CONTRACT.md) and `/openapi.json`, each with every
/// status the document must give it.
const CONTRACT: &[(&str, &str, &[u16])] = &[
    ("get", "/", &[200]),
    ("get", "/healthz", &[200]),
    ("get", "/readyz", &[200, 503]),
    ("get", "/metrics", &[200]),
    ("get", "/openapi.json", &[200]),
    ("get", "/v1/billing/products", &[200, 401, 503]),
    (
        "post",
        "/v1/billing/payment-intents",
        &[200, 400, 401, 409, 502, 503],
    ),
    (
        "post",
        "/v1/billing/simulate-success",
        &[200, 400, 401, 404, 503],
    ),
    ("get", "/v1/entitlements", &[200, 401, 503]),
    ("get", "/v1/actions", &[200, 400, 401, 503]),
    ("get", "/v1/stream", &[200, 401, 503]),
    ("post", "/webhooks/stripe", &[200, 400, 408, 413, 503]),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every test is bounded: nothing here may hang.
async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, test: F) {
    tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"));
}

async fn document(app: &TestApp) -> Value {
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let content_type = content_type(&res);
    assert!(
        content_type.starts_with("application/json"),
        "content-type is {content_type:?}"
    );
    res.json().await.unwrap()
}

fn content_type(res: &reqwest::Response) -> String {
    res.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// (method, path) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    op
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => schema,
    }
}

/// The schema of an operation's JSON answer with `status`.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response = &operation(doc, method, path)["responses"][status.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} documents no JSON body for {status}: {response}"
    );
    schema
}

/// Fails with a message unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Checks `value` against `schema`, as far as the document's schemas go:
/// types, enums, required and unknown properties, items and map values.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alternatives) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
        let errors: Vec<String> = alternatives
            .as_array()
            .unwrap()
            .iter()
            .map_while(|alternative| check(doc, alternative, value, at).err())
            .collect();
        ensure!(
            errors.len() < alternatives.as_array().unwrap().len(),
            "{at}: {value} matches no alternative: {errors:?}"
        );
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, part, value, at)?;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        ensure!(
            allowed.contains(value),
            "{at}: {value} is not one of {allowed:?}"
        );
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
        _ => return Ok(()),
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    ensure!(
        types.contains(&actual) || (actual == "integer" && types.contains(&"number")),
        "{at}: {value} is {actual}, the document says {types:?}"
    );
    if let (Some(minimum), Some(v)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if v < minimum {
            return Err(format!("{at}: {value} is below {minimum}"));
        }
    }
    match value {
        Value::Object(object) => {
            let properties = schema["properties"].as_object();
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                ensure!(
                    object.contains_key(key),
                    "{at}: required `{key}` is missing from {value}"
                );
            }
            let additional = &schema["additionalProperties"];
            for (key, v) in object {
                let at = format!("{at}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => check(doc, property, v, &at)?,
                    None if additional.is_object() => check(doc, additional, v, &at)?,
                    None => ensure!(
                        properties.is_none() || *additional == Value::Bool(true),
                        "{at}: `{key}` is not documented"
                    ),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn assert_matches(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Err(e) = check(doc, schema, value, at) {
        panic!("{e}");
    }
}

/// Checks an answer's status and JSON body against the document.
async fn check_answer(doc: &Value, method: &str, path: &str, res: reqwest::Response) -> Value {
    let status = res.status().as_u16();
    let responses = &operation(doc, method, path)["responses"];
    assert!(
        responses.get(status.to_string()).is_some(),
        "{method} {path} answered {status}, which the document does not give it"
    );
    let body: Value = res.json().await.unwrap();
    assert_matches(
        doc,
        response_schema(doc, method, path, status),
        &body,
        &format!("{method} {path} {status}"),
    );
    body
}

#[tokio::test]
async fn the_document_is_openapi_3() {
    bounded(30, async {
        let app = spawn(&[]).await;
        let doc = document(&app).await;
        let version = doc["openapi"].as_str().expect("`openapi` is a string");
        assert!(version.starts_with("3."), "openapi is {version}");
        assert_eq!(doc["info"]["title"], "entitlements");
        assert!(doc["info"]["version"].is_string());
        // Every $ref points into the document.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r.clone());
                    }
                    o.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("local $ref");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    })
    .await;
}

/// Sends a minimal request for a documented operation, authenticated.
async fn request(app: &TestApp, method: &str, path: &str) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = app
        .client
        .request(method.clone(), app.url(path))
        .bearer_auth(app.token("acme"));
    if method == reqwest::Method::POST {
        req = req.json(&json!({ "sku": SKU }));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_documented_operation_exists() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let doc = document(&app).await;
        let ops = operations(&doc);
        assert!(!ops.is_empty());
        for (method, path) in &ops {
            let res = request(&app, method, path).await;
            let status = res.status().as_u16();
            // The stream answers with headers and then stays open: drop it.
            if path != "/v1/stream" {
                let body = res.text().await.unwrap();
                assert!(
                    status != 404 && status != 405,
                    "{method} {path} is documented but answers {status}: {body}"
                );
            } else {
                assert_eq!(status, 200, "{method} {path}");
                drop(res);
            }
        }
        // The methods a path does not document are not served either.
        let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
        for path in paths {
            for method in ["put", "delete", "patch"] {
                if ops.contains(&(method.to_owned(), path.clone())) {
                    continue;
                }
                let res = request(&app, method, path).await;
                assert_eq!(res.status(), 405, "{method} {path} is not documented");
                // RFC 9110: a 405 names the methods the path answers.
                let documented: BTreeSet<String> = ops
                    .iter()
                    .filter(|(_, p)| p == path)
                    .map(|(m, _)| m.to_uppercase())
                    .collect();
                let allow = res
                    .headers()
                    .get("allow")
                    .map(|v| v.to_str().unwrap().to_owned());
                let allowed: BTreeSet<String> = allow
                    .as_deref()
                    .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .collect();
                assert_eq!(allowed, documented, "{method} {path}: Allow");
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"]["code"], "method_not_allowed");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_path_not_in_the_document_is_not_found() {
    bounded(30, async {
        let app = spawn(&[]).await;
        let doc = document(&app).await;
        assert!(doc["paths"].get("/v1/nope").is_none());
        let res = request(&app, "get", "/v1/nope").await;
        assert_eq!(res.status(), 404);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert_matches(
            &doc,
            &json!({"$ref": "#/components/schemas/ErrorBody"}),
            &body,
            "GET /v1/nope",
        );
    })
    .await;
}

#[tokio::test]
async fn every_contract_endpoint_is_documented_with_its_statuses() {
    bounded(30, async {
        let app = spawn(&[]).await;
        let doc = document(&app).await;
        let documented = operations(&doc);
        let contract: BTreeSet<(String, String)> = CONTRACT
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(
            documented, contract,
            "the document's operations differ from the contract's endpoints"
        );
        for (method, path, statuses) in CONTRACT {
            let op = operation(&doc, method, path);
            let got: BTreeSet<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|s| s.parse().unwrap())
                .collect();
            let want: BTreeSet<u16> = statuses.iter().copied().collect();
            assert_eq!(got, want, "{method} {path}: documented statuses");
            for status in got.iter().filter(|s| **s >= 300) {
                let schema = response_schema(&doc, method, path, *status);
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {status} is not the error envelope"
                );
            }
            if path.starts_with("/v1/") {
                let security = op["security"].as_array().expect("security");
                assert!(
                    security.iter().any(|s| s.get("bearerAuth").is_some()),
                    "{method} {path} does not ask for the bearer token"
                );
            }
        }
        // The error envelope: {"error": {"code", "message"}}.
        let envelope = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(envelope["required"], json!(["error"]));
        let detail = resolve(&doc, &envelope["properties"]["error"]);
        assert_eq!(detail["required"], json!(["code", "message"]));
        assert_eq!(detail["properties"]["code"]["type"], "string");
        assert_eq!(detail["properties"]["message"]["type"], "string");
        // Request bodies.
        for path in [
            "/v1/billing/payment-intents",
            "/v1/billing/simulate-success",
        ] {
            let body = &operation(&doc, "post", path)["requestBody"];
            assert_eq!(body["required"], true, "{path}");
            let schema = resolve(&doc, &body["content"]["application/json"]["schema"]);
            assert_eq!(schema["required"], json!(["sku"]), "{path}");
        }
        let webhook = &operation(&doc, "post", "/webhooks/stripe")["requestBody"];
        assert!(webhook["content"]["application/json"]["schema"].is_object());
        let limit = operation(&doc, "get", "/v1/actions")["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .expect("the `limit` parameter");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 500);
        assert_eq!(limit["schema"]["default"], 50);
    })
    .await;
}

fn parameter<'a>(doc: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    operation(doc, method, path)["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} documents no `{name}` parameter"))
}

#[tokio::test]
async fn auth_headers_and_media_types_are_documented() {
    bounded(30, async {
        let app = spawn(&[]).await;
        let doc = document(&app).await;
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearerAuth"]["type"], "http");
        assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
        assert_eq!(schemes["bearerAuth"]["bearerFormat"], "JWT");
        assert_eq!(schemes["accessToken"]["type"], "apiKey");
        assert_eq!(schemes["accessToken"]["in"], "query");
        assert_eq!(schemes["accessToken"]["name"], "access_token");

        // The stream: the header or `?access_token=`, `Last-Event-ID`, SSE.
        let stream = operation(&doc, "get", "/v1/stream");
        let security = stream["security"].as_array().unwrap();
        assert!(security.iter().any(|s| s.get("bearerAuth").is_some()));
        assert!(security.iter().any(|s| s.get("accessToken").is_some()));
        assert_eq!(
            parameter(&doc, "get", "/v1/stream", "Last-Event-ID")["in"],
            "header"
        );
        assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());

        // The webhook: Stripe-Signature, no bearer token.
        let signature = parameter(&doc, "post", "/webhooks/stripe", "Stripe-Signature");
        assert_eq!(signature["in"], "header");
        assert_eq!(signature["required"], true);
        // A fixed signature is always outside the tolerance: offering one
        // as an example would offer a request that cannot work.
        assert!(
            signature.get("example").is_none()
                && signature["schema"].get("example").is_none()
                && signature.get("examples").is_none(),
            "{signature}"
        );

        // Every `sku` a request takes is one of the configured SKUs.
        let sku_body = &doc["components"]["schemas"]["SkuBody"];
        assert_eq!(
            sku_body["properties"]["sku"]["enum"],
            json!([SKU, OTHER_SKU])
        );
        for path in [
            "/v1/billing/payment-intents",
            "/v1/billing/simulate-success",
        ] {
            let body = &operation(&doc, "post", path)["requestBody"]["content"]["application/json"]
                ["schema"];
            assert_eq!(resolve(&doc, body), sku_body, "POST {path}");
        }

        // Each stream event as a client parses it: `event`, `id`, JSON `data`.
        let event = resolve(
            &doc,
            &stream["responses"]["200"]["content"]["text/event-stream"]["schema"],
        );
        let names = resolve(&doc, &event["properties"]["event"]);
        assert_eq!(
            names["enum"],
            json!([
                "org.entitlements.snapshot",
                "org.entitlements.changed",
                "org.payment.failed"
            ])
        );
        assert_eq!(
            event["properties"]["data"]["contentMediaType"],
            "application/json"
        );
        assert!(operation(&doc, "post", "/webhooks/stripe")
            .get("security")
            .is_none());

        // Media types, as documented and as served.
        for (path, media) in [
            ("/", "text/html"),
            ("/metrics", "application/openmetrics-text"),
            ("/v1/stream", "text/event-stream"),
            ("/openapi.json", "application/json"),
            ("/healthz", "application/json"),
        ] {
            let content = operation(&doc, "get", path)["responses"]["200"]["content"]
                .as_object()
                .unwrap();
            let documented: Vec<&String> = content.keys().collect();
            assert!(
                documented.iter().all(|m| m.starts_with(media)),
                "GET {path} documents {documented:?}, expected {media}"
            );
            let res = request(&app, "get", path).await;
            assert_eq!(res.status(), 200, "GET {path}");
            let served = content_type(&res);
            assert!(
                served.starts_with(media),
                "GET {path} serves {served:?}, documented {media}"
            );
        }
    })
    .await;
}

/// The first `n` events of a stream, as (event, data).
async fn events(res: reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an event within 10s")
            .expect("the stream is open")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).unwrap());
                }
            }
            if let (Some(event), Some(data)) = (event, data) {
                out.push((event, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn answers_match_the_documented_schemas() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let doc = document(&app).await;
        let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });

        // The stream's events, while the org buys, pays and fails a payment.
        let stream = app
            .client
            .get(app.url(&format!("/v1/stream?access_token={}", app.token("acme"))))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);

        let res = app
            .post(
                "acme",
                "/v1/billing/simulate-success",
                json!({ "sku": SKU }),
            )
            .await;
        check_answer(&doc, "post", "/v1/billing/simulate-success", res).await;
        let res = app
            .webhook(&failed("evt_failed", "pi_failed", "acme"))
            .await;
        let body = check_answer(&doc, "post", "/webhooks/stripe", res).await;
        assert_eq!(body, json!({ "received": true }));

        let events = events(stream, 3).await;
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "org.entitlements.snapshot",
                "org.entitlements.changed",
                "org.payment.failed"
            ]
        );
        for ((event, data), name) in
            events
                .iter()
                .zip(["Snapshot", "EntitlementsChanged", "PaymentFailed"])
        {
            assert_matches(&doc, &schema(name), data, event);
        }

        // Every JSON answer of the API, successes and errors.
        for (method, path, body) in [
            ("get", "/healthz", None),
            ("get", "/readyz", None),
            ("get", "/v1/billing/products", None),
            ("get", "/v1/entitlements", None),
            ("get", "/v1/actions", None),
            ("get", "/v1/actions?limit=0", None),
            (
                "post",
                "/v1/billing/payment-intents",
                Some(json!({ "sku": SKU })),
            ),
            (
                "post",
                "/v1/billing/payment-intents",
                Some(json!({ "sku": "nope" })),
            ),
            (
                "post",
                "/v1/billing/payment-intents",
                Some(json!({ "sku": OTHER_SKU })),
            ),
            (
                "post",
                "/v1/billing/simulate-success",
                Some(json!({ "sku": "nope" })),
            ),
            ("post", "/v1/billing/simulate-success", Some(json!({}))),
        ] {
            let res = match body {
                None => app.get("acme", path).await,
                Some(body) => app.post("acme", path, body).await,
            };
            let documented = path.split('?').next().unwrap();
            check_answer(&doc, method, documented, res).await;
        }
        let actions = app.actions("acme").await;
        assert_eq!(actions.len(), 2, "a payment and a failed payment");

        // Without a token.
        for path in ["/v1/entitlements", "/v1/stream"] {
            let res = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(res.status(), 401);
            check_answer(&doc, "get", path, res).await;
        }
        // The webhook's refusals.
        let res = app.webhook_raw(b"{}".to_vec(), None).await;
        assert_eq!(res.status(), 400);
        check_answer(&doc, "post", "/webhooks/stripe", res).await;
        let big = vec![b' '; app.settings.server.max_body_bytes + 1];
        let res = app.webhook_raw(big, None).await;
        assert_eq!(res.status(), 413);
        check_answer(&doc, "post", "/webhooks/stripe", res).await;
    })
    .await;
}
