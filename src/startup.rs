//! Building the application: the store, the actors, and the HTTP server
//! that routes requests to them.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, ArbiterHandle, AsyncContext};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use actors::ask::Bounded;
use actors::directory::OrgDirectory;
use actors::drain::Drain;
use actors::follower;
use actors::intent_indexer::IntentIndexer;
use actors::lease::Lease;
use actors::live_intents::LiveIntents;
use actors::metrics::Metrics;
use actors::org::{OrgDeps, OrgSettings, Product};
use actors::persistence::{PersistenceActor, PersistenceSettings};
use actors::projection::Projection;
use actors::reconciler::Reconciler;
use actors::scheduling;
use actors::sse_hub::{SseHub, SubscribedOrgs};
use actors::store::{
    ActionStore, ClickHouseSettings, ClickHouseStore, EmbeddedStore, JetStreamSettings,
    JetStreamStore,
};
use actors::store_reader::StoreReader;
use actors::stripe::{StripeActor, StripeApi, StripeSettings};
use tokio::sync::watch;

use crate::configuration::{Backend, Settings};
use crate::routes;

/// What every request handler can reach: actor addresses and settings.
pub struct AppState {
    pub settings: Settings,
    /// Turns true when the service is stopping: open streams end, so that
    /// a graceful stop is not held up by browsers (they resume elsewhere).
    pub closing: watch::Receiver<bool>,
    pub products: Arc<[Product]>,
    pub directory: OrgDirectory,
    pub hub: Addr<SseHub>,
    pub persistence: Addr<PersistenceActor>,
    pub metrics: Metrics,
    /// `GET /openapi.json`, rendered with the configured SKUs.
    pub openapi: String,
}

pub struct Application {
    port: u16,
    server: Server,
    stopper: Stopper,
    persistence: Addr<PersistenceActor>,
    intent_indexer: Option<Addr<IntentIndexer>>,
    org_arbiters: Vec<ArbiterHandle>,
    /// Many nodes: stops the stream follower and the ClickHouse projection.
    stream_tasks: watch::Sender<bool>,
    projection: Option<tokio::task::JoinHandle<()>>,
}

/// Time a store operation may take before it counts as failed; keeps a
/// writer's 503 within a few seconds when the store is down.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);
const STRIPE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often new PaymentIntent owners are written to ClickHouse's index.
const INTENT_INDEX_EVERY: Duration = Duration::from_secs(1);

impl Application {
    /// Opens the store, starts the actors and binds the listener. Must run
    /// inside an actix System. Fails, starting nothing, when the store
    /// cannot be prepared.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = open_store(&settings).await?;
        let metrics = Metrics::new();
        let stripe_settings = StripeSettings {
            secret_key: settings.stripe.secret_key.clone(),
            api_base: settings.stripe.api_base.clone(),
            timeout: STRIPE_TIMEOUT,
        };
        let stripe_api = StripeApi::new(&stripe_settings)?;
        store.migrate().await?;

        let listener = TcpListener::bind(&settings.server.bind)?;
        let port = listener.local_addr()?.port();

