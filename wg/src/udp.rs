//! Batched UDP I/O for the device: UDP GSO on send (`UDP_SEGMENT`: one `sendmsg` carries up
//! to [`MAX_GSO_SEGMENTS`] equal-sized datagrams, the last may be shorter) and UDP GRO on
//! receive (`UDP_GRO`: one `recvmsg` returns several datagrams of one sender back to back,
//! with their size in a control message). Both are probed on the socket; a kernel or route
//! that refuses them at run time turns them off, and the device goes on one datagram per
//! call. The batch logic ([`SendBatch`]) is pure and unit tested.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (one IP packet's worth of UDP payload, with room for headers).
pub const MAX_GSO_BYTES: usize = 65_000;

fn sockopt(fd: RawFd, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a socket owned by the caller; the value is a c_int that lives for the
    // call and its size is passed.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            name,
            (&raw const value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel knows `UDP_SEGMENT` on this socket (Linux ≥ 4.18).
#[must_use]
pub fn gso_supported(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `v` and `len` are valid for writes and live for the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    rc == 0
}

/// Turns UDP GRO on for the socket (Linux ≥ 5.0).
///
/// # Errors
/// When the kernel refuses the option.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    sockopt(fd, libc::UDP_GRO, 1)
}

/// A socket address in the kernel's layout (IPv4 as `sockaddr_in`: Linux accepts it on a
/// dual-stack IPv6 socket).
fn sockaddr(to: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid `sockaddr_storage`.
    #[allow(unsafe_code)]
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin);
            }
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for `sockaddr_in6`.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6);
            }
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, libc::socklen_t::try_from(len).unwrap_or(0))
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`.
            #[allow(unsafe_code)]
            let sin = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`.
            #[allow(unsafe_code)]
            let sin6 = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_canonical();
            Some(SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// Control-message space for one `int` or `u16` option.
const CMSG_SPACE: usize = 64;

/// Sends `buf` as datagrams of `seg` bytes (the last may be shorter) in one `sendmsg` with
/// `UDP_SEGMENT`.
///
/// # Errors
/// The send's error (`EIO` when the route cannot segment, e.g. no checksum offload).
pub fn send_gso(fd: RawFd, buf: &[u8], seg: u16, to: SocketAddr) -> io::Result<usize> {
    let (mut ss, ss_len) = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CMSG_SPACE / 8];
    // SAFETY: all-zero is a valid `msghdr`.
    #[allow(unsafe_code)]
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut ss).cast();
    msg.msg_namelen = ss_len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    #[allow(unsafe_code)]
    let space = unsafe { libc::CMSG_SPACE(u32::try_from(std::mem::size_of::<u16>()).unwrap_or(2)) };
    msg.msg_controllen = space as usize;
    // SAFETY: `msg` points at `control`, which is large enough for one cmsg with a u16 and
    // aligned for `cmsghdr`; the kernel only reads `buf` and the address.
    #[allow(unsafe_code)]
    let rc = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len =
            libc::CMSG_LEN(u32::try_from(std::mem::size_of::<u16>()).unwrap_or(2)) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
        libc::sendmsg(fd, &raw const msg, 0)
    };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Receives into `buf`: the bytes, the sender, and the size of each datagram when the kernel
/// coalesced several (UDP GRO); `None` means one datagram.
///
/// # Errors
/// The receive's error.
pub fn recv_gro(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<usize>)> {
    // SAFETY: all-zero is a valid `sockaddr_storage` and `msghdr`.
    #[allow(unsafe_code)]
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CMSG_SPACE / 8];
    #[allow(unsafe_code)]
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut ss).cast();
    msg.msg_namelen =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).unwrap_or(128);
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE;
    // SAFETY: `msg` points at live buffers of the sizes given.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    let n = usize::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    let from = from_sockaddr(&ss).ok_or_else(|| io::Error::other("unknown address family"))?;
    let mut seg = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG_* walk stays
    // within them and reads the int payload unaligned.
    #[allow(unsafe_code)]
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                seg = usize::try_from(v).ok().filter(|&s| s > 0 && s < n);
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((n, from, seg))
}

/// Encrypted datagrams collected for one GSO send: all for one endpoint, all as long as the
/// first except possibly the last. The caller writes each datagram at [`SendBatch::tail`]
/// and then [`SendBatch::commit`]s it, which says whether the batch must be sent first.
#[derive(Debug)]
pub struct SendBatch {
    buf: Vec<u8>,
    len: usize,
    count: usize,
    seg: usize,
    to: Option<SocketAddr>,
    closed: bool,
}

