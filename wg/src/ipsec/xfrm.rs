//! XFRM states (SAs) and policies over netlink (`NETLINK_XFRM`), without `ip xfrm`.
//!
//! What identityd installs: tunnel-mode ESP between node addresses for pod CIDRs, AES-GCM
//! (RFC 4106, 256-bit key, 128-bit ICV), 64-bit extended sequence numbers with a replay
//! window, policies with `level required` (a matching packet without its SA is dropped, never
//! sent or accepted in clear), optionally under the IPsec path mark (DESIGN.md: 0x0d00/0x0f00).
//!
//! Requests are synchronous (one request, one acknowledgement) on a socket of the calling
//! thread's network namespace.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_xfrm::{
    AF_INET, AF_INET6, Address, AlgAead, IPPROTO_ESP, Id, Mark, ReplayEsn, Selector, UserPolicyId,
    UserTemplate, XFRM_ALG_AEAD_NAME_LEN, XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW, XFRM_POLICY_FWD,
    XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_SHARE_ANY, XFRM_STATE_ESN, XfrmAttrs, XfrmMessage,
    policy, state,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_XFRM};

use super::keys::{AEAD_NAME, ICV_BITS, SaKey};
use crate::plan::Cidr;

/// Errors talking to the kernel's XFRM netlink interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XfrmError {
    /// The netlink socket could not be opened or used.
    #[error("XFRM netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Kernel {
        /// The request, e.g. `add SA 10.99.0.11 -> 10.99.0.12 spi 0x00000101`.
        what: String,
        /// The errno the kernel answered.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be read.
    #[error("{what}: unreadable answer: {detail}")]
    Answer {
        /// The request.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// Addresses of different families in one SA or policy.
    #[error("{what}: addresses of different families")]
    MixedFamilies {
        /// The request.
        what: String,
    },
}

/// A packet mark and mask an SA or policy matches (`skb->mark & mask == value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XfrmMark {
    /// The value.
    pub value: u32,
    /// The mask.
    pub mask: u32,
}

/// One tunnel-mode ESP SA (one direction of one node pair).
#[derive(Debug, Clone)]
pub struct SaSpec {
    /// Outer source (the sending node's underlay address).
    pub src: IpAddr,
    /// Outer destination (the receiving node's underlay address).
    pub dst: IpAddr,
    /// The SPI the receiving node allocated.
    pub spi: u32,
    /// Ties the SA to the policies whose template names the same reqid.
    pub reqid: u32,
    /// The AES-GCM key and salt.
    pub key: SaKey,
    /// The replay window in packets (ESN bitmap; 0 disables replay protection).
    pub replay_window: u32,
    /// Only packets with this mark use the SA.
    pub mark: Option<XfrmMark>,
}

impl SaSpec {
    fn what(&self, verb: &str) -> String {
        format!(
            "{verb} SA {} -> {} spi {:#010x}",
            self.src, self.dst, self.spi
        )
    }
}

/// The direction a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyDir {
    /// Packets this host sends.
    Out,
    /// Packets delivered to this host.
    In,
    /// Packets this host forwards (e.g. to a local pod).
    Fwd,
}

impl PolicyDir {
    fn raw(self) -> u8 {
        match self {
            Self::Out => XFRM_POLICY_OUT,
            Self::In => XFRM_POLICY_IN,
            Self::Fwd => XFRM_POLICY_FWD,
        }
    }

    fn from_raw(d: u8) -> Option<Self> {
        match d {
            XFRM_POLICY_OUT => Some(Self::Out),
            XFRM_POLICY_IN => Some(Self::In),
            XFRM_POLICY_FWD => Some(Self::Fwd),
            _ => None,
        }
    }
}

