//! `Accepted` conditions on L7 objects, pure: the CA role (the cluster's one controller) runs
//! the same validation the nodes run before pushing to Envoy, over the whole cluster, and
//! writes the result onto each Gateway, HTTPRoute, GRPCRoute (Gateway API `status.parents[]`)
//! and TrafficPolicy. An object with a problem is `Accepted=False` with the field and reason;
//! nodes never push it, and the last good config keeps serving.

use std::collections::BTreeMap;

use identityd_certs::TrustDomain;
use identityd_envoy::l7::Subject;
use identityd_envoy::mesh::SvidPem;

use crate::daemon::ingress::{self, GATEWAY_CLASS, IngressPorts};
use crate::daemon::mesh::plan_mesh;
use crate::model::gateway::{GatewayStatus, ParentKind, ParentRef, RouteParentStatus, RouteStatus};
use crate::model::identityd::PolicyStatus;
use crate::model::{ClusterState, Condition, Kind, NamespacedName, Object, ObjectKey};

/// `controllerName` identityd writes in route status.
pub const CONTROLLER_NAME: &str = "identityd.io/gateway-controller";

/// The object an L7 validation problem is about: a listener's problem belongs to the Gateway
/// it comes from (by the plan's own record, not by its name), a route's and a policy's to
/// themselves. `None` for listeners of `Ingress` objects, which carry no condition.
fn owner(s: &Subject, plan: &ingress::IngressPlan) -> Option<ObjectKey> {
    let key = |kind, namespace: &str, name: &str| ObjectKey {
        kind,
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
    };
    match s {
        Subject::Listener(l) => plan
            .listener_owners
            .get(l)
            .map(|gw| key(Kind::Gateway, &gw.namespace, &gw.name)),
        Subject::Route {
            kind,
            namespace,
            name,
        } => Some(key(
            match kind {
                identityd_envoy::l7::RouteKind::Http => Kind::HttpRoute,
                identityd_envoy::l7::RouteKind::Grpc => Kind::GrpcRoute,
            },
            namespace,
            name,
        )),
        Subject::Policy { namespace, name } => Some(key(Kind::TrafficPolicy, namespace, name)),
        _ => None,
    }
}

