//! Parsing of every kind from realistic YAML, validation messages, snapshot queries.

use std::net::IpAddr;

use super::*;
use crate::source::decode::{DocError, decode_all};

/// Decodes a single valid document, panicking with the error otherwise.
fn one(yaml: &str) -> Object {
    let mut out = decode_all(yaml);
    assert_eq!(out.len(), 1, "{yaml}");
    match out.remove(0).1 {
        Ok(Some(o)) => o,
        other => panic!("expected one object from\n{yaml}\ngot {other:?}"),
    }
}

/// Decodes a single invalid document and returns the field errors as strings.
fn invalid(yaml: &str) -> Vec<String> {
    match decode_all(yaml).remove(0).1 {
        Err(DocError::Invalid { errors, .. }) => errors.iter().map(ToString::to_string).collect(),
        other => panic!("expected validation errors from\n{yaml}\ngot {other:?}"),
    }
}

fn assert_has(errs: &[String], want: &str) {
    assert!(
        errs.iter().any(|e| e.contains(want)),
        "no error containing {want:?} in {errs:#?}"
    );
}

const WG_KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

const NODE: &str = r"
apiVersion: identityd.io/v1alpha1
kind: IdentitydNode
metadata:
  name: n1
  labels: {zone: a}
spec:
  podCIDRs: [10.244.1.0/24]
  underlayAddresses: [10.99.0.11]
  wireguard:
    publicKey: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
    port: 51871
  ipsec:
    keyEpoch: 3
status:
  conditions:
    - type: Ready
      status: 'True'
      reason: DatapathUp
";

#[test]
fn parses_identitydnode() {
    let Object::IdentitydNode(n) = one(NODE) else {
        panic!("kind")
    };
    assert_eq!(n.metadata.name, "n1");
    assert_eq!(n.spec.pod_cidrs, vec!["10.244.1.0/24"]);
    let wg = n.spec.wireguard.as_ref().unwrap();
    assert_eq!(wg.port_u16(), 51871);
    assert_eq!(wg.public_key_bytes().unwrap().len(), 32);
    assert_eq!(n.spec.ipsec.as_ref().unwrap().key_epoch, 3);
    assert_eq!(n.status.as_ref().unwrap().conditions[0].type_, "Ready");
}

#[test]
fn identitydnode_validation_names_fields() {
    let errs = invalid(
        "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n1, namespace: x}\n\
         spec:\n  podCIDRs: [10.244.1.1/24, banana]\n  underlayAddresses: [10.99.0.300]\n  \
         wireguard: {publicKey: short, port: 70000}\n",
    );
    assert_has(&errs, "metadata.namespace=x: must be absent");
    assert_has(
        &errs,
        "spec.podCIDRs[0]=10.244.1.1/24: host bits are set (did you mean 10.244.1.0/24?)",
    );
    assert_has(&errs, "spec.podCIDRs[1]=banana: must be a CIDR");
    assert_has(
        &errs,
        "spec.underlayAddresses[0]=10.99.0.300: must be an IPv4 or IPv6 address",
    );
    assert_has(
        &errs,
        "spec.wireguard.publicKey=short: must be a base64 WireGuard public key",
    );
    assert_has(&errs, "spec.wireguard.port=70000: must be a port number");
    let errs = invalid(
        "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n1}\nspec: {podCIDRs: []}\n",
    );
    assert_has(
        &errs,
        "spec.underlayAddresses=[]: at least one underlay address is required",
    );
}

