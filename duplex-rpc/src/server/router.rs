//! The [`Router`]: methods by name, each with its kind and a handler of the
//! matching trait, and how each kind of call is run over its channel.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use duplex::{Channel, ChannelWriter, ServiceName};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Call, CallContext};
use crate::codec;
use crate::status::{Code, Origin, Status};
use crate::stream::{Receiver, Sender, too_large_status};
use crate::wire::Kind;

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub(super) type Serve =
    Arc<dyn Fn(Call, Channel) -> BoxFuture<Result<(), (Origin, Status)>> + Send + Sync>;

#[derive(Clone)]
pub(super) struct Route {
    pub(super) kind: Kind,
    pub(super) serve: Serve,
}

/// Handles unary calls: one request, one response. Implemented by async
/// closures `Fn(CallContext, Req) -> Result<Resp, Status>` and by your types.
pub trait UnaryHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: CallContext,
        request: Req,
    ) -> impl Future<Output = Result<Resp, Status>> + Send;
}

impl<F, Fut, Req, Resp> UnaryHandler<Req, Resp> for F
where
    F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    fn call(
        &self,
        ctx: CallContext,
        request: Req,
    ) -> impl Future<Output = Result<Resp, Status>> + Send {
        self(ctx, request)
    }
}

/// Handles server-streaming calls: one request, responses sent through a
/// [`Sender`]. Implemented by async closures
/// `Fn(CallContext, Req, Sender<Resp>) -> Result<(), Status>`.
pub trait ServerStreamHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: CallContext,
        request: Req,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl<F, Fut, Req, Resp> ServerStreamHandler<Req, Resp> for F
where
    F: Fn(CallContext, Req, Sender<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    fn call(
        &self,
        ctx: CallContext,
        request: Req,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        self(ctx, request, responses)
    }
}

/// Handles client-streaming calls: requests from a [`Receiver`], one
/// response. Implemented by async closures
/// `Fn(CallContext, Receiver<Req>) -> Result<Resp, Status>`.
pub trait ClientStreamHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: CallContext,
        requests: Receiver<Req>,
    ) -> impl Future<Output = Result<Resp, Status>> + Send;
}

impl<F, Fut, Req, Resp> ClientStreamHandler<Req, Resp> for F
where
    F: Fn(CallContext, Receiver<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    fn call(
        &self,
        ctx: CallContext,
        requests: Receiver<Req>,
    ) -> impl Future<Output = Result<Resp, Status>> + Send {
        self(ctx, requests)
    }
}

/// Handles bidirectional-streaming calls. Implemented by async closures
/// `Fn(CallContext, Receiver<Req>, Sender<Resp>) -> Result<(), Status>`.
pub trait BidiHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: CallContext,
        requests: Receiver<Req>,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl<F, Fut, Req, Resp> BidiHandler<Req, Resp> for F
where
    F: Fn(CallContext, Receiver<Req>, Sender<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    fn call(
        &self,
        ctx: CallContext,
        requests: Receiver<Req>,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        self(ctx, requests, responses)
    }
}

/// Handles calls by taking their channel as it is: bytes, frames, nested
/// channels, anything. Returning an error sends it as the call's status.
/// Implemented by async closures `Fn(CallContext, Channel) -> Result<(), Status>`.
pub trait RawHandler: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: CallContext,
        channel: Channel,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl<F, Fut> RawHandler for F
where
    F: Fn(CallContext, Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    fn call(
        &self,
        ctx: CallContext,
        channel: Channel,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        self(ctx, channel)
    }
}

/// Maps method names to handlers.
///
/// ```
/// use duplex_rpc::{Router, CallContext, Status, Sender, Receiver};
/// let router = Router::new()
///     .unary("Calc.Add", |_ctx: CallContext, (a, b): (i64, i64)| async move {
///         a.checked_add(b).ok_or_else(|| Status::invalid_argument("overflow"))
///     })
///     .server_stream("Calc.Count", |_ctx: CallContext, n: u32, mut out: Sender<u32>| async move {
///         for i in 0..n {
///             out.send(&i).await?;
///         }
///         Ok(())
///     })
///     .client_stream("Calc.Sum", |_ctx: CallContext, mut xs: Receiver<i64>| async move {
///         let mut total = 0i64;
///         while let Some(x) = xs.recv().await? {
///             total = total.saturating_add(x);
///         }
///         Ok(total)
///     });
/// assert_eq!(router.methods().count(), 3);
/// ```
///
/// Method names follow Duplex service-name rules (ASCII letters, digits and
/// `- . _ / + ~`, up to 255 bytes); `Service.Method` is the convention. An
/// invalid or repeated name is reported by [`Server::serve`](super::Server::serve).
#[derive(Clone, Default)]
#[must_use = "a Router does nothing until served (Server::new(router).serve(&peer))"]
pub struct Router {
    pub(super) routes: HashMap<String, Route>,
    pub(super) errors: Vec<String>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("methods", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// The methods registered.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    fn add(mut self, method: &str, kind: Kind, serve: Serve) -> Self {
        if let Err(e) = ServiceName::new(method) {
            self.errors.push(e.to_string());
        } else if self.routes.contains_key(method) {
            self.errors
                .push(format!("method {method:?} is registered twice"));
        } else {
            self.routes.insert(method.to_owned(), Route { kind, serve });
        }
        self
    }

    /// Adds every route of `other`.
    pub fn merge(mut self, other: Router) -> Self {
        self.errors.extend(other.errors);
        for (method, route) in other.routes {
            let serve = route.serve;
            self = self.add(&method, route.kind, serve);
        }
        self
    }

