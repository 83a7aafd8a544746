//! Builds Ethernet frames for `BPF_PROG_TEST_RUN` (tests and the bench): IPv4 or IPv6 with a
//! TCP or UDP header and a payload. Writes into a caller-owned buffer.

use std::net::IpAddr;

/// L4 protocol of a crafted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP (SYN).
    Tcp,
    /// UDP.
    Udp,
}

impl L4 {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    fn header_len(self) -> usize {
        match self {
            Self::Tcp => 20,
            Self::Udp => 8,
        }
    }
}

/// Builds `src:sport → dst:dport` into `buf` (cleared first) with `payload` zero bytes.
///
/// # Panics
/// When `src` and `dst` are not of the same family.
pub fn build(
    buf: &mut Vec<u8>,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    ports: (u16, u16),
    payload: usize,
) {
    buf.clear();
    buf.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // dst MAC
    buf.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // src MAC
    let l4_len = l4.header_len() + payload;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(20 + l4_len).unwrap_or(u16::MAX);
            let start = buf.len();
            buf.extend_from_slice(&[0x45, 0]);
            buf.extend_from_slice(&total.to_be_bytes());
            buf.extend_from_slice(&[0, 1, 0x40, 0, 64, l4.number(), 0, 0]);
            buf.extend_from_slice(&s.octets());
            buf.extend_from_slice(&d.octets());
            let sum = checksum(&buf[start..start + 20]);
            buf[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            buf.extend_from_slice(&0x86ddu16.to_be_bytes());
            buf.extend_from_slice(&[0x60, 0, 0, 0]);
            let plen = u16::try_from(l4_len).unwrap_or(u16::MAX);
            buf.extend_from_slice(&plen.to_be_bytes());
            buf.extend_from_slice(&[l4.number(), 64]);
            buf.extend_from_slice(&s.octets());
            buf.extend_from_slice(&d.octets());
        }
        _ => panic!("packet::build: {src} and {dst} are of different families"),
    }
    buf.extend_from_slice(&ports.0.to_be_bytes());
    buf.extend_from_slice(&ports.1.to_be_bytes());
    match l4 {
        L4::Tcp => {
            // seq, ack, data offset 5, SYN, window, checksum (left 0), urgent
            buf.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        }
        L4::Udp => {
            let len = u16::try_from(l4_len).unwrap_or(u16::MAX);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&[0, 0]);
        }
    }
    buf.resize(buf.len() + payload, 0);
}

/// A packet that is neither IPv4 nor IPv6 (an ARP request).
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut b = vec![0xff; 6];
    b.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    b.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    b.resize(42, 0);
    b
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_header_checksums_to_zero_and_lengths_add_up() {
        let mut b = Vec::new();
        build(
            &mut b,
            "10.244.1.5".parse().unwrap(),
            "10.244.2.7".parse().unwrap(),
            L4::Tcp,
            (40000, 8080),
            10,
        );
        assert_eq!(b.len(), 14 + 20 + 20 + 10);
        assert_eq!(checksum(&b[14..34]), 0);
        build(
            &mut b,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            L4::Udp,
            (1, 2),
            0,
        );
        assert_eq!(b.len(), 14 + 40 + 8);
        assert_eq!(&b[12..14], &[0x86, 0xdd]);
    }
}
