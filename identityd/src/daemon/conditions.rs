//! `Accepted` conditions on L7 objects, pure: the CA role (the cluster's one controller) runs
//! the same validation the nodes run before pushing to Envoy, over the whole cluster, and
//! writes the result onto each Gateway, HTTPRoute, GRPCRoute (Gateway API `status.parents[]`)
//! and TrafficPolicy. An object with a problem is `Accepted=False` with the field and reason;
//! nodes never push it, and the last good config keeps serving.

use std::collections::BTreeMap;

use identityd_certs::TrustDomain;
use identityd_envoy::mesh::SvidPem;

use crate::daemon::ingress::{self, GATEWAY_CLASS, IngressPorts};
use crate::daemon::mesh::plan_mesh;
use crate::model::gateway::{GatewayStatus, ParentKind, ParentRef, RouteParentStatus, RouteStatus};
use crate::model::identityd::PolicyStatus;
use crate::model::{ClusterState, Condition, NamespacedName, Object};

/// `controllerName` identityd writes in route status.
pub const CONTROLLER_NAME: &str = "identityd.io/gateway-controller";

/// Problems per object (`HTTPRoute ns/name`, `Gateway ns/name`, `TrafficPolicy ns/name`, …),
/// each `field: message`.
#[must_use]
pub fn l7_problems(state: &ClusterState, td: &TrustDomain) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let plan = ingress::plan_ingress(state, IngressPorts::default());
    for p in &plan.problems {
        if let Some((obj, msg)) = p.split_once(": ")
            && (obj.starts_with("Gateway ") || obj.starts_with("Ingress "))
        {
            out.entry(obj.to_owned()).or_default().push(msg.to_owned());
        }
    }
    // The node-side validation, over every listener and route of the cluster: certificates
    // and the gateway identity are assumed issued (their absence is not the object's fault).
    let mut mesh = plan_mesh(state, "", td, &BTreeMap::new(), "");
    mesh.l7.listeners = plan.listeners;
    mesh.l7.routes = plan.routes;
    mesh.l7.policies = crate::daemon::mesh::mesh_policies(state);
    mesh.l7.tls_secrets = plan
        .certs
        .iter()
        .map(|w| SvidPem {
            id: w.secret.clone(),
            chain_pem: String::new(),
            key_pem: String::new(),
        })
        .chain(plan.secret_certs.iter().map(|c| SvidPem {
            id: c.sds.clone(),
            chain_pem: String::new(),
            key_pem: String::new(),
        }))
        .collect();
    let gw = identityd_certs::service::gateway_id(td).to_string();
    mesh.svids.push(SvidPem {
        id: gw.clone(),
        chain_pem: String::new(),
        key_pem: String::new(),
    });
    mesh.l7.gateway_id = Some(gw);
    for p in identityd_envoy::l7::validate(&mesh) {
        // A listener's problem belongs to its Gateway (`listener ns/gateway/listener`).
        let obj = match p.object.strip_prefix("listener ") {
            Some(l) => {
                let mut it = l.split('/');
                match (it.next(), it.next(), it.next()) {
                    (Some(ns), Some(gw), Some(_)) => format!("Gateway {ns}/{gw}"),
                    _ => continue,
                }
            }
            None => p.object.clone(),
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
            problems.get(&format!("Gateway {}/{}", key.namespace, key.name)),
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
    let route = |kind: &str,
                 key: &NamespacedName,
                 parents: &[ParentRef],
                 prev: Option<&RouteStatus>,
                 generation: Option<i64>| {
        let p = problems.get(&format!("{kind} {}/{}", key.namespace, key.name));
        let st = route_status(state, &key.namespace, parents, p, prev, now, generation)?;
        (!route_unchanged(prev, &st)).then_some(st)
    };
    for (key, r) in &state.http_routes {
        let prev = r.status.as_ref();
        if let Some(st) = route(
            "HTTPRoute",
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
            "GRPCRoute",
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
            problems.get(&format!("TrafficPolicy {}/{}", key.namespace, key.name)),
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
}
