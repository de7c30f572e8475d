//! The serving side: [`Router`], the handler traits, [`Server`] and
//! [`Context`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use duplex::{
    Channel, ChannelEnd, ChannelMeta, ChannelReader, ChannelWriter, ErrorWriter, Headers, Peer,
    ServiceName,
};
use futures_util::FutureExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Client, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_MESSAGE_LEN};
use crate::codec::{self, Codec, SharedCodec};
use crate::status::{self, Code, Origin, Status};
use crate::stream::{FailureSlot, Receiver, Sender, too_large_status};
use crate::wire::{self, CODEC_HEADER, KIND_HEADER, Kind, REQUEST_HEADER, TIMEOUT_HEADER};

/// The codec of a call that names none (`docs/PROTOCOL.md` 9.1).
const DEFAULT_CODEC: &str = "msgpack";

/// What a call is given to serve: what it is, where it comes from, its
/// deadline and cancellation, and a client back to the caller.
///
/// The call ends when the handler returns: its status (if it failed) is
/// sent then, and its deadline and cancellation apply until then. Work a
/// handler spawns should be awaited by it, or watch
/// [`cancelled`](Self::cancelled).
#[derive(Clone)]
pub struct Context {
    inner: Arc<CtxInner>,
}

struct CtxInner {
    meta: ChannelMeta,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    cancel: CancellationToken,
    /// The server's client and the call's codec, from which `caller`
    /// builds the callback client when first asked.
    client: Client,
    codec: SharedCodec,
    caller: OnceLock<Client>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("method", &self.method())
            .field("caller", &self.remote_peer())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Context {
    /// The method called.
    pub fn method(&self) -> &str {
        self.inner.meta.service()
    }

    /// The calling peer's name.
    pub fn remote_peer(&self) -> &str {
        self.inner.meta.remote_peer()
    }

    /// The headers the caller sent (the `rpc-` ones included).
    pub fn headers(&self) -> &Headers {
        self.inner.meta.headers()
    }

    /// Everything known about the call's channel.
    pub fn meta(&self) -> &ChannelMeta {
        &self.inner.meta
    }

    /// When the caller stops waiting, if it gave a timeout. The handler is
    /// cancelled (its future dropped) when it passes.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The timeout the caller gave, as it sent it.
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout
    }

    /// Whether the call was cancelled: its deadline passed, the caller
    /// went away, the server is shutting down, or the handler failed or
    /// panicked. The handler's own future is dropped then; this is for
    /// work it spawned.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the call is cancelled; see
    /// [`is_cancelled`](Self::is_cancelled). Cancel-safe.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// A client for calling back into the caller while serving it: same
    /// peer, same codec, and the call's deadline (a callback cannot outlive
    /// the call's patience). Callbacks are ordinary calls served by the
    /// caller's own [`Server`], concurrently with the call, so they cannot
    /// deadlock on it.
    pub fn caller(&self) -> Client {
        let inner = &*self.inner;
        inner
            .caller
            .get_or_init(|| {
                // Callbacks get their own pool of call slots, so calls
                // waiting on callbacks cannot starve each other's callbacks.
                inner
                    .client
                    .to(inner.meta.remote_peer())
                    .with_max_concurrent_calls(DEFAULT_MAX_CONCURRENT_CALLS)
                    .set_codec(inner.codec.clone())
                    .inherit_deadline(inner.deadline)
            })
            .clone()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A call handed to a route (with its channel): the context, how to
/// encode, where the RPC layer records what it found wrong.
struct Call {
    ctx: Context,
    codec: SharedCodec,
    max: usize,
    failure: FailureSlot,
    /// The request the caller sent in its open (`rpc-request`).
    inline: Option<Vec<u8>>,
}

impl Call {
    fn receiver<T: DeserializeOwned>(&self, reader: ChannelReader) -> Receiver<T> {
        Receiver::handler(
            reader,
            self.codec.clone(),
            self.max,
            self.method(),
            self.failure.clone(),
        )
    }

    fn sender<T: Serialize>(&self, writer: ChannelWriter) -> Sender<T> {
        Sender::handler(writer, self.codec.clone(), self.max, self.method())
    }

    /// The status to send for a handler's error: a failure the RPC layer
    /// found (undecodable request...) wins over the handler's own report
    /// of it.
    fn failed(&self, st: Status) -> (Origin, Status) {
        let found = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        found.unwrap_or((Origin::Handler, st))
    }

    fn method(&self) -> Arc<str> {
        self.ctx.method().into()
    }
}

type Serve = Arc<dyn Fn(Call, Channel) -> BoxFuture<Result<(), (Origin, Status)>> + Send + Sync>;

#[derive(Clone)]
struct Route {
    kind: Kind,
    serve: Serve,
}

/// Handles unary calls: one request, one response. Implemented by async
/// closures `Fn(Context, Req) -> Result<Resp, Status>` and by your types.
pub trait UnaryHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(&self, ctx: Context, request: Req)
    -> impl Future<Output = Result<Resp, Status>> + Send;
}

impl<F, Fut, Req, Resp> UnaryHandler<Req, Resp> for F
where
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    fn call(
        &self,
        ctx: Context,
        request: Req,
    ) -> impl Future<Output = Result<Resp, Status>> + Send {
        self(ctx, request)
    }
}

