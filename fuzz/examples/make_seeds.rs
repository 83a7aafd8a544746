//! Writes the seed corpora of `fuzz/corpus/<target>/` (run once; the output is checked in):
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.
//!
//! Names follow `identityd_fuzz::corpus`: `ok-*` must be accepted, `bad-*` rejected. CSRs are
//! made with fresh keys, so a rerun writes different bytes with the same meaning. Every seed is
//! checked against its own one-input function before it is written.

use std::path::{Path, PathBuf};

use identityd_certs::service::pb;
use identityd_certs::{PrivateKey, SpiffeId};
use identityd_envoy::envoy_types::pb::envoy::config::core::v3::Node;
use identityd_envoy::envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use identityd_envoy::envoy_types::pb::google::rpc::Status;
use identityd_envoy::server::type_url;
use identityd_fuzz::certs::{Fixture, NODE_NAME, SERVING_NAME, TRUST_DOMAIN, WORKLOAD_ID};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

type Seeds = Vec<(String, Vec<u8>)>;

fn seed(seeds: &mut Seeds, name: &str, data: impl Into<Vec<u8>>) {
    seeds.push((name.to_owned(), data.into()));
}

fn csr_for(id: &str) -> Vec<u8> {
    identityd_certs::svid::csr_for(
        &SpiffeId::parse(id).expect("seed ID"),
        &PrivateKey::generate().expect("key"),
    )
    .expect("csr")
}

fn rcgen_csr(sans: Vec<SanType>, ca: bool, key: &KeyPair) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p.serialize_request(key).expect("csr").der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_owned().try_into().expect("uri"))
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.to_owned().try_into().expect("dns"))
}

fn spiffe_id() -> Seeds {
    let mut s = Seeds::new();
    for (name, text) in [
        ("ok-workload", "spiffe://cluster.local/ns/shop/sa/web"),
        ("ok-trust-domain", "spiffe://cluster.local"),
        ("ok-node", "spiffe://lab.local/identityd/node/n1"),
        ("ok-punctuation", "spiffe://a-b_c.d/x/Y.z/-_./..."),
        ("bad-empty", ""),
        ("bad-scheme-case", "SPIFFE://cluster.local/ns/a"),
        ("bad-scheme", "https://cluster.local/ns/a"),
        ("bad-no-trust-domain", "spiffe:///ns/a"),
        ("bad-trust-domain-case", "spiffe://Cluster.local/ns/a"),
        ("bad-port", "spiffe://cluster.local:443/ns/a"),
        ("bad-userinfo", "spiffe://user@cluster.local/ns/a"),
        ("bad-query", "spiffe://cluster.local/ns/a?x=1"),
        ("bad-fragment", "spiffe://cluster.local/ns/a#x"),
        ("bad-empty-segment", "spiffe://cluster.local/ns//a"),
        ("bad-trailing-slash", "spiffe://cluster.local/ns/a/"),
        ("bad-dot-segment", "spiffe://cluster.local/ns/../a"),
        ("bad-percent", "spiffe://cluster.local/ns/%41"),
        ("bad-unicode", "spiffe://cluster.local/ns/caf\u{e9}"),
    ] {
        seed(&mut s, name, text);
    }
    seed(
        &mut s,
        "bad-too-long",
        format!("spiffe://td/{}", "a".repeat(2048)),
    );
    seed(
        &mut s,
        "bad-trust-domain-too-long",
        format!("spiffe://{}/x", "a".repeat(256)),
    );
    s
}

fn csr() -> Seeds {
    let mut s = Seeds::new();
    let good = csr_for(WORKLOAD_ID);
    seed(&mut s, "ok-svid.der", good.clone());
    let p256 = KeyPair::generate().expect("key");
    seed(&mut s, "ok-no-san.der", rcgen_csr(vec![], false, &p256));
    seed(
        &mut s,
        "ok-serving.der",
        identityd_certs::serving::serving_csr_for(
            &[SERVING_NAME.to_owned()],
            &PrivateKey::generate().expect("key"),
        )
        .expect("serving csr"),
    );
    seed(
        &mut s,
        "bad-other-id.der",
        csr_for("spiffe://fuzz.local/ns/other/sa/x"),
    );
    seed(
        &mut s,
        "bad-uri-and-dns.der",
        rcgen_csr(vec![uri(WORKLOAD_ID), dns(SERVING_NAME)], false, &p256),
    );
    seed(
        &mut s,
        "bad-ca-flag.der",
        rcgen_csr(vec![uri(WORKLOAD_ID)], true, &p256),
    );
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("P-384 key");
    seed(
        &mut s,
        "bad-p384.der",
        rcgen_csr(vec![uri(WORKLOAD_ID)], false, &p384),
    );
    let mut trailing = good.clone();
    trailing.push(0);
    seed(&mut s, "bad-trailing-byte.der", trailing);
    seed(&mut s, "bad-truncated.der", good[..good.len() / 2].to_vec());
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    seed(&mut s, "bad-signature.der", flipped);
    seed(&mut s, "bad-empty.der", Vec::new());
    seed(
        &mut s,
        "bad-pem.txt",
        b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec(),
    );
    s
}