        let batch_max_rows = settings.persistence.batch_max_rows;
        // ClickHouse wants few, large queries; SQLite's are cheap.
        let query_spacing = match settings.store.backend {
            Backend::ClickHouse => Duration::from_millis(settings.persistence.batch_max_ms),
            Backend::Embedded | Backend::JetStream => Duration::ZERO,
        };
        let persistence_settings = PersistenceSettings {
            batch_max_rows,
            min_interval: query_spacing,
            write_timeout: STORE_TIMEOUT,
            max_pending: batch_max_rows * 8,
        };
        // ClickHouse's actions table is sorted by org: PaymentIntent owners
        // are indexed apart, off the path of a webhook's 200.
        let intent_indexer = match &store {
            ActionStore::ClickHouse(clickhouse) => {
                Some(IntentIndexer::new(clickhouse.clone(), INTENT_INDEX_EVERY).start())
            }
            ActionStore::Embedded(_) | ActionStore::JetStream(_) => None,
        };
        // Org actors live on their own threads, one per core, so that
        // HTTP workers only parse and route. Woken for nearly every webhook,
        // they do not preempt the HTTP workers (`scheduling`).
        let arbiters: Vec<ArbiterHandle> = (0..std::thread::available_parallelism()
            .map_or(2, |n| n.get()))
            .map(|i| scheduling::hand_off_arbiter(format!("org-arbiter-{i}")))
            .collect();
        let persistence = {
            let (store, metrics) = (store.clone(), metrics.clone());
            let intent_index = intent_indexer.clone().map(Addr::recipient);
            // Rows reach it with do_send, past any mailbox capacity: what
            // bounds them is `max_pending` (rows waiting beyond it are
            // answered Overloaded) and, before that, the requests in flight,
            // each of which has at most one row queued.
            //
            // On the first org thread: the rows of that thread's orgs, and
            // their answers, then cross no thread. Its own work is light
            // (batching; the store's I/O is elsewhere or async), but it waits
            // behind those org actors' work (a burst of org loads, say), and
            // on ClickHouse its INSERTs' connections are driven from that
            // thread. Measured in five alternated pairs on 2026-12-03 (the
            // embedded store): every one faster, 1 to 3 µs less service CPU
            // per webhook than on the main thread.
            PersistenceActor::start_in_arbiter(&arbiters[0], move |_| {
                let actor = PersistenceActor::new(store, persistence_settings, metrics);
                match intent_index {
                    Some(index) => actor.with_intent_index(index),
                    None => actor,
                }
            })
        };
        let client_queue = settings.sse.client_queue;
        let hub_metrics = metrics.clone();
        let subscribed = SubscribedOrgs::default();
        let hub = SseHub::new(client_queue, subscribed.clone(), hub_metrics).start();

        let products: Arc<[Product]> = settings
            .products
            .iter()
            .map(|p| Product {
                sku: p.sku.clone(),
                name: p.name.clone(),
                amount: p.amount,
                currency: p.currency.clone(),
            })
            .collect();
        let org_settings = OrgSettings {
            products: products.clone(),
            mailbox: settings.orgs.mailbox,
            idle_stop: Duration::from_secs(settings.orgs.idle_stop_secs),
            recent_events: 256,
            max_replay: 10_000,
        };

        // Thousands of orgs starting at once queue here; beyond that a read
        // fails fast (503) rather than growing without bound.
        let reader =
            StoreReader::new(store.clone(), query_spacing, 16 * 1024, metrics.clone()).start();

        let mut directory = None;
        let stripe = {
            let (store, persistence, hub) = (store.clone(), persistence.clone(), hub.clone());
            StripeActor::create(|ctx| {
                let deps = OrgDeps {
                    store: store.clone(),
                    loader: reader.clone().recipient(),
                    persistence: persistence.recipient(),
                    hub: hub.recipient(),
                    stripe: ctx.address().recipient(),
                    settings: org_settings,
                    metrics: metrics.clone(),
                    live_intents: LiveIntents::default(),
                    subscribed,
                };
                let dir = OrgDirectory::new(deps, arbiters.clone());
                directory = Some(dir.clone());
                StripeActor::new(
                    stripe_api.clone(),
                    dir,
                    reader.clone().recipient(),
                    metrics.clone(),
                )
                .with_catalog(products.clone())
            })
        };
        let stripe_mailbox = settings.orgs.mailbox * 16;
        let directory = directory.expect("set while creating the StripeActor");
        if settings.stripe.reconcile_interval_secs > 0 {
            let interval = Duration::from_secs(settings.stripe.reconcile_interval_secs);
            let stripe = Bounded::new(stripe, stripe_mailbox);
            let (api, store, metrics) = (stripe_api.clone(), store.clone(), metrics.clone());
            let mut reconciler = Reconciler::new(api, stripe, store.clone(), interval, metrics);
            if let ActionStore::JetStream(js) = &store {
                // Held across passes; lost two intervals after its holder stops.
                let bucket = js.leases(interval * 2).await?;
                let holder = format!("{}:{port}", std::process::id());
                reconciler = reconciler.with_lease(Lease::new(bucket, "reconciler", holder));
            }
            reconciler.start();
        }

