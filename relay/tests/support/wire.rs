//! The raw protocol client the workspace's tests share (the engine's
//! hidden `testing` module). Each test binary uses a part of it.

#[allow(unused_imports)]
pub use accord_engine::testing::*;
