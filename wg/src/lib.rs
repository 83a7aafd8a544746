//! WireGuard datapath for identityd: node keys, peers, routes and MTU.
//!
//! Nothing is implemented yet beyond the constants shared with the rest of the workspace;
//! see the WireGuard datapath issue.
#![deny(unsafe_code)]

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
