//! The node's mTLS side: identities (SVIDs for local pods in mTLS namespaces, requested from
//! the CA role by CSR over mTLS with the node's own SVID, renewed at half life), the xDS server
//! for the node's Envoy (on `<runDir>/xds.sock`), the Envoy process (started and restarted by
//! the daemon), and the TPROXY plumbing that sends mTLS traffic through it.
//!
//! [`plan_mesh`] is pure: cluster state + SVIDs in, the Envoy mesh config out.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identityd_certs::service::CaClient;
use identityd_certs::{Bundle, ServingCert, SpiffeId, Svid, TrustDomain};
use identityd_envoy::bootstrap::{XdsAddress, XdsFlavour, bootstrap_yaml};
use identityd_envoy::mesh::{
    AuthzAction, AuthzPolicy, AuthzRule, Endpoint, MeshConfig, MtlsMode as EMtls, Ports, Service,
    SvidPem, Workload,
};
use identityd_envoy::server::{XdsCache, XdsServer};

use crate::daemon::config::DaemonConfig;
use crate::daemon::ingress::{self, IngressPorts};
use crate::model::{ClusterState, MtlsMode};

/// Envoy's inbound mTLS port.
pub const INBOUND_PORT: u16 = identityd_envoy::INBOUND_MTLS_PORT;
/// Envoy's outbound (TPROXY) port.
pub const OUTBOUND_PORT: u16 = identityd_envoy::OUTBOUND_PORT;
/// How often a node asks the CA for its trust bundle.
pub const BUNDLE_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// The nftables table for inbound mTLS TPROXY.
pub const NFT_INBOUND_TABLE: &str = "identityd-inbound";

fn emtls(m: MtlsMode) -> EMtls {
    match m {
        MtlsMode::Strict => EMtls::Strict,
        MtlsMode::Permissive => EMtls::Permissive,
        MtlsMode::Disabled => EMtls::Disabled,
    }
}

/// Local identities wanted: SPIFFE ID → (namespace, a pod name carrying it).
#[must_use]
pub fn wanted_identities(
    state: &ClusterState,
    node: &str,
    td: &TrustDomain,
) -> BTreeMap<SpiffeId, (String, String)> {
    wanted_identities_with(state, node, td, MtlsMode::Disabled)
}

/// [`wanted_identities`] with the mTLS mode of namespaces that carry no annotation.
#[must_use]
pub fn wanted_identities_with(
    state: &ClusterState,
    node: &str,
    td: &TrustDomain,
    default_mtls: MtlsMode,
) -> BTreeMap<SpiffeId, (String, String)> {
    let mut out = BTreeMap::new();
    for pod in state.pods_on_node(node) {
        if state.pod_mtls(pod, default_mtls) == MtlsMode::Disabled || pod.ip().is_none() {
            continue;
        }
        if let Ok(id) = td.workload_id(pod.namespace(), pod.service_account()) {
            out.entry(id)
                .or_insert_with(|| (pod.namespace().to_owned(), pod.metadata.name.clone()));
        }
    }
    // The ingress listeners present the gateway identity to backends in mTLS namespaces.
    let has_ingress = state
        .gateways
        .values()
        .any(|g| g.spec.gateway_class_name == ingress::GATEWAY_CLASS)
        || state
            .ingresses
            .values()
            .any(|i| i.spec.ingress_class_name.as_deref() == Some(ingress::GATEWAY_CLASS));
    if has_ingress {
        out.insert(
            identityd_certs::service::gateway_id(td),
            (String::new(), String::new()),
        );
    }
    out
}

/// What [`plan_mesh_with`] needs besides cluster state and SVIDs.
#[derive(Debug, Clone)]
pub struct IngressInputs {
    /// Ports of the listeners `Ingress` objects share.
    pub ports: IngressPorts,
    /// CA-issued serving certificates held, by SDS secret name ([`ingress::CertWant::secret`]).
    pub certs: BTreeMap<String, Arc<ServingCert>>,
    /// mTLS mode of namespaces without the `identityd.io/mtls` annotation (`mtls.defaultMode`).
    pub default_mtls: MtlsMode,
}

