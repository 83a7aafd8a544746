//! Request telemetry: the node's Envoy streams one access-log entry per HTTP request and per
//! TCP connection to the daemon over Envoy's Access Log Service (gRPC, on the same node-local
//! socket as xDS); this module builds the access-log configs that [`crate::translate`] puts on
//! the mesh's connection managers and TCP proxies, and serves the ALS stream, turning each
//! entry into a plain [`AccessRecord`] for an [`AccessLogSink`].
//!
//! Log names say where an entry was taken: `identityd|inbound` (the server's node Envoy,
//! after mTLS termination: the caller's verified URI SAN is in the entry), `identityd|outbound`
//! (the caller's node Envoy) and `identityd|ingress` (a Gateway/Ingress listener).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, GrpcService, RequestMethod, address, grpc_service, socket_address,
};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, AccessLogType, HttpAccessLogEntry, TcpAccessLogEntry,
    tls_properties::certificate_properties::subject_alt_name::San,
};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse, stream_access_logs_message,
};
use envoy_types::util::pack_any;
use tonic::{Request, Response, Status, Streaming};

/// The bootstrap's static cluster of the daemon's gRPC socket (xDS and ALS).
pub const DAEMON_CLUSTER: &str = "identityd-xds";

/// How often Envoy flushes buffered entries (its default is 1 s).
pub const FLUSH_INTERVAL_MS: u64 = 250;

/// Where Envoy took an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The destination's node Envoy, after mTLS termination.
    Inbound,
    /// The caller's node Envoy.
    Outbound,
    /// An ingress listener (Gateway, Ingress).
    Ingress,
}

impl Direction {
    /// `inbound`, `outbound`, `ingress`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Ingress => "ingress",
        }
    }

    fn log_name(self) -> String {
        format!("identityd|{}", self.as_str())
    }

    fn from_log_name(s: &str) -> Option<Self> {
        match s.strip_prefix("identityd|")? {
            "inbound" => Some(Self::Inbound),
            "outbound" => Some(Self::Outbound),
            "ingress" => Some(Self::Ingress),
            _ => None,
        }
    }
}

/// What an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// One HTTP request (HTTP/1.1, HTTP/2, gRPC).
    Http,
    /// One TCP connection (the L4 mTLS path; on the inbound side, one `CONNECT` stream of the
    /// tunnel).
    Tcp,
}

/// One access-log entry, without Envoy's types.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessRecord {
    /// Where it was taken (`None`: a log name this module did not configure).
    pub direction: Option<Direction>,
    /// HTTP request or TCP connection.
    pub kind: Option<RecordKind>,
    /// Start, Unix milliseconds.
    pub start_unix_ms: u64,
    /// Start to the last byte sent downstream (HTTP), or the connection's life (TCP), seconds.
    pub duration_secs: f64,
    /// The client's address as this Envoy saw it.
    pub downstream_remote: Option<SocketAddr>,
    /// The address the client dialled (restored original destination).
    pub downstream_local: Option<SocketAddr>,
    /// The upstream host this Envoy connected to.
    pub upstream_remote: Option<SocketAddr>,
    /// The upstream cluster's name.
    pub upstream_cluster: String,
    /// The route's name (`""`: the route has none).
    pub route_name: String,
    /// The client certificate's URI SAN (verified by the listener), when the client sent one.
    pub peer_uri_san: Option<String>,
    /// The client connection was TLS (any certificate or none).
    pub downstream_tls: bool,
    /// HTTP method (`CONNECT` for tunnel streams).
    pub method: String,
    /// `:authority` / `Host`.
    pub authority: String,
    /// Path (not used as a label anywhere).
    pub path: String,
    /// HTTP status (0: none, e.g. the stream was reset before a response).
    pub status: u32,
    /// Bytes from the client (headers and body; TCP: received).
    pub request_bytes: u64,
    /// Bytes to the client (headers and body; TCP: sent).
    pub response_bytes: u64,
    /// Envoy's response flags that explain a local reply (`UT` upstream timeout, `UF`, `RL`,
    /// `UAEX`/`RBAC`…), short codes as in Envoy's `%RESPONSE_FLAGS%`.
    pub flags: Vec<&'static str>,
}

/// Receives records, batch by batch, as Envoy flushes them.
pub trait AccessLogSink: Send + Sync + 'static {
    /// One batch.
    fn record(&self, batch: Vec<AccessRecord>);
}

fn grpc_common(direction: Direction) -> CommonGrpcAccessLogConfig {
    CommonGrpcAccessLogConfig {
        log_name: direction.log_name(),
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: DAEMON_CLUSTER.to_owned(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        transport_api_version: ApiVersion::V3 as i32,
        buffer_flush_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: i32::try_from(FLUSH_INTERVAL_MS * 1_000_000).unwrap_or(0),
        }),
        ..Default::default()
    }
}

/// The access log of an HTTP connection manager, streamed to the daemon.
#[must_use]
pub fn http_access_log(direction: Direction) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.http_grpc".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            HttpGrpcAccessLogConfig {
                common_config: Some(grpc_common(direction)),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }
}

