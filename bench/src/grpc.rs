//! tonic gRPC, over TLS (rustls, a self-signed certificate made here) and
//! in plaintext, with the service a `.proto` file would declare:
//!
//! ```proto
//! service Bench {
//!   rpc Echo(Msg) returns (Msg);
//!   rpc Stream(StreamReq) returns (stream Msg);
//! }
//! message Msg { bytes data = 1; }
//! message StreamReq { uint32 count = 1; uint32 size = 2; }
//! ```
//!
//! The code tonic-build would generate from it is written out by hand
//! below, so the bench needs no `protoc`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::codegen::{BoxFuture, BoxStream, Service, http};
use tonic::server::NamedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::{MSG_SIZE, Params, WRITE_SIZE, stats};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamReq {
    #[prost(uint32, tag = "1")]
    pub count: u32,
    #[prost(uint32, tag = "2")]
    pub size: u32,
}

const ECHO: &str = "/bench.Bench/Echo";
const STREAM: &str = "/bench.Bench/Stream";

/// The server side of `bench.Bench`.
#[derive(Clone, Default)]
pub struct BenchServer;

impl NamedService for BenchServer {
    const NAME: &'static str = "bench.Bench";
}

struct EchoSvc;

impl tonic::server::UnaryService<Msg> for EchoSvc {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(req.into_inner())) })
    }
}

struct StreamSvc;

impl tonic::server::ServerStreamingService<StreamReq> for StreamSvc {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, req: Request<StreamReq>) -> Self::Future {
        let StreamReq { count, size } = req.into_inner();
        let data = Bytes::from(vec![0x5au8; size as usize]);
        let stream =
            futures_util::stream::iter((0..count).map(move |_| Ok(Msg { data: data.clone() })));
        Box::pin(async move { Ok(Response::new(Box::pin(stream) as Self::ResponseStream)) })
    }
}

impl<B> Service<http::Request<B>> for BenchServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            ECHO => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                Ok(grpc.unary(EchoSvc, req).await)
            }),
            STREAM => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, StreamReq>::default());
                Ok(grpc.server_streaming(StreamSvc, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A self-signed certificate for `localhost`.
pub struct Tls {
    cert_pem: String,
    key_pem: String,
}

pub fn tls() -> Result<Tls> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    Ok(Tls {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    })
}

/// One tonic server (TLS or plaintext) and a connected client channel.
pub struct Grpc {
    pub addr: SocketAddr,
    tls: Option<Arc<Tls>>,
    pub channel: Channel,
    _server: crate::Owned,
}

pub async fn start(tls: Option<Arc<Tls>>) -> Result<Grpc> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut builder = Server::builder();
    if let Some(t) = &tls {
        builder = builder.tls_config(
            ServerTlsConfig::new().identity(Identity::from_pem(&t.cert_pem, &t.key_pem)),
        )?;
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = builder.add_service(BenchServer);
    let server = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    let mut g = Grpc {
        addr,
        tls,
        channel: Endpoint::from_static("http://127.0.0.1").connect_lazy(),
        _server: crate::Owned(server),
    };
    g.channel = g.connect().await?;
    Ok(g)
}

impl Grpc {
    /// A new HTTP/2 connection (TCP, TLS if configured, HTTP/2 preface).
    pub async fn connect(&self) -> Result<Channel> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://localhost:{}", self.addr.port()))?
            .tcp_nodelay(true);
        if let Some(t) = &self.tls {
            ep = ep.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.cert_pem))
                    .domain_name("localhost"),
            )?;
        }
        Ok(ep.connect().await?)
    }
}

async fn echo(channel: &Channel, data: Bytes) -> Result<Msg> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let resp = grpc
        .unary(
            Request::new(Msg { data }),
            http::uri::PathAndQuery::from_static(ECHO),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await?;
    Ok(resp.into_inner())
}

pub async fn rpc_latency(g: &Grpc, p: &Params) -> Result<(f64, f64)> {
    let data = Bytes::from(vec![7u8; MSG_SIZE]);
    let mut samples = Vec::with_capacity(p.calls);
    for i in 0..p.warmup + p.calls {
        let t = Instant::now();
        let back = echo(&g.channel, data.clone()).await?;
        if i >= p.warmup {
            samples.push(t.elapsed());
        }
        if back.data.len() != MSG_SIZE {
            bail!("short echo");
        }
    }
    Ok(stats::p50_p99(samples))
}

pub async fn rpc_rate(g: &Grpc, calls: usize, inflight: usize) -> Result<f64> {
    let channel = g.channel.clone();
    crate::spread(calls, inflight, move || {
        let channel = channel.clone();
        async move {
            let back = echo(&channel, Bytes::from(vec![7u8; MSG_SIZE])).await?;
            if back.data.len() != MSG_SIZE {
                bail!("short echo");
            }
            Ok(())
        }
    })
    .await
}

pub async fn rpc_stream(g: &Grpc, p: &Params) -> Result<f64> {
    let count = (p.stream_bytes / WRITE_SIZE as u64) as u32;
    let start = Instant::now();
    let mut grpc = tonic::client::Grpc::new(g.channel.clone());
    grpc.ready().await?;
    let resp = grpc
        .server_streaming(
            Request::new(StreamReq {
                count,
                size: WRITE_SIZE as u32,
            }),
            http::uri::PathAndQuery::from_static(STREAM),
            ProstCodec::<StreamReq, Msg>::default(),
        )
        .await?;
    let mut stream = resp.into_inner();
    let mut got = 0u64;
    while let Some(m) = stream.message().await.context("stream")? {
        got += m.data.len() as u64;
    }
    if got != count as u64 * WRITE_SIZE as u64 {
        bail!("stream delivered {got} bytes");
    }
    Ok(stats::mib_per_sec(got, start.elapsed()))
}

/// TCP + TLS (if configured) + HTTP/2 handshake; median ms.
pub async fn setup(g: &Grpc, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = g.connect().await?;
        times.push(t.elapsed());
        drop(c);
    }
    Ok(crate::tcp::median_ms(times))
}
