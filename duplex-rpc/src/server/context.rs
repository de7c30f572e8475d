//! What a handler is given: the call's [`CallContext`] (method, caller,
//! deadline, cancellation, a client back to the caller), and the RPC
//! layer's view of the call (`Call`: its codec, limit and failures).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use duplex::{ChannelMeta, ChannelReader, ChannelWriter, Headers};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, DEFAULT_MAX_CONCURRENT_CALLS};
use crate::codec::SharedCodec;
use crate::status::{Origin, Status};
use crate::stream::{FailureSlot, Receiver, Sender};

/// What a call is given to serve: what it is, where it comes from, its
/// deadline and cancellation, and a client back to the caller.
///
/// The call ends when the handler returns: its status (if it failed) is
/// sent then, and its deadline and cancellation apply until then. Work a
/// handler spawns should be awaited by it, or watch
/// [`cancelled`](Self::cancelled).
#[derive(Clone)]
pub struct CallContext {
    pub(super) inner: Arc<CtxInner>,
}

pub(super) struct CtxInner {
    pub(super) meta: ChannelMeta,
    pub(super) deadline: Option<Instant>,
    pub(super) timeout: Option<Duration>,
    pub(super) cancel: CancellationToken,
    /// The server's client and the call's codec, from which `caller`
    /// builds the callback client when first asked.
    pub(super) client: Client,
    pub(super) codec: SharedCodec,
    pub(super) caller: OnceLock<Client>,
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("method", &self.method())
            .field("caller", &self.remote_peer())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl CallContext {
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
    /// caller's own [`Server`](super::Server), concurrently with the call, so they cannot
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

/// A call handed to a route (with its channel): the context, how to
/// encode, where the RPC layer records what it found wrong.
pub(super) struct Call {
    pub(super) ctx: CallContext,
    pub(super) codec: SharedCodec,
    pub(super) max: usize,
    pub(super) failure: FailureSlot,
    /// The request the caller sent in its open (`rpc-request`).
    pub(super) inline: Option<Vec<u8>>,
}

impl Call {
    pub(super) fn receiver<T: DeserializeOwned>(&self, reader: ChannelReader) -> Receiver<T> {
        Receiver::handler(
            reader,
            self.codec.clone(),
            self.max,
            self.method(),
            self.failure.clone(),
        )
    }

    pub(super) fn sender<T: Serialize>(&self, writer: ChannelWriter) -> Sender<T> {
        Sender::handler(writer, self.codec.clone(), self.max, self.method())
    }

    /// The status to send for a handler's error: a failure the RPC layer
    /// found (undecodable request...) wins over the handler's own report
    /// of it.
    pub(super) fn failed(&self, st: Status) -> (Origin, Status) {
        let found = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        found.unwrap_or((Origin::Handler, st))
    }

    pub(super) fn method(&self) -> Arc<str> {
        self.ctx.method().into()
    }
}
