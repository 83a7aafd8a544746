//! The fuzz seed corpus of xDS discovery requests replays on stable: every file of
//! `fuzz/corpus/xds_request/` runs through the same one-input function as the `cargo fuzz`
//! target (`ok-` seeds decode, `bad-` seeds are rejected with prost's message), and every seed
//! that decodes is then the first request of a stream to a real `XdsServer`, which answers it
//! as documented (a served type gets its resources, a missing node ends the stream with
//! `InvalidArgument`, unknown types and stale nonces get no answer) and keeps serving.

#[path = "../../fuzz/src/corpus.rs"]
pub mod corpus;
#[path = "../../fuzz/src/envoy.rs"]
pub mod envoy;

mod fuzz_corpus {
    use std::sync::Arc;
    use std::time::Duration;

    use identityd_envoy::envoy_types::pb::envoy::config::core::v3::Node;
    use identityd_envoy::envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use identityd_envoy::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use identityd_envoy::envoy_types::pb::google::protobuf::Any;
    use identityd_envoy::server::{Snapshot, XdsCache, XdsServer, serve, type_url};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::Channel;

    use super::{corpus, envoy};

    const NODE: &str = "fuzz-node";

    /// What the server must do with `req` as the first request of a stream.
    #[derive(Debug, PartialEq, Eq)]
    enum Expect {
        Answer,
        InvalidArgument,
        Silence,
    }

    fn expect(req: &DiscoveryRequest) -> Expect {
        if req.node.as_ref().is_none_or(|n| n.id.is_empty()) {
            Expect::InvalidArgument
        } else if !type_url::ALL.contains(&req.type_url.as_str()) || !req.response_nonce.is_empty()
        {
            Expect::Silence
        } else {
            Expect::Answer
        }
    }

    async fn start() -> Channel {
        let cache = XdsCache::new();
        let mut snapshot = Snapshot::new();
        for t in type_url::ALL {
            snapshot.insert(
                t,
                "bundle",
                Any {
                    type_url: t.to_owned(),
                    value: Vec::new(),
                },
            );
        }
        cache.set_snapshot(NODE, snapshot);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(
            XdsServer::new(Arc::clone(&cache)),
            None,
            tokio_stream::wrappers::TcpListenerStream::new(l),
        ));
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Opens a stream, sends `req` first, and says what came back: silence is waited for
    /// 300 ms, an answer or a refusal up to 5 s (the machine may be busy).
    async fn first_request(ch: &Channel, req: DiscoveryRequest, want: &Expect) -> Expect {
        let (tx, rx) = mpsc::channel(4);
        tx.send(req.clone()).await.unwrap();
        let mut client = AggregatedDiscoveryServiceClient::new(ch.clone());
        let mut stream = tokio::time::timeout(
            Duration::from_secs(5),
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("the server accepts the stream within 5s")
        .expect("the server accepts the stream")
        .into_inner();
        let wait = if *want == Expect::Silence {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(5)
        };
        let got = match tokio::time::timeout(wait, stream.message()).await {
            Err(_) => Expect::Silence,
            Ok(Ok(Some(resp))) => {
                assert_eq!(resp.type_url, req.type_url, "answered another type");
                Expect::Answer
            }
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
                assert!(!s.message().is_empty(), "a refusal without a message");
                Expect::InvalidArgument
            }
            Ok(Err(s)) => panic!("unexpected status {s:?}"),
        };
        drop(tx);
        got
    }

    #[tokio::test]
    async fn xds_request_seeds_decode_as_labelled_and_the_server_answers_them() {
        let dir = corpus::dir(env!("CARGO_MANIFEST_DIR"), "xds_request");
        let mut decoded = Vec::new();
        let seeds = corpus::replay(&dir, |d| envoy::xds_request(d).map(|r| decoded.push(r)));
        assert!(seeds.iter().any(|s| s == "ok-no-node.bin"), "{seeds:?}");
        let ch = start().await;
        let mut seen = Vec::new();
        for req in decoded {
            let want = expect(&req);
            let got = first_request(&ch, req.clone(), &want).await;
            assert_eq!(got, want, "first request {req:?}");
            seen.push(got);
        }
        for e in [Expect::Answer, Expect::InvalidArgument, Expect::Silence] {
            assert!(seen.contains(&e), "no seed exercises {e:?}: {seen:?}");
        }
        let good = DiscoveryRequest {
            node: Some(Node {
                id: NODE.to_owned(),
                ..Node::default()
            }),
            type_url: type_url::CLUSTER.to_owned(),
            ..DiscoveryRequest::default()
        };
        assert_eq!(
            first_request(&ch, good, &Expect::Answer).await,
            Expect::Answer,
            "the server still serves after the corpus"
        );
    }
}
