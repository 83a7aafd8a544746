//! identityd's test harness: where each real tool is, and network-namespace topologies
//! that clean up after themselves (even when a test panics).
//!
//! Tests that need root, a namespace or a tool **fail** with a message naming what is missing
//! and the bootstrap step that installs it; they never pass silently.
#![deny(unsafe_code)]

pub mod envoy;
pub mod image;
pub mod netns;
pub mod reports;
pub mod tools;
pub mod vm;

/// Panics with a clear message unless the test runs as root (CI does).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, bpf, TUN): run it as root, as `make test` and CI do"
    );
}
