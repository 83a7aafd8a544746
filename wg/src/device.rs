//! The userspace WireGuard device: boringtun's `noise::Tunn` for the protocol, our own I/O
//! loop over a TUN interface and one UDP socket, and the UAPI socket for `wg`.
//!
//! Threads: one reads the TUN and encrypts, one reads the UDP socket and decrypts, one runs
//! the protocol timers, one serves the UAPI socket. They live as long as the process.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

use crate::dos::{HandshakeGuard, Verdict};
use crate::gro::Coalescer;
use crate::key::{NodeKey, PublicKey};
use crate::offload::{self, VNET_HDR_LEN};
use crate::plan::{Cidr, PeerChange, PeerConfig, diff_peers};
use crate::tun::{Tun, TunError};
use crate::uapi::{self, LinkStatus, PeerStatus, UapiError};
use crate::udp::{self, Commit, SendBatch};

/// Largest packet handled (IP maximum) plus WireGuard overhead.
const BUF_LEN: usize = 65_535 + 256;
/// Socket buffer size requested with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (root may exceed
/// `rmem_max`, which cannot be raised inside a network namespace).
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// Protocol timer tick.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// Errors starting the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The TUN interface could not be set up.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// The UDP socket could not be bound.
    #[error("bind UDP port {port}")]
    Bind {
        /// The port.
        port: u16,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The UAPI socket could not be created.
    #[error("UAPI socket {path}")]
    Uapi {
        /// The socket path.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("spawn thread {0}")]
    Thread(&'static str, #[source] std::io::Error),
}

/// Settings for [`Device::start`].
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Interface name (distinct per node: the UAPI socket path is global).
    pub interface: String,
    /// UDP listen port.
    pub listen_port: u16,
    /// Make the TUN interface persistent (`TUNSETPERSIST`).
    pub persist: bool,
    /// Use TUN segmentation/checksum offload (one read per TCP super-packet, and received
    /// TCP segments coalesced into one write, [`crate::gro`]).
    pub offload: bool,
    /// Send the encrypted segments of one TUN read with one UDP GSO `sendmsg`, when the
    /// kernel has it ([`crate::udp`]).
    pub udp_gso: bool,
    /// Receive with UDP GRO (several datagrams per `recvmsg`), when the kernel has it.
    pub udp_gro: bool,
    /// The handshake flood defence ([`crate::dos`]); off only to measure the attack.
    pub handshake_protection: bool,
    /// `SO_MARK` of the UDP socket (0: none; node encryption's policy routing needs it).
    pub fwmark: u32,
}

/// What [`Device::apply_peers`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Peers added.
    pub added: usize,
    /// Peers removed.
    pub removed: usize,
    /// Peers updated in place (endpoint / allowed IPs; session kept).
    pub updated: usize,
    /// Peers rebuilt (keepalive changed; new handshake).
    pub replaced: usize,
}

impl ApplyReport {
    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Counters of the datapath.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets from the TUN with no peer for their destination (dropped, never sent in clear).
    pub dropped_no_peer: AtomicU64,
    /// Packets from the TUN for a peer with no endpoint.
    pub dropped_no_endpoint: AtomicU64,
    /// Datagrams that matched no peer or failed to decrypt.
    pub dropped_invalid: AtomicU64,
    /// Decrypted packets whose source is not in the peer's allowed IPs.
    pub dropped_not_allowed: AtomicU64,
    /// TUN reads that could not be split into packets (offload mode).
    pub dropped_malformed: AtomicU64,
    /// Handshakes started as soon as a peer was added (at start, after a crash, or a new key).
    pub handshakes_initiated_on_add: AtomicU64,
    /// UDP GSO sends (each carried several datagrams).
    pub udp_gso_sends: AtomicU64,
    /// UDP receives that returned several coalesced datagrams (GRO).
    pub udp_gro_receives: AtomicU64,
    /// Packets written to the TUN that merged several received TCP segments.
    pub tun_coalesced_writes: AtomicU64,
    /// TUN reads that were UDP segmentation-offload packets (TUN USO), split here.
    pub tun_uso_reads: AtomicU64,
    /// TUN writes that merged several received UDP datagrams (TUN USO).
    pub tun_uso_writes: AtomicU64,
    /// UDP GSO sends the kernel refused (their datagrams were then sent one by one).
    pub udp_gso_failures: AtomicU64,
}

/// The I/O offloads a device runs with, after probing (shown in its counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// TUN TSO reads and coalesced TUN writes (`IFF_VNET_HDR`).
    pub tun: bool,
    /// TUN USO reads (UDP segmentation-offload packets split here; Linux ≥ 6.2).
    pub tun_uso: bool,
    /// UDP GSO sends (turned off for good if the kernel refuses one with `EIO`).
    pub udp_gso: bool,
    /// UDP GRO receives.
    pub udp_gro: bool,
}

/// One of this node's static keys: the current one (it initiates) and, while the node
/// rotates, the next one (it only answers initiations addressed to it, until it becomes the
/// current key).
struct LocalKey {
    key: Arc<NodeKey>,
    public: x25519::PublicKey,
}

