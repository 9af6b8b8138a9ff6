//! The op tests' helpers live in the runtime (`odeflow_runtime::testing`) so that other crates'
//! tests share them.

#![allow(unused_imports)]

pub use odeflow_runtime::testing::*;
