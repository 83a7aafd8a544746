//! IPsec (ESP) building blocks: per-node-pair keys with no cluster-wide secret, and XFRM states
//! and policies over netlink.
//!
//! Not yet wired into the node daemon (`encryption.mode: ipsec` is still refused at start):
//! these pieces are tested on a stock kernel inside the VM test bed (`tests/tests/vm_kernel.rs`).

pub mod keys;
pub mod plan;
pub mod xfrm;
