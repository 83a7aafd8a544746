//! Receive-side coalescing into the TUN (userspace GRO): consecutive decrypted segments of one
//! TCP flow (and, where the TUN takes UDP offload packets, datagrams of one UDP flow) become
//! one segmentation-offload packet, written to the TUN once with a
//! `virtio_net_hdr` (the TUN then hands the kernel one large packet instead of dozens, the
//! way a NIC's GRO does). Pure, with caller-owned buffers; unit tested.
//!
//! The merge rules are the kernel's TCP GRO rules (`tcp_gro_receive`), taken conservatively:
//! - same IP version, addresses and ports; IPv4 without options, not fragmented, DF set, same
//!   TOS and TTL; IPv6 with TCP as the next header (no extension headers), same traffic
//!   class, flow label and hop limit;
//! - same TCP header length and options, same acknowledgement number and window;
//! - only ACK set, and PSH on the last segment (nothing is appended after PSH); a segment
//!   with SYN, FIN, RST, URG, ECE or CWR, or without payload, is never merged;
//! - sequence-adjacent; every segment as long as the first, only the last may be shorter
//!   (and nothing is appended after it);
//! - the TCP checksum of every merged segment verified first (a segment that fails it is
//!   written as it came, for the kernel to drop);
//! - at most [`MAX_SEGMENTS`] segments and 64 KiB per packet.
//!
//! Anything else (UDP, ICMP, a refused segment) is written at once, after flushing what is
//! pending for its own flow, so no flow is ever reordered. Several flows may be pending at
//! once ([`Coalescer::new`]); [`Coalescer::flush`] writes them all at the end of a batch.

use crate::offload::{
    F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr, fold, sum,
};

/// Most segments merged into one packet.
pub const MAX_SEGMENTS: usize = 64;
/// Largest merged IP packet.
const MAX_PACKET: usize = 65_535;

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The vnet header of a packet written as it is (no offload, checksum complete).
pub const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Counters of what coalescing did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroStats {
    /// Packets written to the TUN.
    pub writes: u64,
    /// Segments that went into a multi-segment packet.
    pub merged_segments: u64,
}

/// A parsed TCP segment or UDP datagram (offsets into the packet).
#[derive(Debug, Clone, Copy)]
struct Seg {
    v4: bool,
    udp: bool,
    iph: usize,
    hdrs: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// The flow a packet belongs to: addresses and ports, as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    addrs: [u8; 32],
    ports: [u8; 4],
    v4: bool,
    udp: bool,
}

fn parse(pkt: &[u8]) -> Option<(Seg, FlowKey)> {
    let mut key = FlowKey::default();
    let (v4, iph) = match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if pkt.len() < ihl + 8 || ihl < 20 || (pkt[9] != 6 && pkt[9] != 17) {
                return None;
            }
            if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
                return None;
            }
            key.addrs[..8].copy_from_slice(&pkt[12..20]);
            (true, ihl)
        }
        6 => {
            if pkt.len() < 48 || (pkt[6] != 6 && pkt[6] != 17) {
                return None;
            }
            if usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 != pkt.len() {
                return None;
            }
            key.addrs.copy_from_slice(&pkt[8..40]);
            (false, 40)
        }
        _ => return None,
    };
    key.v4 = v4;
    key.ports.copy_from_slice(&pkt[iph..iph + 4]);
    let udp = pkt[if v4 { 9 } else { 6 }] == 17;
    key.udp = udp;
    if udp {
        if usize::from(u16::from_be_bytes([pkt[iph + 4], pkt[iph + 5]])) != pkt.len() - iph {
            return None;
        }
        let seg = Seg {
            v4,
            udp,
            iph,
            hdrs: iph + 8,
            seq: 0,
            flags: 0,
            payload: pkt.len() - iph - 8,
        };
        return Some((seg, key));
    }
    if pkt.len() < iph + 20 {
        return None;
    }
    let hdrs = iph + usize::from(pkt[iph + 12] >> 4) * 4;
    if hdrs < iph + 20 || hdrs > pkt.len() {
        return None;
    }
    let seq = u32::from_be_bytes([pkt[iph + 4], pkt[iph + 5], pkt[iph + 6], pkt[iph + 7]]);
    Some((
        Seg {
            v4,
            udp,
            iph,
            hdrs,
            seq,
            flags: pkt[iph + 13],
            payload: pkt.len() - hdrs,
        },
        key,
    ))
}