#[test]
fn parses_keyrotation_and_rejects_unknown_target() {
    let Object::KeyRotation(r) = one(
        "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: rotate-wg}\n\
         spec:\n  target: wireguard\n  nodeSelector: {zone: a}\n  overlapWindow: 30s\n\
         status:\n  phase: InProgress\n  conditions: [{type: Progressing, status: 'True'}]\n",
    ) else {
        panic!("kind")
    };
    assert_eq!(r.spec.target(), Some(RotationTarget::Wireguard));
    assert_eq!(
        r.spec.overlap_window(),
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        r.status.as_ref().unwrap().phase(),
        Some(RotationPhase::InProgress)
    );

    let errs = invalid(
        "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: r}\n\
         spec: {target: tls, overlapWindow: -1s}\nstatus: {phase: Done}\n",
    );
    assert_has(
        &errs,
        "spec.target=tls: must be one of wireguard, ipsec, ca",
    );
    assert_has(
        &errs,
        "spec.overlapWindow=-1s: negative durations are not allowed",
    );
    assert_has(
        &errs,
        "status.phase=Done: must be one of Pending, InProgress, Completed, Failed",
    );
}

const TRAFFIC_POLICY: &str = r#"
apiVersion: identityd.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: web-resilience
  namespace: shop
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: HTTPRoute
    name: web
  retries:
    attempts: 3
    perTryTimeout: 500ms
    retryOn: [5xx, connect-failure]
    backoff: {baseInterval: 25ms, maxInterval: 250ms}
  timeout: 2s
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 10, maxRequests: 100, maxRetries: 3}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
  localRateLimit: {tokens: 100, fillInterval: 1s}
"#;

#[test]
fn parses_trafficpolicy() {
    let Object::TrafficPolicy(p) = one(TRAFFIC_POLICY) else {
        panic!("kind")
    };
    let r = p.spec.retries.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.retry_on, vec!["5xx", "connect-failure"]);
    assert_eq!(
        p.spec.outlier_detection.as_ref().unwrap().consecutive_5xx,
        Some(5)
    );
    assert_eq!(p.spec.local_rate_limit.as_ref().unwrap().tokens, 100);
    assert_eq!(
        p.spec
            .circuit_breaker
            .as_ref()
            .unwrap()
            .max_pending_requests,
        Some(10)
    );
}

#[test]
fn trafficpolicy_validation_names_fields() {
    let errs = invalid(
        "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\n\
         spec:\n  targetRef: {kind: Deployment, name: web}\n  retries: {attempts: -1, perTryTimeout: 0s, retryOn: [sometimes]}\n  \
         timeout: -2s\n  outlierDetection: {maxEjectionPercent: 150}\n  localRateLimit: {tokens: 0, fillInterval: 1x}\n",
    );
    assert_has(&errs, "spec.retries.attempts=-1: must be >= 0");
    assert_has(
        &errs,
        "spec.targetRef.kind=Deployment: must be one of Service, HTTPRoute, GRPCRoute",
    );
    assert_has(
        &errs,
        "spec.retries.perTryTimeout=0s: must be greater than zero",
    );
    assert_has(
        &errs,
        "spec.retries.retryOn[0]=sometimes: must be one of 5xx",
    );
    assert_has(
        &errs,
        "spec.timeout=-2s: negative durations are not allowed",
    );
    assert_has(
        &errs,
        "spec.outlierDetection.maxEjectionPercent=150: must be <= 100",
    );
    assert_has(&errs, "spec.localRateLimit.tokens=0: must be >= 1");
    assert_has(&errs, "spec.localRateLimit.fillInterval=1x: unknown unit");
    let errs = invalid(
        "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\n\
         spec: {targetRef: {kind: HTTPRoute, name: web}}\n",
    );
    assert_has(
        &errs,
        "spec.targetRef.group=: must be \"gateway.networking.k8s.io\" for kind HTTPRoute",
    );
}

