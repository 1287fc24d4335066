//! What the test code shares: the integration tests under `tests/`, the
//! loadtest (`src/bin/loadtest`) and the benches. Each speaks to the service
//! from outside, as Stripe, a browser or a load generator would.

pub mod events;
pub mod process;
pub mod procfs;
pub mod signing;
pub mod sse;
pub mod sse_client;
pub mod token;

pub use actors::model::unix_now;
