//! The xDS server against a scripted gRPC client: node remembered from the first request,
//! ACK/NACK bookkeeping, stale nonces, unknown types, missing node, oversized subscriptions,
//! delta subscribe/unsubscribe/removal — and one bad stream never disturbs another.

use std::sync::Arc;
use std::time::Duration;

use identityd_envoy::envoy_types::pb::envoy::config::core::v3::Node;
use identityd_envoy::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use identityd_envoy::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use identityd_envoy::envoy_types::pb::google::protobuf::Any;
use identityd_envoy::envoy_types::pb::google::rpc::Status as RpcStatus;
use identityd_envoy::server::{MAX_RESOURCE_NAMES, Snapshot, XdsCache, XdsServer, serve, type_url};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

fn any(tag: &str) -> Any {
    Any {
        type_url: "type.googleapis.com/test.Thing".into(),
        value: tag.as_bytes().to_vec(),
    }
}

async fn start() -> (Arc<XdsCache>, Channel) {
    let cache = XdsCache::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(
        XdsServer::new(Arc::clone(&cache)),
        None,
        tokio_stream::wrappers::TcpListenerStream::new(l),
    ));
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (cache, ch)
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(ch: &Channel) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryServiceClient::new(ch.clone());
        let resp = client.stream_aggregated_resources(ReceiverStream::new(rx));
        // The call resolves once the server accepts the stream; send nothing yet.
        let rx = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .unwrap()
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }
    async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }
    async fn recv(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no response within 5s"),
        }
    }
    async fn silent(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.rx.message())
            .await
            .is_err()
    }
}