    /// Registers `handler` under `method`: `serve` runs each call with the
    /// shared handler, the call and its channel.
    fn route<H, F, Fut>(self, method: &str, kind: Kind, handler: H, serve: F) -> Self
    where
        H: Send + Sync + 'static,
        F: Fn(Arc<H>, Call, Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), (Origin, Status)>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let serve: Serve = Arc::new(move |call: Call, channel: Channel| {
            Box::pin(serve(handler.clone(), call, channel))
        });
        self.add(method, kind, serve)
    }

    /// Registers a unary method.
    pub fn unary<Req, Resp>(self, method: &str, handler: impl UnaryHandler<Req, Resp>) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        self.route(
            method,
            Kind::Unary,
            handler,
            |handler, mut call, channel| async move {
                let (reader, writer) = channel.split();
                let mut rx = call.receiver::<Req>(reader);
                let req = first_request(&mut call, &mut rx).await?;
                let resp = handler
                    .call(call.ctx.clone(), req)
                    .await
                    .map_err(|st| call.failed(st))?;
                respond(writer, encode_response(&call, &resp)?).await
            },
        )
    }

    /// Registers a server-streaming method.
    pub fn server_stream<Req, Resp>(
        self,
        method: &str,
        handler: impl ServerStreamHandler<Req, Resp>,
    ) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        self.route(
            method,
            Kind::ServerStream,
            handler,
            |handler, mut call, channel| async move {
                let (reader, writer) = channel.split();
                let mut rx = call.receiver::<Req>(reader);
                let req = first_request(&mut call, &mut rx).await?;
                let tx = call.sender(writer);
                handler
                    .call(call.ctx.clone(), req, tx)
                    .await
                    .map_err(|st| call.failed(st))
            },
        )
    }

    /// Registers a client-streaming method.
    pub fn client_stream<Req, Resp>(
        self,
        method: &str,
        handler: impl ClientStreamHandler<Req, Resp>,
    ) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        self.route(
            method,
            Kind::ClientStream,
            handler,
            |handler, call, channel| async move {
                let (reader, writer) = channel.split();
                let rx = call.receiver::<Req>(reader);
                let resp = handler
                    .call(call.ctx.clone(), rx)
                    .await
                    .map_err(|st| call.failed(st))?;
                respond(writer, encode_response(&call, &resp)?).await
            },
        )
    }

    /// Registers a bidirectional-streaming method.
    pub fn bidi<Req, Resp>(self, method: &str, handler: impl BidiHandler<Req, Resp>) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        self.route(
            method,
            Kind::Bidi,
            handler,
            |handler, call, channel| async move {
                let (reader, writer) = channel.split();
                let rx = call.receiver::<Req>(reader);
                let tx = call.sender(writer);
                handler
                    .call(call.ctx.clone(), rx, tx)
                    .await
                    .map_err(|st| call.failed(st))
            },
        )
    }

    /// Registers a raw method: the handler gets the call's channel.
    pub fn raw(self, method: &str, handler: impl RawHandler) -> Self {
        self.route(
            method,
            Kind::Raw,
            handler,
            |handler, call, channel| async move {
                handler
                    .call(call.ctx.clone(), channel)
                    .await
                    .map_err(|st| call.failed(st))
            },
        )
    }
}

/// Sends the one response of a unary or client-streaming call, then EOF.
/// A caller that went away is not told anything.
async fn respond(mut writer: ChannelWriter, body: Vec<u8>) -> Result<(), (Origin, Status)> {
    if writer.write_frame(&body).await.is_ok() {
        let _ = writer.close_write().await;
    }
    Ok(())
}

/// Reads the one request of a unary or server-streaming call.
/// The one request of a unary or server-streaming call: from the open's
/// `rpc-request` header if the caller put it there, else the first frame.
async fn first_request<Req: DeserializeOwned>(
    call: &mut Call,
    rx: &mut Receiver<Req>,
) -> Result<Req, (Origin, Status)> {
    if let Some(body) = call.inline.take() {
        let method = call.ctx.method();
        if body.len() > call.max {
            let st = too_large_status(method, body.len() as u64, call.max);
            return Err((Origin::TooLarge, st));
        }
        return codec::decode::<Req>(&*call.codec, &body).map_err(|e| {
            (
                Origin::BadRequest,
                Status::invalid_argument(format!(
                    "{method}: cannot decode the request with {}: {e}",
                    call.codec.name()
                )),
            )
        });
    }
    match rx.recv().await {
        Ok(Some(req)) => Ok(req),
        Ok(None) => Err((
            Origin::BadRequest,
            Status::invalid_argument(format!("{}: the caller sent no request", call.ctx.method())),
        )),
        Err(e) => Err(call.failed(Status::from(e))),
    }
}

fn encode_response<Resp: Serialize>(call: &Call, resp: &Resp) -> Result<Vec<u8>, (Origin, Status)> {
    let mut body = Vec::new();
    codec::encode(&*call.codec, resp, &mut body).map_err(|e| {
        (
            Origin::Handler,
            Status::internal(format!(
                "{}: cannot encode the response with {}: {e}",
                call.ctx.method(),
                call.codec.name()
            )),
        )
    })?;
    if body.len() > call.max {
        return Err((
            Origin::Handler,
            Status::new(
                Code::RESOURCE_EXHAUSTED,
                format!(
                    "{}: the response of {} bytes exceeds the limit of {} bytes",
                    call.ctx.method(),
                    body.len(),
                    call.max
                ),
            ),
        ));
    }
    Ok(body)
}
