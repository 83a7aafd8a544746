//! NetworkPolicy in the classifier, run by the kernel on crafted packets (`BPF_PROG_TEST_RUN`):
//! each case first shows the packet passes without the policy (the attack would succeed), then
//! that it is dropped with the policy, counted per policy and reported as a flow event; allowed
//! peers, replies of allowed connections (conntrack), ipBlock with except, port ranges, the
//! node's own traffic, IPv6, and a revoked rule cutting an open connection's forward direction.

use std::net::IpAddr;

use identityd_bpf::packet::{self, L4};
use identityd_bpf::{
    Cidr, Classifier, ClassifierConfig, DropReason, FlowEventReader, FlowEvents, MtlsMode, Path,
    PolicyDirection, PolicyPod, PolicyRule, Route, RouteKind,
};

const TUNNEL: u32 = 7;
/// A same-node pod's veth (packets between local pods arrive on one).
const VETH: u32 = 9;
/// Made on this node (no ingress interface).
const LOCAL: u32 = 0;

/// Identities and policy ids of the table below.
const ID_A: u32 = 100;
const ID_B: u32 = 200;
const ID_C: u32 = 300;
const CIDR_DOC: u32 = 0x8000_0001;
const CIDR_DOC_EXCEPT: u32 = 0x8000_0002;
const POL_A_IN: u32 = 7;
const POL_B_OUT: u32 = 8;

const A: &str = "10.244.1.10"; // local, isolated for ingress (POL_A_IN)
const B: &str = "10.244.1.11"; // local, isolated for egress (POL_B_OUT)
const C: &str = "10.244.2.10"; // remote, not isolated
const A6: &str = "fd00:244:1::10";
const C6: &str = "fd00:244:2::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load() -> Classifier {
    identityd_tests::require_root();
    let mut c = Classifier::load(&ClassifierConfig {
        flow_events: FlowEvents::Drops,
        ..ClassifierConfig::default()
    })
    .expect("load classifier.o");
    for (cidr, kind, node_id) in [
        ("10.244.1.0/24", RouteKind::Local, 1),
        ("10.244.2.0/24", RouteKind::WireGuard, 2),
        ("fd00:244:1::/64", RouteKind::Local, 1),
        ("fd00:244:2::/64", RouteKind::WireGuard, 2),
    ] {
        c.set_route(cidr.parse::<Cidr>().unwrap(), Route { kind, node_id })
            .unwrap();
    }
    for w in [A, B, A6] {
        c.set_workload(ip(w), MtlsMode::Disabled).unwrap();
    }
    c.set_tunnels(&[TUNNEL]).unwrap();
    c.set_ready(true).unwrap();
    // Identities, nobody isolated yet.
    for (addr, identity) in [(A, ID_A), (B, ID_B), (C, ID_C), (A6, ID_A), (C6, ID_C)] {
        c.set_policy_pod(
            ip(addr),
            PolicyPod {
                identity,
                ..PolicyPod::default()
            },
        )
        .unwrap();
    }
    c
}

fn isolate(c: &mut Classifier) {
    for (addr, identity, ingress_policy, egress_policy) in [
        (A, ID_A, POL_A_IN, 0),
        (A6, ID_A, POL_A_IN, 0),
        (B, ID_B, 0, POL_B_OUT),
    ] {
        c.set_policy_pod(
            ip(addr),
            PolicyPod {
                identity,
                ingress_policy,
                egress_policy,
            },
        )
        .unwrap();
    }
}

fn rule(
    subject: u32,
    direction: PolicyDirection,
    peer: u32,
    protocol: Option<u8>,
    port: u16,
    port_prefix: u8,
) -> PolicyRule {
    PolicyRule {
        subject,
        direction,
        peer,
        protocol,
        port,
        port_prefix,
    }
}

const TCP: Option<u8> = Some(6);
const UDP: Option<u8> = Some(17);

