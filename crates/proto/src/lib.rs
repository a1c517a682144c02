//! The Modal client's wire types and gRPC service traits.
//!
//! Generated at build time from the descriptors inside the pinned `modal` package (see
//! `build.rs`); only this crate and the protocol adapter (`ferry-api`) know these types.

#![allow(clippy::all, missing_docs)]

pub mod modal {
    pub mod client {
        tonic::include_proto!("modal.client");
    }
    pub mod task_command_router {
        tonic::include_proto!("modal.task_command_router");
    }
}

pub use modal::client as api;

/// The version of the `modal` client whose protocol these types describe.
pub const CLIENT_VERSION: &str = "1.6.4";

/// The encoded `FileDescriptorSet` the types were generated from: lets the protocol adapter
/// inspect any request by field name (the gateway's token scopes, the fuzz harness).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modal_api.fds.bin"));
