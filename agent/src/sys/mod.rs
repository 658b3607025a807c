//! The only place `unsafe` is allowed: thin, documented wrappers over syscalls
//! that nix does not cover. Each block carries a `// SAFETY:` comment; callers
//! elsewhere in the crate stay safe Rust.
#![allow(unsafe_code)]

pub mod bpf;
pub mod fdpass;
pub mod limits;
pub mod mount;
pub mod net;
pub mod netlink;
pub mod openat2;
pub mod process;
pub mod tty;