/// The access log of a TCP proxy, streamed to the daemon.
#[must_use]
pub fn tcp_access_log(direction: Direction) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.tcp_grpc".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            TcpGrpcAccessLogConfig {
                common_config: Some(grpc_common(direction)),
            },
        ))),
        ..Default::default()
    }
}

fn addr(a: Option<&Address>) -> Option<SocketAddr> {
    let Some(address::Address::SocketAddress(s)) = a?.address.as_ref() else {
        return None;
    };
    let ip: IpAddr = s.address.parse().ok()?;
    let port = match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
        _ => 0,
    };
    Some(SocketAddr::new(ip, port))
}

fn secs(d: Option<&envoy_types::pb::google::protobuf::Duration>) -> Option<f64> {
    let d = d?;
    #[allow(clippy::cast_precision_loss)]
    Some(d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

fn flags(c: &AccessLogCommon) -> Vec<&'static str> {
    let Some(f) = c.response_flags.as_ref() else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for (on, code) in [
        (f.upstream_request_timeout, "UT"),
        (f.upstream_connection_failure, "UF"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.downstream_connection_termination, "DC"),
        (f.stream_idle_timeout, "SI"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_retry_limit_exceeded, "URX"),
    ] {
        if on {
            v.push(code);
        }
    }
    v
}

fn common(r: &mut AccessRecord, c: &AccessLogCommon) {
    r.start_unix_ms = c.start_time.as_ref().map_or(0, |t| {
        u64::try_from(t.seconds).unwrap_or(0) * 1000
            + u64::try_from(t.nanos / 1_000_000).unwrap_or(0)
    });
    r.downstream_remote = addr(c.downstream_remote_address.as_ref());
    r.downstream_local = addr(c.downstream_local_address.as_ref());
    r.upstream_remote = addr(c.upstream_remote_address.as_ref());
    r.upstream_cluster.clone_from(&c.upstream_cluster);
    r.route_name.clone_from(&c.route_name);
    r.peer_uri_san = c
        .tls_properties
        .as_ref()
        .and_then(|t| t.peer_certificate_properties.as_ref())
        .and_then(|p| {
            p.subject_alt_name.iter().find_map(|s| match &s.san {
                Some(San::Uri(u)) => Some(u.clone()),
                _ => None,
            })
        });
    r.downstream_tls = c.tls_properties.is_some();
    r.flags = flags(c);
}

fn intermediate(c: &AccessLogCommon) -> bool {
    // Reason: Envoy still sets the deprecated flag beside `access_log_type`; either marks an
    // entry that is not the end of its stream or connection.
    #[allow(deprecated)]
    let flagged = c.intermediate_log_entry;
    flagged
        || matches!(
            AccessLogType::try_from(c.access_log_type),
            Ok(AccessLogType::TcpPeriodic
                | AccessLogType::DownstreamPeriodic
                | AccessLogType::UpstreamPeriodic
                | AccessLogType::TcpUpstreamConnected
                | AccessLogType::DownstreamStart
                | AccessLogType::TcpConnectionStart
                | AccessLogType::UpstreamPoolReady
                | AccessLogType::DownstreamTunnelSuccessfullyEstablished)
        )
}

/// An HTTP entry as a record; `None` for intermediate entries (periodic, start).
#[must_use]
pub fn http_record(direction: Option<Direction>, e: &HttpAccessLogEntry) -> Option<AccessRecord> {
    let c = e.common_properties.as_ref()?;
    if intermediate(c) {
        return None;
    }
    let mut r = AccessRecord {
        direction,
        ..Default::default()
    };
    common(&mut r, c);
    r.duration_secs = secs(c.time_to_last_downstream_tx_byte.as_ref())
        .or_else(|| secs(c.duration.as_ref()))
        .unwrap_or(0.0);
    if let Some(q) = &e.request {
        let m =
            RequestMethod::try_from(q.request_method).unwrap_or(RequestMethod::MethodUnspecified);
        r.method = match m {
            RequestMethod::MethodUnspecified => String::new(),
            other => other.as_str_name().to_owned(),
        };
        r.authority.clone_from(&q.authority);
        r.path.clone_from(&q.path);
        r.request_bytes = q.request_headers_bytes + q.request_body_bytes;
    }
    if let Some(s) = &e.response {
        r.status = s.response_code.as_ref().map_or(0, |c| c.value);
        r.response_bytes = s.response_headers_bytes + s.response_body_bytes;
    }
    r.kind = Some(if r.method == "CONNECT" {
        RecordKind::Tcp
    } else {
        RecordKind::Http
    });
    if r.kind == Some(RecordKind::Tcp)
        && let Some(q) = &e.request
        && let Some(s) = &e.response
    {
        // A tunnel stream: what counts is the TCP payload both ways, not the CONNECT headers.
        r.request_bytes = q.request_body_bytes;
        r.response_bytes = s.response_body_bytes;
    }
    Some(r)
}

/// A TCP entry as a record; `None` for intermediate entries.
#[must_use]
pub fn tcp_record(direction: Option<Direction>, e: &TcpAccessLogEntry) -> Option<AccessRecord> {
    let c = e.common_properties.as_ref()?;
    if intermediate(c) {
        return None;
    }
    let mut r = AccessRecord {
        direction,
        kind: Some(RecordKind::Tcp),
        ..Default::default()
    };
    common(&mut r, c);
    r.duration_secs = secs(c.duration.as_ref())
        .or_else(|| secs(c.time_to_last_downstream_tx_byte.as_ref()))
        .unwrap_or(0.0);
    if let Some(p) = &e.connection_properties {
        r.request_bytes = p.received_bytes;
        r.response_bytes = p.sent_bytes;
    }
    Some(r)
}

/// The records of one ALS message (`direction` from the stream's first message).
#[must_use]
pub fn records(direction: Option<Direction>, m: &StreamAccessLogsMessage) -> Vec<AccessRecord> {
    match &m.log_entries {
        Some(stream_access_logs_message::LogEntries::HttpLogs(h)) => h
            .log_entry
            .iter()
            .filter_map(|e| http_record(direction, e))
            .collect(),
        Some(stream_access_logs_message::LogEntries::TcpLogs(t)) => t
            .log_entry
            .iter()
            .filter_map(|e| tcp_record(direction, e))
            .collect(),
        None => Vec::new(),
    }
}

/// The Access Log Service: reads each Envoy stream to its end and hands the records to the
/// sink. Entries of log names it did not configure are still handed on (direction `None`).
#[derive(Clone)]
pub struct AlsServer {
    sink: Arc<dyn AccessLogSink>,
}

impl std::fmt::Debug for AlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlsServer").finish_non_exhaustive()
    }
}

