//! The serving side: [`Router`], the handler traits, [`Server`] and
//! [`CallContext`].

mod context;
mod router;

pub use context::CallContext;

/// The old name of [`CallContext`], which clashed with `anyhow::Context`
/// and `std::task::Context`.
#[deprecated(since = "0.1.0", note = "renamed to CallContext")]
pub type Context = CallContext;
pub use router::{
    BidiHandler, ClientStreamHandler, RawHandler, Router, ServerStreamHandler, UnaryHandler,
};

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use duplex::{Channel, ChannelEnd, Dispatch, ErrorWriter, IncomingChannel, Peer};
use futures_util::FutureExt as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Client, DEFAULT_MAX_MESSAGE_LEN};
use crate::codec::{self, Codec, SharedCodec};
use crate::status::{self, Code, Origin, Status};
use crate::wire::CallHead;
use context::{Call, CtxInner};
use router::Route;

/// Default number of calls served at once; beyond it calls are answered at
/// once with `RESOURCE_EXHAUSTED`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// A router with its limits and codecs, ready to serve a peer.
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
/// use duplex_rpc::{CallContext, Router, Server, Status};
/// let router = Router::new().unary("Calc.Add", |_: CallContext, (a, b): (i64, i64)| async move {
///     Ok(a + b)
/// });
/// let server = Server::new(router).max_in_flight(256).serve(&peer)?;
/// // ... the peer now answers Calc.Add from every connected peer ...
/// server.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[must_use = "a Server does nothing until `serve` is called"]
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

    /// Starts serving the router on `peer`: the server claims the
    /// router's methods (see [`Peer::acceptor`] for the routing rule), so
    /// every channel another peer opens for one of them is a call, and it
    /// also answers calls to methods nobody serves (`UNIMPLEMENTED`)
    /// unless the application calls [`Peer::accept`] itself, which then
    /// gets the channels of services nobody claims.
    ///
    /// Returns a handle; dropping it stops the server and cancels its
    /// calls, and calls arriving after are refused at once. Fails if the
    /// router has an invalid or repeated method name, or another server
    /// (or [`Acceptor`](duplex::Acceptor)) on the peer serves one of its methods.
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
            dispatch: Mutex::new(None),
            peer_name: peer.name().to_owned(),
        });
        // The server claims its methods, so a raw `Peer::accept` loop on the
        // same peer never takes their calls, and it answers calls to
        // methods nobody claims (`UNIMPLEMENTED`) unless the application
        // takes those itself with `Peer::accept`. Every call is accepted by
        // the session as it arrives and handed to a task of its own from
        // there (no accept loop to wake). The function holds the server
        // weakly: the server holds the claim.
        let weak = Arc::downgrade(&shared);
        let dispatch = peer
            .dispatch(shared.routes.keys(), move |incoming| {
                if let Some(s) = weak.upgrade() {
                    take_call(&s, incoming);
                }
            })
            .map_err(|e| RouterError(vec![e.to_string()]))?
            .at_once()
            .fallback();
        *lock(&shared.dispatch) = Some(dispatch);
        // When the peer is shut down no call can come any more, so the
        // server ends once those in flight have (`wait`).
        let (stop, tracker, peer) = (
            shared.stop_accepting.clone(),
            shared.tracker.clone(),
            peer.clone(),
        );
        shared.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = peer.closed() => {
                    tracker.close();
                }
            }
        });
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
    /// The claim on the methods, released when the server stops.
    dispatch: Mutex<Option<Dispatch>>,
    peer_name: String,
}

