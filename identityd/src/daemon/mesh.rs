//! The node's mesh side: the xDS server for the node's Envoy (on `<runDir>/xds.sock`), the
//! Envoy process (through [`crate::daemon::envoy_proc`]), and the TPROXY plumbing that sends
//! mTLS traffic through it. Certificates come from the identity worker
//! ([`crate::daemon::identity`]) on a `watch`; this task never talks to the CA.
//!
//! [`plan_mesh`] is pure: cluster state + SVIDs in, the Envoy mesh config out.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use identityd_certs::duration::millis as ms;
use identityd_certs::{ServingCert, SpiffeId, Svid, TrustDomain};
use identityd_envoy::bootstrap::{AdminAddress, XdsAddress, XdsFlavour, bootstrap_yaml_with_admin};
use identityd_envoy::mesh::{
    AuthzAction, AuthzPolicy, AuthzRule, Endpoint, MeshConfig, MtlsMode as EMtls, Ports, Service,
    SvidPem, Workload,
};
use identityd_envoy::server::{XdsCache, XdsServer};

use tokio::sync::watch;

use crate::daemon::config::DaemonConfig;
use crate::daemon::identity::Identities;
use crate::daemon::ingress::{self, IngressPorts};
use crate::model::{ClusterState, MtlsMode};

/// Envoy's inbound mTLS port.
pub const INBOUND_PORT: u16 = identityd_envoy::INBOUND_MTLS_PORT;
/// Envoy's outbound (TPROXY) port.
pub const OUTBOUND_PORT: u16 = identityd_envoy::OUTBOUND_PORT;
/// The nftables table for inbound mTLS TPROXY.
pub const NFT_INBOUND_TABLE: &str = identityd_bpf::routing::NFT_INBOUND_TABLE;

fn emtls(m: MtlsMode) -> EMtls {
    match m {
        MtlsMode::Strict => EMtls::Strict,
        MtlsMode::Permissive => EMtls::Permissive,
        MtlsMode::Disabled => EMtls::Disabled,
    }
}

pub use crate::daemon::identity::{wanted_identities, wanted_identities_with};

/// What [`plan_mesh_with`] needs besides cluster state and SVIDs.
#[derive(Debug, Clone)]
pub struct IngressInputs {
    /// Ports of the listeners `Ingress` objects share.
    pub ports: IngressPorts,
    /// CA-issued serving certificates held, by SDS secret name ([`ingress::CertWant::secret`]).
    pub certs: BTreeMap<String, Arc<ServingCert>>,
    /// mTLS mode of namespaces without the `identityd.io/mtls` annotation (`mtls.defaultMode`).
    pub default_mtls: MtlsMode,
    /// Envoy streams access logs to the daemon (`telemetry.accessLogs`).
    pub access_logs: bool,
}

impl Default for IngressInputs {
    fn default() -> Self {
        Self {
            ports: IngressPorts::default(),
            certs: BTreeMap::new(),
            default_mtls: MtlsMode::Disabled,
            access_logs: false,
        }
    }
}

/// The Envoy mesh config of `node` without ingress certificates, pure.
#[must_use]
pub fn plan_mesh(
    state: &ClusterState,
    node: &str,
    td: &TrustDomain,
    svids: &BTreeMap<SpiffeId, Arc<Svid>>,
    bundle_pem: &str,
) -> MeshConfig {
    plan_mesh_with(
        state,
        node,
        td,
        svids,
        bundle_pem,
        &IngressInputs::default(),
    )
    .0
}