fn pseudo_sum(pkt: &[u8], v4: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v4 { &pkt[12..20] } else { &pkt[8..40] };
    sum(addrs, u64::from(proto) + l4_len as u64)
}

fn proto(s: &Seg) -> u8 {
    if s.udp { 17 } else { 6 }
}

/// The TCP or UDP checksum verifies (a UDP datagram over IPv4 without one, field 0, does
/// not: it is never merged).
fn checksum_ok(pkt: &[u8], s: &Seg) -> bool {
    if s.udp && pkt[s.iph + 6] == 0 && pkt[s.iph + 7] == 0 {
        return false;
    }
    let l4_len = pkt.len() - s.iph;
    fold(sum(&pkt[s.iph..], pseudo_sum(pkt, s.v4, proto(s), l4_len))) == 0xffff
}

/// Whether `s` may start a merged packet: plain ACK with payload (TCP) or any payload (UDP,
/// only where the TUN takes UDP offload packets), no IP options or fragmentation, DF set for
/// TCP, and a valid checksum.
fn may_start(pkt: &[u8], s: &Seg, udp_ok: bool) -> bool {
    if s.payload == 0 || (s.udp && !udp_ok) || (!s.udp && s.flags != ACK) {
        return false;
    }
    // IPv4: no options, not a fragment (MF clear, offset 0). TCP also needs DF (Linux sets
    // it on every TCP segment), UDP may lack it: the merged packet is split again with new
    // identifiers, which only a reassembly would read, and these datagrams are whole.
    let df_ok = s.udp || pkt[6] & 0x40 != 0;
    if s.v4 && (s.iph != 20 || pkt[6] & 0xa0 != 0 || pkt[6] & 0x1f != 0 || pkt[7] != 0 || !df_ok) {
        return false;
    }
    checksum_ok(pkt, s)
}

/// One flow's packet being built: vnet header room, then the IP packet.
#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    key: FlowKey,
    seg: Seg,
    gso_size: usize,
    count: usize,
    next_seq: u32,
    closed: bool,
}

impl Pending {
    fn pkt(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }

    /// Whether `s` (of the same flow) continues this packet.
    fn accepts(&self, pkt: &[u8], s: &Seg) -> bool {
        let first = self.pkt();
        let f = &self.seg;
        if self.closed
            || self.count >= MAX_SEGMENTS
            || (!s.udp && (s.flags & !PSH != ACK || s.seq != self.next_seq))
            || s.payload == 0
            || s.payload > self.gso_size
            || s.hdrs != f.hdrs
            || self.buf.len() - VNET_HDR_LEN + s.payload > MAX_PACKET
        {
            return false;
        }
        let same_ip = if s.v4 {
            // Version/IHL, TOS, flags/fragment, TTL/protocol.
            pkt[..2] == first[..2] && pkt[6..10] == first[6..10]
        } else {
            // Version, traffic class, flow label; next header, hop limit.
            pkt[..4] == first[..4] && pkt[6..8] == first[6..8]
        };
        if s.udp {
            return same_ip && checksum_ok(pkt, s);
        }
        // Acknowledgement, data offset, window; options.
        let t = f.iph;
        same_ip
            && pkt[t + 8..t + 13] == first[t + 8..t + 13]
            && pkt[t + 14..t + 16] == first[t + 14..t + 16]
            && pkt[f.iph + 20..f.hdrs] == first[f.iph + 20..f.hdrs]
            && checksum_ok(pkt, s)
    }

    fn append(&mut self, pkt: &[u8], s: &Seg) {
        self.buf.extend_from_slice(&pkt[s.hdrs..]);
        self.count += 1;
        self.next_seq = s
            .seq
            .wrapping_add(u32::try_from(s.payload).unwrap_or(u32::MAX));
        if !s.udp && s.flags & PSH != 0 {
            let at = VNET_HDR_LEN + self.seg.iph + 13;
            self.buf[at] |= PSH;
            self.closed = true;
        }
        if s.payload < self.gso_size {
            self.closed = true;
        }
    }

