//! assistantd: the Assistant Internal API of a coding-agent manager as one synchronous binary.
#![forbid(unsafe_code)]

pub mod error;
pub mod opencode;
pub mod schedules;
pub mod store;
pub mod util;