fn req(
    node: Option<&str>,
    t: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node.map(|id| Node {
            id: id.into(),
            ..Default::default()
        }),
        type_url: t.into(),
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn snapshot(clusters: &[&str]) -> Snapshot {
    let mut s = Snapshot::new();
    for c in clusters {
        s.insert(type_url::CLUSTER, *c, any(c));
    }
    s.insert(type_url::ENDPOINT, "e1", any("e1"));
    s.insert(type_url::ENDPOINT, "e2", any("e2"));
    s
}

#[tokio::test]
async fn sotw_ack_nack_stale_and_node_only_once() {
    let (cache, ch) = start().await;
    cache.set_snapshot("n1", snapshot(&["a", "b"]));
    let mut s = Sotw::open(&ch).await;

    // First request carries the node; the wildcard CDS response has both clusters.
    s.send(req(Some("n1"), type_url::CLUSTER, &[], "", ""))
        .await;
    let r1 = s.recv().await.unwrap();
    assert_eq!(r1.resources.len(), 2);
    assert_eq!(r1.version_info, "1");
    // Later requests omit the node (as gRPC clients do) and still work: EDS by name.
    s.send(req(None, type_url::ENDPOINT, &["e2"], "", "")).await;
    let e = s.recv().await.unwrap();
    assert_eq!(e.resources, vec![any("e2")]);

    // ACK.
    s.send(req(
        None,
        type_url::CLUSTER,
        &[],
        &r1.version_info,
        &r1.nonce,
    ))
    .await;
    assert!(s.silent().await, "an ACK gets no response");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = cache
        .status("n1")
        .into_iter()
        .find(|t| t.type_url == type_url::CLUSTER)
        .unwrap();
    assert_eq!(st.accepted, Some(1));

    // A new version is pushed; the client NACKs it.
    cache.set_snapshot("n1", snapshot(&["a", "b", "c"]));
    let r2 = s.recv().await.unwrap();
    assert_eq!(r2.version_info, "2");
    assert_eq!(r2.resources.len(), 3);
    // Endpoints follow a cluster change (Envoy re-warms updated EDS clusters).
    let rewarm = s.recv().await.unwrap();
    assert_eq!(rewarm.type_url, type_url::ENDPOINT);
    assert_eq!(rewarm.resources, vec![any("e2")]);
    let mut nack = req(None, type_url::CLUSTER, &[], &r1.version_info, &r2.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "cluster c: bad".into(),
        details: vec![],
    });
    s.send(nack).await;
    assert!(s.silent().await, "no resend loop after a NACK");
    let st = cache
        .status("n1")
        .into_iter()
        .find(|t| t.type_url == type_url::CLUSTER)
        .unwrap();
    assert_eq!(st.accepted, Some(1), "last accepted version kept");
    assert_eq!(
        st.nack.as_ref().map(|n| (n.version, n.message.as_str())),
        Some((2, "cluster c: bad"))
    );
    assert!(
        cache
            .counters
            .nacks
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // A new stream of the same node gets the last accepted version, not the NACKed one.
    let mut s2 = Sotw::open(&ch).await;
    s2.send(req(Some("n1"), type_url::CLUSTER, &[], "", ""))
        .await;
    let r = s2.recv().await.unwrap();
    assert_eq!((r.version_info.as_str(), r.resources.len()), ("1", 2));

    // A stale nonce is ignored.
    let before = cache
        .counters
        .stale
        .load(std::sync::atomic::Ordering::Relaxed);
    s.send(req(
        None,
        type_url::CLUSTER,
        &[],
        "1",
        "not-a-nonce-we-sent",
    ))
    .await;
    assert!(s.silent().await);
    assert_eq!(
        cache
            .counters
            .stale
            .load(std::sync::atomic::Ordering::Relaxed),
        before + 1
    );

    // An unknown type is ignored and the stream keeps working.
    s.send(req(None, "type.googleapis.com/some.Unknown", &[], "", ""))
        .await;
    assert!(s.silent().await);
    cache.set_snapshot("n1", snapshot(&["a"]));
    let r3 = s.recv().await.unwrap();
    assert_eq!((r3.version_info.as_str(), r3.resources.len()), ("3", 1));
    // The fixed version's ACK clears the NACK.
    s.send(req(None, type_url::CLUSTER, &[], "3", &r3.nonce))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = cache
        .status("n1")
        .into_iter()
        .find(|t| t.type_url == type_url::CLUSTER)
        .unwrap();
    assert_eq!((st.accepted, st.nack), (Some(3), None));
}

#[tokio::test]
async fn bad_streams_are_refused_without_disturbing_others() {
    let (cache, ch) = start().await;
    cache.set_snapshot("good", snapshot(&["a"]));
    let mut good = Sotw::open(&ch).await;
    good.send(req(Some("good"), type_url::CLUSTER, &[], "", ""))
        .await;
    good.recv().await.unwrap();

    // Missing node on the first request.
    let mut s = Sotw::open(&ch).await;
    s.send(req(None, type_url::CLUSTER, &[], "", "")).await;
    let err = s.recv().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());

    // An oversized subscription.
    let mut s = Sotw::open(&ch).await;
    let names: Vec<String> = (0..=MAX_RESOURCE_NAMES).map(|i| format!("r{i}")).collect();
    let mut r = req(Some("big"), type_url::ENDPOINT, &[], "", "");
    r.resource_names = names;
    s.send(r).await;
    let err = s.recv().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("resource_names"),
        "{}",
        err.message()
    );

    // Garbage bytes where a resource name should be are just names that do not exist.
    let mut s = Sotw::open(&ch).await;
    s.send(req(
        Some("good"),
        type_url::ENDPOINT,
        &["\u{0}\u{fffd}/../..", ""],
        "",
        "",
    ))
    .await;
    assert!(s.recv().await.unwrap().resources.is_empty());

    // The good stream still gets pushes.
    cache.set_snapshot("good", snapshot(&["a", "z"]));
    assert_eq!(good.recv().await.unwrap().resources.len(), 2);
    assert!(
        cache
            .counters
            .rejected_streams
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test]
async fn delta_subscribe_update_remove() {
    let (cache, ch) = start().await;
    cache.set_snapshot("d", snapshot(&["a", "b"]));
    let (tx, rx) = mpsc::channel(16);
    let mut stream: Streaming<DeltaDiscoveryResponse> =
        AggregatedDiscoveryServiceClient::new(ch.clone())
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
    let mut recv = async || {
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let dreq = |node: Option<&str>, t: &str, sub: &[&str], unsub: &[&str], nonce: &str| {
        DeltaDiscoveryRequest {
            node: node.map(|id| Node {
                id: id.into(),
                ..Default::default()
            }),
            type_url: t.into(),
            resource_names_subscribe: sub.iter().map(|s| (*s).to_owned()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| (*s).to_owned()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    };
    // Wildcard CDS.
    tx.send(dreq(Some("d"), type_url::CLUSTER, &[], &[], ""))
        .await
        .unwrap();
    let r = recv().await;
    let mut names: Vec<_> = r.resources.iter().map(|x| x.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert!(
        r.resources.iter().all(|x| !x.version.is_empty()),
        "per-resource versions"
    );
    tx.send(dreq(None, type_url::CLUSTER, &[], &[], &r.nonce))
        .await
        .unwrap();

    // Named EDS subscription.
    tx.send(dreq(None, type_url::ENDPOINT, &["e1"], &[], ""))
        .await
        .unwrap();
    let r = recv().await;
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, "e1");
    tx.send(dreq(None, type_url::ENDPOINT, &[], &[], &r.nonce))
        .await
        .unwrap();

    // One changed cluster: only it is sent; a removed one is listed as removed.
    let mut snap = Snapshot::new();
    snap.insert(type_url::CLUSTER, "a", any("a-v2"));
    snap.insert(type_url::ENDPOINT, "e1", any("e1"));
    snap.insert(type_url::ENDPOINT, "e2", any("e2"));
    cache.set_snapshot("d", snap);
    let r = recv().await;
    assert_eq!(r.type_url, type_url::CLUSTER);
    assert_eq!(
        r.resources
            .iter()
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(r.removed_resources, ["b"]);
    tx.send(dreq(None, type_url::CLUSTER, &[], &[], &r.nonce))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = cache
        .status("d")
        .into_iter()
        .find(|t| t.type_url == type_url::CLUSTER)
        .unwrap();
    assert_eq!(st.accepted, Some(st.version));

    // Unsubscribe e1, subscribe e2.
    tx.send(dreq(None, type_url::ENDPOINT, &["e2"], &["e1"], ""))
        .await
        .unwrap();
    let r = recv().await;
    assert_eq!(
        r.resources
            .iter()
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>(),
        ["e2"]
    );
}