impl Default for IngressInputs {
    fn default() -> Self {
        Self {
            ports: IngressPorts::default(),
            certs: BTreeMap::new(),
            default_mtls: MtlsMode::Disabled,
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
            key_pem: s.key().to_pem().to_string(),
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
    let mut problems = plan.problems;
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
                key_pem: c.key().to_pem().to_string(),
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
                key_pem: key_pem.to_string(),
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

/// A duration string as signed milliseconds (the Envoy crate's L7 unit), `None` when invalid.
pub(crate) fn ms(s: &str) -> Option<i64> {
    identityd_certs::duration::parse(s)
        .ok()
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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

/// The inbound ruleset. Connections from other nodes to a local pod's :15008 are delivered
/// to Envoy's inbound listener by the policy rule `iif <wg> to <podCIDR> ipproto tcp dport
/// 15008 lookup 203`; connections this node's own Envoy makes to a local pod's :15008 are
/// redirected to it here (the listener restores the original destination). Under strict
/// mTLS, other TCP arriving from the tunnel for strict pods is dropped.
#[must_use]
pub fn inbound_nft(wg_iface: &str, pod_cidr: &str, strict_pods: &[IpAddr]) -> String {
    let mut s = format!(
        "table inet {NFT_INBOUND_TABLE} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {pod_cidr} tcp dport {INBOUND_PORT} redirect to :{INBOUND_PORT}\n\t}}\n\
         \tchain prerouting {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n"
    );
    let v4: Vec<String> = strict_pods
        .iter()
        .filter(|i| i.is_ipv4())
        .map(ToString::to_string)
        .collect();
    if !v4.is_empty() {
        s.push_str(&format!(
            "\t\tiifname \"{wg_iface}\" ip daddr {{ {} }} tcp dport != {INBOUND_PORT} counter drop\n",
            v4.join(", ")
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn apply_nft(ruleset: &str) -> Result<(), String> {
    use std::io::Write;
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", NFT_INBOUND_TABLE])
        .stderr(Stdio::null())
        .status();
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where an SVID stands.
struct Held {
    svid: Arc<Svid>,
    refresh_at: SystemTime,
}

/// A serving certificate held for an ingress listener.
struct HeldServing {
    want: ingress::CertWant,
    cert: Arc<ServingCert>,
    refresh_at: SystemTime,
}

/// The mTLS side of a node.
pub struct Mesh {
    td: TrustDomain,
    client: CaClient,
    node_svid: Svid,
    node_refresh_at: SystemTime,
    bundle_pem: String,
    /// When the trust bundle is asked for again (a CA rollover adds a root).
    bundle_check_at: SystemTime,
    held: BTreeMap<SpiffeId, Held>,
    cache: Arc<XdsCache>,
    envoy: Option<Child>,
    /// An Envoy left running by a previous daemon (re-adopted: it reconnects to xds.sock).
    adopted: Option<u32>,
    envoy_pid_file: PathBuf,
    admin_port: u16,
    envoy_cfg: PathBuf,
    envoy_bin: PathBuf,
    envoy_log: PathBuf,
    nft: Option<String>,
    routing_applied: bool,
    /// Envoy restarts.
    pub envoy_restarts: u32,
    /// Why the latest mesh config was not pushed (validation problems).
    pub config_problems: Vec<String>,
    inbound: Vec<String>,
    /// CA-issued serving certificates of ingress listeners, by SDS secret name.
    serving: BTreeMap<String, HeldServing>,
    /// Last issuance error.
    pub last_error: Option<String>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("identities", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal.
fn half_life(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life / 2
}

impl Mesh {
    /// Joins the CA (first start) or reuses the saved node SVID, connects over mTLS, starts the
    /// xDS server on `<runDir>/xds.sock` and writes Envoy's bootstrap.
    ///
    /// # Errors
    /// When the CA cannot be joined or reached.
    pub async fn start(cfg: &DaemonConfig) -> Result<Self, String> {
        let access = cfg.ca.as_ref().ok_or("no ca: section")?;
        let envoy = cfg.envoy.as_ref().ok_or("no envoy: section")?;
        let td = TrustDomain::new(&cfg.trust_domain).map_err(|e| e.to_string())?;
        let bundle_text = std::fs::read_to_string(&access.bundle_file)
            .map_err(|e| format!("ca.bundleFile={}: {e}", access.bundle_file.display()))?;
        let bundle = Bundle::from_pem(td.clone(), &bundle_text)
            .map_err(|e| format!("ca.bundleFile: {e}"))?;
        let node_dir = cfg.state_dir.join("node-svid");
        let node_svid = match Svid::read_from_dir(&node_dir) {
            Ok(s) if s.not_after() > SystemTime::now() + Duration::from_secs(60) => s,
            _ => {
                let joined = crate::daemon::node_auth::join(access, &cfg.name, &bundle).await?;
                joined
                    .svid
                    .write_to_dir(&node_dir)
                    .map_err(|e| e.to_string())?;
                let _ = std::fs::remove_file(&access.join_token_file);
                tracing::info!(id = %joined.svid.id(), "joined the CA; node SVID saved (key 0600)");
                joined.svid
            }
        };
        let client = CaClient::connect_mtls(&access.endpoint, &node_svid, &bundle)
            .await
            .map_err(|e| format!("connecting to the CA at {}: {e}", access.endpoint))?;
        let bundle_pem = client
            .fetch_bundle()
            .await
            .map(|b| b.to_pem())
            .unwrap_or(bundle_text);

        let cache = XdsCache::new();
        let sock = cfg.run_dir.join("xds.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
        }
        let server = XdsServer::new(Arc::clone(&cache));
        tokio::spawn(async move {
            if let Err(e) = identityd_envoy::server::serve(
                server,
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
            bootstrap_yaml(
                &cfg.name,
                &XdsAddress::Unix(sock),
                envoy.admin_port,
                XdsFlavour::Sotw,
            ),
        )
        .map_err(|e| format!("{}: {e}", envoy_cfg.display()))?;
        let node_refresh_at = half_life(node_svid.not_before(), node_svid.not_after());
        Ok(Self {
            td,
            client,
            node_svid,
            node_refresh_at,
            bundle_pem,
            bundle_check_at: SystemTime::now() + BUNDLE_CHECK_INTERVAL,
            held: BTreeMap::new(),
            cache,
            envoy: None,
            adopted: std::fs::read_to_string(cfg.run_dir.join("envoy.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("envoy"))
                }),
            envoy_pid_file: cfg.run_dir.join("envoy.pid"),
            admin_port: envoy.admin_port,
            envoy_cfg,
            envoy_bin: envoy.binary.clone(),
            envoy_log: cfg.run_dir.join("envoy.log"),
            nft: None,
            routing_applied: false,
            envoy_restarts: 0,
            config_problems: Vec::new(),
            inbound: Vec::new(),
            serving: BTreeMap::new(),
            last_error: None,
        })
    }

    /// Brings SVIDs, xDS, Envoy and TPROXY in line with `state`. Returns errors to log.
    pub async fn reconcile(&mut self, cfg: &DaemonConfig, state: &ClusterState) -> Vec<String> {
        let mut errors = Vec::new();
        let now = SystemTime::now();
        if now >= self.node_refresh_at {
            match self.client.renew_node(&self.node_svid).await {
                Ok(s) => {
                    let _ = s.write_to_dir(&cfg.state_dir.join("node-svid"));
                    self.node_refresh_at = half_life(s.not_before(), s.not_after());
                    self.node_svid = s;
                }
                Err(e) => {
                    self.node_refresh_at = now + Duration::from_secs(5);
                    errors.push(format!("renewing the node SVID: {e}"));
                }
            }
        }
        // The trust bundle: asked for every BUNDLE_CHECK_INTERVAL, and taken from the CA's
        // answers, so a rollover's new root reaches Envoy's validation context before any
        // SVID issued under it does.
        if now >= self.bundle_check_at {
            self.bundle_check_at = now + BUNDLE_CHECK_INTERVAL;
            if let Ok(Err(e)) =
                tokio::time::timeout(Duration::from_secs(5), self.client.fetch_bundle()).await
            {
                errors.push(format!("fetching the trust bundle: {e}"));
            }
        }
        let current = self
            .client
            .bundle()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_pem();
        if current != self.bundle_pem {
            tracing::info!("trust bundle changed");
            self.bundle_pem = current;
        }
        let wanted = wanted_identities_with(state, &cfg.name, &self.td, cfg.mtls.default_mode);
        self.held.retain(|id, _| wanted.contains_key(id));
        for (id, (ns, pod)) in &wanted {
            let due = self.held.get(id).is_none_or(|h| now >= h.refresh_at);
            if !due {
                continue;
            }
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                self.client.sign_workload(id, ns, pod, cfg.svid_ttl()),
            )
            .await;
            match r {
                Ok(Ok(s)) => {
                    tracing::info!(%id, "SVID issued");
                    let idstr = id.to_string();
                    if self
                        .last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with(&format!("SVID for {idstr} ")))
                    {
                        self.last_error = None;
                    }
                    let refresh_at = half_life(s.not_before(), s.not_after());
                    self.held.insert(
                        id.clone(),
                        Held {
                            svid: Arc::new(s),
                            refresh_at,
                        },
                    );
                }
                Ok(Err(e)) => {
                    let msg = format!("SVID for {id} (pod {ns}/{pod}): {e}");
                    // Keep the last good SVID; retry soon.
                    if let Some(h) = self.held.get_mut(id) {
                        h.refresh_at = now + Duration::from_secs(5);
                    }
                    self.last_error = Some(msg.clone());
                    errors.push(msg);
                }
                Err(_) => errors.push(format!("SVID for {id}: the CA did not answer within 10s")),
            }
        }
        let svids: BTreeMap<SpiffeId, Arc<Svid>> = self
            .held
            .iter()
            .map(|(k, h)| (k.clone(), Arc::clone(&h.svid)))
            .collect();
        let ports = IngressPorts {
            http: cfg.ingress.http_port,
            https: cfg.ingress.https_port,
        };
        self.refresh_serving(state, ports, cfg.svid_ttl(), now, &mut errors)
            .await;
        let inputs = IngressInputs {
            ports,
            default_mtls: cfg.mtls.default_mode,
            certs: self
                .serving
                .iter()
                .map(|(k, h)| (k.clone(), Arc::clone(&h.cert)))
                .collect(),
        };
        let (mesh, ingress_problems) = plan_mesh_with(
            state,
            &cfg.name,
            &self.td,
            &svids,
            &self.bundle_pem,
            &inputs,
        );
        let has_mtls = mesh.workloads.iter().any(|w| w.mtls != EMtls::Disabled);
        let has_ingress = !mesh.l7.listeners.is_empty();
        // Invalid routes/policies are never pushed: the last good config keeps serving.
        match identityd_envoy::translate::translate_checked(&mesh) {
            Ok(snap) => {
                self.cache.set_snapshot(&cfg.name, snap);
                self.config_problems.clone_from(&ingress_problems);
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
                errors.extend(
                    self.config_problems
                        .iter()
                        .map(|p| format!("not pushed to Envoy: {p}")),
                );
            }
        }

        // Envoy: adopt the one a previous daemon left running, start one, or restart it when
        // it died.
        let child_alive = self
            .envoy
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        let adopted_alive = self.adopted.is_some_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        });
        if (has_mtls || has_ingress) && !child_alive && !adopted_alive {
            if self.envoy.is_some() || self.adopted.is_some() {
                self.envoy_restarts += 1;
                errors.push("Envoy exited; restarting it".to_owned());
            }
            self.adopted = None;
            match self.spawn_envoy() {
                Ok(c) => {
                    let _ = std::fs::write(&self.envoy_pid_file, c.id().to_string());
                    self.envoy = Some(c);
                }
                Err(e) => errors.push(e),
            }
        }
        // TPROXY: outbound by the classifier's proxy mark, inbound from the tunnel on 15008.
        if has_mtls {
            if !self.routing_applied {
                let plan = identityd_bpf::routing::plan(&identityd_bpf::routing::RoutingConfig {
                    wireguard_interface: cfg.wireguard.as_ref().map(|w| w.interface.clone()),
                    proxy_port: Some(OUTBOUND_PORT),
                    ipv6: false,
                    ..identityd_bpf::routing::RoutingConfig::default()
                });
                match identityd_bpf::routing::apply(&plan) {
                    Ok(_) => self.routing_applied = true,
                    Err(e) => errors.push(format!("proxy routing: {e}")),
                }
                if let (Some(pc), Some(w)) = (&cfg.pod_cidr, &cfg.wireguard) {
                    // Only for connections arriving from the tunnel: this node's own
                    // connections to local pods are redirected by nat OUTPUT instead.
                    let table = identityd_bpf::routing::PROXY_TABLE.to_string();
                    let port = INBOUND_PORT.to_string();
                    let args = [
                        "iif",
                        w.interface.as_str(),
                        "to",
                        pc.as_str(),
                        "ipproto",
                        "tcp",
                        "dport",
                        &port,
                        "lookup",
                        &table,
                    ];
                    let _ = run_cmd(Command::new("ip").args(["rule", "del"]).args(args));
                    if let Err(e) = run_cmd(
                        Command::new("ip")
                            .args(["rule", "add", "priority", "99"])
                            .args(args),
                    ) {
                        errors.push(e);
                    }
                }
            }
            if let (Some(w), Some(pc)) = (&cfg.wireguard, &cfg.pod_cidr) {
                let strict: Vec<IpAddr> = mesh
                    .workloads
                    .iter()
                    .filter(|w| w.mtls == EMtls::Strict)
                    .map(|w| w.ip)
                    .collect();
                let rs = inbound_nft(&w.interface, pc, &strict);
                if self.nft.as_deref() != Some(rs.as_str()) {
                    match apply_nft(&rs) {
                        Ok(()) => self.nft = Some(rs),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        errors
    }

    /// Asks the CA for the serving certificates the ingress plan needs (new ones, and held
    /// ones past half life); drops the ones no listener needs any more. A refusal keeps the
    /// last good certificate.
    async fn refresh_serving(
        &mut self,
        state: &ClusterState,
        ports: IngressPorts,
        ttl: Duration,
        now: SystemTime,
        errors: &mut Vec<String>,
    ) {
        let wants = ingress::cert_wants(state, ports);
        self.serving
            .retain(|k, h| wants.iter().any(|w| &w.secret == k && *w == h.want));
        for w in wants {
            if self
                .serving
                .get(&w.secret)
                .is_some_and(|h| now < h.refresh_at)
            {
                continue;
            }
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                self.client
                    .sign_serving(&w.dns_names, &w.kind, &w.namespace, &w.name, ttl),
            )
            .await;
            match r {
                Ok(Ok(c)) => {
                    tracing::info!(names = ?w.dns_names, object = format!("{} {}/{}", w.kind, w.namespace, w.name), "serving certificate issued");
                    let refresh_at = half_life(c.not_before(), c.not_after());
                    self.serving.insert(
                        w.secret.clone(),
                        HeldServing {
                            want: w,
                            cert: Arc::new(c),
                            refresh_at,
                        },
                    );
                }
                Ok(Err(e)) => {
                    if let Some(h) = self.serving.get_mut(&w.secret) {
                        h.refresh_at = now + Duration::from_secs(5);
                    }
                    errors.push(format!(
                        "serving certificate for {:?} ({} {}/{}): {e}",
                        w.dns_names, w.kind, w.namespace, w.name
                    ));
                }
                Err(_) => errors.push(format!(
                    "serving certificate for {:?}: the CA did not answer within 10s",
                    w.dns_names
                )),
            }
        }
    }

    /// Serving certificates held: (DNS names, not after).
    #[must_use]
    pub fn serving_certs(&self) -> Vec<(Vec<String>, SystemTime)> {
        self.serving
            .values()
            .map(|h| (h.want.dns_names.clone(), h.cert.not_after()))
            .collect()
    }

    fn spawn_envoy(&self) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.envoy_log)
            .map_err(|e| format!("{}: {e}", self.envoy_log.display()))?;
        let child = Command::new(&self.envoy_bin)
            .arg("-c")
            .arg(&self.envoy_cfg)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting Envoy {}: {e}", self.envoy_bin.display()))?;
        tracing::info!(pid = child.id(), "Envoy started");
        Ok(child)
    }

    /// Status lines: identities with expiry, xDS versions and NACKs.
    #[must_use]
    pub fn status(&self, node: &str) -> (Vec<(String, u64)>, Vec<String>) {
        let now = SystemTime::now();
        let svids = self
            .held
            .iter()
            .map(|(id, h)| {
                (
                    id.to_string(),
                    h.svid
                        .not_after()
                        .duration_since(now)
                        .map_or(0, |d| d.as_secs()),
                )
            })
            .collect();
        let xds = self
            .cache
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
            .collect();
        (svids, xds)
    }

    /// Seconds until each root of the bundle in use expires.
    #[must_use]
    pub fn bundle_roots(&self) -> Vec<u64> {
        let now = SystemTime::now();
        identityd_certs::bundle::certs_from_pem(&self.bundle_pem)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| identityd_certs::inspect::describe(c).ok())
            .map(|i| {
                let t = std::time::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(i.not_after_unix).unwrap_or(0));
                t.duration_since(now).map_or(0, |d| d.as_secs())
            })
            .collect()
    }

    /// Workloads (`ns/pod`) the last pushed config gives an inbound mTLS chain.
    #[must_use]
    pub fn inbound_workloads(&self) -> &[String] {
        &self.inbound
    }

    /// On shutdown Envoy keeps running with its last configuration (no gap); the next daemon
    /// re-adopts it through `envoy.pid` and it reconnects to the new xDS socket.
    pub fn stop(&mut self) {
        if let Some(c) = self.envoy.take() {
            tracing::info!(pid = c.id(), "leaving Envoy running for the next daemon");
        }
    }

    /// Envoy's pid, if one is running.
    #[must_use]
    pub fn envoy_pid(&self) -> Option<u32> {
        self.envoy.as_ref().map(Child::id).or(self.adopted)
    }

    /// Asks Envoy's admin `/ready` (loopback); `true` when it answers `LIVE` within 500 ms.
    pub async fn envoy_ready(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
                .await
                .ok()?;
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            Some(String::from_utf8_lossy(&buf).contains("LIVE"))
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), probe).await,
            Ok(Some(true))
        )
    }
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

    fn state() -> ClusterState {
        let text = include_str!("../model/testdata/lab-cluster.yaml");
        let objects = crate::source::decode::decode_all(text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten());
        ClusterState::from_objects(1, objects)
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

    #[test]
    fn inbound_ruleset_redirects_local_and_drops_plaintext_to_strict_pods() {
        let rs = inbound_nft("idd1", "10.244.1.0/24", &["10.244.1.10".parse().unwrap()]);
        assert!(
            rs.contains("ip daddr 10.244.1.0/24 tcp dport 15008 redirect to :15008"),
            "{rs}"
        );
        assert!(
            rs.contains(
                "iifname \"idd1\" ip daddr { 10.244.1.10 } tcp dport != 15008 counter drop"
            ),
            "{rs}"
        );
        assert!(!inbound_nft("idd1", "10.244.1.0/24", &[]).contains("drop"));
    }
}