/// Problems per object, each `field: message`.
#[must_use]
pub fn l7_problems(state: &ClusterState, td: &TrustDomain) -> BTreeMap<ObjectKey, Vec<String>> {
    let mut out: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
    let plan = ingress::plan_ingress(state, IngressPorts::default());
    for p in &plan.problems {
        out.entry(p.object.clone())
            .or_default()
            .push(format!("{}: {}", p.field, p.message));
    }
    // The node-side validation, over every listener and route of the cluster: certificates
    // and the gateway identity are assumed issued (their absence is not the object's fault).
    let mut mesh = plan_mesh(state, "", td, &BTreeMap::new(), "");
    mesh.l7.listeners.clone_from(&plan.listeners);
    mesh.l7.routes.clone_from(&plan.routes);
    mesh.l7.policies = crate::daemon::mesh::mesh_policies(state);
    mesh.l7.tls_secrets = plan
        .certs
        .iter()
        .map(|w| SvidPem {
            id: w.secret.clone(),
            chain_pem: String::new(),
            key_pem: zeroize::Zeroizing::default(),
        })
        .chain(plan.secret_certs.iter().map(|c| SvidPem {
            id: c.sds.clone(),
            chain_pem: String::new(),
            key_pem: zeroize::Zeroizing::default(),
        }))
        .collect();
    let gw = identityd_certs::service::gateway_id(td).to_string();
    mesh.svids.push(SvidPem {
        id: gw.clone(),
        chain_pem: String::new(),
        key_pem: zeroize::Zeroizing::default(),
    });
    mesh.l7.gateway_id = Some(gw);
    for p in identityd_envoy::l7::validate(&mesh) {
        let Some(obj) = owner(&p.subject, &plan) else {
            continue;
        };
        out.entry(obj)
            .or_default()
            .push(format!("{}: {}", p.field, p.message));
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}

fn accepted(
    problems: Option<&Vec<String>>,
    prev: &[Condition],
    now: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    let (status, reason, message) = match problems {
        Some(p) if !p.is_empty() => ("False", "Invalid", p.join("; ")),
        _ => (
            "True",
            "Accepted",
            "valid; served by every node's Envoy".to_owned(),
        ),
    };
    // Keep the transition time while the status does not change.
    let since = prev
        .iter()
        .find(|c| c.type_ == "Accepted" && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    vec![Condition {
        type_: "Accepted".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: Some(since),
        observed_generation: generation,
    }]
}

fn same(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |c: &[Condition]| -> Vec<Condition> {
        c.iter()
            .map(|c| Condition {
                last_transition_time: None,
                ..c.clone()
            })
            .collect()
    };
    strip(a) == strip(b)
}

fn ours(state: &ClusterState, route_ns: &str, p: &ParentRef) -> bool {
    match p.parent_kind() {
        Some(ParentKind::Service) => true,
        Some(ParentKind::Gateway) => state
            .gateways
            .get(&NamespacedName::new(p.namespace_or(route_ns), &p.name))
            .is_some_and(|g| g.spec.gateway_class_name == GATEWAY_CLASS),
        None => false,
    }
}

fn route_status(
    state: &ClusterState,
    ns: &str,
    parents: &[ParentRef],
    problems: Option<&Vec<String>>,
    prev: Option<&RouteStatus>,
    now: &str,
    generation: Option<i64>,
) -> Option<RouteStatus> {
    let mut entries = Vec::new();
    for p in parents.iter().filter(|p| ours(state, ns, p)) {
        let prev_conds = prev
            .and_then(|s| s.parents.iter().find(|e| &e.parent_ref == p))
            .map(|e| e.conditions.as_slice())
            .unwrap_or_default();
        entries.push(RouteParentStatus {
            parent_ref: p.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions: accepted(problems, prev_conds, now, generation),
        });
    }
    if entries.is_empty() {
        return None;
    }
    // Entries other controllers wrote stay.
    if let Some(prev) = prev {
        for e in &prev.parents {
            if e.controller_name != CONTROLLER_NAME {
                entries.push(e.clone());
            }
        }
    }
    Some(RouteStatus { parents: entries })
}

fn route_unchanged(prev: Option<&RouteStatus>, new: &RouteStatus) -> bool {
    prev.is_some_and(|p| {
        p.parents.len() == new.parents.len()
            && p.parents.iter().zip(&new.parents).all(|(a, b)| {
                a.parent_ref == b.parent_ref
                    && a.controller_name == b.controller_name
                    && same(&a.conditions, &b.conditions)
            })
    })
}

fn object_key(kind: Kind, key: &NamespacedName) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: Some(key.namespace.clone()),
        name: key.name.clone(),
    }
}