/// One Noise state machine between one of this node's keys and one of a peer's keys.
/// boringtun's `Tunn` holds one local and one remote static key and cannot change either
/// without losing its sessions, so a rotation (ours or the peer's) is carried by a second link
/// beside the first: handshakes are routed by mac1 (which local key) and the decrypted
/// static key (which remote key), data by receiver index. Transport sessions do not depend
/// on static keys, so the old link keeps carrying traffic until the new one has a session.
struct Link {
    local: x25519::PublicKey,
    remote: PublicKey,
    index: u32,
    tunn: Mutex<Tunn>,
}

impl Link {
    /// How long ago its current session was established, if it has one that is still valid.
    fn session_age(&self) -> Option<Duration> {
        lock(&self.tunn).time_since_last_handshake()
    }
}

struct Peer {
    /// Its current key (what `wg show` lists and the configuration is keyed by).
    key: PublicKey,
    /// Its next key, while it rotates.
    next: Option<PublicKey>,
    /// One link per (local key, peer key) pair.
    links: Vec<Arc<Link>>,
    endpoint: RwLock<Option<SocketAddr>>,
    config: RwLock<PeerConfig>,
}

impl Peer {
    fn allowed(&self, ip: IpAddr) -> bool {
        read(&self.config)
            .allowed_ips
            .iter()
            .any(|c| c.contains(ip))
    }

    /// The peer's keys, newest first.
    fn remote_keys(&self) -> Vec<PublicKey> {
        self.next
            .into_iter()
            .chain(std::iter::once(self.key))
            .collect()
    }

    /// The link this node initiates on: its current key to the peer's newest key.
    fn initiating_link(&self, current: &x25519::PublicKey) -> Option<&Arc<Link>> {
        let newest = self.next.unwrap_or(self.key);
        self.links
            .iter()
            .find(|l| l.local == *current && l.remote == newest)
    }

    /// The link to send on: among links with a valid session, the one to the peer's newest
    /// key, then from this node's newest key (a next key has a session only once the peer
    /// handshook to it, which shows the peer knows it) — or, with `next_sends` off (a
    /// withdrawn next key), from the current key — then the freshest session; without any
    /// session, the initiating link (the packet is queued and a handshake started).
    fn sending_link(&self, current: &x25519::PublicKey, next_sends: bool) -> Option<Arc<Link>> {
        let newest_remote = self.next.unwrap_or(self.key);
        self.links
            .iter()
            .filter_map(|l| l.session_age().map(|age| (l, age)))
            .max_by_key(|(l, age)| {
                (
                    l.remote == newest_remote,
                    // A withdrawn next key is not sent on while the current key has a
                    // session (the peer is dropping its links to it).
                    if next_sends {
                        l.local != *current
                    } else {
                        l.local == *current
                    },
                    std::cmp::Reverse(*age),
                )
            })
            .map(|(l, _)| Arc::clone(l))
            .or_else(|| self.initiating_link(current).cloned())
    }
}

#[derive(Default)]
struct PeerTable {
    /// By current key.
    by_key: BTreeMap<PublicKey, Arc<Peer>>,
    /// By every key (current and next).
    by_remote: HashMap<PublicKey, Arc<Peer>>,
    by_idx: HashMap<u32, (Arc<Peer>, Arc<Link>)>,
    /// Longest prefix first.
    routes: Vec<(Cidr, Arc<Peer>)>,
}

impl PeerTable {
    /// Rebuilds the indexes and the routes from `by_key`.
    fn reindex(&mut self) {
        self.by_remote.clear();
        self.by_idx.clear();
        for p in self.by_key.values() {
            for k in p.remote_keys() {
                self.by_remote.insert(k, Arc::clone(p));
            }
            for l in &p.links {
                self.by_idx.insert(l.index, (Arc::clone(p), Arc::clone(l)));
            }
        }
        let mut routes: Vec<(Cidr, Arc<Peer>)> = self
            .by_key
            .values()
            .flat_map(|p| {
                read(&p.config)
                    .allowed_ips
                    .iter()
                    .map(|c| (*c, Arc::clone(p)))
                    .collect::<Vec<_>>()
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.prefix()));
        self.routes = routes;
    }

    fn lookup(&self, dst: IpAddr) -> Option<Arc<Peer>> {
        self.routes
            .iter()
            .find(|(c, _)| c.contains(dst))
            .map(|(_, p)| Arc::clone(p))
    }
}

struct Inner {
    name: String,
    /// This node's keys: the current one first, then the next one while it rotates.
    keys: RwLock<Vec<LocalKey>>,
    /// Whether links from the next key are preferred for sending once they have a session
    /// (false while a withdrawn next key only answers).
    next_sends: AtomicBool,
    tun: Tun,
    udp: UdpSocket,
    listen_port: u16,
    fwmark: AtomicU32,
    peers: RwLock<PeerTable>,
    next_index: AtomicU32,
    counters: Counters,
    /// UDP GSO in use (cleared if the kernel refuses it at run time).
    udp_gso: AtomicBool,
    /// UDP GRO in use.
    udp_gro: bool,
    guard: HandshakeGuard,
    /// Serialises configuration changes (UAPI, config reloads, key changes).
    config_lock: Mutex<()>,
}