    /// Finishes the headers and writes the packet: as it came when it is one segment, else
    /// as a segmentation-offload packet with a partial checksum.
    fn write(&mut self, write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
        if self.count == 1 {
            write(&PLAIN, &self.buf[VNET_HDR_LEN..]);
            return;
        }
        let s = self.seg;
        let (hdr, pkt) = self.buf.split_at_mut(VNET_HDR_LEN);
        let len = pkt.len();
        let l4_len = len - s.iph;
        if s.v4 {
            pkt[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
            pkt[10] = 0;
            pkt[11] = 0;
            let c = !fold(sum(&pkt[..20], 0));
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            pkt[4..6].copy_from_slice(&u16::try_from(len - 40).unwrap_or(u16::MAX).to_be_bytes());
        }
        let u16_of = |v: usize| u16::try_from(v).unwrap_or(u16::MAX);
        // A partial checksum: the pseudo-header sum, not inverted; the kernel adds the rest.
        let partial = fold(pseudo_sum(pkt, s.v4, proto(&s), l4_len));
        let csum_offset = if s.udp {
            pkt[s.iph + 4..s.iph + 6].copy_from_slice(&u16_of(l4_len).to_be_bytes());
            6
        } else {
            16
        };
        let at = s.iph + usize::from(csum_offset);
        pkt[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        let v = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (s.udp, s.v4) {
                (true, _) => GSO_UDP_L4,
                (false, true) => GSO_TCPV4,
                (false, false) => GSO_TCPV6,
            },
            hdr_len: u16_of(s.hdrs),
            gso_size: u16_of(self.gso_size),
            csum_start: u16_of(s.iph),
            csum_offset,
        };
        hdr.copy_from_slice(&v.to_bytes());
        let hdr: &[u8; VNET_HDR_LEN] = (&*hdr).try_into().unwrap_or(&PLAIN);
        write(hdr, pkt);
    }
}

/// Coalesces decrypted packets of one receive batch (see the module docs).
#[derive(Debug)]
pub struct Coalescer {
    pending: Vec<Pending>,
    spare: Vec<Vec<u8>>,
    max_flows: usize,
    udp: bool,
    stats: GroStats,
}

impl Coalescer {
    /// As [`Coalescer::new`], also merging UDP datagrams of one flow (equal sizes, the last
    /// may be shorter) into UDP segmentation-offload packets: only for a TUN that takes them
    /// (TUN USO, Linux ≥ 6.2).
    #[must_use]
    pub fn with_udp(max_flows: usize) -> Self {
        Self {
            udp: true,
            ..Self::new(max_flows)
        }
    }

    /// A coalescer keeping at most `max_flows` flows pending at once (at least 1); its
    /// buffers are allocated here and reused.
    #[must_use]
    pub fn new(max_flows: usize) -> Self {
        let max_flows = max_flows.max(1);
        Self {
            pending: Vec::with_capacity(max_flows),
            spare: (0..max_flows)
                .map(|_| Vec::with_capacity(VNET_HDR_LEN + MAX_PACKET))
                .collect(),
            max_flows,
            udp: false,
            stats: GroStats::default(),
        }
    }

    /// What was written so far.
    #[must_use]
    pub fn stats(&self) -> GroStats {
        self.stats
    }

    /// Adds one packet. `write` gets the vnet header and the packet of everything that must
    /// go out now, in order.
    pub fn push(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
        let Some((s, key)) = parse(pkt) else {
            self.stats.writes += 1;
            write(&PLAIN, pkt);
            return;
        };
        if let Some(i) = self.pending.iter().position(|p| p.key == key) {
            if self.pending[i].accepts(pkt, &s) {
                self.pending[i].append(pkt, &s);
                return;
            }
            self.flush_at(i, write);
        }
        if !may_start(pkt, &s, self.udp) {
            self.stats.writes += 1;
            write(&PLAIN, pkt);
            return;
        }
        if self.pending.len() >= self.max_flows {
            self.flush_at(0, write);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        buf.extend_from_slice(pkt);
        self.pending.push(Pending {
            buf,
            key,
            seg: s,
            gso_size: s.payload,
            count: 1,
            next_seq: s
                .seq
                .wrapping_add(u32::try_from(s.payload).unwrap_or(u32::MAX)),
            closed: false,
        });
    }

    /// Writes everything pending (end of a batch).
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
        while !self.pending.is_empty() {
            self.flush_at(0, write);
        }
    }