/// A policy: traffic from `src` to `dst` (inner addresses, e.g. pod CIDRs) must go through
/// the tunnel-mode ESP SA between `tunnel_src` and `tunnel_dst` with `reqid` — `level
/// required`: without that SA the packet is dropped (out) or refused (in/fwd).
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// Inner source prefix.
    pub src: Cidr,
    /// Inner destination prefix.
    pub dst: Cidr,
    /// Which direction.
    pub dir: PolicyDir,
    /// Outer source of the SA (the sending node).
    pub tunnel_src: IpAddr,
    /// Outer destination of the SA (the receiving node).
    pub tunnel_dst: IpAddr,
    /// The SA's reqid.
    pub reqid: u32,
    /// Priority (lower wins).
    pub priority: u32,
    /// Only packets with this mark match.
    pub mark: Option<XfrmMark>,
}

impl PolicySpec {
    fn what(&self, verb: &str) -> String {
        format!(
            "{verb} policy {} -> {} dir {:?} via {} -> {}",
            self.src, self.dst, self.dir, self.tunnel_src, self.tunnel_dst
        )
    }

    fn selector(&self) -> Selector {
        let mut sel = Selector::default();
        sel.source_prefix(&self.src.addr(), self.src.prefix());
        sel.destination_prefix(&self.dst.addr(), self.dst.prefix());
        sel
    }
}

/// An SA the kernel holds (from a dump; keys are not read back).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledSa {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// SPI.
    pub spi: u32,
    /// reqid.
    pub reqid: u32,
    /// Mark, when the SA has one.
    pub mark: Option<(u32, u32)>,
}

/// A policy the kernel holds (from a dump), with its first template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledPolicy {
    /// Inner source prefix.
    pub src: Cidr,
    /// Inner destination prefix.
    pub dst: Cidr,
    /// Direction.
    pub dir: PolicyDir,
    /// The template's outer source and destination and reqid (`None`: no template).
    pub tmpl: Option<(IpAddr, IpAddr, u32)>,
    /// Mark, when the policy has one.
    pub mark: Option<(u32, u32)>,
}

fn ip_of(a: &Address, family: u16) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(a.to_ipv6())
    } else {
        IpAddr::V4(a.to_ipv4())
    }
}

fn mark_of(nlas: &[XfrmAttrs]) -> Option<(u32, u32)> {
    nlas.iter().find_map(|a| match a {
        XfrmAttrs::Mark(m) => Some((m.value, m.mask)),
        _ => None,
    })
}

fn family(a: IpAddr) -> u16 {
    if a.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// A netlink XFRM socket in the calling thread's network namespace.
pub struct Xfrm {
    sock: Socket,
    seq: u32,
}

impl std::fmt::Debug for Xfrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xfrm").field("seq", &self.seq).finish()
    }
}