impl AlsServer {
    /// A server feeding `sink`.
    #[must_use]
    pub fn new(sink: Arc<dyn AccessLogSink>) -> Self {
        Self { sink }
    }

    /// The gRPC service, for `tonic::transport::Server::add_service`.
    #[must_use]
    pub fn service(&self) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self.clone()).max_decoding_message_size(16 << 20)
    }
}

#[tonic::async_trait]
impl AccessLogService for AlsServer {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut direction = None;
        while let Some(m) = stream.message().await? {
            if let Some(id) = &m.identifier {
                direction = Direction::from_log_name(&id.log_name);
            }
            let batch = records(direction, &m);
            if !batch.is_empty() {
                self.sink.record(batch);
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// Unix milliseconds now.
#[must_use]
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::data::accesslog::v3::{
        HttpRequestProperties, HttpResponseProperties, TlsProperties, tls_properties,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn sa(ip: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    #[test]
    fn an_inbound_http_entry_keeps_the_verified_caller_and_outcome() {
        let e = HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                downstream_remote_address: sa("10.244.1.10", 40000),
                downstream_local_address: sa("10.244.2.10", 15008),
                upstream_cluster: "inbound|8080|shop/web-1".into(),
                route_name: "shop/web|0".into(),
                time_to_last_downstream_tx_byte: Some(
                    envoy_types::pb::google::protobuf::Duration {
                        seconds: 0,
                        nanos: 2_500_000,
                    },
                ),
                tls_properties: Some(TlsProperties {
                    peer_certificate_properties: Some(tls_properties::CertificateProperties {
                        subject_alt_name: vec![
                            tls_properties::certificate_properties::SubjectAltName {
                                san: Some(San::Uri(
                                    "spiffe://cluster.local/ns/front/sa/client".into(),
                                )),
                            },
                        ],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_method: RequestMethod::Get as i32,
                authority: "web.shop".into(),
                path: "/x".into(),
                request_headers_bytes: 100,
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: 403 }),
                response_headers_bytes: 50,
                response_body_bytes: 19,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = http_record(Direction::from_log_name("identityd|inbound"), &e).unwrap();
        assert_eq!(r.direction, Some(Direction::Inbound));
        assert_eq!(r.kind, Some(RecordKind::Http));
        assert_eq!(
            r.peer_uri_san.as_deref(),
            Some("spiffe://cluster.local/ns/front/sa/client")
        );
        assert_eq!(r.status, 403);
        assert_eq!(r.method, "GET");
        assert_eq!((r.request_bytes, r.response_bytes), (100, 69));
        assert!((r.duration_secs - 0.0025).abs() < 1e-9);
        assert_eq!(
            r.downstream_local,
            Some("10.244.2.10:15008".parse().unwrap())
        );
    }

    #[test]
    fn connect_streams_are_tcp_and_intermediate_entries_are_skipped() {
        let mut e = HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon::default()),
            request: Some(HttpRequestProperties {
                request_method: RequestMethod::Connect as i32,
                request_headers_bytes: 80,
                request_body_bytes: 7,
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_body_bytes: 9,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = http_record(None, &e).unwrap();
        assert_eq!(r.kind, Some(RecordKind::Tcp));
        assert_eq!((r.request_bytes, r.response_bytes), (7, 9));
        e.common_properties.as_mut().unwrap().access_log_type =
            AccessLogType::DownstreamPeriodic as i32;
        assert!(http_record(None, &e).is_none());
        assert_eq!(Direction::from_log_name("other"), None);
    }
}
