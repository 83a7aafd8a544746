use super::*;

struct Lab;
impl Names for Lab {
    fn node_ns(&self, node: usize) -> String {
        format!("idd-n{node}")
    }
    fn uplink(&self, node: usize) -> (String, String) {
        (format!("idd-n{node}-u"), "eth0".into())
    }
    fn pod_ns(&self, node: usize, _pod: usize, name: &str) -> String {
        format!("idd-n{node}-{name}")
    }
    fn pod_link(&self, _node: usize, _pod: usize, name: &str) -> (String, String) {
        (format!("p-{name}"), "eth0".into())
    }
}

fn lab(nodes: usize) -> ClusterSpec {
    let names = Lab;
    ClusterSpec::standard(
        Underlay::Root {
            bridge: "idd-fabric".into(),
        },
        nodes,
        &["web", "client"],
        10,
        PodAddressing::Routed,
        &names,
    )
}

fn lines(steps: &[Step]) -> Vec<String> {
    steps.iter().map(|s| s.command_line().join(" ")).collect()
}

#[test]
fn the_standard_plan_lays_out_node_and_pod_addresses() {
    let spec = lab(3);
    assert_eq!(spec.nodes.len(), 3);
    assert_eq!(spec.nodes[2].underlay_ip, Ipv4Addr::new(10, 99, 0, 13));
    assert_eq!(spec.nodes[2].pod_gateway, Ipv4Addr::new(10, 244, 3, 1));
    assert_eq!(spec.nodes[1].pods[0].ip, Ipv4Addr::new(10, 244, 2, 10));
    assert_eq!(spec.nodes[1].pods[1].ip, Ipv4Addr::new(10, 244, 2, 11));
    assert_eq!(spec.nodes[1].pods[1].ns, "idd-n2-client");
}

#[test]
fn a_routed_pod_gets_a_32_a_host_route_and_a_link_scope_gateway() {
    let l = lines(&plan(&lab(1)).unwrap());
    for want in [
        "ip link add idd-fabric type bridge",
        "ip addr add 10.99.0.1/24 dev idd-fabric",
        "ip link add idd-n1-u type veth peer name eth0 netns idd-n1",
        "ip link set idd-n1-u master idd-fabric",
        "ip netns exec idd-n1 ip addr add 10.99.0.11/24 dev eth0",
        "ip netns exec idd-n1 ip addr add 10.244.1.1/32 dev p-web",
        "ip netns exec idd-n1 ip route add 10.244.1.10/32 dev p-web",
        "ip netns exec idd-n1-web ip addr add 10.244.1.10/32 dev eth0",
        "ip netns exec idd-n1-web ip route add 10.244.1.1 dev eth0 scope link",
        "ip netns exec idd-n1-web ip route add default via 10.244.1.1 dev eth0",
    ] {
        assert!(l.iter().any(|x| x == want), "missing {want:?} in {l:#?}");
    }
    // The node has no default route unless asked, and IPv6 stays on.
    assert!(!l.iter().any(|x| x.contains("idd-n1 ip route add default")));
    assert!(!l.iter().any(|x| x.contains("disable_ipv6")));
}

#[test]
fn a_subnet_pod_in_a_namespaced_underlay_with_default_routes_and_no_ipv6() {
    struct T;
    impl Names for T {
        fn node_ns(&self, node: usize) -> String {
            format!("t-n{node}")
        }
        fn uplink(&self, node: usize) -> (String, String) {
            (format!("tu{node}"), format!("ti{node}"))
        }
        fn pod_ns(&self, node: usize, _: usize, _: &str) -> String {
            format!("t-p{node}")
        }
        fn pod_link(&self, node: usize, _: usize, _: &str) -> (String, String) {
            (format!("th{node}"), format!("tp{node}"))
        }
    }
    let mut spec = ClusterSpec::standard(
        Underlay::Namespace {
            ns: "t-u".into(),
            bridge: "tbr".into(),
        },
        2,
        &["pod"],
        2,
        PodAddressing::Subnet,
        &T,
    );
    spec.node_default_route = true;
    spec.disable_ipv6 = true;
    let steps = plan(&spec).unwrap();
    let l = lines(&steps);
    for want in [
        "ip netns add t-u",
        "ip netns exec t-u ip link add tbr type bridge",
        "ip netns exec t-u ip link add tu2 type veth peer name ti2 netns t-n2",
        "ip netns exec t-n2 ip route add default via 10.99.0.1",
        "ip netns exec t-n2 ip addr add 10.244.2.1/24 dev th2",
        "ip netns exec t-p2 ip addr add 10.244.2.2/24 dev tp2",
        "ip netns exec t-p2 ip route add default via 10.244.2.1 dev tp2",
        "ip netns exec t-p2 sysctl -qw net.ipv6.conf.all.disable_ipv6=1",
    ] {
        assert!(l.iter().any(|x| x == want), "missing {want:?} in {l:#?}");
    }
    // Every namespace is reported as created, and nothing in the root namespace is.
    let created: Vec<Created> = steps.iter().filter_map(Step::creates).collect();
    assert_eq!(
        created,
        ["t-u", "t-n1", "t-p1", "t-n2", "t-p2"]
            .map(|n| Created::Namespace(n.into()))
            .to_vec()
    );
}

#[test]
fn root_links_are_reported_so_the_owner_can_remove_them() {
    let created: Vec<Created> = plan(&lab(2))
        .unwrap()
        .iter()
        .filter_map(Step::creates)
        .filter(|c| matches!(c, Created::RootLink(_)))
        .collect();
    assert_eq!(
        created,
        ["idd-fabric", "idd-n1-u", "idd-n2-u"]
            .map(|n| Created::RootLink(n.into()))
            .to_vec()
    );
}

#[test]
fn a_name_linux_refuses_is_an_error_naming_the_field() {
    let mut spec = lab(2);
    spec.nodes[1].pods[0].host_if = "p-a-very-long-pod-name".into();
    let e = plan(&spec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "nodes[1].pods[0].host_if: interface name \"p-a-very-long-pod-name\" is 22 bytes, Linux allows at most 15"
    );
    let mut spec = lab(2);
    spec.nodes[1].ns = "idd-n1".into();
    assert_eq!(
        plan(&spec).unwrap_err(),
        PlanError::Duplicate {
            field: "nodes[1].ns".into(),
            name: "idd-n1".into()
        }
    );
}