fn rules() -> Vec<(PolicyRule, u32)> {
    use PolicyDirection::{Egress, Ingress};
    vec![
        // A takes TCP 8080 from C, and UDP 1024..=2047 (one 6-bit block) from C.
        (rule(ID_A, Ingress, ID_C, TCP, 8080, 16), POL_A_IN),
        (rule(ID_A, Ingress, ID_C, UDP, 1024, 6), POL_A_IN),
        // B may send UDP (any port) to A, and TCP 443 to 192.0.2.0/24 except 192.0.2.128/25.
        (rule(ID_B, Egress, ID_A, UDP, 0, 0), POL_B_OUT),
        (rule(ID_B, Egress, CIDR_DOC, TCP, 443, 16), POL_B_OUT),
    ]
}

fn install(c: &mut Classifier) {
    c.set_policy_cidr("192.0.2.0/24".parse().unwrap(), CIDR_DOC)
        .unwrap();
    c.set_policy_cidr("192.0.2.128/25".parse().unwrap(), CIDR_DOC_EXCEPT)
        .unwrap();
    for (r, p) in rules() {
        c.set_policy_rule(r, p).unwrap();
    }
}

/// Where a packet is judged: leaving a pod (its veth's ingress) or going into one (with the
/// interface it arrived on).
#[derive(Clone, Copy, Debug)]
enum At {
    FromPod,
    ToPod(u32),
}

fn run(c: &Classifier, pkt: &[u8], at: At) -> bool {
    let out = match at {
        At::FromPod => c.test_run(pkt, 0, 1),
        At::ToPod(ifindex) => c.test_run_to_pod(pkt, 0, ifindex),
    }
    .unwrap();
    assert!(out.passed() || out.dropped(), "{out:?}");
    out.passed()
}

fn pkt(src: &str, dst: &str, l4: L4, ports: (u16, u16)) -> Vec<u8> {
    let mut b = Vec::new();
    packet::build(&mut b, ip(src), ip(dst), l4, ports, 8);
    b
}

/// The same TCP packet with only ACK set (a later packet of the connection).
fn ack(mut b: Vec<u8>) -> Vec<u8> {
    let flags = if b[12..14] == [0x08, 0x00] {
        14 + 20 + 13
    } else {
        14 + 40 + 13
    };
    b[flags] = 0x10;
    b
}

fn drain(ev: &mut FlowEventReader) {
    while ev.try_next().is_some() {}
}

/// Each row: a packet, where it is judged, and what the policy decides. Every row passes
/// before the policy isolates anyone.
struct Case {
    what: &'static str,
    pkt: Vec<u8>,
    at: At,
    denied: Option<(DropReason, u32)>,
}