fn with_selector(which: u8, m: &impl Message) -> Vec<u8> {
    let mut v = vec![which];
    v.extend(m.encode_to_vec());
    v
}

fn ca_request() -> Seeds {
    let mut s = Seeds::new();
    let node_id = format!("spiffe://{TRUST_DOMAIN}/identityd/node/{NODE_NAME}");
    let token = identityd_certs::service::JoinToken::generate().expect("token");
    let join = |node_name: &str, token: &str, csr_der: Vec<u8>| pb::JoinRequest {
        node_name: node_name.to_owned(),
        token: token.to_owned(),
        csr_der,
    };
    let good_join = join(NODE_NAME, token.expose_secret(), csr_for(&node_id));
    seed(&mut s, "ok-join.bin", with_selector(0, &good_join));
    seed(
        &mut s,
        "bad-join-short-token.bin",
        with_selector(0, &join(NODE_NAME, "c2hvcnQ", csr_for(&node_id))),
    );
    seed(
        &mut s,
        "bad-join-node-name.bin",
        with_selector(0, &join("a/b", token.expose_secret(), csr_for(&node_id))),
    );
    seed(
        &mut s,
        "bad-join-csr-for-workload.bin",
        with_selector(
            0,
            &join(NODE_NAME, token.expose_secret(), csr_for(WORKLOAD_ID)),
        ),
    );
    let sign = |spiffe_id: &str, csr_der: Vec<u8>| pb::SignRequest {
        csr_der,
        spiffe_id: spiffe_id.to_owned(),
        pod_namespace: "fuzz".to_owned(),
        pod_name: "seed-0".to_owned(),
        ttl_seconds: 600,
    };
    seed(
        &mut s,
        "ok-sign.bin",
        with_selector(1, &sign(WORKLOAD_ID, csr_for(WORKLOAD_ID))),
    );
    let ca_id = format!("spiffe://{TRUST_DOMAIN}/identityd/ca");
    seed(
        &mut s,
        "bad-sign-reserved.bin",
        with_selector(1, &sign(&ca_id, csr_for(&ca_id))),
    );
    let foreign = "spiffe://other.domain/ns/fuzz/sa/seed";
    seed(
        &mut s,
        "bad-sign-foreign.bin",
        with_selector(1, &sign(foreign, csr_for(foreign))),
    );
    seed(
        &mut s,
        "bad-sign-bad-id.bin",
        with_selector(
            1,
            &sign("spiffe://fuzz.local/ns/../x", csr_for(WORKLOAD_ID)),
        ),
    );
    let serving = |names: &[&str]| pb::SignServingRequest {
        csr_der: identityd_certs::serving::serving_csr_for(
            &names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
            &PrivateKey::generate().expect("key"),
        )
        .unwrap_or_default(),
        dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
        kind: "Gateway".to_owned(),
        namespace: "fuzz".to_owned(),
        name: "gw".to_owned(),
        ttl_seconds: 0,
    };
    seed(
        &mut s,
        "ok-serving.bin",
        with_selector(2, &serving(&[SERVING_NAME])),
    );
    seed(
        &mut s,
        "bad-serving-upper-case.bin",
        with_selector(2, &serving(&["Web.Fuzz.Example"])),
    );
    seed(
        &mut s,
        "bad-serving-no-names.bin",
        with_selector(2, &serving(&[])),
    );
    let renew = |csr_der| pb::RenewNodeRequest { csr_der };
    seed(
        &mut s,
        "ok-renew.bin",
        with_selector(3, &renew(csr_for(&node_id))),
    );
    seed(
        &mut s,
        "bad-renew-other-node.bin",
        with_selector(
            3,
            &renew(csr_for(&format!(
                "spiffe://{TRUST_DOMAIN}/identityd/node/other"
            ))),
        ),
    );
    let mut truncated = with_selector(1, &sign(WORKLOAD_ID, csr_for(WORKLOAD_ID)));
    truncated.truncate(40);
    seed(&mut s, "bad-truncated.bin", truncated);
    seed(&mut s, "bad-empty.bin", Vec::new());
    s
}