/// Handles server-streaming calls: one request, responses sent through a
/// [`Sender`]. Implemented by async closures
/// `Fn(Context, Req, Sender<Resp>) -> Result<(), Status>`.
pub trait ServerStreamHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: Context,
        request: Req,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl<F, Fut, Req, Resp> ServerStreamHandler<Req, Resp> for F
where
    F: Fn(Context, Req, Sender<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    fn call(
        &self,
        ctx: Context,
        request: Req,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        self(ctx, request, responses)
    }
}

/// Handles client-streaming calls: requests from a [`Receiver`], one
/// response. Implemented by async closures
/// `Fn(Context, Receiver<Req>) -> Result<Resp, Status>`.
pub trait ClientStreamHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: Context,
        requests: Receiver<Req>,
    ) -> impl Future<Output = Result<Resp, Status>> + Send;
}

impl<F, Fut, Req, Resp> ClientStreamHandler<Req, Resp> for F
where
    F: Fn(Context, Receiver<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    fn call(
        &self,
        ctx: Context,
        requests: Receiver<Req>,
    ) -> impl Future<Output = Result<Resp, Status>> + Send {
        self(ctx, requests)
    }
}

/// Handles bidirectional-streaming calls. Implemented by async closures
/// `Fn(Context, Receiver<Req>, Sender<Resp>) -> Result<(), Status>`.
pub trait BidiHandler<Req, Resp>: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: Context,
        requests: Receiver<Req>,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl<F, Fut, Req, Resp> BidiHandler<Req, Resp> for F
where
    F: Fn(Context, Receiver<Req>, Sender<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    fn call(
        &self,
        ctx: Context,
        requests: Receiver<Req>,
        responses: Sender<Resp>,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        self(ctx, requests, responses)
    }
}

