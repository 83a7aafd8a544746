//! Envoy bootstrap configuration pointing Envoy at identityd's xDS server.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the xDS server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsAddress {
    /// A unix socket (the node's `xds.sock`).
    Unix(PathBuf),
    /// Loopback TCP.
    Tcp(SocketAddr),
}

/// Which xDS flavour Envoy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsFlavour {
    /// State of the world.
    Sotw,
    /// Incremental.
    Delta,
}

/// Where Envoy's admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// A unix socket Envoy creates with mode 0600 (the node daemon's choice: only root, which
    /// runs Envoy, reaches it; the admin API can change Envoy's state).
    Unix(PathBuf),
    /// Loopback TCP on a port (0 = ephemeral), for tests.
    Loopback(u16),
}

/// [`bootstrap_yaml_with_admin`] with the admin API on loopback `admin_port` (0 = ephemeral).
#[must_use]
pub fn bootstrap_yaml(
    node_id: &str,
    xds: &XdsAddress,
    admin_port: u16,
    flavour: XdsFlavour,
) -> String {
    bootstrap_yaml_with_admin(node_id, xds, &AdminAddress::Loopback(admin_port), flavour)
}

/// A bootstrap YAML: node id, the admin API on `admin`, ADS over `xds` for listeners,
/// clusters and (through ADS) routes, endpoints and secrets.
#[must_use]
pub fn bootstrap_yaml_with_admin(
    node_id: &str,
    xds: &XdsAddress,
    admin: &AdminAddress,
    flavour: XdsFlavour,
) -> String {
    let admin = match admin {
        // 384 = 0o600.
        AdminAddress::Unix(p) => format!("{{ pipe: {{ path: \"{}\", mode: 384 }} }}", p.display()),
        AdminAddress::Loopback(port) => {
            format!("{{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}")
        }
    };
    let address = match xds {
        XdsAddress::Unix(p) => format!("{{ pipe: {{ path: \"{}\" }} }}", p.display()),
        XdsAddress::Tcp(a) => {
            format!(
                "{{ socket_address: {{ address: \"{}\", port_value: {} }} }}",
                a.ip(),
                a.port()
            )
        }
    };
    let api = match flavour {
        XdsFlavour::Sotw => "GRPC",
        XdsFlavour::Delta => "DELTA_GRPC",
    };
    format!(
        r#"node:
  id: "{node_id}"
  cluster: identityd
admin:
  address: {admin}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: identityd-xds }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: identityd-xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: identityd-xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {address} }}
"#
    )
}