fn cluster_yaml(root: &Path) -> Seeds {
    let mut s = Seeds::new();
    let lab = std::fs::read_to_string(root.join("identityd/src/model/testdata/lab-cluster.yaml"))
        .expect("lab-cluster.yaml");
    seed(&mut s, "ok-lab-cluster.yaml", lab.clone());
    for doc in identityd::source::split_documents(&lab) {
        let kind_name = |key: &str| {
            doc.text
                .lines()
                .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
                .unwrap_or("x")
                .to_owned()
        };
        let name = doc
            .text
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix("name: ")
                    .or_else(|| l.strip_prefix("metadata: {name: "))
                    .map(|n| n.split([',', '}']).next().unwrap_or(n).trim().to_owned())
            })
            .unwrap_or_else(|| doc.index.to_string());
        let kind = kind_name("kind:").to_ascii_lowercase();
        seed(&mut s, &format!("ok-{kind}-{name}.yaml"), doc.text.clone());
    }
    for (name, text) in [
        ("bad-syntax.yaml", "apiVersion: v1\nkind: [unclosed\n"),
        (
            "bad-unknown-kind.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        ),
        ("bad-not-a-mapping.yaml", "- 1\n- 2\n"),
        ("bad-no-kind.yaml", "apiVersion: v1\nmetadata: {name: x}\n"),
        (
            "bad-unknown-field.yaml",
            "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: r}\nspec: {target: ca, surprise: 1}\n",
        ),
        (
            "bad-invalid-name.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Not_A_Name\n",
        ),
        (
            "bad-second-document.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: [1, 2]}\n",
        ),
        ("bad-empty.yaml", ""),
        ("bad-only-comments.yaml", "# nothing here\n---\n"),
    ] {
        seed(&mut s, name, text);
    }
    s
}

