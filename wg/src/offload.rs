//! TUN offloads (`IFF_VNET_HDR` + `TUNSETOFFLOAD`): the kernel hands the device TCP
//! super-packets (up to 64 KiB, one `read`) with a `virtio_net_hdr`, and packets whose
//! checksum is left partial. This module turns one such read into ordinary IP packets:
//! it completes partial checksums and splits TCP segmentation-offload packets at `gso_size`
//! (fixing IP length/id/checksum and TCP sequence/flags/checksum). Pure; unit tested.
//!
//! The split segments of one read are encrypted into one buffer and sent with one UDP GSO
//! `sendmsg` ([`crate::udp`]); the receive side does the reverse ([`crate::gro`]).

/// Size of `struct virtio_net_hdr` (the TUN default vnet header size).
pub const VNET_HDR_LEN: usize = 10;

pub(crate) const F_NEEDS_CSUM: u8 = 1;
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation offload (TUN USO, Linux ≥ 6.2).
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// A `virtio_net_hdr`, host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment (advisory).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`VNET_HDR_LEN`] bytes.
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The header as the TUN reads and writes it (host byte order).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// Why a read could not be turned into packets (the read is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    /// Shorter than the vnet header, or headers/offsets outside the packet.
    #[error("malformed offload packet: {0}")]
    Malformed(&'static str),
    /// A GSO type the device did not ask for.
    #[error("unsupported GSO type {0:#x}")]
    Unsupported(u8),
}

/// The ones'-complement sum of `data` as big-endian 16-bit words, added to `acc`; the result
/// is kept below 2^33 so callers may add small terms before [`fold`]ing. Eight bytes per step
/// (2^64 ≡ 1 modulo 2^16 − 1, so wider words sum to the same folded value).
pub(crate) fn sum(data: &[u8], acc: u64) -> u64 {
    let mut wide = u128::from(acc);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        wide += u128::from(u64::from_be_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        wide += u128::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        wide += u128::from(u16::from_be_bytes([*last, 0]));
    }
    while wide >> 32 != 0 {
        wide = (wide & 0xffff_ffff) + (wide >> 32);
    }
    u64::try_from(wide).unwrap_or(u64::MAX)
}

pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).unwrap_or(u16::MAX)
}

fn protocol(pkt: &[u8]) -> Option<u8> {
    match pkt.first()? >> 4 {
        4 => pkt.get(9).copied(),
        6 => pkt.get(6).copied(),
        _ => None,
    }
}

/// Completes a partial checksum: the field at `start + offset` holds the pseudo-header sum;
/// the checksum over `pkt[start..]` is computed and stored.
fn complete_csum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let at = start + offset;
    if at + 2 > pkt.len() || start > pkt.len() {
        return Err(OffloadError::Malformed(
            "checksum offsets outside the packet",
        ));
    }
    let mut c = !fold(sum(&pkt[start..], 0));
    if c == 0 && protocol(pkt) == Some(17) {
        c = 0xffff; // UDP: a zero checksum means "none"
    }
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn tcp_checksum(seg: &mut [u8], iph: usize, v4: bool) {
    let tcp_len = seg.len() - iph;
    seg[iph + 16] = 0;
    seg[iph + 17] = 0;
    let mut acc = if v4 {
        sum(&seg[12..20], 0) + 6 + tcp_len as u64
    } else {
        sum(&seg[8..40], 0) + 6 + tcp_len as u64
    };
    acc = sum(&seg[iph..], acc);
    let c = !fold(acc);
    seg[iph + 16..iph + 18].copy_from_slice(&c.to_be_bytes());
}

