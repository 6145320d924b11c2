//! Shared pieces of the fuzz targets.
//!
//! [`conn_model`] holds the connection target's operation generator and its
//! invariant checks, apart from the driver (`fuzz_targets/connection.rs`),
//! so that they can drive a sans-I/O connection state machine too.

pub mod conn_model;