        let (stream_tasks, stop_stream_tasks) = watch::channel(false);
        let mut projection = None;
        if let ActionStore::JetStream(js) = &store {
            actix::spawn(follower::follow(
                js.clone(),
                directory.clone(),
                metrics.clone(),
                stop_stream_tasks.clone(),
            ));
            if settings.jetstream.clickhouse_projection {
                let clickhouse = clickhouse_store(&settings)?;
                let projection_task = Projection {
                    stream: js.clone(),
                    clickhouse,
                    batch_max_rows: settings.persistence.batch_max_rows.max(1000),
                    metrics: metrics.clone(),
                };
                projection = Some(actix::spawn(projection_task.run(stop_stream_tasks)));
            }
        }

        let (closing_tx, closing) = watch::channel(false);
        let (worker_reader, worker_metrics) = (reader.clone(), metrics.clone());
        let skus: Vec<String> = products.iter().map(|p| p.sku.clone()).collect();
        let state = web::Data::new(AppState {
            openapi: crate::openapi::document(&skus),
            settings: settings.clone(),
            closing,
            products,
            directory: directory.clone(),
            hub,
            persistence: persistence.clone(),
            metrics,
        });
        let server = HttpServer::new(move || {
            // Each HTTP worker gets its own StripeActor, on the worker's
            // thread: a verified webhook reaches it without a thread hop,
            // and the event routing it runs is spread over the workers.
            let webhooks = StripeActor::new(
                stripe_api.clone(),
                directory.clone(),
                worker_reader.clone().recipient(),
                worker_metrics.clone(),
            )
            .start();
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(Bounded::new(webhooks, stripe_mailbox)))
                .configure(routes::configure)
        })
        .listen(listener)?
        .shutdown_timeout(30)
        .disable_signals() // handled in run_until_stopped, to end streams first
        .run();
        let stopper = Stopper {
            server: server.handle(),
            closing: Arc::new(closing_tx),
        };
        Ok(Self {
            port,
            server,
            stopper,
            persistence,
            intent_indexer,
            org_arbiters: arbiters,
            stream_tasks,
            projection,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the application as SIGTERM does.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop()`): stops accepting,
    /// lets in-flight requests finish, then writes every pending batch.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stopper = self.stopper.clone();
        actix::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received; draining");
            stopper.stop().await;
        });
        self.server.await?;
        let _ = self.persistence.send(Drain).await;
        if let Some(indexer) = &self.intent_indexer {
            let _ = indexer.send(Drain).await;
        }
        // Every append was answered before the server stopped; the
        // projection inserts and acknowledges the batch it holds.
        let _ = self.stream_tasks.send(true);
        if let Some(projection) = self.projection {
            let _ = projection.await;
        }
        for arbiter in &self.org_arbiters {
            arbiter.stop();
        }
        tracing::info!("stopped; every pending action batch was written");
        Ok(())
    }
}

/// Ends streams, stops accepting, and waits for in-flight requests.
#[derive(Clone)]
pub struct Stopper {
    server: ServerHandle,
    closing: Arc<watch::Sender<bool>>,
}

impl Stopper {
    pub async fn stop(&self) {
        let _ = self.closing.send(true);
        self.server.stop(true).await;
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT; stop the process another way");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<ActionStore> {
    Ok(match settings.store.backend {
        Backend::Embedded => ActionStore::Embedded(EmbeddedStore::new(&settings.store.path)),
        Backend::ClickHouse => ActionStore::ClickHouse(clickhouse_store(settings)?),
        Backend::JetStream => {
            let j = &settings.jetstream;
            ActionStore::JetStream(
                JetStreamStore::connect(JetStreamSettings {
                    servers: j.servers.clone(),
                    stream: j.stream.clone(),
                    subject_prefix: j.subject_prefix.clone(),
                    replicas: j.replicas,
                    user: j.user.clone(),
                    password: j.password.clone(),
                    credentials_file: j.credentials_file.clone(),
                    timeout: STORE_TIMEOUT,
                })
                .await?,
            )
        }
    })
}

fn clickhouse_store(settings: &Settings) -> anyhow::Result<ClickHouseStore> {
    let c = &settings.clickhouse;
    Ok(ClickHouseStore::new(ClickHouseSettings {
        url: c.url.clone(),
        database: c.database.clone(),
        user: c.user.clone(),
        password: c.password.clone(),
        table: c.table.clone(),
        timeout: STORE_TIMEOUT,
    })?)
}