impl Shared {
    /// Stops taking calls: the methods are released at once, so calls
    /// arriving later are routed as if the server were gone (to another
    /// acceptor of the method, to `Peer::accept`, or refused at once with
    /// `no service "M" on PEER`).
    fn stop_accepting(&self) {
        self.stop_accepting.cancel();
        let claim = lock(&self.dispatch).take();
        drop(claim); // released outside the lock
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running [`Server`]. Dropping it stops accepting calls and cancels the
/// ones in flight (their callers get `UNAVAILABLE`); use
/// [`shutdown`](Self::shutdown) to let them finish first.
#[must_use = "dropping the ServerHandle stops the server and cancels its calls; keep it, or await its `wait`"]
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
    /// Resolves once the server has stopped for good: its peer was shut
    /// down (by [`Peer::shutdown`](duplex::Peer::shutdown) on any clone)
    /// and every call it was serving has ended. For a daemon's `main`,
    /// which keeps the handle alive by awaiting this. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn demo(peer: duplex::Peer, router: duplex_rpc::Router) -> anyhow::Result<()> {
    /// let server = duplex_rpc::Server::new(router).serve(&peer)?;
    /// server.wait().await; // until peer.shutdown() (from any clone)
    /// # Ok(()) }
    /// ```
    pub async fn wait(&self) {
        self.shared.tracker.wait().await;
    }

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
        s.stop_accepting();
        s.tracker.close();
        if tokio::time::timeout(grace, s.tracker.wait()).await.is_err() {
            s.cancel_calls.cancel();
            s.tracker.wait().await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop_accepting();
        self.shared.cancel_calls.cancel();
        self.shared.tracker.close();
    }
}

/// A call arrived (in the connection's task: nothing here waits). It
/// gets a task of its own, or a refusal.
fn take_call(s: &Arc<Shared>, incoming: IncomingChannel) {
    let refuse_now = |incoming: IncomingChannel, origin, st| {
        s.tracker
            .spawn(async move { refuse(incoming.accept().await, origin, st).await });
    };
    if s.stop_accepting.is_cancelled() {
        // Routed here just before the methods were released.
        let st = Status::unavailable(format!(
            "{}: the server is shutting down",
            incoming.service()
        ));
        return refuse_now(incoming, Origin::ShuttingDown, st);
    }
    let Some(route) = s.routes.get(incoming.service()).cloned() else {
        // The caller knows the method and whom it called.
        let st = Status::new(Code::UNIMPLEMENTED, "no such method");
        return refuse_now(incoming, Origin::UnknownMethod, st);
    };
    let Ok(permit) = s.in_flight.clone().try_acquire_owned() else {
        let st = Status::new(
            Code::RESOURCE_EXHAUSTED,
            format!(
                "{} is overloaded: {} calls in flight; retry later",
                s.peer_name, s.max_in_flight
            ),
        );
        return refuse_now(incoming, Origin::Overloaded, st);
    };
    let server = s.clone();
    s.tracker.spawn(async move {
        let channel = incoming.accept().await;
        serve_call(server, route, channel).await;
        drop(permit);
    });
}

/// How long a status may wait to be sent (for flow-control credit from a
/// caller that stopped reading) before the call's channel is closed
/// without it.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends the status that ends a call, within [`STATUS_WRITE_TIMEOUT`].
async fn send_status(mut errors: ErrorWriter, method: &str, origin: Origin, st: Status) {
    let frame = status::encode(origin, &st);
    match tokio::time::timeout(STATUS_WRITE_TIMEOUT, errors.write_error(&frame)).await {
        // The status ends the call: EOF follows it (rule r9.1-7).
        Ok(Ok(())) => errors.finish(),
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
    let mut errors = channel.error_writer();
    let meta = channel.meta().clone();
    let method = meta.service();
    let head = CallHead::parse(method, meta.headers(), route.kind, &s.codecs, |c| c.name());
    let refused = |errors, origin, st: Status| send_status(errors, method, origin, st);
    let CallHead {
        codec,
        timeout,
        inline,
    } = match head {
        Ok(head) => head,
        Err((origin, st)) => {
            drop(channel);
            return refused(errors, origin, st).await;
        }
    };
    let Some(codec) = s.codecs.get(codec).cloned() else {
        return; // an index into the names given
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let cancel = CancellationToken::new();
    let ctx = CallContext {
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
    match outcome {
        Some((origin, st)) => {
            // The call did not succeed: work the handler spawned stops too.
            cancel.cancel();
            refused(errors, origin, st).await;
        }
        // Success is the EOF with no status before it (rule r9.1-5).
        None => errors.finish(),
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
