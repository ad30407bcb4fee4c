//! The one integration test binary (`autotests = false`); each file is a module.

mod push_interop;