/// A running userspace WireGuard device. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("interface", &self.inner.name)
            .field("public_key", &self.public_key())
            .field("next_public_key", &self.next_public_key())
            .field("listen_port", &self.inner.listen_port)
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_sockopt(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `fd` is a valid socket owned by the caller; the option value is a c_int that
    // lives for the duration of the call and its size is passed correctly.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    rc == 0
}

impl Device {
    /// Opens the TUN interface, binds the UDP port, starts the datapath threads and serves
    /// the UAPI socket. The device starts with no peers: call [`Device::apply_peers`].
    ///
    /// # Errors
    /// TUN, socket, UAPI or thread errors.
    pub fn start(key: NodeKey, settings: &DeviceSettings) -> Result<Self, DeviceError> {
        let tun = Tun::open(&settings.interface, settings.persist, settings.offload)?;
        // Dual-stack: `[::]` also receives IPv4 (as v4-mapped addresses, canonicalised in
        // the receive loop) and Linux accepts IPv4 destinations on it; plain IPv4 when IPv6
        // is unavailable.
        let udp = UdpSocket::bind(SocketAddr::from((
            Ipv6Addr::UNSPECIFIED,
            settings.listen_port,
        )))
        .or_else(|_| {
            UdpSocket::bind(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                settings.listen_port,
            )))
        })
        .map_err(|source| DeviceError::Bind {
            port: settings.listen_port,
            source,
        })?;
        let fd = udp.as_raw_fd();
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if !set_sockopt(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
                let _ = set_sockopt(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        if settings.fwmark != 0 {
            let v = libc::c_int::from_ne_bytes(settings.fwmark.to_ne_bytes());
            if !set_sockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, v) {
                return Err(DeviceError::Bind {
                    port: settings.listen_port,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        let listen_port = udp.local_addr().map_or(settings.listen_port, |a| a.port());
        let udp_gso = settings.udp_gso && udp::gso_supported(fd);
        let udp_gro = settings.udp_gro
            && udp::enable_gro(fd)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "UDP_GRO refused; one datagram per receive"),
                )
                .is_ok();
        tracing::info!(
            interface = tun.name(),
            tun_offload = tun.has_vnet_hdr(),
            tun_uso = tun.has_uso(),
            udp_gso,
            udp_gro,
            "device offloads"
        );
        let public = x25519::PublicKey::from(key.secret());
        let inner = Arc::new(Inner {
            name: tun.name().to_owned(),
            next_sends: AtomicBool::new(true),
            keys: RwLock::new(vec![LocalKey {
                key: Arc::new(key),
                public,
            }]),
            tun,
            udp,
            listen_port,
            fwmark: AtomicU32::new(settings.fwmark),
            peers: RwLock::new(PeerTable::default()),
            next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            counters: Counters::default(),
            udp_gso: AtomicBool::new(udp_gso),
            udp_gro,
            guard: HandshakeGuard::new(&public, settings.handshake_protection),
            config_lock: Mutex::new(()),
        });
        let dev = Self { inner };
        let uapi = dev.bind_uapi()?;
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| DeviceError::Thread(name, e))
        };
        let d = dev.clone();
        spawn("wg-tun-rx", Box::new(move || d.tun_loop()))?;
        let d = dev.clone();
        spawn("wg-udp-rx", Box::new(move || d.udp_loop()))?;
        let d = dev.clone();
        spawn("wg-timers", Box::new(move || d.timer_loop()))?;
        let d = dev.clone();
        spawn("wg-uapi", Box::new(move || d.uapi_loop(&uapi)))?;
        Ok(dev)
    }

    /// The interface name.
    #[must_use]
    pub fn interface(&self) -> &str {
        &self.inner.name
    }

    /// This device's (current) public key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.current_key().key.public_key()
    }

    /// The next key's public key, while the node rotates.
    #[must_use]
    pub fn next_public_key(&self) -> Option<PublicKey> {
        read(&self.inner.keys).get(1).map(|k| k.key.public_key())
    }

    fn current_key(&self) -> LocalKey {
        let keys = read(&self.inner.keys);
        LocalKey {
            key: Arc::clone(&keys[0].key),
            public: keys[0].public,
        }
    }

    /// Sets this node's keys: `current` initiates, `next` (while rotating) answers the
    /// initiations addressed to it. Links of a key that is no longer listed are dropped with
    /// their sessions; links of a key that stays keep theirs (a next key that becomes the
    /// current one keeps the sessions peers built to it). Returns whether anything changed.
    pub fn set_keys(&self, current: NodeKey, next: Option<NodeKey>) -> bool {
        let _guard = lock(&self.inner.config_lock);
        let mut wanted = vec![current];
        if let Some(n) = next
            && n.public_key() != wanted[0].public_key()
        {
            wanted.push(n);
        }
        let have: Vec<PublicKey> = read(&self.inner.keys)
            .iter()
            .map(|k| k.key.public_key())
            .collect();
        let want: Vec<PublicKey> = wanted.iter().map(NodeKey::public_key).collect();
        if have == want {
            return false;
        }
        let keys: Vec<LocalKey> = wanted
            .into_iter()
            .map(|key| {
                let public = x25519::PublicKey::from(key.secret());
                LocalKey {
                    key: Arc::new(key),
                    public,
                }
            })
            .collect();
        let publics: Vec<x25519::PublicKey> = keys.iter().map(|k| k.public).collect();
        self.inner.guard.set_keys(&publics);
        *write(&self.inner.keys) = keys;
        tracing::info!(
            interface = %self.inner.name,
            current = %want[0],
            next = ?want.get(1).map(ToString::to_string),
            "node keys set"
        );
        // Every peer's links follow the new key set.
        let mut table = write(&self.inner.peers);
        let peers: Vec<Arc<Peer>> = table.by_key.values().cloned().collect();
        for p in peers {
            let peer = self.build_peer(Some(&p), p.key, p.next, read(&p.config).clone());
            table.by_key.insert(peer.key, peer);
        }
        table.reindex();
        drop(table);
        self.initiate_without_session();
        true
    }

    /// Whether links from the next key may be preferred for sending (see
    /// [`crate::config::DeviceConfig::next_key_answer_only`]).
    pub fn set_next_sends(&self, yes: bool) {
        self.inner.next_sends.store(yes, Ordering::Relaxed);
    }

    /// The UDP port in use.
    #[must_use]
    pub fn listen_port(&self) -> u16 {
        self.inner.listen_port
    }

    /// The handshake flood defence's counters.
    #[must_use]
    pub fn handshake_counters(&self) -> &crate::dos::HandshakeCounters {
        &self.inner.guard.counters
    }

    /// The offloads in use.
    #[must_use]
    pub fn offloads(&self) -> Offloads {
        Offloads {
            tun: self.inner.tun.has_vnet_hdr(),
            tun_uso: self.inner.tun.has_uso(),
            udp_gso: self.inner.udp_gso.load(Ordering::Relaxed),
            udp_gro: self.inner.udp_gro,
        }
    }

    /// Datapath counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Removes the UAPI socket (call on orderly shutdown; a stale one is replaced on start).
    pub fn remove_uapi_socket(&self) {
        let _ = std::fs::remove_file(uapi::socket_path(&self.inner.name));
    }

    /// The configured peers (as last applied).
    #[must_use]
    pub fn configured_peers(&self) -> BTreeMap<PublicKey, PeerConfig> {
        read(&self.inner.peers)
            .by_key
            .iter()
            .map(|(k, p)| (*k, read(&p.config).clone()))
            .collect()
    }

    /// Live status of every peer (one entry per peer, under its current key: the latest
    /// handshake and the byte counts of all its links).
    #[must_use]
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        read(&self.inner.peers)
            .by_key
            .values()
            .map(|p| {
                let (mut since, mut tx, mut rx) = (None::<Duration>, 0_u64, 0_u64);
                for l in &p.links {
                    let (s, t, r, _, _) = lock(&l.tunn).stats();
                    since = match (since, s) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    tx += t as u64;
                    rx += r as u64;
                }
                let cfg = read(&p.config);
                PeerStatus {
                    public_key: p.key,
                    endpoint: *read(&p.endpoint),
                    allowed_ips: cfg.allowed_ips.clone(),
                    keepalive: cfg.keepalive,
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    rx_bytes: rx,
                    tx_bytes: tx,
                }
            })
            .collect()
    }

    /// Every link of every peer: (peer's current key, local public key, remote key, age of
    /// the link's session). What the node daemon reads to know which peers have handshaken
    /// with its next key.
    #[must_use]
    pub fn link_status(&self) -> Vec<LinkStatus> {
        let current = self.current_key().public;
        read(&self.inner.peers)
            .by_key
            .values()
            .flat_map(|p| {
                let sending = p
                    .sending_link(&current, self.inner.next_sends.load(Ordering::Relaxed))
                    .map(|l| l.index);
                p.links
                    .iter()
                    .map(|l| LinkStatus {
                        peer: p.key,
                        local: PublicKey::from(*l.local.as_bytes()),
                        remote: l.remote,
                        session_age: l.session_age(),
                        sending: sending == Some(l.index),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn new_link(&self, local: &LocalKey, remote: PublicKey, keepalive: u16) -> Arc<Link> {
        let index = self.inner.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let keepalive = (keepalive != 0).then_some(keepalive);
        let tunn = Tunn::new(
            local.key.secret().clone(),
            remote.to_x25519(),
            None,
            keepalive,
            index,
            self.inner.guard.shared_limiter(&local.public),
        );
        Arc::new(Link {
            local: local.public,
            remote,
            index,
            tunn: Mutex::new(tunn),
        })
    }

    /// The peer `key` (next key `next`) with configuration `cfg`: one link per (local key,
    /// peer key), those of `old` that still fit kept with their sessions, the others new.
    fn build_peer(
        &self,
        old: Option<&Peer>,
        key: PublicKey,
        next: Option<PublicKey>,
        cfg: PeerConfig,
    ) -> Arc<Peer> {
        let keys = read(&self.inner.keys);
        let mut links = Vec::new();
        let remotes: Vec<PublicKey> = next.into_iter().chain(std::iter::once(key)).collect();
        for local in keys.iter() {
            for remote in &remotes {
                let kept = old.and_then(|o| {
                    o.links
                        .iter()
                        .find(|l| l.local == local.public && l.remote == *remote)
                        .cloned()
                });
                match kept {
                    Some(l) => links.push(l),
                    None => links.push(self.new_link(local, *remote, cfg.keepalive)),
                }
            }
        }
        drop(keys);
        let endpoint = match old {
            Some(o) if read(&o.config).endpoint == cfg.endpoint => *read(&o.endpoint),
            _ => cfg.endpoint,
        };
        Arc::new(Peer {
            key,
            next,
            links,
            endpoint: RwLock::new(endpoint),
            config: RwLock::new(cfg),
        })
    }

    /// Makes the device's peers equal to `desired`, changing only what differs: unchanged
    /// peers keep their sessions, endpoint/allowed-IP/next-key changes are made in place (a
    /// next key adds links beside the existing ones), a peer whose next key became its key
    /// keeps the links to that key.
    pub fn apply_peers(&self, desired: &BTreeMap<PublicKey, PeerConfig>) -> ApplyReport {
        let _guard = lock(&self.inner.config_lock);
        let changes = diff_peers(&self.configured_peers(), desired);
        let mut report = ApplyReport::default();
        if changes.is_empty() {
            return report;
        }
        let mut table = write(&self.inner.peers);
        for c in changes {
            match c {
                PeerChange::Remove(k) => {
                    table.by_key.remove(&k);
                    report.removed += 1;
                }
                PeerChange::Add(k, cfg) | PeerChange::Replace(k, cfg) => {
                    let p = self.build_peer(None, k, cfg.next_public_key, cfg);
                    if table.by_key.insert(k, p).is_some() {
                        report.replaced += 1;
                    } else {
                        report.added += 1;
                    }
                }
                PeerChange::Update(k, cfg) => {
                    if let Some(old) = table.by_key.get(&k).cloned() {
                        let p = self.build_peer(Some(&old), k, cfg.next_public_key, cfg);
                        table.by_key.insert(k, p);
                    }
                    report.updated += 1;
                }
                PeerChange::Rekey { old, new, config } => {
                    if let Some(o) = table.by_key.remove(&old) {
                        let p = self.build_peer(Some(&o), new, config.next_public_key, config);
                        table.by_key.insert(new, p);
                    }
                    report.updated += 1;
                }
            }
        }
        table.reindex();
        drop(table);
        self.initiate_without_session();
        report
    }

    /// After every change of keys or peers, each peer whose initiating link (this node's
    /// current key to the peer's newest key) has no session handshakes now rather than on
    /// the first packet or a timer: after a crash the peer's sessions died with the previous
    /// process (its data is dropped until a new session exists); a peer's new next key must
    /// get a session before this node can switch to it; and when this node's next key becomes
    /// its current one, the link from it to a peer's next key is the new initiating link even
    /// though it existed before (it only answered until then). Handshakes already in flight
    /// are left alone (boringtun's own timers retry them). This node's next key only answers:
    /// it waits for the peers to handshake to it.
    fn initiate_without_session(&self) {
        let current = self.current_key().public;
        let peers: Vec<Arc<Peer>> = read(&self.inner.peers).by_key.values().cloned().collect();
        let mut buf = vec![0u8; 256];
        for peer in peers {
            if let Some(link) = peer.initiating_link(&current)
                && link.session_age().is_none()
            {
                self.initiate(&peer, link, &mut buf);
            }
        }
    }

    /// Sends a handshake initiation on `link` (when the peer has an endpoint and none is in
    /// flight).
    fn initiate(&self, peer: &Peer, link: &Link, buf: &mut [u8]) {
        let Some(endpoint) = *read(&peer.endpoint) else {
            return;
        };
        let mut tunn = lock(&link.tunn);
        if let TunnResult::WriteToNetwork(out) = tunn.format_handshake_initiation(buf, false) {
            self.send(out, endpoint);
            self.inner
                .counters
                .handshakes_initiated_on_add
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send(&self, pkt: &[u8], to: SocketAddr) {
        let _ = self.inner.udp.send_to(pkt, to);
    }

    fn tun_loop(&self) {
        let mut src = vec![0u8; BUF_LEN];
        let mut batch = SendBatch::new();
        let mut seg = Vec::with_capacity(BUF_LEN);
        let vnet = self.inner.tun.has_vnet_hdr();
        loop {
            let n = match self.inner.tun.read(&mut src) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(interface = %self.inner.name, error = %e, "TUN read failed; datapath stopped");
                    return;
                }
            };
            if vnet {
                if n > 1 && src[1] & 0x7f == offload::GSO_UDP_L4 {
                    self.inner
                        .counters
                        .tun_uso_reads
                        .fetch_add(1, Ordering::Relaxed);
                }
                let res = offload::for_each_packet(&mut src[..n], &mut seg, |pkt| {
                    self.encrypt_into(pkt, &mut batch);
                });
                if res.is_err() {
                    self.inner
                        .counters
                        .dropped_malformed
                        .fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.encrypt_into(&src[..n], &mut batch);
            }
            self.send_batch(&mut batch);
        }
    }

    /// Encrypts one packet into `batch` (sending the batch first when the datagram cannot
    /// join it); a handshake initiation boringtun answers with instead is sent at once.
    fn encrypt_into(&self, pkt: &[u8], batch: &mut SendBatch) {
        let Some(dst_ip) = Tunn::dst_address(pkt) else {
            return;
        };
        let current = read(&self.inner.keys)[0].public;
        let Some(peer) = read(&self.inner.peers).lookup(dst_ip) else {
            self.inner
                .counters
                .dropped_no_peer
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(endpoint) = *read(&peer.endpoint) else {
            self.inner
                .counters
                .dropped_no_endpoint
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(link) = peer.sending_link(&current, self.inner.next_sends.load(Ordering::Relaxed))
        else {
            return;
        };
        let n = {
            let mut tunn = lock(&link.tunn);
            match tunn.encapsulate(pkt, batch.tail()) {
                // Type 4: transport data, the only kind batched.
                TunnResult::WriteToNetwork(out) if out.first() == Some(&4) => out.len(),
                TunnResult::WriteToNetwork(out) => {
                    self.send(out, endpoint);
                    return;
                }
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %peer.key, error = ?e, "encapsulate");
                    return;
                }
                _ => return,
            }
        };
        if batch.commit(n, endpoint) == Commit::FlushFirst {
            self.send_batch(batch);
            batch.restart(n, endpoint);
        }
        if !batch.has_room() {
            self.send_batch(batch);
        }
    }

    /// Sends what `batch` holds (one GSO send when it can) and empties it.
    fn send_batch(&self, batch: &mut SendBatch) {
        let Some((bytes, seg, count, to)) = batch.pending() else {
            return;
        };
        let gso = count > 1 && self.inner.udp_gso.load(Ordering::Relaxed);
        let sent = gso
            && match udp::send_gso(
                self.inner.udp.as_raw_fd(),
                bytes,
                u16::try_from(seg).unwrap_or(u16::MAX),
                to,
            ) {
                Ok(_) => {
                    self.inner
                        .counters
                        .udp_gso_sends
                        .fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) => {
                    self.inner
                        .counters
                        .udp_gso_failures
                        .fetch_add(1, Ordering::Relaxed);
                    // EIO: the route cannot segment (no checksum offload); for good.
                    if matches!(e.raw_os_error(), Some(libc::EIO | libc::EOPNOTSUPP)) {
                        tracing::warn!(interface = %self.inner.name, error = %e, "UDP GSO refused; sending one datagram per call from now on");
                        self.inner.udp_gso.store(false, Ordering::Relaxed);
                    }
                    false
                }
            };
        if !sent {
            for d in bytes.chunks(seg.max(1)) {
                self.send(d, to);
            }
        }
        batch.clear();
    }

    /// The peer and link a datagram belongs to: a handshake initiation by the local key its
    /// mac1 was made for (`local`, from the guard; every local key when the guard is off) and
    /// the static key it decrypts to, anything else by receiver index.
    fn find_link(
        &self,
        packet: &Packet<'_>,
        local: Option<x25519::PublicKey>,
    ) -> Option<(Arc<Peer>, Arc<Link>)> {
        match packet {
            Packet::HandshakeInit(p) => {
                let keys: Vec<(Arc<NodeKey>, x25519::PublicKey)> = read(&self.inner.keys)
                    .iter()
                    .filter(|k| local.is_none_or(|l| l == k.public))
                    .map(|k| (Arc::clone(&k.key), k.public))
                    .collect();
                for (key, public) in keys {
                    self.inner
                        .guard
                        .counters
                        .public_key_operations
                        .fetch_add(1, Ordering::Relaxed);
                    let Ok(hh) = parse_handshake_anon(key.secret(), &public, p) else {
                        continue;
                    };
                    let remote = PublicKey::from(hh.peer_static_public);
                    let table = read(&self.inner.peers);
                    let peer = table.by_remote.get(&remote)?;
                    let link = peer
                        .links
                        .iter()
                        .find(|l| l.local == public && l.remote == remote)?;
                    return Some((Arc::clone(peer), Arc::clone(link)));
                }
                None
            }
            Packet::HandshakeResponse(p) => self.by_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => self.by_index(p.receiver_idx),
            Packet::PacketData(p) => self.by_index(p.receiver_idx),
        }
    }

    fn by_index(&self, receiver_idx: u32) -> Option<(Arc<Peer>, Arc<Link>)> {
        read(&self.inner.peers)
            .by_idx
            .get(&(receiver_idx >> 8))
            .cloned()
    }

    fn udp_loop(&self) {
        let mut src = vec![0u8; BUF_LEN];
        let mut dst = vec![0u8; BUF_LEN];
        let mut cookie = vec![0u8; 256];
        let mut coalescer = match (self.inner.tun.has_vnet_hdr(), self.inner.tun.has_uso()) {
            (true, true) => Some(Coalescer::with_udp(8)),
            (true, false) => Some(Coalescer::new(8)),
            (false, _) => None,
        };
        let fd = self.inner.udp.as_raw_fd();
        loop {
            let received = if self.inner.udp_gro {
                udp::recv_gro(fd, &mut src)
            } else {
                self.inner
                    .udp
                    .recv_from(&mut src)
                    .map(|(n, from)| (n, from, None))
            };
            let (n, from, seg) = match received {
                Ok((n, from, seg)) => (
                    n,
                    SocketAddr::new(from.ip().to_canonical(), from.port()),
                    seg,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(interface = %self.inner.name, error = %e, "UDP receive failed; datapath stopped");
                    return;
                }
            };
            if seg.is_some() {
                self.inner
                    .counters
                    .udp_gro_receives
                    .fetch_add(1, Ordering::Relaxed);
            }
            for datagram in src[..n].chunks(seg.unwrap_or(n).max(1)) {
                self.receive(datagram, from, &mut dst, &mut cookie, coalescer.as_mut());
            }
            if let Some(c) = coalescer.as_mut() {
                c.flush(&mut |h, p| self.write_tun(h, p));
            }
        }
    }

    /// Handles one datagram from `from`: the handshake defence, then the link's Noise state.
    fn receive(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        dst: &mut [u8],
        cookie: &mut [u8],
        coalescer: Option<&mut Coalescer>,
    ) {
        // mac1, cookies under load and per-source limits before any public-key work.
        let (packet, local) = match self.inner.guard.check(from.ip(), datagram, cookie) {
            Verdict::Process(p, local) => (p, local),
            Verdict::CookieReply(reply) => {
                self.send(reply, from);
                return;
            }
            Verdict::Drop(_) => {
                self.inner
                    .counters
                    .dropped_invalid
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some((peer, link)) = self.find_link(&packet, local) else {
            self.inner
                .counters
                .dropped_invalid
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut tunn = lock(&link.tunn);
        let mut valid = true;
        match tunn.decapsulate(Some(from.ip()), datagram, dst) {
            TunnResult::Done => {}
            TunnResult::Err(_) => {
                self.inner
                    .counters
                    .dropped_invalid
                    .fetch_add(1, Ordering::Relaxed);
                valid = false;
            }
            TunnResult::WriteToNetwork(out) => {
                self.send(out, from);
                // Flush packets queued while the handshake was in progress.
                while let TunnResult::WriteToNetwork(out) = tunn.decapsulate(None, &[], dst) {
                    self.send(out, from);
                }
            }
            TunnResult::WriteToTunnelV4(out, src_ip) => {
                self.deliver(&peer, out, IpAddr::V4(src_ip), coalescer);
            }
            TunnResult::WriteToTunnelV6(out, src_ip) => {
                self.deliver(&peer, out, IpAddr::V6(src_ip), coalescer);
            }
        }
        drop(tunn);
        if valid && *read(&peer.endpoint) != Some(from) {
            *write(&peer.endpoint) = Some(from);
        }
    }

    fn deliver(&self, peer: &Peer, pkt: &[u8], src: IpAddr, coalescer: Option<&mut Coalescer>) {
        if pkt.is_empty() {
            return; // keepalive
        }
        if !peer.allowed(src) {
            self.inner
                .counters
                .dropped_not_allowed
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        match coalescer {
            Some(c) => c.push(pkt, &mut |h, p| self.write_tun(h, p)),
            None => {
                let _ = self.inner.tun.write(pkt);
            }
        }
    }

    /// Writes one packet with its vnet header (offload mode).
    fn write_tun(&self, hdr: &[u8; VNET_HDR_LEN], pkt: &[u8]) {
        if !crate::gro::is_plain(hdr) {
            self.inner
                .counters
                .tun_coalesced_writes
                .fetch_add(1, Ordering::Relaxed);
            if hdr[1] == offload::GSO_UDP_L4 {
                self.inner
                    .counters
                    .tun_uso_writes
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = self.inner.tun.write_with_hdr(hdr, pkt);
    }

    fn timer_loop(&self) {
        let mut dst = vec![0u8; BUF_LEN];
        loop {
            std::thread::sleep(TIMER_TICK);
            self.inner.guard.tick();
            let peers: Vec<Arc<Peer>> = read(&self.inner.peers).by_key.values().cloned().collect();
            for p in peers {
                let endpoint = *read(&p.endpoint);
                for l in &p.links {
                    let mut tunn = lock(&l.tunn);
                    if let (TunnResult::WriteToNetwork(out), Some(e)) =
                        (tunn.update_timers(&mut dst), endpoint)
                    {
                        self.send(out, e);
                    }
                }
            }
        }
    }

    fn bind_uapi(&self) -> Result<UnixListener, DeviceError> {
        let path = uapi::socket_path(&self.inner.name);
        let err = |source| DeviceError::Uapi {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(uapi::SOCKET_DIR)
            .map_err(err)?;
        // A socket left by a previous (killed) instance: replace it.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(listener)
    }

    fn uapi_loop(&self, listener: &UnixListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let d = self.clone();
            let _ = std::thread::Builder::new()
                .name("wg-uapi-conn".into())
                .spawn(move || d.serve_uapi(conn));
        }
    }

    fn serve_uapi(&self, conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let Ok(mut out) = conn.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(conn);
        loop {
            let mut first = String::new();
            if reader.read_line(&mut first).unwrap_or(0) == 0 {
                return;
            }
            let mut body = zeroize::Zeroizing::new(String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\n" {
                    break;
                }
                body.push_str(&line);
                zeroize::Zeroize::zeroize(&mut line);
            }
            let answer = match first.trim_end() {
                "get=1" => uapi::format_get(
                    &self.current_key().key.secret_hex(),
                    self.inner.listen_port,
                    self.inner.fwmark.load(Ordering::Relaxed),
                    &self.peer_status(),
                ),
                "set=1" => {
                    let errno = match self.uapi_set(&body) {
                        Ok(()) => 0,
                        Err(e) => {
                            tracing::warn!(interface = %self.inner.name, error = %e, "UAPI set refused");
                            e.errno()
                        }
                    };
                    zeroize::Zeroizing::new(format!("errno={errno}\n\n"))
                }
                uapi::GET_COUNTERS => zeroize::Zeroizing::new(self.format_counters()),
                uapi::GET_LINKS => zeroize::Zeroizing::new(uapi::format_links(&self.link_status())),
                _ => zeroize::Zeroizing::new(format!("errno={}\n\n", uapi::EINVAL)),
            };
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// The device's drop and handshake-defence counters, `key=value` lines (answer to
    /// [`uapi::GET_COUNTERS`], an identityd extension the `wg` tool never sends).
    fn format_counters(&self) -> String {
        let c = &self.inner.counters;
        let h = &self.inner.guard.counters;
        let mut out = String::new();
        for (k, v) in [
            ("dropped_no_peer", &c.dropped_no_peer),
            ("dropped_no_endpoint", &c.dropped_no_endpoint),
            ("dropped_invalid", &c.dropped_invalid),
            ("dropped_not_allowed", &c.dropped_not_allowed),
            ("dropped_malformed", &c.dropped_malformed),
            (
                "handshakes_initiated_on_add",
                &c.handshakes_initiated_on_add,
            ),
            ("udp_gso_sends", &c.udp_gso_sends),
            ("udp_gso_failures", &c.udp_gso_failures),
            ("udp_gro_receives", &c.udp_gro_receives),
            ("tun_coalesced_writes", &c.tun_coalesced_writes),
            ("tun_uso_reads", &c.tun_uso_reads),
            ("tun_uso_writes", &c.tun_uso_writes),
            ("handshake_invalid_mac", &h.invalid_mac),
            ("handshake_cookie_replies", &h.cookie_replies),
            ("handshake_rate_limited", &h.rate_limited),
            ("handshake_public_key_operations", &h.public_key_operations),
        ] {
            out.push_str(&format!("{k}={}\n", v.load(Ordering::Relaxed)));
        }
        let o = self.offloads();
        for (k, on) in [
            ("offload_tun", o.tun),
            ("offload_tun_uso", o.tun_uso),
            ("offload_udp_gso", o.udp_gso),
            ("offload_udp_gro", o.udp_gro),
        ] {
            out.push_str(&format!("{k}={}\n", u8::from(on)));
        }
        out.push_str("errno=0\n\n");
        out
    }

    fn uapi_set(&self, body: &str) -> Result<(), UapiError> {
        let req = uapi::parse_set(body)?;
        if let Some(k) = &req.private_key
            && **k != *self.current_key().key.secret().as_bytes()
        {
            return Err(UapiError::Refused {
                key: "private_key",
                reason: "the node key is managed by identityd (rotate it with a KeyRotation)",
            });
        }
        if let Some(p) = req.listen_port
            && p != self.inner.listen_port
        {
            return Err(UapiError::Refused {
                key: "listen_port",
                reason: "the listen port is fixed while the device runs",
            });
        }
        if let Some(m) = req.fwmark {
            let fd = self.inner.udp.as_raw_fd();
            let v = libc::c_int::from_ne_bytes(m.to_ne_bytes());
            if set_sockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, v) {
                self.inner.fwmark.store(m, Ordering::Relaxed);
            }
        }
        let mut peers = self.configured_peers();
        uapi::apply_set(&req, &mut peers);
        self.apply_peers(&peers);
        Ok(())
    }
}