    fn flush_at(&mut self, i: usize, write: &mut impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
        let mut p = self.pending.remove(i);
        self.stats.writes += 1;
        if p.count > 1 {
            self.stats.merged_segments += p.count as u64;
        }
        p.write(write);
        self.spare.push(p.buf);
    }
}

/// Whether a vnet header says "plain packet" (for tests and callers that count).
#[must_use]
pub fn is_plain(hdr: &[u8; VNET_HDR_LEN]) -> bool {
    hdr[1] == GSO_NONE && hdr[0] & F_NEEDS_CSUM == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::for_each_packet;

    /// An IPv4 TCP segment with a valid checksum.
    fn v4(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 52 + payload.len()];
        p[0] = 0x45;
        let len = u16::try_from(p.len()).unwrap();
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let ipc = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = 8 << 4; // 32-byte TCP header: timestamps
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p[52..].copy_from_slice(payload);
        fix_tcp(&mut p, 20, true);
        p
    }

    /// The same as an IPv6 segment.
    fn v6(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let four = v4(seq, payload, flags);
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        let plen = u16::try_from(four.len() - 20).unwrap();
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2]);
        p.extend_from_slice(&four[20..]);
        fix_tcp(&mut p, 40, false);
        p
    }

    fn fix_tcp(p: &mut [u8], iph: usize, v4: bool) {
        p[iph + 16] = 0;
        p[iph + 17] = 0;
        let tcp_len = p.len() - iph;
        let c = !fold(sum(&p[iph..], pseudo_sum(p, v4, 6, tcp_len)));
        p[iph + 16..iph + 18].copy_from_slice(&c.to_be_bytes());
    }

    fn data(n: usize, tag: u8) -> Vec<u8> {
        (0..n)
            .map(|i| u8::try_from(i % 200).unwrap() ^ tag)
            .collect()
    }

    /// Runs packets through a coalescer, returning what was written.
    fn run(pkts: &[Vec<u8>], flows: usize) -> Vec<([u8; VNET_HDR_LEN], Vec<u8>)> {
        let mut c = Coalescer::new(flows);
        let mut out = Vec::new();
        let mut w = |h: &[u8; VNET_HDR_LEN], p: &[u8]| out.push((*h, p.to_vec()));
        for p in pkts {
            c.push(p, &mut w);
        }
        c.flush(&mut w);
        out
    }

    /// Splits written packets back into segments, as the kernel would, through the
    /// device's own TSO splitter (which also completes the partial checksum).
    fn resplit(written: &[([u8; VNET_HDR_LEN], Vec<u8>)]) -> Vec<Vec<u8>> {
        let mut segs = Vec::new();
        for (h, p) in written {
            let mut raw = h.to_vec();
            raw.extend_from_slice(p);
            for_each_packet(&mut raw, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        }
        segs
    }

    /// Segments equal up to the IPv4 identification (the kernel's segmentation numbers
    /// them from the first) and so the header checksum.
    fn same(a: &[Vec<u8>], b: &[Vec<u8>]) -> bool {
        let norm = |p: &Vec<u8>| {
            let mut p = p.clone();
            if p.first().is_some_and(|b| b >> 4 == 4) && p.len() >= 20 {
                p[4..6].fill(0);
                p[10..12].fill(0);
            }
            p
        };
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(x) == norm(y))
    }

    #[test]
    fn adjacent_segments_merge_into_one_offload_packet_and_split_back_identically() {
        for mk in [v4 as fn(u32, &[u8], u8) -> Vec<u8>, v6] {
            let segs: Vec<Vec<u8>> = (0..5u32)
                .map(|i| {
                    let len = if i == 4 { 300 } else { 1000 };
                    let flags = if i == 4 { ACK | PSH } else { ACK };
                    mk(1000 + i * 1000, &data(len, u8::try_from(i).unwrap()), flags)
                })
                .collect();
            let out = run(&segs, 4);
            assert_eq!(out.len(), 1, "one write");
            let v = VnetHdr::parse(&out[0].0).unwrap();
            assert_eq!(v.gso_size, 1000);
            assert_eq!(v.flags, F_NEEDS_CSUM);
            assert_eq!(out[0].1.len(), segs[0].len() + 3000 + 300);
            // The kernel's segmentation (our splitter) gives back the very same segments.
            assert!(same(&resplit(&out), &segs));
        }
    }

    #[test]
    fn every_refusal_rule_keeps_segments_apart_and_in_order() {
        let p = |seq: u32, n: usize, f: u8| v4(seq, &data(n, 1), f);
        let mut bad_sum = p(2000, 1000, ACK);
        bad_sum[60] ^= 0xff;
        let mut other_ack = p(2000, 1000, ACK);
        other_ack[28..32].copy_from_slice(&100u32.to_be_bytes());
        fix_tcp(&mut other_ack, 20, true);
        let mut other_window = p(2000, 1000, ACK);
        other_window[34] = 9;
        fix_tcp(&mut other_window, 20, true);
        let mut other_option = p(2000, 1000, ACK);
        other_option[47] = 9;
        fix_tcp(&mut other_option, 20, true);
        let mut other_ttl = p(2000, 1000, ACK);
        other_ttl[8] = 3;
        let mut no_df = p(1000, 1000, ACK);
        no_df[6] = 0;
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("sequence gap", vec![p(1000, 1000, ACK), p(2500, 1000, ACK)]),
            ("bad checksum", vec![p(1000, 1000, ACK), bad_sum]),
            (
                "after PSH",
                vec![p(1000, 1000, ACK | PSH), p(2000, 1000, ACK)],
            ),
            ("FIN", vec![p(1000, 1000, ACK), p(2000, 1000, ACK | 0x01)]),
            ("SYN", vec![p(1000, 1000, ACK), p(2000, 1000, ACK | 0x02)]),
            ("RST", vec![p(1000, 1000, ACK), p(2000, 1000, ACK | 0x04)]),
            ("URG", vec![p(1000, 1000, ACK), p(2000, 1000, ACK | 0x20)]),
            ("ECE", vec![p(1000, 1000, ACK), p(2000, 1000, ACK | 0x40)]),
            ("CWR", vec![p(1000, 1000, ACK), p(2000, 1000, ACK | 0x80)]),
            ("short middle", vec![p(1000, 500, ACK), p(1500, 1000, ACK)]),
            (
                "after a short one",
                vec![p(1000, 1000, ACK), p(2000, 500, ACK), p(2500, 500, ACK)],
            ),
            (
                "longer than the first",
                vec![p(1000, 1000, ACK), p(2000, 1200, ACK)],
            ),
            ("pure ACK", vec![p(1000, 1000, ACK), p(2000, 0, ACK)]),
            ("other ack number", vec![p(1000, 1000, ACK), other_ack]),
            ("other window", vec![p(1000, 1000, ACK), other_window]),
            ("other options", vec![p(1000, 1000, ACK), other_option]),
            ("other TTL", vec![p(1000, 1000, ACK), other_ttl]),
            ("no DF", vec![no_df, p(2000, 1000, ACK)]),
        ];
        for (name, pkts) in cases {
            let out = run(&pkts, 4);
            let merged = out.iter().filter(|(h, _)| !is_plain(h)).count();
            let expect_merge = name == "after a short one";
            if expect_merge {
                // The first two merge; the third is refused after the short one.
                assert_eq!(out.len(), 2, "{name}");
            } else {
                assert_eq!(merged, 0, "{name}: nothing merged");
                assert_eq!(out.len(), pkts.len(), "{name}");
            }
            assert_eq!(resplit(&out).len(), pkts.len(), "{name}: nothing lost");
            // Order within the flow is kept.
            let seqs: Vec<u32> = resplit(&out)
                .iter()
                .map(|s| u32::from_be_bytes([s[24], s[25], s[26], s[27]]))
                .collect();
            let want: Vec<u32> = pkts
                .iter()
                .map(|s| u32::from_be_bytes([s[24], s[25], s[26], s[27]]))
                .collect();
            assert_eq!(seqs, want, "{name}: order");
        }
    }

    #[test]
    fn interleaved_flows_merge_separately_and_other_packets_pass_in_order() {
        let a = |i: u32| v4(1000 + i * 1000, &data(1000, 2), ACK);
        let b = |i: u32| {
            let mut p = v4(5000 + i * 1000, &data(1000, 3), ACK);
            p[20..22].copy_from_slice(&40001u16.to_be_bytes());
            fix_tcp(&mut p, 20, true);
            p
        };
        let udp = {
            let mut p = vec![0u8; 28];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&28u16.to_be_bytes());
            p[9] = 17;
            p
        };
        let pkts = vec![a(0), b(0), a(1), udp.clone(), b(1), a(2), b(2)];
        let out = run(&pkts, 4);
        assert_eq!(out.len(), 3, "udp, flow a, flow b");
        assert_eq!(out[0].1, udp);
        assert!(same(&resplit(&out[1..2]), &[a(0), a(1), a(2)]));
        assert!(same(&resplit(&out[2..3]), &[b(0), b(1), b(2)]));
        // With room for one flow only, each switch flushes: still nothing lost or reordered.
        let out = run(&pkts, 1);
        assert_eq!(resplit(&out).len(), pkts.len());
    }

    #[test]
    fn merging_stops_at_the_segment_and_size_limits() {
        let segs: Vec<Vec<u8>> = (0..80u32)
            .map(|i| v4(i * 100, &data(100, 4), ACK))
            .collect();
        let out = run(&segs, 1);
        assert_eq!(out.len(), 2);
        assert_eq!(VnetHdr::parse(&out[0].0).unwrap().gso_size, 100);
        assert_eq!(resplit(&out[..1]).len(), MAX_SEGMENTS);
        let big: Vec<Vec<u8>> = (0..50u32)
            .map(|i| v4(i * 1400, &data(1400, 5), ACK))
            .collect();
        let out = run(&big, 1);
        assert!(out.iter().all(|(_, p)| p.len() <= MAX_PACKET));
        assert!(same(&resplit(&out), &big));
    }

    /// An IPv4 UDP datagram with a valid checksum.
    fn udp4(payload: &[u8], sport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload.len()];
        p[0] = 0x45;
        let len = u16::try_from(p.len()).unwrap();
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let ipc = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&443u16.to_be_bytes());
        p[24..26].copy_from_slice(&(len - 20).to_be_bytes());
        p[28..].copy_from_slice(payload);
        let c = !fold(sum(&p[20..], pseudo_sum(&p, true, 17, p.len() - 20)));
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn udp_datagrams_merge_only_for_a_tun_with_uso_and_split_back_identically() {
        let dgrams: Vec<Vec<u8>> = (0..4u8)
            .map(|i| udp4(&data(if i == 3 { 400 } else { 1200 }, i), 5000))
            .collect();
        // Without USO on the TUN: written one by one.
        let out = run(&dgrams, 4);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|(h, _)| is_plain(h)));
        // With it: one UDP offload packet that splits back into the same datagrams.
        let mut c = Coalescer::with_udp(4);
        let mut out = Vec::new();
        let mut w = |h: &[u8; VNET_HDR_LEN], p: &[u8]| out.push((*h, p.to_vec()));
        for d in &dgrams {
            c.push(d, &mut w);
        }
        // Another flow, a bad checksum and a datagram after the short one stay apart.
        let other = udp4(&data(1200, 9), 5001);
        let mut bad = udp4(&data(1200, 7), 5000);
        bad[40] ^= 1;
        c.push(&other, &mut w);
        c.push(&bad, &mut w);
        c.flush(&mut w);
        let merged: Vec<_> = out.iter().filter(|(h, _)| !is_plain(h)).collect();
        assert_eq!(merged.len(), 1);
        let v = VnetHdr::parse(&merged[0].0).unwrap();
        assert_eq!(
            (v.gso_type, v.gso_size, v.csum_offset),
            (GSO_UDP_L4, 1200, 6)
        );
        assert!(same(&resplit(&[merged[0].clone()]), &dgrams));
        assert_eq!(out.len(), 3, "merged, the other flow, the bad one");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_packets_never_panic_and_are_all_written(
            pkts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 0..12)
        ) {
            let out = run(&pkts, 2);
            proptest::prop_assert!(out.len() <= pkts.len());
            proptest::prop_assert_eq!(out.is_empty(), pkts.is_empty());
        }
    }
}