/// Turns one vnet read (`vnet header + packet`) into IP packets, calling `emit` for each.
/// `seg` is a caller-owned scratch buffer (reused across calls).
///
/// # Errors
/// A malformed header or packet, or a GSO type that was not negotiated; nothing is emitted.
pub fn for_each_packet(
    raw: &mut [u8],
    seg: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let hdr = VnetHdr::parse(raw).ok_or(OffloadError::Malformed("shorter than the vnet header"))?;
    let pkt = &mut raw[VNET_HDR_LEN..];
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE || hdr.gso_size == 0 {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_csum(
                pkt,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
        }
        emit(pkt);
        return Ok(());
    }
    if gso == GSO_UDP_L4 {
        return split_udp(pkt, usize::from(hdr.gso_size), seg, emit);
    }
    if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
        return Err(OffloadError::Unsupported(hdr.gso_type));
    }
    let v4 = gso == GSO_TCPV4;
    let iph = if v4 {
        if pkt.len() < 20 || pkt[0] >> 4 != 4 {
            return Err(OffloadError::Malformed("TCPv4 GSO without an IPv4 header"));
        }
        usize::from(pkt[0] & 0x0f) * 4
    } else {
        if pkt.len() < 40 || pkt[0] >> 4 != 6 || pkt[6] != 6 {
            return Err(OffloadError::Malformed(
                "TCPv6 GSO without a plain IPv6+TCP header",
            ));
        }
        40
    };
    if pkt.len() < iph + 20 {
        return Err(OffloadError::Malformed("no TCP header"));
    }
    let hdrs = iph + usize::from(pkt[iph + 12] >> 4) * 4;
    if hdrs > pkt.len() || hdrs < iph + 20 {
        return Err(OffloadError::Malformed("TCP header length"));
    }
    let mss = usize::from(hdr.gso_size);
    let seq0 = u32::from_be_bytes([pkt[iph + 4], pkt[iph + 5], pkt[iph + 6], pkt[iph + 7]]);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags0 = pkt[iph + 13];
    let payload_len = pkt.len() - hdrs;
    let count = payload_len.div_ceil(mss).max(1);
    for i in 0..count {
        let start = hdrs + i * mss;
        let end = (start + mss).min(pkt.len());
        seg.clear();
        seg.extend_from_slice(&pkt[..hdrs]);
        seg.extend_from_slice(&pkt[start..end]);
        let len = seg.len();
        let n = u32::try_from(i).unwrap_or(u32::MAX);
        if v4 {
            let len16 =
                u16::try_from(len).map_err(|_| OffloadError::Malformed("segment too long"))?;
            seg[2..4].copy_from_slice(&len16.to_be_bytes());
            seg[4..6].copy_from_slice(
                &id0.wrapping_add(u16::try_from(i & 0xffff).unwrap_or(0))
                    .to_be_bytes(),
            );
            seg[10] = 0;
            seg[11] = 0;
            let c = !fold(sum(&seg[..iph], 0));
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            let plen =
                u16::try_from(len - 40).map_err(|_| OffloadError::Malformed("segment too long"))?;
            seg[4..6].copy_from_slice(&plen.to_be_bytes());
        }
        let seq = seq0.wrapping_add(n.wrapping_mul(u32::from(hdr.gso_size)));
        seg[iph + 4..iph + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        seg[iph + 13] = flags;
        tcp_checksum(seg, iph, v4);
        emit(seg);
    }
    Ok(())
}