#[test]
fn identityd_specs_refuse_unknown_fields() {
    let out = decode_all(
        "apiVersion: identityd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n\
         spec:\n  targetRef: {kind: Service, name: web}\n  denny: [{}]\n",
    );
    match &out[0].1 {
        Err(e @ DocError::Schema { .. }) => assert!(e.to_string().contains("denny"), "{e}"),
        other => panic!("{other:?}"),
    }
    let out = decode_all(
        "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\n\
         spec:\n  targetRef: {kind: Service, name: web}\n  retries: {attempts: many}\n",
    );
    match &out[0].1 {
        Err(e @ DocError::Schema { field, .. }) => {
            assert_eq!(field.as_deref(), Some("spec.retries.attempts"), "{e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("TrafficPolicy shop/p: spec.retries.attempts: "),
                "{msg}"
            );
            assert!(msg.contains("(line 6, column"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn parses_authorizationpolicy_and_validates_rules() {
    let Object::AuthorizationPolicy(p) = one(r"
apiVersion: identityd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-authz, namespace: shop}
spec:
  targetRef: {kind: Service, name: web}
  allow:
    - from:
        spiffeIds: [spiffe://cluster.local/ns/shop/sa/frontend]
        namespaces: [shop]
        serviceAccounts: [shop/frontend, checkout]
      to:
        paths: [/api/*, /healthz]
        methods: [GET, POST]
  deny:
    - to: {paths: [/admin/*]}
")
    else {
        panic!("kind")
    };
    assert_eq!(p.spec.allow.len(), 1);
    assert_eq!(p.spec.deny[0].to.as_ref().unwrap().paths, vec!["/admin/*"]);
    assert_eq!(p.metadata.namespace.as_deref(), Some("shop"));

    let errs = invalid(
        "apiVersion: identityd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n\
         spec:\n  targetRef: {kind: HTTPRoute, name: web}\n  allow:\n    - from: {spiffeIds: [http://x], serviceAccounts: [A/b/c]}\n      \
         to: {paths: ['api/*', '/a*b'], methods: [FETCH]}\n",
    );
    assert_has(
        &errs,
        "spec.targetRef.kind=HTTPRoute: must be one of Service",
    );
    assert_has(
        &errs,
        "spec.allow[0].from.spiffeIds[0]=http://x: must be a SPIFFE ID",
    );
    assert_has(
        &errs,
        "spec.allow[0].from.serviceAccounts[0]=A/b/c: must be NAMESPACE/NAME",
    );
    assert_has(
        &errs,
        "spec.allow[0].to.paths[0]=api/*: must start with '/'",
    );
    assert_has(&errs, "spec.allow[0].to.paths[1]=/a*b:");
    assert_has(
        &errs,
        "spec.allow[0].to.methods[0]=FETCH: must be one of GET",
    );
}

#[test]
fn parses_namespace_and_rejects_bad_mtls() {
    let Object::Namespace(ns) = one(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    identityd.io/mtls: strict\n",
    ) else {
        panic!("kind")
    };
    assert_eq!(ns.mtls_mode(), Some(MtlsMode::Strict));
    let errs = invalid(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {identityd.io/mtls: strcit}\n",
    );
    assert_has(
        &errs,
        "metadata.annotations[identityd.io/mtls]=strcit: must be one of strict, permissive, disabled",
    );
}

const POD: &str = r"
apiVersion: v1
kind: Pod
metadata:
  name: web-v1-0
  namespace: shop
  labels: {app: web, version: v1}
  uid: 5a1c   # ignored field
spec:
  nodeName: n1
  serviceAccountName: web
  restartPolicy: Always   # ignored field
  containers:
    - name: app
      image: example/web:1
      ports:
        - {name: http, containerPort: 8080}
status:
  phase: Running
  podIP: 10.244.1.10
  podIPs: [{ip: 10.244.1.10}]
";

#[test]
fn parses_pod_and_service_with_unknown_standard_fields() {
    let Object::Pod(p) = one(POD) else {
        panic!("kind")
    };
    assert_eq!(p.namespace(), "shop");
    assert_eq!(p.service_account(), "web");
    assert_eq!(p.ip(), Some("10.244.1.10".parse().unwrap()));
    assert_eq!(
        p.resolve_port(&IntOrString::String("http".into())),
        Some(8080)
    );
    let Object::Service(s) = one(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  \
         ports:\n    - {name: http, port: 80, targetPort: http, appProtocol: http}\n    - {name: grpc, port: 9090, targetPort: 9090}\n",
    ) else {
        panic!("kind")
    };
    assert_eq!(s.spec.ports[0].target(), IntOrString::String("http".into()));
    assert_eq!(s.spec.ports[1].target(), IntOrString::Int(9090));
    let errs = invalid(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.0.0.999\n  ports: [{port: 0}, {port: 80}]\n",
    );
    assert_has(
        &errs,
        "spec.clusterIP=10.0.0.999: must be an IPv4 or IPv6 address",
    );
    assert_has(
        &errs,
        "spec.ports[0].port=0: must be a port number in 1..=65535",
    );
    assert_has(
        &errs,
        "spec.ports[0].name=: required when a Service has several ports",
    );
    let errs = invalid(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: N_1}\nstatus: {podIP: nope}\n",
    );
    assert_has(&errs, "spec.nodeName=N_1:");
    assert_has(&errs, "status.podIP=nope: must be an IPv4 or IPv6 address");
}

const GATEWAY: &str = r"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: identityd
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - name: https
      port: 8443
      protocol: HTTPS
      hostname: shop.example.com
      tls:
        mode: Terminate
        certificateRefs: [{name: shop-tls}]
";

const HTTP_ROUTE: &str = r"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs:
    - {name: ingress}
    - {group: '', kind: Service, name: web}
  hostnames: [shop.example.com]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          headers: [{name: x-canary, value: 'yes'}]
          method: GET
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: web}]
            remove: [x-debug]
      backendRefs:
        - {name: web-v1, port: 80, weight: 90}
        - {name: web-v2, port: 80, weight: 10}
      timeouts: {request: 2s}
    - matches: [{path: {type: Exact, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}
";

#[test]
fn parses_gateway_and_httproute() {
    let Object::Gateway(g) = one(GATEWAY) else {
        panic!("kind")
    };
    assert_eq!(
        g.spec.listeners[1].tls.as_ref().unwrap().certificate_refs[0].name,
        "shop-tls"
    );
    let Object::HttpRoute(r) = one(HTTP_ROUTE) else {
        panic!("kind")
    };
    assert_eq!(
        r.spec.parent_refs[0].parent_kind(),
        Some(ParentKind::Gateway)
    );
    assert_eq!(
        r.spec.parent_refs[1].parent_kind(),
        Some(ParentKind::Service)
    );
    let rule = &r.spec.rules[0];
    assert_eq!(
        rule.backend_refs
            .iter()
            .map(BackendRef::weight)
            .collect::<Vec<_>>(),
        vec![90, 10]
    );
    assert_eq!(rule.matches[0].headers[0].value, "yes");
    assert_eq!(rule.matches[0].method.as_deref(), Some("GET"));
    assert!(r.attaches_to(ParentKind::Service, "shop", "web"));
    assert!(r.attaches_to(ParentKind::Gateway, "shop", "ingress"));
    assert!(!r.attaches_to(ParentKind::Gateway, "other", "ingress"));
}

#[test]
fn httproute_validation_names_fields() {
    let errs = invalid(
        r"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{kind: Deployment, name: x}]
  rules:
    - matches: [{path: {type: Glob, value: api}, method: FETCH}]
      filters: [{type: URLRewrite}]
      backendRefs:
        - {name: a, port: 80, weight: 0}
        - {name: b, weight: 0}
    - backendRefs: [{name: c, port: 80, weight: -5}]
    - {}
",
    );
    assert_has(
        &errs,
        "spec.parentRefs[0].kind=gateway.networking.k8s.io/Deployment: must be a Gateway",
    );
    assert_has(&errs, "spec.rules[0].matches[0].path.type=Glob:");
    assert_has(&errs, "spec.rules[0].matches[0].method=FETCH:");
    assert_has(
        &errs,
        "spec.rules[0].filters[0].type=URLRewrite: unsupported filter",
    );
    assert_has(
        &errs,
        "spec.rules[0].backendRefs=weights 0: weights sum to 0",
    );
    assert_has(
        &errs,
        "spec.rules[0].backendRefs[1].port=: required for a Service backend",
    );
    assert_has(
        &errs,
        "spec.rules[1].backendRefs[0].weight=-5: must be >= 0",
    );
    assert_has(
        &errs,
        "spec.rules[2].backendRefs=[]: at least one backendRef",
    );
}

#[test]
fn parses_grpcroute_and_ingress() {
    let Object::GrpcRoute(r) = one(r"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{name: ingress, sectionName: https}]
  hostnames: [grpc.example.com]
  rules:
    - matches:
        - method: {service: helloworld.Greeter, method: SayHello}
          headers: [{name: x-tenant, value: a}]
      backendRefs: [{name: greeter, port: 9090}]
")
    else {
        panic!("kind")
    };
    let m = r.spec.rules[0].matches[0].method.as_ref().unwrap();
    assert_eq!(m.service.as_deref(), Some("helloworld.Greeter"));
    assert_eq!(r.spec.rules[0].backend_refs[0].weight(), 1);
    assert!(r.attaches_to(ParentKind::Gateway, "shop", "ingress"));

    let Object::Ingress(i) = one(r"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: identityd
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
    - host: shop.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
          - path: /grpc
            pathType: Exact
            backend: {service: {name: greeter, port: {name: grpc}}}
")
    else {
        panic!("kind")
    };
    assert_eq!(i.spec.rules[0].http.as_ref().unwrap().paths.len(), 2);
    let errs = invalid(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x}\nspec:\n  rules:\n    - host: Bad_Host\n      \
         http: {paths: [{path: nope, pathType: Regex, backend: {service: {name: web, port: {}}}}]}\n",
    );
    assert_has(&errs, "spec.rules[0].host=Bad_Host:");
    assert_has(
        &errs,
        "spec.rules[0].http.paths[0].path=nope: must start with '/'",
    );
    assert_has(&errs, "spec.rules[0].http.paths[0].pathType=Regex:");
    assert_has(
        &errs,
        "spec.rules[0].http.paths[0].backend.service.port=: exactly one of number or name",
    );
}

#[test]
fn wrong_api_version_is_unknown_kind() {
    let out = decode_all("apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n");
    assert!(
        matches!(out[0].1, Err(DocError::UnknownKind { .. })),
        "{:?}",
        out[0].1
    );
}

#[test]
fn objects_round_trip_through_yaml() {
    for y in [NODE, TRAFFIC_POLICY, POD, GATEWAY, HTTP_ROUTE] {
        let o = one(y);
        let text = o.to_yaml().unwrap();
        let back = one(&text);
        assert_eq!(o, back, "round trip of\n{text}");
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labelled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
    for (k, v) in labels {
        p.metadata.labels.insert((*k).into(), (*v).into());
    }
    p
}

fn node(name: &str, cidr: &str, underlay: &str) -> IdentitydNode {
    IdentitydNode::new(
        name,
        IdentitydNodeSpec {
            pod_cidrs: vec![cidr.into()],
            underlay_addresses: vec![underlay.into()],
            wireguard: Some(WireguardSpec {
                public_key: WG_KEY.into(),
                port: 51871,
                next_public_key: None,
            }),
            ipsec: None,
            proof: None,
        },
    )
}

fn sample_state() -> ClusterState {
    let route = match one(HTTP_ROUTE) {
        Object::HttpRoute(r) => r,
        _ => unreachable!(),
    };
    let svc = match one(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n",
    ) {
        Object::Service(s) => s,
        _ => unreachable!(),
    };
    let mut done = Pod::new("shop", "web-old", "n1", "web", ip("10.244.1.99"));
    done.metadata.labels.insert("app".into(), "web".into());
    if let Some(st) = done.status.as_mut() {
        st.phase = Some("Succeeded".into());
    }
    let mut bad_ns = Namespace::new("secure", None);
    bad_ns
        .metadata
        .annotations
        .insert(MTLS_ANNOTATION.into(), "strcit".into());
    ClusterState::from_objects(
        7,
        [
            node("n1", "10.244.1.0/24", "10.99.0.11").into(),
            node("n2", "10.244.2.0/24", "10.99.0.12").into(),
            node("n3", "10.244.3.0/24", "10.99.0.13").into(),
            Namespace::new("shop", Some(MtlsMode::Strict)).into(),
            Namespace::new("plain", None).into(),
            bad_ns.into(),
            labelled(
                Pod::new("shop", "web-1", "n1", "web", ip("10.244.1.10")),
                &[("app", "web")],
            )
            .into(),
            labelled(
                Pod::new("shop", "web-2", "n2", "web", ip("10.244.2.10")),
                &[("app", "web")],
            )
            .into(),
            labelled(
                Pod::new("plain", "web-3", "n1", "web", ip("10.244.1.11")),
                &[("app", "web")],
            )
            .into(),
            done.into(),
            svc.into(),
            route.into(),
        ],
    )
}

#[test]
fn state_queries() {
    let s = sample_state();
    assert_eq!(s.version(), 7);
    let on_n1: Vec<&str> = s
        .pods_on_node("n1")
        .map(|p| p.metadata.name.as_str())
        .collect();
    assert_eq!(
        on_n1,
        vec!["web-3", "web-1"],
        "terminated pods are excluded; order is namespace/name"
    );
    let others: Vec<&str> = s
        .other_nodes("n2")
        .map(|n| n.metadata.name.as_str())
        .collect();
    assert_eq!(others, vec!["n1", "n3"]);
    assert_eq!(
        s.node_for_pod_ip(ip("10.244.3.4")).unwrap().metadata.name,
        "n3"
    );
    assert_eq!(
        s.pod_by_ip(ip("10.244.2.10")).unwrap().metadata.name,
        "web-2"
    );

    let web1 = &s.pods[&NamespacedName::new("shop", "web-1")];
    let web3 = &s.pods[&NamespacedName::new("plain", "web-3")];
    assert_eq!(s.pod_mtls(web1, MtlsMode::Disabled), MtlsMode::Strict);
    assert_eq!(
        s.pod_mtls(web3, MtlsMode::Permissive),
        MtlsMode::Permissive,
        "unannotated → default"
    );
    assert_eq!(
        s.namespace_mtls("nowhere", MtlsMode::Disabled),
        MtlsMode::Disabled
    );
    assert_eq!(
        s.namespace_mtls("secure", MtlsMode::Disabled),
        MtlsMode::Strict,
        "a rejected namespace fails closed"
    );
    assert!(
        s.problems.iter().any(|p| p.to_string().contains("strcit")),
        "{:#?}",
        s.problems
    );

    let eps = s.service_endpoints("shop", "web").unwrap();
    let names: Vec<&str> = eps
        .endpoints
        .iter()
        .map(|e| e.pod.metadata.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["web-1", "web-2"],
        "same namespace, running, selector match"
    );
    assert_eq!(eps.endpoints[0].ip, ip("10.244.1.10"));
    assert_eq!(s.services_with_endpoints().len(), 1);

    assert_eq!(s.routes_for_service("shop", "web").http.len(), 1);
    assert_eq!(s.routes_for_gateway("shop", "ingress").http.len(), 1);
    assert!(s.routes_for_service("plain", "web").http.is_empty());
}

#[test]
fn conflicting_traffic_policies_keep_the_first() {
    let Object::TrafficPolicy(a) = one(TRAFFIC_POLICY) else {
        panic!("kind")
    };
    let mut b = a.clone();
    b.metadata.name = "zz-second".into();
    let s = ClusterState::from_objects(1, [a.into(), b.into()]);
    assert_eq!(s.traffic_policies.len(), 1);
    assert!(s.traffic_policy_for("HTTPRoute", "shop", "web").is_some());
    let p = s
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(p.contains("TrafficPolicy shop/zz-second: spec.targetRef=HTTPRoute/web: already targeted by TrafficPolicy shop/web-resilience"), "{p}");
}

#[test]
fn duplicate_objects_are_refused() {
    let s = ClusterState::from_objects(
        1,
        [
            Namespace::new("a", None).into(),
            Namespace::new("a", Some(MtlsMode::Strict)).into(),
        ],
    );
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(s.namespaces["a"].mtls_mode(), None, "first wins");
}

#[test]
fn lab_cluster_fixture_loads_and_answers_the_reconciler_queries() {
    let text = include_str!("testdata/lab-cluster.yaml");
    let mut objects = Vec::new();
    for (doc, r) in decode_all(text) {
        match r {
            Ok(Some(o)) => objects.push(o),
            other => panic!("document {} (line {}): {other:?}", doc.index, doc.line),
        }
    }
    objects.extend([
        node("n1", "10.244.1.0/24", "10.99.0.11").into(),
        node("n2", "10.244.2.0/24", "10.99.0.12").into(),
        node("n3", "10.244.3.0/24", "10.99.0.13").into(),
    ]);
    let s = ClusterState::from_objects(1, objects);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    assert_eq!(s.len(), 18, "15 objects and the 3 Nodes");
    assert_eq!(s.node_object_pod_cidrs().len(), 3);
    let client = s.pod_by_ip(ip("10.244.3.10")).unwrap();
    assert_eq!(s.pod_mtls(client, MtlsMode::Permissive), MtlsMode::Strict);
    let old = s.pod_by_ip(ip("10.244.2.20")).unwrap();
    assert_eq!(old.service_account(), "default");
    assert_eq!(s.pod_mtls(old, MtlsMode::Permissive), MtlsMode::Permissive);
    let web = s.service_endpoints("shop", "web").unwrap();
    assert_eq!(web.endpoints.len(), 2);
    let port = web.service.spec.ports[0].target();
    assert!(
        web.endpoints
            .iter()
            .all(|e| e.pod.resolve_port(&port) == Some(8080))
    );
    assert_eq!(
        s.service_endpoints("shop", "web-v2").unwrap().endpoints[0].ip,
        ip("10.244.2.10")
    );
    let routes = s.routes_for_service("shop", "web");
    let weights: Vec<u32> = routes.http[0].spec.rules[0]
        .backend_refs
        .iter()
        .map(BackendRef::weight)
        .collect();
    assert_eq!(weights, vec![90, 10]);
    assert!(s.traffic_policy_for("Service", "shop", "web").is_some());
    assert_eq!(s.authorization_policies_for_service("shop", "web").len(), 1);
    assert_eq!(s.pods_on_node("n2").count(), 2);
    assert_eq!(s.other_nodes("n1").count(), 2);
    let all = std::collections::BTreeMap::new();
    assert_eq!(s.nodes_matching(&all).count(), 3);
    let zone = std::collections::BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    assert_eq!(s.nodes_matching(&zone).count(), 0);
}

#[test]
fn a_node_update_that_keeps_its_pod_cidrs_is_the_same_content() {
    use crate::model::Node;
    let mut a = Node::new("n1", &["10.244.1.0/24"]);
    a.metadata.resource_version = Some("100".into());
    a.metadata
        .annotations
        .insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
    let mut b = a.clone();
    b.metadata.resource_version = Some("101".into());
    b.metadata
        .labels
        .insert("topology.kubernetes.io/zone".into(), "b".into());
    let sa = ClusterState::from_objects(1, [Object::Node(a.clone())]);
    let sb = ClusterState::from_objects(2, [Object::Node(b)]);
    assert!(
        sa.same_content(&sb),
        "a kubelet heartbeat is no new snapshot"
    );
    let mut c = a;
    c.spec.pod_cidrs.push("fd00:10:244:1::/64".into());
    let sc = ClusterState::from_objects(3, [Object::Node(c)]);
    assert!(!sa.same_content(&sc), "a new pod CIDR is");
}
