//! The netns harness: two namespaces joined by a veth reach each other, and the guard
//! removes everything, also when the test panics.

use identityd_tests::netns::{Topology, list_namespaces};

#[test]
fn two_namespaces_ping_and_leave_nothing_behind() {
    let names;
    {
        let mut t = Topology::new("ping");
        let a = t.add_ns("a");
        let b = t.add_ns("b");
        t.link(&a, Some("10.200.0.1/30"), &b, Some("10.200.0.2/30"));
        let out = t.try_exec(
            &a,
            &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.200.0.2"],
        );
        assert!(
            out.status.success(),
            "ping a -> b: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        names = t.namespaces().to_vec();
        let present = list_namespaces();
        for n in &names {
            assert!(present.contains(n), "{n} exists while the topology lives");
        }
    }
    let present = list_namespaces();
    for n in &names {
        assert!(!present.contains(n), "{n} removed after drop");
    }
}

#[test]
fn guard_cleans_up_after_a_panic() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let mut t = Topology::new("panic");
        let a = t.add_ns("a");
        let b = t.add_ns("b");
        t.link(&a, None, &b, None);
        t.spawn(&a, &["sleep", "60"]);
        names.lock().unwrap().extend(t.namespaces().iter().cloned());
        panic!("deliberate panic inside a topology");
    });
    assert!(result.is_err());
    let present = list_namespaces();
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for n in &names {
        assert!(!present.contains(n), "{n} removed after a panic");
    }
}