fn cases() -> Vec<Case> {
    let ingress = |p| Some((DropReason::PolicyIngress, p));
    let egress = |p| Some((DropReason::PolicyEgress, p));
    vec![
        Case {
            what: "C → A tcp/8080 out of the tunnel (allowed peer and port)",
            pkt: pkt(C, A, L4::Tcp, (40000, 8080)),
            at: At::ToPod(TUNNEL),
            denied: None,
        },
        Case {
            what: "C → A tcp/9090 out of the tunnel (port not allowed)",
            pkt: pkt(C, A, L4::Tcp, (40000, 9090)),
            at: At::ToPod(TUNNEL),
            denied: ingress(POL_A_IN),
        },
        Case {
            what: "C → A udp/1500 (inside the 1024..=2047 block)",
            pkt: pkt(C, A, L4::Udp, (40000, 1500)),
            at: At::ToPod(TUNNEL),
            denied: None,
        },
        Case {
            what: "C → A udp/2048 (just past the block)",
            pkt: pkt(C, A, L4::Udp, (40000, 2048)),
            at: At::ToPod(TUNNEL),
            denied: ingress(POL_A_IN),
        },
        Case {
            what: "the node itself → A tcp/9090 (the CNI exception)",
            pkt: pkt("10.244.1.1", A, L4::Tcp, (40000, 9090)),
            at: At::ToPod(LOCAL),
            denied: None,
        },
        Case {
            what: "n2's own address in its pod CIDR → A tcp/9090 out of the tunnel (its Envoy's passthrough, judged on n2)",
            pkt: pkt("10.244.2.1", A, L4::Tcp, (40000, 9090)),
            at: At::ToPod(TUNNEL),
            denied: None,
        },
        Case {
            what: "an unknown address outside the pod CIDRs → A tcp/9090 out of the tunnel",
            pkt: pkt("192.0.2.9", A, L4::Tcp, (40000, 9090)),
            at: At::ToPod(TUNNEL),
            denied: ingress(POL_A_IN),
        },
        Case {
            what: "B → A udp/53 leaving B: B's egress allows, A's ingress does not",
            pkt: pkt(B, A, L4::Udp, (40000, 53)),
            at: At::FromPod,
            denied: ingress(POL_A_IN),
        },
        Case {
            what: "B → C tcp/80 leaving B (egress not allowed)",
            pkt: pkt(B, C, L4::Tcp, (40000, 80)),
            at: At::FromPod,
            denied: egress(POL_B_OUT),
        },
        Case {
            what: "B → 192.0.2.5 tcp/443 (ipBlock)",
            pkt: pkt(B, "192.0.2.5", L4::Tcp, (40000, 443)),
            at: At::FromPod,
            denied: None,
        },
        Case {
            what: "B → 192.0.2.200 tcp/443 (in the except prefix)",
            pkt: pkt(B, "192.0.2.200", L4::Tcp, (40000, 443)),
            at: At::FromPod,
            denied: egress(POL_B_OUT),
        },
        Case {
            what: "B → 192.0.2.5 tcp/80 (ipBlock, port not allowed)",
            pkt: pkt(B, "192.0.2.5", L4::Tcp, (40000, 80)),
            at: At::FromPod,
            denied: egress(POL_B_OUT),
        },
        Case {
            what: "IPv6: C → A tcp/8080",
            pkt: pkt(C6, A6, L4::Tcp, (40000, 8080)),
            at: At::ToPod(TUNNEL),
            denied: None,
        },
        Case {
            what: "IPv6: C → A tcp/9090",
            pkt: pkt(C6, A6, L4::Tcp, (40000, 9090)),
            at: At::ToPod(TUNNEL),
            denied: ingress(POL_A_IN),
        },
    ]
}

