//! identityd's tc programs (C in `bpf/src/`, compiled by `build.rs`) and their aya loader.
//!
//! - [`classifier::Classifier`]: the path classifier (`classifier.c`). It marks every
//!   pod-to-remote-pod packet for its path (WireGuard `0x0e00`, IPsec `0x0d00`, the node's
//!   Envoy `0x0c00`, plaintext-allowed `0x0b00`) and, in strict mode (the default), drops such
//!   traffic when no encrypted path exists, counting it and reporting a flow event. Anything
//!   that is not pod-to-remote-pod passes untouched.
//! - [`routing`]: the policy routing (fwmark rules, table 202) and nftables TPROXY ruleset that
//!   turn marks into paths, as a pure plan plus an apply step.
//! - [`Counter`]: the smallest tc program (count every packet, optionally OR a mark, pass).
//!
//! What it does not do: walk IPv6 extension headers (such packets never take the proxy path;
//! they still get an encrypted path or a drop), or proxy anything but TCP.
//!
//! Measure (root; not part of the test run): `cargo run --release -p identityd-bpf --example
//! classifier_bench -- --out bpf/bench/classifier.json` (add `--quick` for a short run).
#![deny(unsafe_code)]

pub mod classifier;
pub mod net;
pub mod packet;
pub mod pin;
pub mod routing;
pub mod types;

pub use classifier::{
    Classifier, ClassifierConfig, DropReason, FlowEvent, FlowEventReader, FlowEvents, MtlsMode,
    Path, PathCounters, PolicyDirection, PolicyPod, PolicyRule, Route, RouteKind, TestRunOutcome,
};
pub use net::Cidr;

use aya::maps::PerCpuArray;
use aya::programs::{SchedClassifier, TcAttachType, tc};
use aya::{Ebpf, EbpfLoader};

pub use types::IddCounter;

/// The compiled `counter.c` object, embedded at build time.
pub static COUNTER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/counter.o"));

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object could not be loaded into the kernel (verifier, missing capability, …).
    #[error("loading bpf object `{object}`: {source}")]
    Load {
        /// The object's name.
        object: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program or map the object must contain is missing.
    #[error("bpf object `{object}` has no {what} named `{name}`")]
    Missing {
        /// The object's name.
        object: &'static str,
        /// "program" or "map".
        what: &'static str,
        /// The expected name.
        name: &'static str,
    },
    /// A program operation failed.
    #[error("{op} on interface `{iface}`: {source}")]
    Program {
        /// What was attempted.
        op: &'static str,
        /// The interface.
        iface: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("map `{map}`: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A NetworkPolicy rule that has no map key.
    #[error("NetworkPolicy rule {rule}: {why}")]
    InvalidRule {
        /// The rule.
        rule: String,
        /// What is wrong.
        why: String,
    },
    /// A link operation failed.
    #[error("{op} ({path}): {source}")]
    Link {
        /// What was attempted.
        op: &'static str,
        /// The link's pin path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// Pinning failed.
    #[error("pinning at {path}: {source}")]
    Pin {
        /// The pin path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Which direction of an interface a program is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl From<Direction> for TcAttachType {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// The `counter` program, loaded. Dropping it detaches every attachment it made.
#[derive(Debug)]
pub struct Counter {
    ebpf: Ebpf,
}

const COUNTER: &str = "counter";
const COUNTER_PROG: &str = "idd_counter";
const COUNTER_MAP: &str = "counters";

impl Counter {
    /// Loads the program; `mark`, when non-zero, is OR-ed into `skb->mark` of every packet.
    ///
    /// # Errors
    /// When the kernel refuses the object (no `CAP_BPF`, verifier rejection).
    pub fn load(mark: u32) -> Result<Self, Error> {
        let mut ebpf = EbpfLoader::new()
            .override_global("IDD_MARK", &mark, true)
            .load(COUNTER_OBJ)
            .map_err(|e| Error::Load {
                object: COUNTER,
                source: Box::new(e),
            })?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(COUNTER_PROG)
            .ok_or(Error::Missing {
                object: COUNTER,
                what: "program",
                name: COUNTER_PROG,
            })?
            .try_into()
            .map_err(|e| Error::Program {
                op: "typing program",
                iface: String::new(),
                source: Box::new(e),
            })?;
        prog.load().map_err(|e| Error::Program {
            op: "loading program",
            iface: String::new(),
            source: Box::new(e),
        })?;
        Ok(Self { ebpf })
    }

    /// Attaches to `iface` (in the calling thread's network namespace).
    ///
    /// # Errors
    /// When the interface does not exist or the kernel refuses the attachment.
    pub fn attach(&mut self, iface: &str, dir: Direction) -> Result<(), Error> {
        // Kernels before 6.6 attach through the clsact qdisc; it may already exist.
        let _ = tc::qdisc_add_clsact(iface);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(COUNTER_PROG)
            .ok_or(Error::Missing {
                object: COUNTER,
                what: "program",
                name: COUNTER_PROG,
            })?
            .try_into()
            .map_err(|e| Error::Program {
                op: "typing program",
                iface: iface.to_owned(),
                source: Box::new(e),
            })?;
        prog.attach(iface, dir.into()).map_err(|e| Error::Program {
            op: "attaching",
            iface: iface.to_owned(),
            source: Box::new(e),
        })?;
        Ok(())
    }

    /// The kernel's id of the loaded program (as `bpftool prog show` and `bpftool link show`
    /// print it).
    ///
    /// # Errors
    /// When the program's info cannot be read.
    pub fn program_id(&self) -> Result<u32, Error> {
        let prog = self.ebpf.program(COUNTER_PROG).ok_or(Error::Missing {
            object: COUNTER,
            what: "program",
            name: COUNTER_PROG,
        })?;
        let info = prog.info().map_err(|e| Error::Program {
            op: "reading program info",
            iface: String::new(),
            source: Box::new(e),
        })?;
        Ok(info.id())
    }

    /// The packets and bytes seen, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn seen(&self) -> Result<IddCounter, Error> {
        let map = self.ebpf.map(COUNTER_MAP).ok_or(Error::Missing {
            object: COUNTER,
            what: "map",
            name: COUNTER_MAP,
        })?;
        let arr: PerCpuArray<_, IddCounter> =
            PerCpuArray::try_from(map).map_err(|e| Error::Map {
                map: COUNTER_MAP,
                source: Box::new(e),
            })?;
        let values = arr
            .get(&types::IDD_COUNTER_SEEN, 0)
            .map_err(|e| Error::Map {
                map: COUNTER_MAP,
                source: Box::new(e),
            })?;
        Ok(values
            .iter()
            .fold(IddCounter::default(), |acc, v| IddCounter {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            }))
    }
}