/// Splits a UDP segmentation-offload packet (one application `sendmsg` with `UDP_SEGMENT`
/// that reached the TUN whole) into datagrams of `size` payload bytes, the last possibly
/// shorter, each with its own IP and UDP lengths and checksums.
fn split_udp(
    pkt: &[u8],
    size: usize,
    seg: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let (v4, iph) = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 28 && pkt[9] == 17 => (true, usize::from(pkt[0] & 0x0f) * 4),
        Some(6) if pkt.len() >= 48 && pkt[6] == 17 => (false, 40),
        _ => {
            return Err(OffloadError::Malformed(
                "UDP GSO without a plain IP+UDP header",
            ));
        }
    };
    let hdrs = iph + 8;
    if iph < 20 || hdrs > pkt.len() || size == 0 {
        return Err(OffloadError::Malformed("UDP header or segment size"));
    }
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    for (i, chunk) in pkt[hdrs..].chunks(size).enumerate() {
        seg.clear();
        seg.extend_from_slice(&pkt[..hdrs]);
        seg.extend_from_slice(chunk);
        let len = seg.len();
        let too_long = |_| OffloadError::Malformed("segment too long");
        if v4 {
            seg[2..4].copy_from_slice(&u16::try_from(len).map_err(too_long)?.to_be_bytes());
            let id = id0.wrapping_add(u16::try_from(i & 0xffff).unwrap_or(0));
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            seg[10] = 0;
            seg[11] = 0;
            let c = !fold(sum(&seg[..iph], 0));
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            let plen = u16::try_from(len - 40).map_err(too_long)?;
            seg[4..6].copy_from_slice(&plen.to_be_bytes());
        }
        let udp_len = u16::try_from(len - iph).map_err(too_long)?;
        seg[iph + 4..iph + 6].copy_from_slice(&udp_len.to_be_bytes());
        seg[iph + 6] = 0;
        seg[iph + 7] = 0;
        let addrs = if v4 { &seg[12..20] } else { &seg[8..40] };
        let acc = sum(addrs, 17 + u64::from(udp_len));
        let mut c = !fold(sum(&seg[iph..], acc));
        if c == 0 {
            c = 0xffff; // a zero UDP checksum means "none"
        }
        seg[iph + 6..iph + 8].copy_from_slice(&c.to_be_bytes());
        emit(seg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(payload: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x45;
        let len = u16::try_from(p.len()).unwrap();
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&1_000_000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = u8::try_from(i % 251).unwrap();
        }
        p
    }

    fn vnet(gso_type: u8, gso_size: u16, flags: u8, start: u16, off: u16) -> Vec<u8> {
        let mut h = vec![flags, gso_type];
        for v in [40u16, gso_size, start, off] {
            h.extend_from_slice(&v.to_ne_bytes());
        }
        h
    }

    fn verify_v4(seg: &[u8]) {
        assert_eq!(fold(sum(&seg[..20], 0)), 0xffff, "IPv4 header checksum");
        let tcp_len = seg.len() - 20;
        let acc = sum(&seg[12..20], 0) + 6 + tcp_len as u64;
        assert_eq!(fold(sum(&seg[20..], acc)), 0xffff, "TCP checksum");
        assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
    }

    #[test]
    fn tso_packet_is_split_with_valid_headers() {
        let pkt = ipv4_tcp(2500, 0x18 | 0x01 | 0x80); // PSH|ACK|FIN|CWR
        let mut raw = vnet(GSO_TCPV4, 1000, F_NEEDS_CSUM, 20, 16);
        raw.extend_from_slice(&pkt);
        let mut segs = Vec::new();
        let mut scratch = Vec::new();
        for_each_packet(&mut raw, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            verify_v4(s);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1_000_000 + 1000 * u32::try_from(i).unwrap());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                100 + u16::try_from(i).unwrap()
            );
            let f = s[33];
            assert_eq!(f & 0x10, 0x10, "ACK everywhere");
            assert_eq!(f & 0x09 != 0, i == 2, "PSH/FIN only on the last");
            assert_eq!(f & 0x80 != 0, i == 0, "CWR only on the first");
            payload.extend_from_slice(&s[40..]);
        }
        assert_eq!(segs[2].len(), 40 + 500);
        assert_eq!(payload, pkt[40..]);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut pkt = ipv4_tcp(333, 0x18);
        // What the kernel leaves: the pseudo-header sum (not inverted) in the field.
        let tcp_len = pkt.len() - 20;
        let pseudo = fold(sum(&pkt[12..20], 0) + 6 + tcp_len as u64);
        pkt[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let ipc = !fold(sum(&pkt[..20], 0));
        pkt[10..12].copy_from_slice(&ipc.to_be_bytes());
        let mut raw = vnet(GSO_NONE, 0, F_NEEDS_CSUM, 20, 16);
        raw.extend_from_slice(&pkt);
        let mut out = Vec::new();
        for_each_packet(&mut raw, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out.len(), 1);
        verify_v4(&out[0]);
    }

    #[test]
    fn malformed_reads_are_rejected_not_panicking() {
        let mut scratch = Vec::new();
        assert!(for_each_packet(&mut [0u8; 4], &mut scratch, |_| {}).is_err());
        let mut raw = vnet(GSO_TCPV4, 1000, 0, 0, 0);
        raw.extend_from_slice(&[0x45, 0, 0, 0]);
        assert!(for_each_packet(&mut raw, &mut scratch, |_| {}).is_err());
        let mut raw = vnet(GSO_NONE, 0, F_NEEDS_CSUM, 60000, 6);
        raw.extend_from_slice(&ipv4_tcp(10, 0));
        assert!(for_each_packet(&mut raw, &mut scratch, |_| {}).is_err());
        let mut raw = vnet(3, 1000, 0, 0, 0);
        raw.extend_from_slice(&ipv4_tcp(10, 0));
        assert_eq!(
            for_each_packet(&mut raw, &mut scratch, |_| {}),
            Err(OffloadError::Unsupported(3))
        );
    }

    /// The plain 16-bit ones'-complement sum, for comparison.
    fn sum16(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for c in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        fold(acc)
    }

    #[test]
    fn udp_gso_packet_is_split_into_valid_datagrams() {
        let payload: Vec<u8> = (0..2500u32)
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        let mut pkt = vec![0u8; 28];
        pkt[0] = 0x45;
        let len = u16::try_from(28 + payload.len()).unwrap();
        pkt[2..4].copy_from_slice(&len.to_be_bytes());
        pkt[4..6].copy_from_slice(&50u16.to_be_bytes());
        pkt[8] = 64;
        pkt[9] = 17;
        pkt[12..16].copy_from_slice(&[10, 244, 1, 2]);
        pkt[16..20].copy_from_slice(&[10, 244, 2, 2]);
        pkt[20..22].copy_from_slice(&4433u16.to_be_bytes());
        pkt[22..24].copy_from_slice(&443u16.to_be_bytes());
        pkt.extend_from_slice(&payload);
        let mut raw = vnet(GSO_UDP_L4, 1000, F_NEEDS_CSUM, 20, 6);
        raw.extend_from_slice(&pkt);
        let mut segs = Vec::new();
        for_each_packet(&mut raw, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(fold(sum(&s[..20], 0)), 0xffff, "IPv4 header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                50 + u16::try_from(i).unwrap()
            );
            let acc = sum(&s[12..20], 17 + (s.len() as u64 - 20));
            assert_eq!(fold(sum(&s[20..], acc)), 0xffff, "UDP checksum");
            joined.extend_from_slice(&s[28..]);
        }
        assert_eq!(segs[2].len(), 28 + 500);
        assert_eq!(joined, payload);
        let mut raw = vnet(GSO_UDP_L4, 1000, 0, 0, 0);
        raw.extend_from_slice(&[0x45, 0, 0, 0]);
        assert!(for_each_packet(&mut raw, &mut Vec::new(), |_| {}).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_wide_sum_folds_to_the_16_bit_sum(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), acc in 0u64..1 << 20) {
            let want = fold(u64::from(sum16(&data)) + acc);
            proptest::prop_assert_eq!(fold(sum(&data, acc)), want);
        }

        #[test]
        fn arbitrary_reads_never_panic(mut raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut scratch = Vec::new();
            let _ = for_each_packet(&mut raw, &mut scratch, |_| {});
        }
    }
}
