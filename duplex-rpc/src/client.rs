//! The calling side: [`Client`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use duplex::{Channel, Headers, Peer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::codec::{self, Codec, SharedCodec};
use crate::error::{RpcError, Side};
use crate::stream::{Deadline, Receiver, Sender, Slot};
use crate::wire::{
    self, CODEC_HEADER, INLINE_MAX, KIND_HEADER, Kind, REQUEST_HEADER, TIMEOUT_HEADER,
};

/// Default maximum size of one encoded message, each way: 4 MiB, like
/// gRPC. Larger messages are refused before they are sent, and before
/// anything is allocated for them when received.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 4 << 20;

/// Default number of calls one client (and its clones) has open at once;
/// more wait for a slot. Keeps a burst of calls within the remote's
/// limits with their defaults: channels waiting to be accepted
/// (`Config::max_pending_channels`, 256), channels per connection (4096)
/// and the server's calls in flight (1024).
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 256;

/// Makes calls to the methods of remote peers.
///
/// Cheap to clone; clones share the limit on concurrent calls. The
/// `with_*` and [`to`](Self::to) methods return a modified copy, so a
/// setting can apply to one call or to many:
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> Result<(), duplex_rpc::RpcError> {
/// use std::time::Duration;
/// let client = duplex_rpc::Client::new(peer);
/// // The next connected peer, round-robin:
/// let sum: i64 = client.call("Calc.Add", &(2, 3)).await?;
/// // A named peer, with a deadline:
/// let sum: i64 = client
///     .to("agent-7")
///     .with_timeout(Duration::from_secs(2))
///     .call("Calc.Add", &(2, 3))
///     .await?;
/// # let _ = sum; Ok(()) }
/// ```
///
/// Every call method is cancel-safe in the sense that matters for RPC:
/// dropping the call's future (or its streams) closes the call's channel,
/// and the server cancels the handler.
#[derive(Clone)]
pub struct Client {
    peer: Peer,
    slots: Arc<Semaphore>,
    target: Option<Arc<str>>,
    codec: Option<SharedCodec>,
    timeout: Option<Duration>,
    /// The longest wait for a streaming call's next message.
    idle: Option<Duration>,
    /// A deadline inherited from the call a handler is serving.
    inherited: Option<Instant>,
    headers: Headers,
    max_message_len: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer.name())
            .field("target", &self.target)
            .field("codec", &self.codec.as_ref().map(|c| c.name()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client making calls through `peer`: to the next connected peer in
    /// round-robin order, until [`to`](Self::to) names one. Uses msgpack
    /// (or JSON, if msgpack is not built in), no timeout, and the default
    /// limits.
    pub fn new(peer: Peer) -> Self {
        Client {
            peer,
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT_CALLS)),
            target: None,
            codec: codec::default_codec(),
            timeout: None,
            idle: None,
            inherited: None,
            headers: Headers::new(),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
        }
    }

    /// The same client, calling the peer called `name`. A call waits for
    /// that peer to connect up to the peer's `Config::peer_wait_timeout`.
    pub fn to(&self, name: &str) -> Self {
        let mut c = self.clone();
        c.target = Some(name.into());
        c
    }

    /// The same client, encoding with `codec`.
    pub fn with_codec(&self, codec: impl Codec) -> Self {
        let mut c = self.clone();
        c.codec = Some(Arc::new(codec));
        c
    }

    /// The same client, giving each call `timeout` to finish (streams
    /// included). The server learns it too and cancels the handler when it
    /// passes. Inside a handler, the caller's own deadline still applies if
    /// it is sooner.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.timeout = Some(timeout.min(wire::MAX_TIMEOUT));
        c
    }

    /// The same client, failing a streaming call whose next response does
    /// not come within `idle` of the previous one (or of the call's
    /// start): [`RpcError::IdleTimeout`], `DEADLINE_EXCEEDED`. For streams
    /// that may run for hours as long as they keep moving (a script's
    /// output, a log tail), where a whole-call [`with_timeout`](Self::with_timeout)
    /// cannot fit; both may be set, and each applies. It bounds waits on
    /// the responses of server-streaming, client-streaming and
    /// bidirectional calls (unary calls have the whole-call timeout).
    /// Dropping the failed receiver cancels the call at the server.
    ///
    /// ```no_run
    /// # async fn demo(client: duplex_rpc::Client) -> Result<(), duplex_rpc::RpcError> {
    /// use std::time::Duration;
    /// let tail = client.to("agent-1").with_idle_timeout(Duration::from_secs(60));
    /// let mut lines = tail.server_stream::<_, String>("Agent.RunScript", "make all").await?;
    /// while let Some(line) = lines.recv().await? {
    ///     println!("{line}"); // an hour of output is fine; a minute of silence is not
    /// }
    /// # Ok(()) }
    /// ```
    pub fn with_idle_timeout(&self, idle: Duration) -> Self {
        let mut c = self.clone();
        c.idle = Some(idle);
        c
    }

    /// The same client, sending `key: value` with every call (the handler
    /// reads it with `CallContext::headers`). Keys beginning with `rpc-` are
    /// the protocol's.
    pub fn with_header(&self, key: &str, value: &str) -> Self {
        let mut c = self.clone();
        c.headers.push(key, value);
        c
    }

    /// The same client, with a maximum size for each encoded message it
    /// sends or receives (default [`DEFAULT_MAX_MESSAGE_LEN`]). Frames are
    /// also bounded by the connection's `Config::max_frame_len`.
    pub fn with_max_message_len(&self, bytes: usize) -> Self {
        let mut c = self.clone();
        c.max_message_len = bytes;
        c
    }

    /// A client like this one with its own limit of `calls` open at once
    /// (default [`DEFAULT_MAX_CONCURRENT_CALLS`]), shared by its clones.
    pub fn with_max_concurrent_calls(&self, calls: usize) -> Self {
        let mut c = self.clone();
        c.slots = Arc::new(Semaphore::new(calls.clamp(1, Semaphore::MAX_PERMITS)));
        c
    }

    pub(crate) fn inherit_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.inherited = deadline;
        self
    }

    pub(crate) fn set_codec(mut self, codec: SharedCodec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// The peer this client calls through.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// A unary call: sends `request`, returns the response.
    ///
    /// ```no_run
    /// # async fn demo(client: duplex_rpc::Client) -> Result<(), duplex_rpc::RpcError> {
    /// let sum: i64 = client.call("Calc.Add", &(1, 2)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<Req, Resp>(&self, method: &str, request: &Req) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let deadline = self.deadline();
        let work = async {
            let (codec, body) = self.encode(method, request)?;
            let _slot = self.slot().await?;
            let inline = body.len() <= INLINE_MAX;
            let ch = self
                .open(
                    method,
                    Kind::Unary,
                    &codec,
                    deadline,
                    inline.then_some(&body[..]),
                )
                .await?;
            let (reader, writer) = ch.split();
            let timeout = deadline.map(|d| d.timeout);
            let mut rx =
                Receiver::<Resp>::caller_untimed(reader, codec, self.max(), method.into(), timeout);
            // An inlined request went with the open; its writer is kept
            // until the call ends (an EOF now would be one more packet).
            let (send_failed, _writer) = if inline {
                (None, Some(writer))
            } else {
                match send_request(method, writer, &body).await {
                    Ok(()) => (None, None),
                    // The server ended the call: it may have said why.
                    Err(e) if e.remote_ended() => (Some(e), None),
                    Err(e) => return Err(e),
                }
            };
            match rx.recv().await {
                Ok(Some(resp)) => Ok(resp),
                Ok(None) => Err(send_failed.unwrap_or_else(|| {
                    RpcError::protocol(
                        method,
                        format!("{} ended the call without a response", rx.remote_peer()),
                    )
                })),
                Err(e) => Err(e),
            }
        };
        with_deadline(method, deadline, work).await
    }

    /// A server-streaming call: sends `request`, returns the stream of
    /// responses. The call's timeout covers the whole stream.
    ///
    /// ```no_run
    /// # async fn demo(client: duplex_rpc::Client) -> Result<(), duplex_rpc::RpcError> {
    /// let mut ticks = client.server_stream::<u32, u32>("Clock.Ticks", &10).await?;
    /// while let Some(tick) = ticks.recv().await? {
    ///     println!("{tick}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn server_stream<Req, Resp>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Receiver<Resp>, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let deadline = self.deadline();
        let (codec, body) = self.encode(method, request)?;
        let inline = body.len() <= INLINE_MAX;
        let (ch, slot) = self
            .start(
                method,
                Kind::ServerStream,
                &codec,
                deadline,
                inline.then_some(&body[..]),
            )
            .await?;
        let (reader, writer) = ch.split();
        let mut rx = Receiver::caller(
            reader,
            codec,
            self.max(),
            method.into(),
            deadline,
            self.idle,
        );
        rx.hold(slot);
        if inline {
            return Ok(rx); // the request went with the open
        }
        match with_deadline(method, deadline, send_request(method, writer, &body)).await {
            Ok(()) => Ok(rx),
            // The server may have ended the call already: its status says why.
            Err(e) if e.remote_ended() => match rx.recv().await {
                Err(status) => Err(status),
                Ok(_) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// A client-streaming call: send requests with
    /// [`ClientStreamCall::send`], then [`finish`](ClientStreamCall::finish)
    /// for the response.
    ///
    /// ```no_run
    /// # async fn demo(client: duplex_rpc::Client) -> Result<(), duplex_rpc::RpcError> {
    /// let mut call = client.client_stream::<i64, i64>("Calc.Sum").await?;
    /// for x in [1, 2, 3] {
    ///     call.send(&x).await?;
    /// }
    /// let total = call.finish().await?;
    /// # let _ = total; Ok(()) }
    /// ```
    pub async fn client_stream<Req, Resp>(
        &self,
        method: &str,
    ) -> Result<ClientStreamCall<Req, Resp>, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let (tx, rx) = self.streams(method, Kind::ClientStream).await?;
        Ok(ClientStreamCall {
            tx,
            rx,
            outcome: None,
        })
    }

    /// A bidirectional-streaming call: a sender of requests and a receiver
    /// of responses, usable from different tasks. Dropping both cancels the
    /// call.
    ///
    /// ```no_run
    /// # async fn demo(client: duplex_rpc::Client) -> Result<(), duplex_rpc::RpcError> {
    /// let (mut tx, mut rx) = client.bidi::<String, String>("Chat.Talk").await?;
    /// tx.send(&"hello".to_owned()).await?;
    /// tx.finish().await?;
    /// while let Some(line) = rx.recv().await? {
    ///     println!("{line}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn bidi<Req, Resp>(
        &self,
        method: &str,
    ) -> Result<(Sender<Req>, Receiver<Resp>), RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        self.streams(method, Kind::Bidi).await
    }

    /// Opens a call's channel and hands it over as it is, for a method
    /// served by a raw handler (`Router::raw`). The client's headers,
    /// codec and timeout headers are sent; `headers` are added. The
    /// timeout bounds the open; the server enforces it on the handler. Raw
    /// calls do not count against the client's concurrent-call limit.
    pub async fn open_raw(&self, method: &str, headers: Headers) -> Result<Channel, RpcError> {
        let deadline = self.deadline();
        let codec = self.codec(method)?;
        let mut h = self.call_headers(Kind::Raw, &codec, deadline);
        for (k, v) in headers.iter() {
            h.push(k, v);
        }
        with_deadline(method, deadline, self.open_with(method, h)).await
    }

    async fn streams<Req, Resp>(
        &self,
        method: &str,
        kind: Kind,
    ) -> Result<(Sender<Req>, Receiver<Resp>), RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let deadline = self.deadline();
        let codec = self.codec(method)?;
        let (ch, slot) = self.start(method, kind, &codec, deadline, None).await?;
        let (reader, writer) = ch.split();
        let method: Arc<str> = method.into();
        let tx = Sender::caller(
            writer,
            codec.clone(),
            self.max(),
            method.clone(),
            deadline,
            slot.clone(),
        );
        let mut rx = Receiver::caller(reader, codec, self.max(), method, deadline, self.idle);
        rx.hold(slot);
        Ok((tx, rx))
    }

    /// Takes a slot and opens the call's channel, within the deadline.
    async fn start(
        &self,
        method: &str,
        kind: Kind,
        codec: &SharedCodec,
        deadline: Option<Deadline>,
        request: Option<&[u8]>,
    ) -> Result<(Channel, Slot), RpcError> {
        with_deadline(method, deadline, async {
            let slot = self.slot().await?;
            let ch = self.open(method, kind, codec, deadline, request).await?;
            Ok((ch, slot))
        })
        .await
    }

    fn deadline(&self) -> Option<Deadline> {
        let now = Instant::now();
        let own = self.timeout.map(|t| Deadline {
            at: now + t,
            timeout: t,
        });
        let inherited = self.inherited.map(|at| Deadline {
            at,
            timeout: at.saturating_duration_since(now),
        });
        match (own, inherited) {
            (Some(a), Some(b)) => Some(if a.at <= b.at { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The message limit in force: ours, within the connection's frame
    /// limit.
    fn max(&self) -> usize {
        self.max_message_len
            .min(self.peer.config().get_max_frame_len())
    }

    fn codec(&self, method: &str) -> Result<SharedCodec, RpcError> {
        self.codec.clone().ok_or_else(|| RpcError::Codec {
            method: method.to_owned(),
            side: Side::Local,
            message: "no codec: build duplex-rpc with feature msgpack or json, or set one with Client::with_codec".into(),
        })
    }

    fn encode<Req: Serialize + ?Sized>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<(SharedCodec, Vec<u8>), RpcError> {
        let codec = self.codec(method)?;
        let mut body = Vec::new();
        codec::encode(&*codec, request, &mut body).map_err(|e| RpcError::Codec {
            method: method.to_owned(),
            side: Side::Local,
            message: format!("cannot encode the request with {}: {e}", codec.name()),
        })?;
        if body.len() > self.max() {
            return Err(RpcError::TooLarge {
                method: method.to_owned(),
                side: Side::Local,
                len: body.len() as u64,
                max: self.max(),
            });
        }
        Ok((codec, body))
    }

    async fn slot(&self) -> Result<Slot, RpcError> {
        match self.slots.clone().acquire_owned().await {
            Ok(permit) => Ok(Arc::new(permit)),
            // The semaphore is never closed.
            Err(_) => Err(RpcError::protocol(
                "",
                "the client's call slots were closed",
            )),
        }
    }

    fn call_headers(&self, kind: Kind, codec: &SharedCodec, deadline: Option<Deadline>) -> Headers {
        let mut h = Headers::new();
        h.push(CODEC_HEADER, codec.name());
        h.push(KIND_HEADER, kind.as_str());
        if let Some(d) = deadline {
            let left = d.at.saturating_duration_since(Instant::now());
            h.push(TIMEOUT_HEADER, wire::format_timeout(left));
        }
        for (k, v) in self.headers.iter() {
            h.push(k, v);
        }
        h
    }

    async fn open(
        &self,
        method: &str,
        kind: Kind,
        codec: &SharedCodec,
        deadline: Option<Deadline>,
        request: Option<&[u8]>,
    ) -> Result<Channel, RpcError> {
        let mut headers = self.call_headers(kind, codec, deadline);
        if let Some(body) = request {
            headers.push(REQUEST_HEADER, wire::encode_inline(body));
        }
        self.open_with(method, headers).await
    }

    async fn open_with(&self, method: &str, headers: Headers) -> Result<Channel, RpcError> {
        let opened = match &self.target {
            Some(name) => self.peer.open(name, method, headers).await,
            None => self.peer.open_next(method, headers).await,
        };
        opened.map_err(|e| RpcError::open_failed(method, e))
    }
}

/// Sends a one-request call's request and EOF.
async fn send_request(
    method: &str,
    mut writer: duplex::ChannelWriter,
    body: &[u8],
) -> Result<(), RpcError> {
    let res = async {
        writer.write_frame(body).await?;
        writer.close_write().await
    }
    .await;
    res.map_err(|e| RpcError::transport(method, e))
}

/// Runs `work` within the deadline, if any.
async fn with_deadline<T>(
    method: &str,
    deadline: Option<Deadline>,
    work: impl Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.at, work)
            .await
            .unwrap_or_else(|_| Err(d.exceeded(method))),
        None => work.await,
    }
}

/// A client-streaming call in progress: requests go out with
/// [`send`](Self::send); [`finish`](Self::finish) ends them and returns the
/// response. Dropping it abandons the call: the handler is told its
/// requests were cut short, and cancelled.
#[must_use = "dropping a ClientStreamCall abandons the call"]
pub struct ClientStreamCall<Req, Resp> {
    tx: Sender<Req>,
    rx: Receiver<Resp>,
    /// The outcome, once the server ended the call before `finish`.
    outcome: Option<Result<Resp, RpcError>>,
}

impl<Req, Resp> fmt::Debug for ClientStreamCall<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStreamCall")
            .field("tx", &self.tx)
            .finish()
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> ClientStreamCall<Req, Resp> {
    /// Sends one request.
    ///
    /// If the server already failed the call, returns its error. If the
    /// server answered before reading every request, the requests from
    /// then on are discarded, `send` returns `Ok`, and `finish` returns the
    /// answer (as in gRPC). Not cancel-safe (see [`Sender::send`]).
    pub async fn send(&mut self, request: &Req) -> Result<(), RpcError> {
        if let Some(outcome) = &self.outcome {
            return match outcome {
                Ok(_) => Ok(()),
                Err(e) => Err(e.duplicate()),
            };
        }
        match self.tx.send(request).await {
            Ok(()) => Ok(()),
            Err(e) if e.remote_ended() => match self.rx.recv().await {
                Ok(Some(resp)) => {
                    self.outcome = Some(Ok(resp));
                    Ok(())
                }
                Ok(None) => Err(e),
                Err(failed) => {
                    let copy = failed.duplicate();
                    self.outcome = Some(Err(failed));
                    Err(copy)
                }
            },
            Err(e) => Err(e),
        }
    }

    /// Ends the requests and waits for the response. Dropped before it
    /// returns, the call is abandoned.
    pub async fn finish(mut self) -> Result<Resp, RpcError> {
        if let Some(outcome) = self.outcome.take() {
            return outcome;
        }
        let closed = self.tx.close().await;
        match self.rx.recv().await {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => Err(match closed {
                Err(e) => e,
                Ok(()) => RpcError::protocol(
                    self.rx.method(),
                    format!(
                        "{} ended the call without a response",
                        self.rx.remote_peer()
                    ),
                ),
            }),
            Err(e) => Err(e),
        }
    }
}