/// The objects whose `Accepted` condition changes, with their new status, ready to write.
/// `now` is RFC 3339. Pure.
#[must_use]
pub fn status_updates(state: &ClusterState, td: &TrustDomain, now: &str) -> Vec<Object> {
    let problems = l7_problems(state, td);
    let mut out = Vec::new();
    for (key, gw) in &state.gateways {
        if gw.spec.gateway_class_name != GATEWAY_CLASS {
            continue;
        }
        let prev = gw
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let conds = accepted(
            problems.get(&object_key(Kind::Gateway, key)),
            prev,
            now,
            gw.metadata.generation,
        );
        if !same(prev, &conds) {
            let mut g = gw.clone();
            g.status = Some(GatewayStatus { conditions: conds });
            out.push(Object::Gateway(g));
        }
    }
    // A route's new status, when it changes.
    let route = |kind: Kind,
                 key: &NamespacedName,
                 parents: &[ParentRef],
                 prev: Option<&RouteStatus>,
                 generation: Option<i64>| {
        let p = problems.get(&object_key(kind, key));
        let st = route_status(state, &key.namespace, parents, p, prev, now, generation)?;
        (!route_unchanged(prev, &st)).then_some(st)
    };
    for (key, r) in &state.http_routes {
        let prev = r.status.as_ref();
        if let Some(st) = route(
            Kind::HttpRoute,
            key,
            &r.spec.parent_refs,
            prev,
            r.metadata.generation,
        ) {
            let mut r = r.clone();
            r.status = Some(st);
            out.push(Object::HttpRoute(r));
        }
    }
    for (key, r) in &state.grpc_routes {
        let prev = r.status.as_ref();
        if let Some(st) = route(
            Kind::GrpcRoute,
            key,
            &r.spec.parent_refs,
            prev,
            r.metadata.generation,
        ) {
            let mut r = r.clone();
            r.status = Some(st);
            out.push(Object::GrpcRoute(r));
        }
    }
    for (key, tp) in &state.traffic_policies {
        let prev = tp
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let conds = accepted(
            problems.get(&object_key(Kind::TrafficPolicy, key)),
            prev,
            now,
            tp.metadata.generation,
        );
        if !same(prev, &conds) {
            let mut t = tp.clone();
            t.status = Some(PolicyStatus { conditions: conds });
            out.push(Object::TrafficPolicy(t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(extra: &str) -> ClusterState {
        let text = format!(
            "{}\n---\n{extra}",
            include_str!("../model/testdata/lab-cluster.yaml")
        );
        let objects: Vec<Object> = crate::source::decode::decode_all(&text)
            .into_iter()
            .map(|(_, r)| r.expect("valid").expect("object"))
            .collect();
        ClusterState::from_objects(1, objects)
    }

    const NOW: &str = "2026-11-26T13:00:00Z";

    #[test]
    fn valid_objects_are_accepted_and_a_bad_backend_is_named_on_its_route() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let st = state(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: shop}\n\
             spec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: nope, port: 80}]\n",
        );
        let ups = status_updates(&st, &td, NOW);
        let find = |kind: &str, name: &str| {
            ups.iter()
                .find(|o| o.kind().as_str() == kind && o.meta().name == name)
                .unwrap_or_else(|| panic!("no status for {kind} {name}: {ups:#?}"))
        };
        let Object::HttpRoute(bad) = find("HTTPRoute", "broken") else {
            unreachable!()
        };
        let c = &bad.status.as_ref().unwrap().parents[0];
        assert_eq!(c.controller_name, CONTROLLER_NAME);
        assert_eq!(c.conditions[0].status, "False");
        assert!(c.conditions[0].message.contains("nope"), "{c:?}");
        let Object::HttpRoute(good) = find("HTTPRoute", "web-split") else {
            unreachable!()
        };
        assert_eq!(
            good.status.as_ref().unwrap().parents[0].conditions[0].status,
            "True"
        );
        let Object::TrafficPolicy(tp) = find("TrafficPolicy", "web") else {
            unreachable!()
        };
        assert_eq!(tp.status.as_ref().unwrap().conditions[0].reason, "Accepted");

        // Once written, nothing changes: no write loop.
        let written: Vec<Object> = st
            .http_routes
            .values()
            .cloned()
            .map(Object::HttpRoute)
            .filter(|o| !ups.iter().any(|u| u.meta().name == o.meta().name))
            .chain(ups.iter().cloned())
            .chain(st.pods.values().cloned().map(Object::Pod))
            .chain(st.services.values().cloned().map(Object::Service))
            .chain(st.namespaces.values().cloned().map(Object::Namespace))
            .collect();
        let again = ClusterState::from_objects(2, written);
        let ups2 = status_updates(&again, &td, "2026-11-26T14:00:00Z");
        assert!(
            ups2.iter().all(|o| o.kind().as_str() == "TrafficPolicy"),
            "routes already carry their conditions: {ups2:#?}"
        );
    }

    #[test]
    fn an_ingress_route_to_a_strict_backend_is_accepted() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let st = state(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {identityd.io/mtls: strict}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\n\
             spec:\n  gatewayClassName: identityd\n  listeners:\n  - {name: http, port: 8080, protocol: HTTP}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: in, namespace: shop}\n\
             spec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n",
        );
        let ups = status_updates(&st, &td, NOW);
        for o in &ups {
            if let Object::HttpRoute(r) = o
                && r.metadata.name == "in"
            {
                let c = &r.status.as_ref().unwrap().parents[0].conditions[0];
                assert_eq!(c.status, "True", "{c:?}");
                return;
            }
        }
        panic!("no status for route in: {ups:#?}");
    }

    #[test]
    fn gateway_listener_problems_land_on_the_gateway() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let st = state(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\n\
             spec:\n  gatewayClassName: identityd\n  listeners:\n  - {name: https, port: 8443, protocol: HTTPS}\n",
        );
        let ups = status_updates(&st, &td, NOW);
        let gw = ups
            .iter()
            .find_map(|o| match o {
                Object::Gateway(g) => Some(g),
                _ => None,
            })
            .expect("gateway status");
        let c = &gw.status.as_ref().unwrap().conditions[0];
        assert_eq!(c.status, "False");
        assert!(c.message.contains("spec.listeners[0].hostname"), "{c:?}");
    }

    /// Every ingress and L7 validation problem reaches its own object's condition, naming the
    /// field: one bad object per row, each in an otherwise valid cluster.
    #[test]
    fn every_problem_reaches_its_objects_condition_with_its_field() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let gw = |name: &str, listener: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  gatewayClassName: identityd\n  listeners:\n  - {listener}\n"
            )
        };
        let rows: Vec<(String, &str, &str, &str)> = vec![
            (gw("g2", "{name: l, port: 9443, protocol: HTTPS}"), "Gateway", "g2", "spec.listeners[0].hostname"),
            (
                format!(
                    "{}---\n{}",
                    gw("g6a", "{name: l, port: 9500, protocol: HTTP}"),
                    gw("g6b", "{name: l, port: 9500, protocol: HTTP}")
                ),
                "Gateway",
                "g6b",
                "spec.listeners[0].port=9500",
            ),
            (
                gw("g4", "{name: l, port: 9445, protocol: TLS, hostname: a.example, tls: {mode: Passthrough}}"),
                "Gateway",
                "g4",
                "spec.listeners[0].tls.mode=Passthrough",
            ),
            (
                gw("g5", "{name: l, port: 9446, protocol: HTTPS, hostname: a.example, tls: {certificateRefs: [{name: missing}]}}"),
                "Gateway",
                "g5",
                "spec.listeners[0].tls.certificateRefs[0].name=missing",
            ),
            (
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r1, namespace: shop}\n\
                 spec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: nope, port: 80}]\n"
                    .to_owned(),
                "HTTPRoute",
                "r1",
                "backend",
            ),
            (
                "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: zz-dup, namespace: shop}\n\
                 spec:\n  targetRef: {kind: Service, name: nope}\n  timeout: 1s\n"
                    .to_owned(),
                "TrafficPolicy",
                "zz-dup",
                "targetRef",
            ),
        ];
        for (yaml, kind, name, field) in rows {
            let st = state(&yaml);
            let ups = status_updates(&st, &td, NOW);
            let cond = ups
                .iter()
                .find(|o| o.kind().as_str() == kind && o.meta().name == name)
                .and_then(|o| match o {
                    Object::Gateway(g) => g.status.as_ref().map(|s| s.conditions[0].clone()),
                    Object::HttpRoute(r) => r
                        .status
                        .as_ref()
                        .map(|s| s.parents[0].conditions[0].clone()),
                    Object::TrafficPolicy(t) => t.status.as_ref().map(|s| s.conditions[0].clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no condition on {kind} {name}: {ups:#?}"));
            assert_eq!(cond.status, "False", "{kind} {name}: {cond:?}");
            assert!(
                cond.message.contains(field),
                "{kind} {name}: the condition names {field}: {cond:?}"
            );
            // No other object is blamed for it.
            for o in &ups {
                if o.meta().name != name
                    && let Object::Gateway(g) = o
                {
                    let c = &g.status.as_ref().unwrap().conditions[0];
                    assert_eq!(
                        c.status, "True",
                        "{} blamed for {kind} {name}: {c:?}",
                        g.metadata.name
                    );
                }
            }
        }
    }
}