#[test]
fn network_policy_allows_what_its_rules_say_and_drops_and_counts_the_rest() {
    let mut c = load();
    install(&mut c);
    let mut events = c.flow_events().expect("flow events");
    // Without isolation every packet of the table passes: the attack would succeed.
    for case in cases() {
        assert!(
            run(&c, &case.pkt, case.at),
            "{}: before isolation",
            case.what
        );
    }
    isolate(&mut c);
    drain(&mut events);
    let strict_drops = c.counters().unwrap().get(Path::Drop).packets;
    for case in cases() {
        let passed = run(&c, &case.pkt, case.at);
        match case.denied {
            None => assert!(passed, "{}: must pass", case.what),
            Some((reason, policy)) => {
                assert!(!passed, "{}: must be dropped", case.what);
                let ev = events
                    .try_next()
                    .unwrap_or_else(|| panic!("{}: a flow event", case.what));
                assert_eq!(ev.drop_reason, Some(reason), "{}: {ev:?}", case.what);
                assert_eq!(ev.policy, policy, "{}: {ev:?}", case.what);
            }
        }
        assert!(
            events.try_next().is_none(),
            "{}: one event at most",
            case.what
        );
    }
    let drops = c.policy_drops().unwrap();
    let count = |p, d| {
        drops
            .iter()
            .find(|(pp, dd, _)| *pp == p && *dd == d)
            .map_or(0, |x| x.2)
    };
    assert_eq!(count(POL_A_IN, PolicyDirection::Ingress), 5, "{drops:?}");
    assert_eq!(count(POL_B_OUT, PolicyDirection::Egress), 3, "{drops:?}");
    assert_eq!(
        c.counters().unwrap().get(Path::Drop).packets,
        strict_drops,
        "policy drops are not strict-mode drops"
    );
    // The rules read back as installed.
    let mut got = c.policy_rules().unwrap();
    got.sort();
    let mut want = rules();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn replies_of_allowed_connections_pass_and_a_revoked_rule_cuts_the_forward_direction() {
    let mut c = load();
    install(&mut c);
    isolate(&mut c);
    // B is isolated for egress with nothing towards C: a connection B opens to C is refused...
    let b_to_c = pkt(B, C, L4::Tcp, (40001, 80));
    assert!(!run(&c, &b_to_c, At::FromPod), "B → C, new");
    // ...but C may open to B (B's ingress is not isolated), and B's replies then pass.
    let c_to_b = pkt(C, B, L4::Tcp, (80, 40001));
    assert!(run(&c, &c_to_b, At::ToPod(TUNNEL)), "C → B into B");
    assert!(run(&c, &ack(b_to_c.clone()), At::FromPod), "B's reply to C");
    // The same for UDP, and for a same-node pair: A answers nothing it was not asked.
    let a_to_c = pkt(A, C, L4::Udp, (1500, 40002));
    assert!(
        !run(&c, &pkt(C, A, L4::Udp, (40002, 9999)), At::ToPod(TUNNEL)),
        "C → A udp/9999 refused"
    );
    assert!(run(
        &c,
        &pkt(C, A, L4::Udp, (40002, 1500)),
        At::ToPod(TUNNEL)
    ));
    assert!(run(&c, &a_to_c, At::FromPod), "A's UDP answer");
    // A reply of an allowed connection passes into an isolated pod even off its rules; the
    // same packet without the connection is refused.
    assert!(
        !run(
            &c,
            &ack(pkt(C, A, L4::Tcp, (9999, 45000))),
            At::ToPod(TUNNEL)
        ),
        "C → A tcp/45000 before A opened anything"
    );
    let a_to_c_new = pkt(A, C, L4::Tcp, (45000, 9999));
    assert!(
        run(&c, &a_to_c_new, At::FromPod),
        "A opens to C (A's egress is open)"
    );
    let answer = ack(pkt(C, A, L4::Tcp, (9999, 45000)));
    assert!(run(&c, &answer, At::ToPod(TUNNEL)), "C's answer into A");
    // IPv6 the same way.
    assert!(run(&c, &pkt(A6, C6, L4::Tcp, (45000, 9999)), At::FromPod));
    assert!(run(
        &c,
        &ack(pkt(C6, A6, L4::Tcp, (9999, 45000))),
        At::ToPod(TUNNEL)
    ));
    // An open C → A:8080 connection, then its rule is revoked: the next forward packet is
    // dropped (forward packets are judged every time), while the established C → B is kept.
    let syn = pkt(C, A, L4::Tcp, (41000, 8080));
    assert!(run(&c, &syn, At::ToPod(TUNNEL)));
    assert!(run(&c, &ack(syn.clone()), At::ToPod(TUNNEL)));
    c.remove_policy_rule(rules()[0].0).unwrap();
    assert!(
        !run(&c, &ack(syn.clone()), At::ToPod(TUNNEL)),
        "forward packet after revocation"
    );
    assert!(run(&c, &ack(c_to_b), At::ToPod(TUNNEL)), "C → B stays");
    // Back again: the rule read back, the connection flows.
    c.set_policy_rule(rules()[0].0, POL_A_IN).unwrap();
    assert!(run(&c, &ack(syn), At::ToPod(TUNNEL)));
    // Same-node: B → A UDP is allowed once A's ingress names B.
    c.set_policy_rule(
        rule(ID_A, PolicyDirection::Ingress, ID_B, UDP, 53, 16),
        POL_A_IN,
    )
    .unwrap();
    let b_to_a = pkt(B, A, L4::Udp, (40000, 53));
    assert!(run(&c, &b_to_a, At::FromPod), "leaving B");
    assert!(run(&c, &b_to_a, At::ToPod(VETH)), "into A");
}

/// A connection open before any policy, then its server isolated with no rule for the client:
/// the client's next packet is refused (the server's earlier answers were replies, never a
/// forward direction of their own that would make the client's packets look like replies).
#[test]
fn a_connection_opened_before_isolation_is_cut_when_the_policy_denies_it() {
    let mut c = load();
    install(&mut c);
    let syn = pkt(C, A, L4::Tcp, (42000, 9090));
    assert!(
        run(&c, &syn, At::ToPod(TUNNEL)),
        "C → A tcp/9090, nobody isolated"
    );
    let answer = ack(pkt(A, C, L4::Tcp, (9090, 42000)));
    assert!(run(&c, &answer, At::FromPod), "A answers");
    assert!(run(&c, &ack(syn.clone()), At::ToPod(TUNNEL)));
    isolate(&mut c);
    assert!(
        !run(&c, &ack(syn), At::ToPod(TUNNEL)),
        "C's next packet once A is isolated for ingress without a rule for tcp/9090"
    );
    assert!(
        run(&c, &answer, At::FromPod),
        "A's answers are still replies"
    );
}

#[test]
fn malformed_rules_are_refused_naming_the_rule() {
    let mut c = load();
    for (r, why) in [
        (
            rule(ID_A, PolicyDirection::Ingress, ID_C, TCP, 8081, 15),
            "past",
        ),
        (
            rule(ID_A, PolicyDirection::Ingress, ID_C, None, 80, 16),
            "every protocol",
        ),
        (
            rule(ID_A, PolicyDirection::Ingress, ID_C, TCP, 0, 17),
            "0..=16",
        ),
    ] {
        let e = c.set_policy_rule(r, 1).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains("subject: 100"), "{e}");
    }
    assert!(c.policy_rules().unwrap().is_empty());
}

