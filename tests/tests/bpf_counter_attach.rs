//! The C → clang → aya → kernel path: build.rs compiled `bpf/src/counter.c`, and the
//! program loads, attaches to a veth in a test-owned namespace and counts real packets.

use identityd_bpf::{Counter, Direction};
use identityd_tests::netns::Topology;

#[test]
fn counter_program_attaches_in_a_namespace_and_counts_packets() {
    let mut t = Topology::new("bpfcount");
    let a = t.add_ns("a");
    let b = t.add_ns("b");
    let (ia, _ib) = t.link(&a, Some("10.201.0.1/30"), &b, Some("10.201.0.2/30"));

    let counter = t.run_in(&a, || {
        let mut c = Counter::load(0x0b00).expect("load counter.o");
        c.attach(&ia, Direction::Egress).expect("attach on egress");
        c
    });
    let before = counter.seen().expect("read counters");
    let out = t.try_exec(
        &a,
        &["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.201.0.2"],
    );
    assert!(
        out.status.success(),
        "ping with the program attached: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = counter.seen().expect("read counters");
    assert!(
        after.packets >= before.packets + 5,
        "5 echo requests left through the program: before {before:?}, after {after:?}"
    );
    assert!(
        after.bytes >= before.bytes + 5 * 84,
        "bytes counted: {before:?} -> {after:?}"
    );

    // The kernel's own tooling sees a link for the attached program while it lives.
    let id = counter.program_id().expect("program id");
    let links = || {
        let out = t.try_exec(&a, &["bpftool", "link", "show"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = links();
    assert!(
        shown.contains(&format!("prog {id}")),
        "bpftool lists a link to prog {id}:\n{shown}"
    );

    // Dropping the loader detaches it.
    drop(counter);
    let shown = links();
    assert!(
        !shown.contains(&format!("prog {id}")),
        "no link to prog {id} after drop:\n{shown}"
    );
}