/// Handles calls by taking their channel as it is: bytes, frames, nested
/// channels, anything. Returning an error sends it as the call's status.
/// Implemented by async closures `Fn(Context, Channel) -> Result<(), Status>`.
pub trait RawHandler: Send + Sync + 'static {
    /// Serves one call.
    fn call(
        &self,
        ctx: Context,
        channel: Channel,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

impl<F, Fut> RawHandler for F
where
    F: Fn(Context, Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    fn call(
        &self,
        ctx: Context,
        channel: Channel,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        self(ctx, channel)
    }
}

/// Maps method names to handlers.
///
/// ```
/// use duplex_rpc::{Router, Context, Status, Sender, Receiver};
/// let router = Router::new()
///     .unary("Calc.Add", |_ctx: Context, (a, b): (i64, i64)| async move {
///         a.checked_add(b).ok_or_else(|| Status::invalid_argument("overflow"))
///     })
///     .server_stream("Calc.Count", |_ctx: Context, n: u32, mut out: Sender<u32>| async move {
///         for i in 0..n {
///             out.send(&i).await?;
///         }
///         Ok(())
///     })
///     .client_stream("Calc.Sum", |_ctx: Context, mut xs: Receiver<i64>| async move {
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
/// invalid or repeated name is reported by [`Server::serve`].
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Route>,
    errors: Vec<String>,
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

/// Default number of calls served at once; beyond it calls are answered at
/// once with `RESOURCE_EXHAUSTED`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// A router with its limits and codecs, ready to serve a peer.
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
/// use duplex_rpc::{Context, Router, Server, Status};
/// let router = Router::new().unary("Calc.Add", |_: Context, (a, b): (i64, i64)| async move {
///     Ok::<_, Status>(a + b)
/// });
/// let server = Server::new(router).max_in_flight(256).serve(&peer)?;
/// // ... the peer now answers Calc.Add from every connected peer ...
/// server.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
pub struct Server {
    router: Router,
    max_in_flight: usize,
    max_message_len: usize,
    codecs: Vec<SharedCodec>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("router", &self.router)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// The router could not be served: an invalid or repeated method name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot serve the router: {}", .0.join("; "))]
pub struct RouterError(Vec<String>);

impl Server {
    /// A server for `router`, speaking the built-in codecs, with the
    /// default limits.
    pub fn new(router: Router) -> Self {
        Server {
            router,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            codecs: codec::builtin_codecs(),
        }
    }

    /// Calls served at once (default [`DEFAULT_MAX_IN_FLIGHT`]). A call
    /// beyond it is answered at once with `RESOURCE_EXHAUSTED` ("overloaded"),
    /// not queued.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// Largest encoded request accepted (default 4 MiB); a longer one is
    /// refused with `RESOURCE_EXHAUSTED` as soon as its length is read,
    /// before anything is allocated for it. Responses are held to it too.
    pub fn max_message_len(mut self, bytes: usize) -> Self {
        self.max_message_len = bytes;
        self
    }

    /// Adds a codec clients may choose (a built-in one of the same name is
    /// replaced).
    pub fn codec(mut self, codec: impl Codec) -> Self {
        let codec: SharedCodec = Arc::new(codec);
        self.codecs.retain(|c| c.name() != codec.name());
        self.codecs.push(codec);
        self
    }

    /// Starts serving the router on `peer`: every channel another peer
    /// opens to it is a call (the server takes over `Peer::accept`).
    /// Returns a handle; dropping it stops the server and cancels its
    /// calls.
    pub fn serve(self, peer: &Peer) -> Result<ServerHandle, RouterError> {
        if !self.router.errors.is_empty() {
            return Err(RouterError(self.router.errors));
        }
        let shared = Arc::new(Shared {
            routes: self.router.routes,
            codecs: self.codecs,
            // Within the connection's frame limit, so a message that passes
            // the check can always be framed.
            max_message_len: self.max_message_len.min(peer.config().get_max_frame_len()),
            max_in_flight: self.max_in_flight,
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            client: Client::new(peer.clone()),
            stop_accepting: CancellationToken::new(),
            cancel_calls: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let s = shared.clone();
        let peer = peer.clone();
        shared.tracker.spawn(accept_loop(s, peer));
        Ok(ServerHandle { shared })
    }
}

struct Shared {
    routes: HashMap<String, Route>,
    codecs: Vec<SharedCodec>,
    max_message_len: usize,
    max_in_flight: usize,
    in_flight: Arc<Semaphore>,
    client: Client,
    stop_accepting: CancellationToken,
    cancel_calls: CancellationToken,
    tracker: TaskTracker,
}

/// A running [`Server`]. Dropping it stops accepting calls and cancels the
/// ones in flight (their callers get `UNAVAILABLE`); use
/// [`shutdown`](Self::shutdown) to let them finish first.
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl ServerHandle {
    /// Calls being served now.
    pub fn in_flight(&self) -> usize {
        self.shared.max_in_flight - self.shared.in_flight.available_permits()
    }

    /// Stops accepting calls, gives those in flight up to `grace` to
    /// finish, then cancels the rest (their callers get `UNAVAILABLE`) and
    /// waits until every task of the server has ended. Cancel-safe: if
    /// cancelled, dropping the handle cancels what is left.
    pub async fn shutdown(self, grace: Duration) {
        let s = &self.shared;
        s.stop_accepting.cancel();
        s.tracker.close();
        if tokio::time::timeout(grace, s.tracker.wait()).await.is_err() {
            s.cancel_calls.cancel();
            s.tracker.wait().await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop_accepting.cancel();
        self.shared.cancel_calls.cancel();
        self.shared.tracker.close();
    }
}

async fn accept_loop(s: Arc<Shared>, peer: Peer) {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = s.stop_accepting.cancelled() => {
                refuse_queued(&s, &peer);
                break;
            }
            i = peer.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        // Accepted at once (cheap: no round trip), so calls do not pile
        // up against the connection's limit of channels waiting for us.
        let channel = incoming.accept().await;
        let Some(route) = s.routes.get(channel.service()).cloned() else {
            let st = Status::new(
                Code::UNIMPLEMENTED,
                format!("{} serves no method {:?}", peer.name(), channel.service()),
            );
            s.tracker.spawn(refuse(channel, Origin::UnknownMethod, st));
            continue;
        };
        let Ok(permit) = s.in_flight.clone().try_acquire_owned() else {
            let st = Status::new(
                Code::RESOURCE_EXHAUSTED,
                format!(
                    "{} is overloaded: {} calls in flight; retry later",
                    peer.name(),
                    s.max_in_flight
                ),
            );
            s.tracker.spawn(refuse(channel, Origin::Overloaded, st));
            continue;
        };
        let call = serve_call(s.clone(), route, channel);
        s.tracker.spawn(async move {
            call.await;
            drop(permit);
        });
    }
}

/// When the server stops: answers the calls already queued for it with
/// `UNAVAILABLE`, rather than leaving them to time out. Calls arriving
/// later wait for whoever accepts on the peer next (another server, say).
fn refuse_queued(s: &Shared, peer: &Peer) {
    while let Some(Some(incoming)) = peer.accept().now_or_never() {
        let st = Status::unavailable(format!(
            "{}: the server is shutting down",
            incoming.service()
        ));
        s.tracker.spawn(async move {
            refuse(incoming.accept().await, Origin::ShuttingDown, st).await;
        });
    }
}

/// How long a status may wait to be sent (for flow-control credit from a
/// caller that stopped reading) before the call's channel is closed
/// without it.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends the status that ends a call, within [`STATUS_WRITE_TIMEOUT`].
async fn send_status(mut errors: ErrorWriter, method: &str, origin: Origin, st: Status) {
    let frame = status::encode(origin, &st);
    match tokio::time::timeout(STATUS_WRITE_TIMEOUT, errors.write_error(&frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%method, %st, error = %e, "could not send the call's status"),
        Err(_) => {
            tracing::debug!(%method, %st, "the caller took no status within {STATUS_WRITE_TIMEOUT:?}; closing")
        }
    }
}

/// Answers a call with a status without serving it.
async fn refuse(ch: Channel, origin: Origin, st: Status) {
    tracing::debug!(method = ch.service(), %st, "refusing call");
    let errors = ch.error_writer();
    let method = ch.service().to_owned();
    drop(ch);
    send_status(errors, &method, origin, st).await;
}

async fn serve_call(s: Arc<Shared>, route: Route, channel: Channel) {
    let errors = channel.error_writer();
    let meta = channel.meta().clone();
    let method = meta.service();
    let headers = meta.headers();
    let codec = match headers.get(CODEC_HEADER) {
        // The protocol's default, whatever order codecs were added in.
        None => s
            .codecs
            .iter()
            .find(|c| c.name() == DEFAULT_CODEC)
            .or(s.codecs.first())
            .cloned(),
        Some(name) => s.codecs.iter().find(|c| c.name() == name).cloned(),
    };
    let refused = |origin, st: Status| send_status(errors, method, origin, st);
    let Some(codec) = codec else {
        let names: Vec<_> = s.codecs.iter().map(|c| c.name()).collect();
        let asked = headers.get(CODEC_HEADER).unwrap_or("(none)");
        let st = Status::new(
            Code::UNIMPLEMENTED,
            format!(
                "{method}: codec {asked:?} is not supported; this server speaks {}",
                names.join(", ")
            ),
        );
        drop(channel);
        return refused(Origin::UnsupportedCodec, st).await;
    };
    if let Some(kind) = headers.get(KIND_HEADER)
        && Kind::parse(kind) != Some(route.kind)
    {
        let st = Status::new(
            Code::UNIMPLEMENTED,
            format!("{method} is a {} method, called as {kind}", route.kind),
        );
        drop(channel);
        return refused(Origin::WrongKind, st).await;
    }
    let timeout = match headers.get(TIMEOUT_HEADER).map(wire::parse_timeout) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            let st = Status::invalid_argument(format!(
                "{method}: invalid {TIMEOUT_HEADER} header {:?} (expected for example 250ms)",
                headers.get(TIMEOUT_HEADER).unwrap_or_default()
            ));
            drop(channel);
            return refused(Origin::BadRequest, st).await;
        }
    };
    let inline = match headers.get(REQUEST_HEADER) {
        None => None,
        Some(_) if !matches!(route.kind, Kind::Unary | Kind::ServerStream) => {
            let st = Status::invalid_argument(format!(
                "{method}: a {} call takes its requests as frames, not in {REQUEST_HEADER}",
                route.kind
            ));
            drop(channel);
            return refused(Origin::BadRequest, st).await;
        }
        Some(value) => match wire::decode_inline(value) {
            Some(body) => Some(body),
            None => {
                let st = Status::invalid_argument(format!(
                    "{method}: the {REQUEST_HEADER} header is not base64 (URL-safe, unpadded)"
                ));
                drop(channel);
                return refused(Origin::BadRequest, st).await;
            }
        },
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let cancel = CancellationToken::new();
    let ctx = Context {
        inner: Arc::new(CtxInner {
            meta: meta.clone(),
            deadline,
            timeout,
            cancel: cancel.clone(),
            client: s.client.clone(),
            codec: codec.clone(),
            caller: OnceLock::new(),
        }),
    };
    // The caller going away (not our own close, which a raw handler may do
    // before it finishes).
    let caller_gone = {
        let closed = channel.closed();
        async move {
            match closed.await {
                ChannelEnd::ClosedHere => std::future::pending().await,
                end => end,
            }
        }
    };
    let call = Call {
        ctx,
        codec,
        max: s.max_message_len,
        failure: Arc::new(Mutex::new(None)),
        inline,
    };
    let handler = AssertUnwindSafe((route.serve)(call, channel)).catch_unwind();
    let expired = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        biased;
        done = handler => match done {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(panic) => {
                let what = panic_message(&*panic);
                tracing::error!(%method, panic = %what, "handler panicked");
                Some((Origin::Panicked, Status::internal(format!("the handler of {method} panicked: {what}"))))
            }
        },
        _ = expired => {
            let t = timeout.unwrap_or_default();
            Some((Origin::DeadlineExceeded, Status::new(Code::DEADLINE_EXCEEDED, format!("{method}: deadline of {t:?} exceeded; the handler was cancelled"))))
        }
        end = caller_gone => {
            cancel.cancel();
            tracing::debug!(%method, %end, "caller went away; handler cancelled");
            return;
        }
        _ = s.cancel_calls.cancelled() => {
            Some((Origin::ShuttingDown, Status::unavailable(format!("{method}: the server is shutting down"))))
        }
    };
    if let Some((origin, st)) = outcome {
        // The call did not succeed: work the handler spawned stops too.
        cancel.cancel();
        refused(origin, st).await;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}
