//! Hand-written tonic glue for `identityd.ca.v1.CaService` (what `tonic-build` would generate,
//! reduced to five unary methods on one concrete handler).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic_prost::ProstCodec;

use super::pb;
use super::server::Inner;

/// Largest request accepted (a CSR plus a few strings is well under 4 KiB).
pub(super) const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A unary method as a closure.
struct Unary<F>(F);

impl<Req, Resp, F, Fut> UnaryService<Req> for Unary<F>
where
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = Fut;

    fn call(&mut self, request: tonic::Request<Req>) -> Fut {
        (self.0)(request)
    }
}

/// The gRPC service in front of the CA server's handlers.
#[derive(Clone)]
pub(super) struct CaGrpc(pub(super) Arc<Inner>);

impl std::fmt::Debug for CaGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaGrpc")
    }
}

impl NamedService for CaGrpc {
    const NAME: &'static str = pb::SERVICE;
}

macro_rules! unary {
    ($inner:expr, $req:expr, $msg:ty, $method:ident) => {{
        let inner = $inner;
        let req = $req;
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            let svc = Unary(move |r: tonic::Request<$msg>| {
                let inner = Arc::clone(&inner);
                async move {
                    let started = std::time::Instant::now();
                    let out = Arc::clone(&inner).$method(r).await;
                    inner.observed(stringify!($method), started.elapsed());
                    out
                }
            });
            Ok(grpc.unary(svc, req).await)
        })
    }};
}

impl<B> Service<http::Request<B>> for CaGrpc
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        match req.uri().path() {
            pb::JOIN => unary!(inner, req, pb::JoinRequest, join),
            pb::SIGN_WORKLOAD => unary!(inner, req, pb::SignRequest, sign_workload),
            pb::SIGN_SERVING => unary!(inner, req, pb::SignServingRequest, sign_serving),
            pb::RENEW_NODE => unary!(inner, req, pb::RenewNodeRequest, renew_node),
            pb::BUNDLE => unary!(inner, req, pb::BundleRequest, bundle),
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}
