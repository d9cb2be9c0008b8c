//! The integration tests of epi over real plugin libraries, in one binary (one link, one
//! build of the helpers). `cycles` (which measures this process's memory) and
//! `hostile_files` (which runs hosts that die) have binaries of their own.

#[path = "../common/mod.rs"]
mod common;

mod added_providers;
mod allocations;
mod apply;
mod compat;
mod data;
mod dynamic;
mod engine;
mod global;
mod host_calls;
mod loading;
mod processes;
mod provider;
mod reload;