/// The Envoy mesh config of `node`, pure, and what of the ingress plan could not be served
/// (listeners whose certificate is not held yet are left out, with their routes' parents).
#[must_use]
pub fn plan_mesh_with(
    state: &ClusterState,
    node: &str,
    td: &TrustDomain,
    svids: &BTreeMap<SpiffeId, Arc<Svid>>,
    bundle_pem: &str,
    ingress_in: &IngressInputs,
) -> (MeshConfig, Vec<String>) {
    let id_of = |ns: &str, sa: &str| {
        td.workload_id(ns, sa)
            .map(|i| i.to_string())
            .unwrap_or_default()
    };
    let workloads: Vec<Workload> = state
        .pods_on_node(node)
        .filter_map(|p| {
            Some(Workload {
                name: p.metadata.name.clone(),
                namespace: p.namespace().to_owned(),
                id: id_of(p.namespace(), p.service_account()),
                ip: p.ip()?,
                mtls: emtls(state.pod_mtls(p, ingress_in.default_mtls)),
            })
        })
        .collect();
    let mut services = Vec::new();
    let mut policies = Vec::new();
    for se in state.services_with_endpoints() {
        let svc = se.service;
        let ns = svc.namespace().to_owned();
        let mtls = emtls(state.namespace_mtls(&ns, ingress_in.default_mtls));
        for sp in &svc.spec.ports {
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let mut target = None;
            let endpoints: Vec<Endpoint> = se
                .endpoints
                .iter()
                .filter_map(|e| {
                    let tp = e.pod.resolve_port(&sp.target())?;
                    target.get_or_insert(tp);
                    Some(Endpoint {
                        ip: e.ip,
                        id: id_of(e.pod.namespace(), e.pod.service_account()),
                        mtls_address: SocketAddr::new(e.ip, INBOUND_PORT),
                        weight: 1,
                    })
                })
                .collect();
            let Some(target_port) = target else { continue };
            services.push(Service {
                name: svc.metadata.name.clone(),
                namespace: ns.clone(),
                port,
                target_port,
                mtls,
                hosts: vec![],
                endpoints,
            });
        }
        for ap in state.authorization_policies_for_service(&ns, &svc.metadata.name) {
            let rules = |rs: &[crate::model::identityd::AuthorizationRule]| -> Vec<AuthzRule> {
                rs.iter()
                    .map(|r| AuthzRule {
                        ids: r
                            .from
                            .as_ref()
                            .map(|f| f.spiffe_ids.clone())
                            .unwrap_or_default(),
                        namespaces: r
                            .from
                            .as_ref()
                            .map(|f| f.namespaces.clone())
                            .unwrap_or_default(),
                        service_accounts: r
                            .from
                            .as_ref()
                            .map(|f| f.service_accounts.clone())
                            .unwrap_or_default(),
                        paths: r.to.as_ref().map(|t| t.paths.clone()).unwrap_or_default(),
                        methods: r.to.as_ref().map(|t| t.methods.clone()).unwrap_or_default(),
                    })
                    .collect()
            };
            let name = format!("{ns}/{}", ap.metadata.name);
            if !ap.spec.allow.is_empty() {
                policies.push(AuthzPolicy {
                    name: format!("{name}/allow"),
                    service: svc.metadata.name.clone(),
                    namespace: ns.clone(),
                    action: AuthzAction::Allow,
                    rules: rules(&ap.spec.allow),
                });
            }
            if !ap.spec.deny.is_empty() {
                policies.push(AuthzPolicy {
                    name: format!("{name}/deny"),
                    service: svc.metadata.name.clone(),
                    namespace: ns.clone(),
                    action: AuthzAction::Deny,
                    rules: rules(&ap.spec.deny),
                });
            }
        }
    }
    let (l7_ingress, problems) = ingress_l7(state, td, svids, ingress_in);
    let svids = svids
        .values()
        .map(|s| SvidPem {
            id: s.id().to_string(),
            chain_pem: s.chain_pem(),
            key_pem: s.key().to_pem(),
        })
        .collect();
    let mesh = MeshConfig {
        trust_domain: td.to_string(),
        ports: Ports {
            inbound: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), INBOUND_PORT),
            outbound: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), OUTBOUND_PORT),
            transparent: true,
        },
        workloads,
        services,
        policies,
        svids,
        bundle_pem: bundle_pem.to_owned(),
        l7: identityd_envoy::l7::L7Config {
            // A policy on a listener that waits for its certificate waits with it.
            policies: mesh_policies(state)
                .into_iter()
                .filter(|p| match &p.target {
                    identityd_envoy::l7::PolicyTarget::Listener(n) => {
                        l7_ingress.listeners.iter().any(|l| &l.name == n)
                    }
                    _ => true,
                })
                .collect(),
            ..l7_ingress
        },
        access_logs: ingress_in.access_logs,
    };
    (mesh, problems)
}

