//! WireGuard datapath for identityd: node keys, a pure planner, a userspace WireGuard device
//! (boringtun's protocol over our own TUN + UDP loop, with the standard UAPI socket so
//! `wg show` works), routes and MTU over rtnetlink, and kernel-module detection.
//!
//! What this crate promises:
//! - The node's private key is generated on the node, stored 0600 with an atomic rename,
//!   zeroized in memory and never printed ([`key::NodeKey`]); only the public key is shown.
//! - [`plan::plan`] is pure: node + peers in, the desired interface config out (peers, allowed
//!   IPs, routes, MTU = underlay − 60 for IPv4 / − 80 for IPv6, keepalive). Applying it
//!   ([`device::Device::apply_peers`], [`routes::Netlink::apply_routes`]) changes only what
//!   differs from what is installed.
//! - Packets routed into the interface for which no peer exists are dropped and counted,
//!   never sent in clear; with `cluster_cidrs` routed into the tunnel, removing a peer does not
//!   make its pods reachable over the default route.
//! - The TUN interface can be persistent (`TUNSETPERSIST`): it and its routes outlive a
//!   restart of the process, so packets are dropped (not re-routed) while it is down.
//! - Kernel WireGuard is detected, not faked ([`backend`]).
#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod device;
pub mod dos;
pub mod gro;
pub mod ipsec;
pub mod key;
pub mod offload;
pub mod plan;
pub mod process;
pub mod routes;
pub mod tun;
pub mod uapi;
pub mod udp;

/// Default WireGuard UDP port (DESIGN.md, shared constants).
pub const DEFAULT_PORT: u16 = 51871;
/// Policy-routing table used for the WireGuard path.
pub const ROUTE_TABLE: u32 = 202;
/// Outer-header overhead subtracted from the underlay MTU for an IPv4 underlay.
pub const OVERHEAD_V4: u32 = 60;
/// Outer-header overhead subtracted from the underlay MTU for an IPv6 underlay.
pub const OVERHEAD_V6: u32 = 80;

/// Tunnel MTU for a given underlay MTU.
#[must_use]
pub fn tunnel_mtu(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    underlay_mtu.saturating_sub(if ipv6_underlay {
        OVERHEAD_V6
    } else {
        OVERHEAD_V4
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_subtracts_outer_headers() {
        assert_eq!(tunnel_mtu(1500, false), 1440);
        assert_eq!(tunnel_mtu(1500, true), 1420);
        assert_eq!(tunnel_mtu(40, true), 0);
    }
}
