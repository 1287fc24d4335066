//! Logging: `tracing` to stdout, human-readable or JSON lines.
//! `RUST_LOG` filters (default `info`).
//!
//! Lines are written by a dedicated thread: a write to a slow stdout (a
//! full pipe) must never stall an actor or an HTTP worker. If that thread
//! falls more than its buffer behind, lines are dropped rather than
//! payments delayed; the audit trail is the action store, not the log.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::configuration::LogFormat;

/// Installs the subscriber. Keep the guard until exit: dropping it flushes
/// the lines still buffered.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        // The current span only. A webhook's lines run in its span (carried
        // into the actors) or in the org actor's `record_action` span, both
        // carrying `event_id` and `org_id`; the full list would repeat them.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    guard
}