fn xds_request() -> Seeds {
    let mut s = Seeds::new();
    let node = || {
        Some(Node {
            id: NODE_NAME.to_owned(),
            cluster: "identityd".to_owned(),
            ..Node::default()
        })
    };
    let req = |type_url: &str, names: &[&str]| DiscoveryRequest {
        node: node(),
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..DiscoveryRequest::default()
    };
    seed(
        &mut s,
        "ok-listeners.bin",
        req(type_url::LISTENER, &[]).encode_to_vec(),
    );
    seed(
        &mut s,
        "ok-clusters.bin",
        req(type_url::CLUSTER, &[]).encode_to_vec(),
    );
    seed(
        &mut s,
        "ok-secret-names.bin",
        req(
            type_url::SECRET,
            &["spiffe://cluster.local/ns/shop/sa/web", "bundle"],
        )
        .encode_to_vec(),
    );
    seed(
        &mut s,
        "ok-endpoints-wildcard.bin",
        req(type_url::ENDPOINT, &["*"]).encode_to_vec(),
    );
    let ack = DiscoveryRequest {
        version_info: "3".to_owned(),
        response_nonce: "7".to_owned(),
        ..req(type_url::ROUTE, &["inbound"])
    };
    seed(&mut s, "ok-stale-ack.bin", ack.encode_to_vec());
    let nack = DiscoveryRequest {
        error_detail: Some(Status {
            code: 3,
            message: "rejected".to_owned(),
            details: vec![],
        }),
        ..ack
    };
    seed(&mut s, "ok-stale-nack.bin", nack.encode_to_vec());
    seed(
        &mut s,
        "ok-unknown-type.bin",
        req("type.googleapis.com/envoy.config.core.v3.Unknown", &[]).encode_to_vec(),
    );
    let no_node = DiscoveryRequest {
        node: None,
        ..req(type_url::LISTENER, &[])
    };
    seed(&mut s, "ok-no-node.bin", no_node.encode_to_vec());
    seed(&mut s, "ok-empty.bin", Vec::new());
    let good = req(type_url::LISTENER, &["a"]).encode_to_vec();
    seed(&mut s, "bad-truncated.bin", good[..good.len() - 1].to_vec());
    // Field 4 (type_url, a string) with invalid UTF-8.
    seed(&mut s, "bad-invalid-utf8.bin", vec![0x22, 0x02, 0xff, 0xfe]);
    // Field 4 with wire type 0 (varint) where a string is expected.
    seed(&mut s, "bad-wire-type.bin", vec![0x20, 0x01]);
    // A varint of eleven bytes.
    seed(
        &mut s,
        "bad-varint.bin",
        vec![
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    );
    // Field 0 is not a field.
    seed(&mut s, "bad-field-zero.bin", vec![0x00, 0x00]);
    s
}

fn wg_uapi() -> Seeds {
    let mut s = Seeds::new();
    let k2 = "02".repeat(32);
    let k3 = "03".repeat(32);
    let secret = "5b".repeat(32);
    for (name, body) in [
        (
            "ok-peers.txt",
            format!(
                "listen_port=51871\nreplace_peers=false\npublic_key={k2}\nendpoint=10.0.0.2:51871\n\
                 persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\n\
                 public_key={k3}\nremove=true\n\n"
            ),
        ),
        (
            "ok-device.txt",
            format!("private_key={secret}\nlisten_port=51871\nfwmark=202\nreplace_peers=true\n\n"),
        ),
        (
            "ok-ipv6.txt",
            format!(
                "public_key={k2}\nupdate_only=true\nendpoint=[fd00::2]:51871\nallowed_ip=fd00:244::/64\n\
                 preshared_key={}\nprotocol_version=1\n\n",
                "00".repeat(32)
            ),
        ),
        (
            "ok-stops-at-blank-line.txt",
            format!("public_key={k2}\n\nnot a line\n"),
        ),
        ("bad-no-equals.txt", "listen_port\n".to_owned()),
        (
            "bad-peer-key-first.txt",
            "endpoint=10.0.0.2:51871\n".to_owned(),
        ),
        (
            "bad-prefix-length.txt",
            format!("public_key={k2}\nallowed_ip=10.0.0.0/40\n"),
        ),
        (
            "bad-private-key.txt",
            format!("private_key={}zz\n", &secret[..62]),
        ),
        (
            "bad-preshared-key.txt",
            format!("public_key={k2}\npreshared_key={secret}\n"),
        ),
        (
            "bad-protocol-version.txt",
            format!("public_key={k2}\nprotocol_version=2\n"),
        ),
        (
            "bad-keepalive.txt",
            format!("public_key={k2}\npersistent_keepalive_interval=65536\n"),
        ),
        (
            "bad-unknown-peer-key.txt",
            format!("public_key={k2}\nendpointx=1.2.3.4:5\n"),
        ),
        ("bad-port.txt", "listen_port=65536\n".to_owned()),
        ("bad-bool.txt", "replace_peers=yes\n".to_owned()),
        ("bad-public-key.txt", format!("public_key={}\n", &k2[..63])),
    ] {
        seed(&mut s, name, body);
    }
    s
}

fn write(root: &Path, target: &str, seeds: &Seeds, check: &dyn Fn(&[u8]) -> Result<(), String>) {
    let dir: PathBuf = root.join("fuzz").join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    for (name, data) in seeds {
        let verdict = check(data);
        let want_ok = name.starts_with("ok-");
        assert_eq!(
            verdict.is_ok(),
            want_ok,
            "{target}/{name}: the seed is not what its name says: {verdict:?}"
        );
        std::fs::write(dir.join(name), data).expect("seed");
    }
    identityd_fuzz::corpus::replay(&dir, check);
    println!("{target}: {} seeds in {}", seeds.len(), dir.display());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace above fuzz/");
    let fx = Fixture::new();
    write(
        &root,
        "spiffe_id",
        &spiffe_id(),
        &identityd_fuzz::certs::spiffe_id,
    );
    write(root, "csr", &csr(), &|d| identityd_fuzz::certs::csr(&fx, d));
    write(root, "ca_request", &ca_request(), &|d| {
        identityd_fuzz::certs::ca_request(&fx, d)
    });
    write(
        &root,
        "cluster_yaml",
        &cluster_yaml(root),
        &identityd_fuzz::cluster::cluster_yaml,
    );
    write(root, "xds_request", &xds_request(), &|d| {
        identityd_fuzz::envoy::xds_request(d).map(drop)
    });
    write(root, "wg_uapi", &wg_uapi(), &identityd_fuzz::wg::wg_uapi);
}