/// The policy maps are pinned with the others: a restarted daemon's loader adopts them with
/// their content (the verdicts do not change across the restart).
#[test]
fn a_new_loader_adopts_the_pinned_policy_maps() {
    identityd_tests::require_root();
    let pin = std::path::PathBuf::from(identityd_bpf::classifier::DEFAULT_PIN_ROOT)
        .join(format!("test-netpol-{}", std::process::id()));
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = identityd_bpf::classifier::remove_pins(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = Guard(pin.clone());
    let config = ClassifierConfig {
        pin_dir: Some(pin),
        ..ClassifierConfig::default()
    };
    let denied = pkt(C, A, L4::Tcp, (40000, 9090));
    {
        let mut first = Classifier::load(&config).expect("load");
        first
            .set_route(
                "10.244.2.0/24".parse().unwrap(),
                Route {
                    kind: RouteKind::WireGuard,
                    node_id: 2,
                },
            )
            .unwrap();
        first.set_tunnels(&[TUNNEL]).unwrap();
        first.set_ready(true).unwrap();
        for (addr, identity, ingress_policy) in [(A, ID_A, POL_A_IN), (C, ID_C, 0)] {
            first
                .set_policy_pod(
                    ip(addr),
                    PolicyPod {
                        identity,
                        ingress_policy,
                        egress_policy: 0,
                    },
                )
                .unwrap();
        }
        install(&mut first);
        assert!(!run(&first, &denied, At::ToPod(TUNNEL)));
    }
    let second = Classifier::load(&config).expect("reload");
    let mut adopted = second.policy_rules().unwrap();
    adopted.sort();
    let mut want = rules();
    want.sort();
    assert_eq!(adopted, want, "rules adopted");
    assert_eq!(
        second.policy_pods().unwrap().len(),
        2,
        "pod entries adopted"
    );
    assert_eq!(
        second.policy_cidrs().unwrap().len(),
        2,
        "ipBlock prefixes adopted"
    );
    assert!(!run(&second, &denied, At::ToPod(TUNNEL)), "still denied");
    assert!(run(
        &second,
        &pkt(C, A, L4::Tcp, (40000, 8080)),
        At::ToPod(TUNNEL)
    ));
}