/// What [`SendBatch::commit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The datagram joined the batch.
    Added,
    /// The datagram does not fit: send the batch ([`SendBatch::pending`]), then call
    /// [`SendBatch::restart`] to move the datagram to the front of an empty batch.
    FlushFirst,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// An empty batch with its buffer allocated once.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; MAX_GSO_BYTES + 2 * 65_536],
            len: 0,
            count: 0,
            seg: 0,
            to: None,
            closed: false,
        }
    }

    /// Where the next datagram is written.
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Records the `n`-byte datagram just written at the tail, for `to`.
    pub fn commit(&mut self, n: usize, to: SocketAddr) -> Commit {
        if self.count > 0
            && (self.to != Some(to)
                || self.closed
                || n > self.seg
                || self.count >= MAX_GSO_SEGMENTS
                || self.len + n > MAX_GSO_BYTES)
        {
            return Commit::FlushFirst;
        }
        if self.count == 0 {
            self.seg = n;
            self.to = Some(to);
        } else if n < self.seg {
            self.closed = true;
        }
        self.len += n;
        self.count += 1;
        Commit::Added
    }

    /// After a [`Commit::FlushFirst`] and sending: empties the batch and adds the `n`-byte
    /// datagram that was left at the tail.
    pub fn restart(&mut self, n: usize, to: SocketAddr) {
        self.buf.copy_within(self.len..self.len + n, 0);
        self.clear();
        let _ = self.commit(n, to);
    }

    /// The datagrams to send: bytes, datagram size, count, destination (`None` if empty).
    #[must_use]
    pub fn pending(&self) -> Option<(&[u8], usize, usize, SocketAddr)> {
        Some((&self.buf[..self.len], self.seg, self.count, self.to?)).filter(|_| self.count > 0)
    }

    /// Whether room for one more full-size datagram is left.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.count < MAX_GSO_SEGMENTS && !self.closed && self.len + self.seg <= MAX_GSO_BYTES
    }

    /// Empties the batch (after it was sent).
    pub fn clear(&mut self) {
        self.len = 0;
        self.count = 0;
        self.seg = 0;
        self.to = None;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 99, 0, 12], port))
    }

    fn put(b: &mut SendBatch, n: usize, byte: u8, to: SocketAddr) -> Commit {
        b.tail()[..n].fill(byte);
        let c = b.commit(n, to);
        if c == Commit::FlushFirst {
            b.restart(n, to);
        }
        c
    }

    #[test]
    fn equal_datagrams_batch_and_a_short_one_closes_the_batch() {
        let mut b = SendBatch::new();
        assert!(b.pending().is_none());
        for i in 0..3 {
            assert_eq!(put(&mut b, 100, i, a(1)), Commit::Added);
        }
        assert_eq!(put(&mut b, 40, 9, a(1)), Commit::Added);
        let (bytes, seg, count, to) = b.pending().unwrap();
        assert_eq!((bytes.len(), seg, count, to), (340, 100, 4, a(1)));
        assert_eq!(&bytes[100..200], &[1u8; 100][..]);
        // After a short one, nothing more joins: it must be the last of its send.
        assert_eq!(put(&mut b, 100, 7, a(1)), Commit::FlushFirst);
        let (bytes, seg, count, _) = b.pending().unwrap();
        assert_eq!((bytes, seg, count), (&[7u8; 100][..], 100, 1));
    }

    #[test]
    fn another_destination_a_longer_datagram_or_a_full_batch_flushes_first() {
        let mut b = SendBatch::new();
        put(&mut b, 100, 1, a(1));
        assert_eq!(put(&mut b, 100, 2, a(2)), Commit::FlushFirst);
        assert_eq!(b.pending().unwrap().3, a(2));
        assert_eq!(put(&mut b, 120, 3, a(2)), Commit::FlushFirst);
        assert_eq!(b.pending().unwrap().1, 120);
        b.clear();
        for _ in 0..MAX_GSO_SEGMENTS {
            assert_eq!(put(&mut b, 1000, 4, a(1)), Commit::Added);
            if !b.has_room() {
                break;
            }
        }
        assert!(!b.has_room());
        assert_eq!(put(&mut b, 1000, 5, a(1)), Commit::FlushFirst);
        assert!(b.pending().unwrap().0.len() <= MAX_GSO_BYTES);
    }

    #[test]
    fn gso_and_gro_round_trip_over_loopback() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd as _;
        assert!(gso_supported(tx.as_raw_fd()), "UDP_SEGMENT (Linux >= 4.18)");
        enable_gro(rx.as_raw_fd()).expect("UDP_GRO (Linux >= 5.0)");
        let mut buf = vec![0u8; 4 * 1200 + 300];
        for (i, c) in buf.chunks_mut(1200).enumerate() {
            c.fill(u8::try_from(i).unwrap());
        }
        let to = rx.local_addr().unwrap();
        assert_eq!(send_gso(tx.as_raw_fd(), &buf, 1200, to).unwrap(), buf.len());
        let mut got = Vec::new();
        let mut rbuf = vec![0u8; 65_536];
        while got.len() < buf.len() {
            let (n, from, seg) = recv_gro(rx.as_raw_fd(), &mut rbuf).unwrap();
            assert_eq!(from, tx.local_addr().unwrap());
            let seg = seg.unwrap_or(n);
            for d in rbuf[..n].chunks(seg) {
                assert!(d.len() == 1200 || d.len() == 300, "datagram of {}", d.len());
            }
            got.extend_from_slice(&rbuf[..n]);
        }
        assert_eq!(got, buf);
    }
}
