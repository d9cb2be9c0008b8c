#![warn(missing_docs)]
//! Provider processes for epi: separate programs that serve tasks on unix sockets, which the
//! `provider` plugin turns into providers of epi services (so hosts reach them with the same
//! `apply`, `decide` and `pipe` as in-process plugins, and a crashing provider cannot take the
//! host down).
//!
//! - [`wire`]: the protocol both sides speak (length-prefixed JSON frames, requests,
//!   acknowledgements, responses, socket names), as `plugins/provider/PROTOCOL.md` describes.
//! - [`server`] (feature `server`, on by default): a framework for writing provider processes.
//! - [`stream`]: reading a task's byte stream from its `stream_url`.

pub mod stream;
pub mod wire;

#[cfg(feature = "server")]
pub mod server;
