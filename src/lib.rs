//! The entitlements HTTP service: configuration, routes, and the
//! application that wires them to the actors.

pub mod auth;
pub mod configuration;
pub mod error;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod telemetry;
