//! One integration binary (see Cargo.toml `autotests = false`): every module starts the real
//! `assistantd` binary on port 0 against a temp state dir and talks HTTP to it, or drives a
//! real peer (a push receiver, the OpenCode server).

mod util;

mod api_core;
mod api_push;
mod api_settings;
mod durability;
mod fuzz;
mod hardening;
mod opencode_e2e;
mod push_interop;
mod schedules_http;
mod schedules_opencode;
