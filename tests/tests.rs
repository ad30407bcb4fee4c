//! One integration binary (see Cargo.toml `autotests = false`): every module starts the real
//! `assistantd` binary on port 0 against a temp state dir and talks HTTP to it.

mod util;

mod api_core;
mod hardening;