/// Listeners, routes, certificates and the gateway identity of the L7 config: the ingress plan
/// minus the listeners whose CA-issued certificate is not held yet.
fn ingress_l7(
    state: &ClusterState,
    td: &TrustDomain,
    svids: &BTreeMap<SpiffeId, Arc<Svid>>,
    inputs: &IngressInputs,
) -> (identityd_envoy::l7::L7Config, Vec<String>) {
    use identityd_envoy::l7::{CertSource, RouteParent};
    let plan = ingress::plan_ingress(state, inputs.ports);
    let mut problems: Vec<String> = plan
        .problems
        .iter()
        .map(ToString::to_string)
        .chain(plan.config_problems)
        .collect();
    let mut dropped = std::collections::BTreeSet::new();
    let listeners: Vec<_> = plan
        .listeners
        .into_iter()
        .filter(|l| {
            let missing: Vec<&str> = l
                .tls
                .iter()
                .flat_map(|t| &t.certificates)
                .filter_map(|c| match &c.source {
                    CertSource::Sds(n)
                        if !inputs.certs.contains_key(n)
                            && !plan.secret_certs.iter().any(|c| &c.sds == n) =>
                    {
                        Some(n.as_str())
                    }
                    _ => None,
                })
                .collect();
            if missing.is_empty() {
                true
            } else {
                problems.push(format!(
                    "listener {}: not served until identityd's CA issues {missing:?}",
                    l.name
                ));
                dropped.insert(l.name.clone());
                false
            }
        })
        .collect();
    let routes = plan
        .routes
        .into_iter()
        .filter_map(|mut r| {
            r.parents
                .retain(|p| !matches!(p, RouteParent::Listener(n) if dropped.contains(n)));
            (!r.parents.is_empty()).then_some(r)
        })
        .collect();
    let tls_secrets = plan
        .certs
        .iter()
        .filter_map(|w| {
            let c = inputs.certs.get(&w.secret)?;
            Some(SvidPem {
                id: w.secret.clone(),
                chain_pem: c.chain_pem(),
                key_pem: c.key().to_pem(),
            })
        })
        .chain(plan.secret_certs.iter().filter_map(|s| {
            let (chain_pem, key_pem) = state
                .secrets
                .get(&crate::model::NamespacedName::new(&s.namespace, &s.name))?
                .tls_pem()?;
            Some(SvidPem {
                id: s.sds.clone(),
                chain_pem,
                key_pem,
            })
        }))
        .collect();
    let gw = identityd_certs::service::gateway_id(td);
    let gateway_id = (!listeners.is_empty() && svids.contains_key(&gw)).then(|| gw.to_string());
    (
        identityd_envoy::l7::L7Config {
            listeners,
            routes,
            tls_secrets,
            gateway_id,
            ..Default::default()
        },
        problems,
    )
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// `TrafficPolicy` objects targeting a Service or a route, as the Envoy crate's policies.
#[must_use]
pub fn mesh_policies(state: &ClusterState) -> Vec<identityd_envoy::l7::TrafficPolicy> {
    use identityd_envoy::l7 as l7m;
    let mut out = Vec::new();
    for (key, tp) in &state.traffic_policies {
        let t = &tp.spec.target_ref;
        let targets = match t.kind.as_str() {
            "Service" => vec![l7m::PolicyTarget::Service {
                name: t.name.clone(),
                namespace: key.namespace.clone(),
            }],
            "HTTPRoute" | "GRPCRoute" => vec![l7m::PolicyTarget::Route {
                name: t.name.clone(),
                namespace: key.namespace.clone(),
            }],
            // A Gateway of class identityd: each of its listeners (or the one named).
            "Gateway" => state
                .gateways
                .get(&crate::model::NamespacedName::new(&key.namespace, &t.name))
                .filter(|g| g.spec.gateway_class_name == ingress::GATEWAY_CLASS)
                .map(|g| {
                    g.spec
                        .listeners
                        .iter()
                        .filter(|l| t.section_name.as_ref().is_none_or(|s| *s == l.name))
                        .map(|l| {
                            l7m::PolicyTarget::Listener(format!(
                                "{}/{}/{}",
                                key.namespace, t.name, l.name
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            _ => continue,
        };
        let s = &tp.spec;
        for target in targets {
            out.push(l7m::TrafficPolicy {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                target,
                retries: s.retries.as_ref().map(|r| l7m::Retries {
                    attempts: u32_of(r.attempts),
                    per_try_timeout_ms: r.per_try_timeout.as_deref().and_then(ms),
                    retry_on: r.retry_on.clone(),
                    backoff_base_ms: r.backoff.as_ref().and_then(|b| ms(&b.base_interval)),
                    backoff_max_ms: r
                        .backoff
                        .as_ref()
                        .and_then(|b| b.max_interval.as_deref())
                        .and_then(ms),
                }),
                timeout_ms: s.timeout.as_deref().and_then(ms),
                circuit_breaker: s.circuit_breaker.as_ref().map(|c| l7m::CircuitBreaker {
                    max_connections: c.max_connections.map(u32_of),
                    max_pending_requests: c.max_pending_requests.map(u32_of),
                    max_requests: c.max_requests.map(u32_of),
                    max_retries: c.max_retries.map(u32_of),
                }),
                outlier_detection: s.outlier_detection.as_ref().map(|o| l7m::OutlierDetection {
                    consecutive_5xx: o.consecutive_5xx.map(u32_of),
                    base_ejection_time_ms: o.base_ejection_time.as_deref().and_then(ms),
                    max_ejection_percent: o.max_ejection_percent.map(u32_of),
                    interval_ms: o.interval.as_deref().and_then(ms),
                }),
                local_rate_limit: s.local_rate_limit.as_ref().map(|l| l7m::LocalRateLimit {
                    tokens: u32_of(l.tokens),
                    fill_interval_ms: ms(&l.fill_interval).unwrap_or(0),
                }),
            });
        }
    }
    out
}

/// HTTPRoutes and GRPCRoutes attached to a Service (GAMMA style) as the Envoy crate's mesh
/// routes: weighted backends split pod-to-pod traffic on the calling node's Envoy. Routes
/// attached to Gateways are in [`crate::daemon::ingress::plan_ingress`].
#[must_use]
pub fn mesh_routes(state: &ClusterState) -> Vec<identityd_envoy::l7::HttpRoute> {
    use identityd_envoy::l7::RouteParent;
    ingress::plan_ingress(state, IngressPorts::default())
        .routes
        .into_iter()
        .filter_map(|mut r| {
            r.parents
                .retain(|p| matches!(p, RouteParent::Service { .. }));
            (!r.parents.is_empty()).then_some(r)
        })
        .collect()
}

/// What the mesh task reports to status.
#[derive(Debug, Clone, Default)]
pub struct MeshReport {
    /// xDS state per resource type (version, ACK, NACK).
    pub xds: Vec<String>,
    /// Envoy restarts by the daemon.
    pub envoy_restarts: u32,
    /// Whether Envoy answers `LIVE` (absent: no Envoy).
    pub envoy_ready: Option<bool>,
    /// Workloads (`ns/pod`) the last pushed config gives an inbound mTLS chain.
    pub inbound: Vec<String>,
    /// Why the latest mesh config was not pushed, or what of it is not served.
    pub config_problems: Vec<String>,
    /// Apply errors of the latest round (xDS socket, Envoy, TPROXY).
    pub errors: Vec<String>,
    /// Fingerprints of the trust bundle roots Envoy validates peers with: the bundle of the
    /// latest config Envoy acknowledged (absent until one was).
    pub trusted_roots: Option<Vec<String>>,
}

/// SHA-256 fingerprints of the roots of a PEM bundle (unparsable blocks left out).
#[must_use]
pub fn root_fingerprints(bundle_pem: &str) -> Vec<String> {
    identityd_certs::bundle::certs_from_pem(bundle_pem)
        .unwrap_or_default()
        .iter()
        .map(|c| identityd_certs::bundle::root_fingerprint(c))
        .collect()
}

/// The roots Envoy validates with, given the latest push (`pushed`: the Secret version and
/// the roots it carries) and the xDS state: confirmed once Envoy ACKed that version (or at
/// once when no Envoy runs or the config has no secrets: nothing validates with an older
/// bundle). Pure.
#[must_use]
pub fn confirmed_roots(
    pushed: Option<&(u64, Vec<String>)>,
    secret: Option<&identityd_envoy::server::TypeStatus>,
    envoy_wanted: bool,
) -> Option<Vec<String>> {
    let (version, roots) = pushed?;
    let acked = match secret {
        _ if !envoy_wanted => true,
        None => true,
        Some(t) => t.nack.is_none() && t.accepted.is_some_and(|a| a >= *version),
    };
    acked.then(|| roots.clone())
}

/// The node's mesh side: the xDS server for the node's Envoy (on `<runDir>/xds.sock`), the
/// Envoy process, and the TPROXY plumbing that sends mTLS traffic through it. It plans from
/// the cluster state and the identity worker's certificates; it never talks to the CA.
struct MeshRuntime {
    cache: Arc<XdsCache>,
    xds_serving: bool,
    envoy: crate::daemon::envoy_proc::EnvoyProcess,
    /// The routing plan last applied in full (re-applied when it changes or failed).
    routing: Option<identityd_bpf::routing::RoutingPlan>,
    inbound: Vec<String>,
    config_problems: Vec<String>,
    wants_envoy: bool,
    has_mtls: bool,
    telemetry: crate::daemon::telemetry::Telemetry,
    /// The Secret version of the latest push and the bundle roots in it.
    pushed_roots: Option<(u64, Vec<String>)>,
    /// The roots of the latest push Envoy acknowledged.
    trusted_roots: Option<Vec<String>>,
}

impl MeshRuntime {
    fn new(
        cfg: &DaemonConfig,
        envoy: &crate::daemon::config::EnvoySettings,
        telemetry: crate::daemon::telemetry::Telemetry,
    ) -> Self {
        let bootstrap = cfg.run_dir.join("envoy.yaml");
        Self {
            cache: XdsCache::new(),
            xds_serving: false,
            envoy: crate::daemon::envoy_proc::EnvoyProcess::new(
                cfg,
                &envoy.binary,
                crate::daemon::config::envoy_admin_socket(&cfg.run_dir),
                bootstrap,
            ),
            routing: None,
            inbound: Vec::new(),
            config_problems: Vec::new(),
            wants_envoy: false,
            has_mtls: false,
            telemetry,
            pushed_roots: None,
            trusted_roots: None,
        }
    }

    /// Refreshes `trusted_roots` from the xDS state ([`confirmed_roots`]).
    fn confirm_roots(&mut self, node: &str) {
        let status = self.cache.status(node);
        let secret = status
            .iter()
            .find(|t| t.type_url == identityd_envoy::server::type_url::SECRET);
        if let Some(r) = confirmed_roots(self.pushed_roots.as_ref(), secret, self.wants_envoy) {
            self.trusted_roots = Some(r);
        }
    }

    /// Binds `<runDir>/xds.sock` (0600), serves xDS on it and writes Envoy's bootstrap.
    fn start_xds(&mut self, cfg: &DaemonConfig) -> Result<(), String> {
        let sock = cfg.run_dir.join("xds.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", sock.display()))?;
        }
        let server = XdsServer::new(Arc::clone(&self.cache));
        let als = cfg
            .telemetry
            .access_logs
            .then(|| identityd_envoy::telemetry::AlsServer::new(Arc::new(self.telemetry.clone())));
        tokio::spawn(async move {
            if let Err(e) = identityd_envoy::server::serve(
                server,
                als,
                tokio_stream::wrappers::UnixListenerStream::new(listener),
            )
            .await
            {
                tracing::error!(error = %e, "xDS server stopped");
            }
        });
        let envoy_cfg = cfg.run_dir.join("envoy.yaml");
        std::fs::write(
            &envoy_cfg,
            bootstrap_yaml_with_admin(
                &cfg.name,
                &XdsAddress::Unix(sock),
                &AdminAddress::Unix(crate::daemon::config::envoy_admin_socket(&cfg.run_dir)),
                XdsFlavour::Sotw,
            ),
        )
        .map_err(|e| format!("{}: {e}", envoy_cfg.display()))?;
        self.xds_serving = true;
        Ok(())
    }

    /// Plans the mesh config from `state` and `ids` and pushes it when it is valid (invalid
    /// routes/policies are never pushed: the last good config keeps serving).
    fn push(
        &mut self,
        cfg: &DaemonConfig,
        td: &TrustDomain,
        state: &ClusterState,
        ids: &Identities,
    ) {
        let inputs = IngressInputs {
            ports: IngressPorts {
                http: cfg.ingress.http_port,
                https: cfg.ingress.https_port,
            },
            default_mtls: cfg.mtls.default_mode,
            certs: ids
                .serving
                .iter()
                .map(|(k, (_, c))| (k.clone(), Arc::clone(c)))
                .collect(),
            access_logs: cfg.telemetry.access_logs,
        };
        self.telemetry
            .set_resolver(crate::daemon::telemetry::Resolver::new(
                state,
                &cfg.name,
                match cfg.encryption.mode {
                    crate::daemon::config::EncryptionMode::Wireguard => "wireguard",
                    crate::daemon::config::EncryptionMode::Ipsec => "ipsec",
                    crate::daemon::config::EncryptionMode::Disabled => "plaintext",
                },
                &cfg.trust_domain,
            ));
        let (mesh, ingress_problems) =
            plan_mesh_with(state, &cfg.name, td, &ids.svids, &ids.bundle_pem, &inputs);
        self.has_mtls = mesh.workloads.iter().any(|w| w.mtls != EMtls::Disabled);
        self.wants_envoy = self.has_mtls || !mesh.l7.listeners.is_empty();
        match identityd_envoy::translate::translate_checked(&mesh) {
            Ok(snap) => {
                self.cache.set_snapshot(&cfg.name, snap);
                let secret_version = self
                    .cache
                    .status(&cfg.name)
                    .iter()
                    .find(|t| t.type_url == identityd_envoy::server::type_url::SECRET)
                    .map_or(0, |t| t.version);
                self.pushed_roots = Some((secret_version, root_fingerprints(&ids.bundle_pem)));
                self.config_problems = ingress_problems;
                let with_svid: std::collections::BTreeSet<&str> =
                    mesh.svids.iter().map(|s| s.id.as_str()).collect();
                self.inbound = mesh
                    .workloads
                    .iter()
                    .filter(|w| {
                        w.mtls != EMtls::Disabled
                            && with_svid.contains(w.id.as_str())
                            && mesh
                                .services
                                .iter()
                                .any(|s| s.endpoints.iter().any(|e| e.ip == w.ip))
                    })
                    .map(|w| format!("{}/{}", w.namespace, w.name))
                    .collect();
            }
            Err(problems) => {
                self.config_problems = problems.iter().map(ToString::to_string).collect();
                self.config_problems.extend(ingress_problems);
                for p in &self.config_problems {
                    tracing::warn!(problem = %p, "not pushed to Envoy");
                }
            }
        }
    }

    /// Envoy running when the plan needs it; TPROXY routing and the inbound ruleset in place.
    fn converge(&mut self, cfg: &DaemonConfig, errors: &mut Vec<String>) {
        if self.wants_envoy {
            match self.envoy.ensure_running() {
                Ok(true) if self.envoy.restarts > 0 => {
                    errors.push("Envoy exited; restarted it".to_owned());
                }
                Ok(_) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        use identityd_bpf::routing::{self, InboundConfig, RoutingConfig};
        if !self.has_mtls {
            // No mTLS namespace left on this node: what an earlier plan installed goes (the
            // installed state follows the current modes; nothing stays behind a mode change).
            if let Some(old) = &self.routing {
                // The proxy plan carries the node's base routing too (the WireGuard mark,
                // node encryption): only the proxy's part goes, the base never blinks.
                let base = crate::daemon::plan::base_routing(cfg)
                    .map(|c| routing::plan(&c))
                    .unwrap_or_default();
                match routing::remove(&routing::beyond(old, &base)) {
                    Ok(()) => self.routing = None,
                    Err(e) => errors.push(format!("proxy routing removal: {e}")),
                }
            }
            return;
        }
        // TPROXY: outbound by the classifier's proxy mark; inbound from the tunnel on 15008:
        // one plan, applied when it changes. Enforcement is the classifier's ingress strict.
        let base = crate::daemon::plan::base_routing(cfg).unwrap_or_default();
        let plan = routing::plan(&RoutingConfig {
            proxy_port: Some(OUTBOUND_PORT),
            ipv6: false,
            inbound: cfg
                .wireguard
                .as_ref()
                .zip(cfg.pod_cidr.as_ref())
                .map(|(w, pc)| InboundConfig {
                    interface: w.interface.clone(),
                    pod_cidr: pc.clone(),
                    port: INBOUND_PORT,
                }),
            ..base
        });
        if self.routing.as_ref() != Some(&plan) {
            match routing::apply(&plan) {
                Ok(_) => self.routing = Some(plan),
                Err(e) => errors.push(format!("proxy routing: {e}")),
            }
        }
    }

    fn xds_status(&self, node: &str) -> Vec<String> {
        self.cache
            .status(node)
            .into_iter()
            .map(|t| {
                let short = t
                    .type_url
                    .rsplit('.')
                    .next()
                    .unwrap_or(&t.type_url)
                    .to_owned();
                match t.nack {
                    Some(n) => format!("{short} v{} NACK: {}", t.version, n.message),
                    None => format!(
                        "{short} v{} acked {}",
                        t.version,
                        t.accepted.map_or("-".into(), |a| a.to_string())
                    ),
                }
            })
            .collect()
    }
}

/// Runs the mesh task until `state` closes: replans on every change of the cluster state or
/// of the identities, supervises Envoy and the TPROXY plumbing each second, and reports on
/// `out`.
pub async fn run(
    cfg: Arc<DaemonConfig>,
    envoy: crate::daemon::config::EnvoySettings,
    telemetry: crate::daemon::telemetry::Telemetry,
    mut state: watch::Receiver<Arc<ClusterState>>,
    mut ids: watch::Receiver<Arc<Identities>>,
    out: watch::Sender<Arc<MeshReport>>,
    mut stop: watch::Receiver<bool>,
) {
    let td = match TrustDomain::new(&cfg.trust_domain) {
        Ok(t) => t,
        Err(e) => {
            let _ = out.send(Arc::new(MeshReport {
                errors: vec![format!("trustDomain={}: {e}", cfg.trust_domain)],
                ..MeshReport::default()
            }));
            return;
        }
    };
    let mut rt = MeshRuntime::new(&cfg, &envoy, telemetry);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dirty = true;
    loop {
        let mut errors = Vec::new();
        if !rt.xds_serving
            && let Err(e) = rt.start_xds(&cfg)
        {
            errors.push(format!("xDS server: {e}"));
        }
        if dirty {
            let st = state.borrow_and_update().clone();
            let id = ids.borrow_and_update().clone();
            rt.push(&cfg, &td, &st, &id);
            dirty = false;
        }
        if rt.xds_serving {
            rt.converge(&cfg, &mut errors);
        }
        for e in &errors {
            tracing::warn!(error = %e, "mesh");
        }
        let envoy_ready = match rt.envoy.pid() {
            Some(_) => Some(rt.envoy.ready().await),
            None => None,
        };
        rt.confirm_roots(&cfg.name);
        let report = MeshReport {
            trusted_roots: rt.trusted_roots.clone(),
            xds: rt.xds_status(&cfg.name),
            envoy_restarts: rt.envoy.restarts,
            envoy_ready,
            inbound: rt.inbound.clone(),
            config_problems: rt.config_problems.clone(),
            errors,
        };
        let _ = out.send(Arc::new(report));
        tokio::select! {
            r = state.changed() => { if r.is_err() { break } dirty = true; }
            r = ids.changed() => { if r.is_err() { break } dirty = true; }
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
    }
    rt.envoy.leave_running();
}

/// Finds the Envoy binary next to the workspace (`.tools/bin/envoy`) for the lab.
#[must_use]
pub fn lab_envoy_binary(exe: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IDENTITYD_ENVOY") {
        return Some(PathBuf::from(p));
    }
    exe.ancestors()
        .map(|d| d.join(".tools/bin/envoy"))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_roots_count_as_trusted_once_envoy_acked_the_config_holding_them() {
        use identityd_envoy::server::TypeStatus;
        let pushed = (7, vec!["aa".to_owned(), "bb".to_owned()]);
        let secret = |accepted: Option<u64>, nack: bool| TypeStatus {
            type_url: identityd_envoy::server::type_url::SECRET.into(),
            version: 7,
            accepted,
            nack: nack.then(|| identityd_envoy::server::Nack {
                version: 7,
                message: "bad".into(),
                at: std::time::SystemTime::UNIX_EPOCH,
            }),
            resources: 2,
        };
        assert_eq!(
            confirmed_roots(None, None, true),
            None,
            "nothing pushed yet"
        );
        assert_eq!(
            confirmed_roots(Some(&pushed), Some(&secret(Some(6), false)), true),
            None,
            "Envoy holds an older bundle"
        );
        assert_eq!(
            confirmed_roots(Some(&pushed), Some(&secret(None, false)), true),
            None,
            "Envoy has not answered"
        );
        assert_eq!(
            confirmed_roots(Some(&pushed), Some(&secret(Some(7), true)), true),
            None,
            "refused"
        );
        assert_eq!(
            confirmed_roots(Some(&pushed), Some(&secret(Some(7), false)), true),
            Some(pushed.1.clone())
        );
        assert_eq!(
            confirmed_roots(Some(&pushed), Some(&secret(None, false)), false),
            Some(pushed.1.clone()),
            "no Envoy: nothing validates with an older bundle"
        );
    }

    fn state() -> ClusterState {
        let text = include_str!("../model/testdata/lab-cluster.yaml");
        let objects = crate::source::decode::decode_all(text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten());
        ClusterState::from_objects(1, objects)
    }

    #[test]
    fn envoy_marks_its_connections_to_pods_with_the_mark_ingress_strict_admits() {
        assert_eq!(
            identityd_envoy::FROM_PROXY_MARK,
            identityd_bpf::types::IDD_MARK_FROM_PROXY
        );
    }

    #[test]
    fn mesh_plan_from_the_lab_cluster() {
        let st = state();
        let td = TrustDomain::new("cluster.local").unwrap();
        let wanted = wanted_identities(&st, "n1", &td);
        assert_eq!(
            wanted.keys().map(ToString::to_string).collect::<Vec<_>>(),
            ["spiffe://cluster.local/ns/shop/sa/web"],
            "only pods of this node in mTLS namespaces"
        );
        let m = plan_mesh(&st, "n1", &td, &BTreeMap::new(), "BUNDLE");
        assert!(m.ports.transparent);
        assert_eq!(m.ports.inbound.port(), INBOUND_PORT);
        let web = m
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web service");
        assert_eq!(web.mtls, EMtls::Strict);
        assert!(
            web.endpoints
                .iter()
                .all(|e| e.mtls_address.port() == INBOUND_PORT)
        );
        assert!(
            web.endpoints
                .iter()
                .all(|e| e.id == "spiffe://cluster.local/ns/shop/sa/web")
        );
        assert!(!m.policies.is_empty(), "the AuthorizationPolicy is mapped");
        // The translation of the plan passes the Envoy crate's validation.
        identityd_envoy::translate::translate_checked(&m).expect("valid mesh config");
    }
}
