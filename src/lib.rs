//! assistantd: the Assistant Internal API of a coding-agent manager as one synchronous binary.
//!
//! Modules, one concern each: `http` (tiny_http edge), `routes` (the route table), `auth`,
//! `ratelimit`, `store` (locked atomic JSON files), `settings`, `repos`, `push` (VAPID, ECE,
//! devices, delivery), `opencode` (client), `workspace` (provisioning and skills), `schedules`,
//! `cli` (command line and config), `app` (the shared context), `error` (errors → HTTP).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod error;
pub mod http;
pub mod opencode;
pub mod push;
pub mod ratelimit;
pub mod repos;
pub mod routes;
pub mod schedules;
pub mod settings;
pub mod store;
pub mod util;
pub mod workspace;