impl Xfrm {
    /// Opens the socket.
    ///
    /// # Errors
    /// The kernel has no XFRM netlink (`xfrm_user` not loaded and not loadable), or no rights.
    pub fn open() -> Result<Self, XfrmError> {
        let mut sock = Socket::new(NETLINK_XFRM).map_err(XfrmError::Socket)?;
        sock.bind_auto().map_err(XfrmError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(XfrmError::Socket)?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` under a new sequence number. An SA request holds key material:
    /// the serialised copy is zeroized on drop, the message's own copy here.
    fn send(&mut self, msg: XfrmMessage, flags: u16) -> Result<(), XfrmError> {
        let mut req = NetlinkMessage::from(msg);
        self.seq = self.seq.wrapping_add(1);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = zeroize::Zeroizing::new(vec![0u8; req.buffer_len()]);
        req.serialize(&mut buf);
        if let NetlinkPayload::InnerMessage(XfrmMessage::AddSa(mut m)) = req.payload {
            wipe_key_attrs(&mut m.nlas);
        }
        self.sock.send(&buf, 0).map_err(XfrmError::Socket)?;
        Ok(())
    }

    /// Reads the kernel's answers to the last request, handing each message of its sequence
    /// number to `on` until `on` returns the outcome.
    fn answers(
        &mut self,
        what: &str,
        mut on: impl FnMut(NetlinkPayload<XfrmMessage>) -> Option<Result<(), XfrmError>>,
    ) -> Result<(), XfrmError> {
        loop {
            // An SA dump carries the keys: the raw answer is zeroized when dropped.
            let answer =
                zeroize::Zeroizing::new(self.sock.recv_from_full().map_err(XfrmError::Socket)?.0);
            let mut off = 0;
            while off < answer.len() {
                let msg =
                    NetlinkMessage::<XfrmMessage>::deserialize(&answer[off..]).map_err(|e| {
                        XfrmError::Answer {
                            what: what.to_owned(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq
                    && let Some(outcome) = on(msg.payload)
                {
                    return outcome;
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn kernel_error(what: &str, code: std::num::NonZeroI32) -> XfrmError {
        XfrmError::Kernel {
            what: what.to_owned(),
            source: std::io::Error::from_raw_os_error(-code.get()),
        }
    }

    /// One request and its acknowledgement.
    fn request(&mut self, what: &str, msg: XfrmMessage) -> Result<(), XfrmError> {
        self.send(msg, NLM_F_ACK)?;
        self.answers(what, |p| match p {
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(code) => Err(Self::kernel_error(what, code)),
            }),
            _ => None,
        })
    }

    /// Sends a dump request and collects every answer until the kernel says done.
    fn dump(&mut self, what: &str, msg: XfrmMessage) -> Result<Vec<XfrmMessage>, XfrmError> {
        self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.answers(what, |p| match p {
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(e) => e.code.map(|code| Err(Self::kernel_error(what, code))),
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                None
            }
            _ => None,
        })?;
        Ok(out)
    }

    /// Every ESP SA of this network namespace (keys are not read back).
    ///
    /// # Errors
    /// The kernel's refusal or an unreadable answer.
    pub fn sas(&mut self) -> Result<Vec<InstalledSa>, XfrmError> {
        let mut msgs = self.dump(
            "dump SAs",
            XfrmMessage::GetDumpSa(state::GetDumpMessage::default()),
        )?;
        for m in &mut msgs {
            if let XfrmMessage::AddSa(sa) | XfrmMessage::UpdateSa(sa) = m {
                wipe_key_attrs(&mut sa.nlas);
            }
        }
        let mut out: Vec<InstalledSa> = msgs
            .into_iter()
            .filter_map(|m| match m {
                XfrmMessage::AddSa(sa) | XfrmMessage::UpdateSa(sa)
                    if sa.user_sa_info.id.proto == IPPROTO_ESP =>
                {
                    let fam = sa.user_sa_info.family;
                    Some(InstalledSa {
                        src: ip_of(&sa.user_sa_info.saddr, fam),
                        dst: ip_of(&sa.user_sa_info.id.daddr, fam),
                        spi: sa.user_sa_info.id.spi,
                        reqid: sa.user_sa_info.reqid,
                        mark: mark_of(&sa.nlas),
                    })
                }
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every policy of this network namespace (main policy type), with its first template.
    ///
    /// # Errors
    /// The kernel's refusal or an unreadable answer.
    pub fn policies(&mut self) -> Result<Vec<InstalledPolicy>, XfrmError> {
        let msgs = self.dump(
            "dump policies",
            XfrmMessage::GetPolicy(policy::DelGetMessage::default()),
        )?;
        let mut out: Vec<InstalledPolicy> = msgs
            .into_iter()
            .filter_map(|m| match m {
                XfrmMessage::AddPolicy(p) | XfrmMessage::UpdatePolicy(p) => {
                    let info = &p.user_policy_info;
                    let sel = &info.selector;
                    let src = Cidr::new(ip_of(&sel.saddr, sel.family), sel.prefixlen_s).ok()?;
                    let dst = Cidr::new(ip_of(&sel.daddr, sel.family), sel.prefixlen_d).ok()?;
                    let tmpl = p.nlas.iter().find_map(|a| match a {
                        XfrmAttrs::Template(t) => t.first().map(|t| {
                            (
                                ip_of(&t.saddr, t.family),
                                ip_of(&t.id.daddr, t.family),
                                t.reqid,
                            )
                        }),
                        _ => None,
                    });
                    Some(InstalledPolicy {
                        src,
                        dst,
                        dir: PolicyDir::from_raw(info.direction)?,
                        tmpl,
                        mark: mark_of(&p.nlas),
                    })
                }
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Adds an SA (fails with `EEXIST` when one with the same destination, SPI and protocol
    /// is installed).
    ///
    /// # Errors
    /// The kernel's refusal, named with the SA.
    pub fn add_sa(&mut self, sa: &SaSpec) -> Result<(), XfrmError> {
        let what = sa.what("add");
        if family(sa.src) != family(sa.dst) {
            return Err(XfrmError::MixedFamilies { what });
        }
        let mut m = state::ModifyMessage::default();
        m.user_sa_info.source(&sa.src);
        m.user_sa_info.destination(&sa.dst);
        m.user_sa_info.id.proto = IPPROTO_ESP;
        m.user_sa_info.id.spi = sa.spi;
        m.user_sa_info.reqid = sa.reqid;
        m.user_sa_info.mode = XFRM_MODE_TUNNEL;
        m.user_sa_info.flags = XFRM_STATE_ESN;
        // The selector stays empty (any inner addresses): the policies select the traffic.
        m.user_sa_info.selector.family = family(sa.src);
        let mut name = [0u8; XFRM_ALG_AEAD_NAME_LEN];
        name[..AEAD_NAME.len()].copy_from_slice(AEAD_NAME.as_bytes());
        let key = sa.key.as_bytes();
        m.nlas.push(XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name: name,
            alg_key_len: u32::try_from(key.len() * 8).unwrap_or(u32::MAX),
            alg_icv_len: ICV_BITS,
            alg_key: key.to_vec(),
        }));
        m.nlas.push(XfrmAttrs::ReplayStateEsn(ReplayEsn {
            bmp_len: sa.replay_window.div_ceil(32),
            oseq: 0,
            seq: 0,
            oseq_hi: 0,
            seq_hi: 0,
            replay_window: sa.replay_window,
            bmp: Vec::new(),
        }));
        if let Some(mark) = sa.mark {
            m.nlas.push(XfrmAttrs::Mark(Mark {
                value: mark.value,
                mask: mark.mask,
            }));
        }
        self.request(&what, XfrmMessage::AddSa(m))
    }

    /// Deletes the SA to `dst` with `spi` (ESP) and the given mark.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` when there is none).
    pub fn delete_sa(
        &mut self,
        dst: IpAddr,
        spi: u32,
        mark: Option<XfrmMark>,
    ) -> Result<(), XfrmError> {
        let mut m = state::DelGetMessage::default();
        m.user_sa_id.destination(&dst);
        m.user_sa_id.spi = spi;
        m.user_sa_id.proto = IPPROTO_ESP;
        if let Some(mark) = mark {
            m.nlas.push(XfrmAttrs::Mark(Mark {
                value: mark.value,
                mask: mark.mask,
            }));
        }
        self.request(
            &format!("delete SA -> {dst} spi {spi:#010x}"),
            XfrmMessage::DeleteSa(m),
        )
    }

    /// Adds or replaces a policy (`XFRM_MSG_UPDPOLICY`: idempotent).
    ///
    /// # Errors
    /// The kernel's refusal, named with the policy.
    pub fn put_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError> {
        let what = p.what("put");
        let fams = [
            family(p.src.addr()),
            family(p.dst.addr()),
            family(p.tunnel_src),
            family(p.tunnel_dst),
        ];
        if fams.iter().any(|f| *f != fams[0]) {
            return Err(XfrmError::MixedFamilies { what });
        }
        let mut m = policy::ModifyMessage::default();
        m.user_policy_info.selector = p.selector();
        m.user_policy_info.direction = p.dir.raw();
        m.user_policy_info.action = XFRM_POLICY_ALLOW;
        m.user_policy_info.priority = p.priority;
        m.user_policy_info.share = XFRM_SHARE_ANY;
        m.nlas.push(XfrmAttrs::Template(vec![UserTemplate {
            id: Id {
                daddr: Address::from_ip(&p.tunnel_dst),
                spi: 0,
                proto: IPPROTO_ESP,
            },
            family: family(p.tunnel_dst),
            saddr: Address::from_ip(&p.tunnel_src),
            reqid: p.reqid,
            mode: XFRM_MODE_TUNNEL,
            share: XFRM_SHARE_ANY,
            // 0 = required: no SA, no passage.
            optional: 0,
            aalgos: u32::MAX,
            ealgos: u32::MAX,
            calgos: u32::MAX,
        }]));
        if let Some(mark) = p.mark {
            m.nlas.push(XfrmAttrs::Mark(Mark {
                value: mark.value,
                mask: mark.mask,
            }));
        }
        self.request(&what, XfrmMessage::UpdatePolicy(m))
    }

    /// Deletes the policy with `p`'s selector, direction and mark.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` when there is none).
    pub fn delete_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError> {
        let mut m = policy::DelGetMessage {
            user_policy_id: UserPolicyId {
                selector: p.selector(),
                index: 0,
                direction: p.dir.raw(),
            },
            ..Default::default()
        };
        if let Some(mark) = p.mark {
            m.nlas.push(XfrmAttrs::Mark(Mark {
                value: mark.value,
                mask: mark.mask,
            }));
        }
        self.request(&p.what("delete"), XfrmMessage::DeletePolicy(m))
    }
}

fn wipe_key_attrs(nlas: &mut [XfrmAttrs]) {
    use zeroize::Zeroize as _;
    for a in nlas {
        if let XfrmAttrs::EncryptionAlgAead(alg) = a {
            alg.alg_key.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipsec::keys::{Direction, Endpoint, derive_sa_key};
    use crate::key::NodeKey;

    fn sa() -> SaSpec {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let key = derive_sa_key(
            &a,
            Endpoint {
                name: "n1",
                public: a.public_key(),
            },
            Endpoint {
                name: "n2",
                public: b.public_key(),
            },
            Direction::Outbound,
            0x101,
            1,
        )
        .unwrap();
        SaSpec {
            src: "10.99.0.11".parse().unwrap(),
            dst: "10.99.0.12".parse().unwrap(),
            spi: 0x101,
            reqid: 2,
            key,
            replay_window: 1024,
            mark: Some(XfrmMark {
                value: 0x0d00,
                mask: 0x0f00,
            }),
        }
    }

    #[test]
    fn mixed_families_are_refused_before_the_kernel_is_asked() {
        let mut s = sa();
        s.dst = "fd00::12".parse().unwrap();
        // The family check comes before anything is sent.
        let mut x = Xfrm::open().expect("a NETLINK_XFRM socket (XFRM is in this kernel)");
        let e = x.add_sa(&s).unwrap_err();
        assert!(matches!(e, XfrmError::MixedFamilies { .. }), "{e}");
        assert!(e.to_string().contains("10.99.0.11 -> fd00::12"), "{e}");
    }

    #[test]
    fn the_sa_request_names_the_sa_and_never_the_key() {
        let s = sa();
        let what = s.what("add");
        assert_eq!(what, "add SA 10.99.0.11 -> 10.99.0.12 spi 0x00000101");
        let dbg = format!("{s:?}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        let hex: String = s
            .key
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!dbg.contains(&hex[..12]));
    }
}
