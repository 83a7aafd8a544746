//! Rust mirrors of the C map layouts in `bpf/src/*_types.h`.
//!
//! A test compiles a C probe of the same headers and compares sizes and field offsets.

/// Index of the "seen" slot of the `counters` per-CPU array (`IDD_COUNTER_SEEN`).
pub const IDD_COUNTER_SEEN: u32 = 0;
/// Number of slots in `counters` (`IDD_COUNTER_MAX`).
pub const IDD_COUNTER_MAX: u32 = 1;

/// `struct idd_counter` in `counter_types.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddCounter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (`skb->len`).
    pub bytes: u64,
}

// SAFETY: `IddCounter` is `repr(C)`, has only integer fields and no padding, so every bit
// pattern is a valid value, as `Pod` requires.
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddCounter {}

/// A layout description used by the C/Rust layout test: (type, size, [(field, offset)]).
pub type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// The layouts of every shared type, as Rust sees them.
#[must_use]
pub fn layouts() -> Vec<Layout> {
    vec![(
        "idd_counter",
        std::mem::size_of::<IddCounter>(),
        vec![
            ("packets", std::mem::offset_of!(IddCounter, packets)),
            ("bytes", std::mem::offset_of!(IddCounter, bytes)),
        ],
    )]
}
