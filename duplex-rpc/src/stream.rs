//! Typed message streams over a call's channel: [`Sender`] and
//! [`Receiver`], used by callers and handlers alike.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use duplex::{ChannelError, ChannelReader, ChannelWriter, FrameError};
use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use crate::codec::{self, SharedCodec};
use crate::error::{RpcError, Side, from_wire};
use crate::status::{Code, Origin, Status};

/// When a call must be over, and the timeout it came from (for errors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) timeout: Duration,
}

impl Deadline {
    pub(crate) fn exceeded(&self, method: &str) -> RpcError {
        RpcError::DeadlineExceeded {
            method: method.to_owned(),
            timeout: self.timeout,
        }
    }
}

/// What a server found wrong with a call by itself (an undecodable or
/// oversized request), to report instead of the handler's own status.
pub(crate) type FailureSlot = Arc<Mutex<Option<(Origin, Status)>>>;

/// A caller's slot among its client's concurrent calls, shared by the
/// call's sender and receiver.
pub(crate) type Slot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// Sends typed messages on a call: requests from a caller, responses from a
/// handler. Each message is encoded with the call's codec and sent as one
/// frame; a message over the maximum size is refused before it is sent.
///
/// A caller ends its requests with [`finish`](Self::finish); dropping the
/// sender without it abandons the call (the handler learns that its
/// requests were cut short, not that they ended). A handler's responses
/// end when the handler returns (its status, if it fails, comes last), so
/// `finish` on a handler's sender only stops further sends.
#[must_use = "dropping a Sender ends its stream"]
pub struct Sender<T> {
    writer: ChannelWriter,
    codec: SharedCodec,
    max: usize,
    buf: Vec<u8>,
    method: Arc<str>,
    /// A caller's deadline; `None` on a handler's side.
    deadline: Option<Deadline>,
    caller: bool,
    _slot: Option<Slot>,
    _t: PhantomData<fn(&T)>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("method", &self.method)
            .field("codec", &self.codec.name())
            .finish()
    }
}

impl<T: Serialize> Sender<T> {
    pub(crate) fn caller(
        writer: ChannelWriter,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
        deadline: Option<Deadline>,
        slot: Slot,
    ) -> Self {
        let mut s = Self::new(writer, codec, max, method, deadline, true);
        s._slot = Some(slot);
        s
    }

    pub(crate) fn handler(
        writer: ChannelWriter,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
    ) -> Self {
        Self::new(writer, codec, max, method, None, false)
    }

    fn new(
        writer: ChannelWriter,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
        deadline: Option<Deadline>,
        caller: bool,
    ) -> Self {
        Sender {
            writer,
            codec,
            max,
            buf: Vec::new(),
            method,
            deadline,
            caller,
            _slot: None,
            _t: PhantomData,
        }
    }

    /// Sends one message, waiting while the remote is not reading (flow
    /// control).
    ///
    /// On a caller's side, fails with `DeadlineExceeded` once the call's
    /// deadline passed. If the remote ended the call (a handler that
    /// returned, say), this fails with a transport error, and the call's
    /// [`Receiver`] gives the outcome. On a handler's side, fails with
    /// `Cancelled` once the caller went away.
    ///
    /// Not cancel-safe: cancelled midway, part of the message may have been
    /// sent; end the call then.
    pub async fn send(&mut self, message: &T) -> Result<(), RpcError> {
        let method = self.method.clone();
        self.buf.clear();
        codec::encode(&*self.codec, message, &mut self.buf).map_err(|e| RpcError::Codec {
            method: method.to_string(),
            side: Side::Local,
            message: format!("cannot encode a message with {}: {e}", self.codec.name()),
        })?;
        if self.buf.len() > self.max {
            return Err(RpcError::TooLarge {
                method: method.to_string(),
                side: Side::Local,
                len: self.buf.len() as u64,
                max: self.max,
            });
        }
        let write = self.writer.write_frame(&self.buf);
        let res = match self.deadline {
            Some(d) => match tokio::time::timeout_at(d.at, write).await {
                Ok(r) => r,
                Err(_) => return Err(d.exceeded(&method)),
            },
            None => write.await,
        };
        res.map_err(|e| self.write_failed(e))
    }

    fn write_failed(&self, e: ChannelError) -> RpcError {
        match e {
            ChannelError::ClosedByRemote if !self.caller => RpcError::Cancelled {
                method: self.method.to_string(),
                reason: "the caller closed the call".into(),
            },
            ChannelError::Frame(FrameError::TooLarge { len, max }) => RpcError::TooLarge {
                method: self.method.to_string(),
                side: Side::Local,
                len,
                max,
            },
            e => RpcError::transport(&self.method, e),
        }
    }

    /// Ends the stream. A caller's requests end with an end-of-stream
    /// marker and EOF: the handler reads the end after the messages sent.
    /// On a handler's side the responses end when the handler returns;
    /// this only drops the sender. Not cancel-safe, like `send`.
    pub async fn finish(mut self) -> Result<(), RpcError> {
        if self.caller {
            self.close().await
        } else {
            Ok(())
        }
    }

    /// A caller's end of requests: an empty frame (no codec encodes a
    /// value as nothing), then EOF.
    pub(crate) async fn close(&mut self) -> Result<(), RpcError> {
        let res = async {
            self.writer.write_frame(&[]).await?;
            self.writer.close_write().await
        }
        .await;
        res.map_err(|e| self.write_failed(e))
    }
}

/// Which end of the call a [`Receiver`] is on.
enum Role {
    /// A caller reading responses: the stream may end with a status, and
    /// the call's deadline applies.
    Caller {
        /// The deadline's timer, when this receiver enforces it (a unary
        /// call enforces it around the whole call instead).
        timer: Option<Pin<Box<Sleep>>>,
        /// The call's timeout, for its errors.
        timeout: Option<Duration>,
        /// The longest wait for the next message, and its timer (reset as
        /// each message arrives).
        idle: Option<(Duration, Pin<Box<Sleep>>)>,
    },
    /// A handler reading requests: failures are recorded for the server
    /// to report.
    Handler { failure: FailureSlot },
}

/// Receives typed messages on a call: responses on a caller's side,
/// requests on a handler's. A [`Stream`] of `Result<T, RpcError>`, or use
/// [`recv`](Self::recv).
///
/// On a caller's side the stream ends with `Ok(None)` when the call
/// succeeded, or with the call's error (a remote status, a deadline...).
/// Dropping a caller's receiver (with its sender, if any) cancels the
/// call: its channel closes and the server cancels the handler.
#[must_use = "dropping a caller's Receiver cancels the call"]
pub struct Receiver<T> {
    reader: ChannelReader,
    codec: SharedCodec,
    max: usize,
    method: Arc<str>,
    role: Role,
    state: RecvState,
    /// How the stream failed, to report again to a later `recv`.
    failed: Option<RpcError>,
    _slot: Option<Slot>,
    _t: PhantomData<fn() -> T>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RecvState {
    Open,
    /// Data ended (or failed); the status, if any, is read next.
    Ending,
    Done,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("method", &self.method)
            .field("codec", &self.codec.name())
            .finish()
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    pub(crate) fn caller(
        reader: ChannelReader,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
        deadline: Option<Deadline>,
        idle: Option<Duration>,
    ) -> Self {
        let role = Role::Caller {
            timer: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.at))),
            timeout: deadline.map(|d| d.timeout),
            idle: idle.map(|i| (i, Box::pin(tokio::time::sleep(i)))),
        };
        Self::new(reader, codec, max, method, role)
    }

    /// A caller's receiver whose deadline is enforced by the caller around
    /// the whole call: no timer of its own.
    pub(crate) fn caller_untimed(
        reader: ChannelReader,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
        timeout: Option<Duration>,
    ) -> Self {
        let role = Role::Caller {
            timer: None,
            timeout,
            idle: None,
        };
        Self::new(reader, codec, max, method, role)
    }

    pub(crate) fn handler(
        reader: ChannelReader,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
        failure: FailureSlot,
    ) -> Self {
        Self::new(reader, codec, max, method, Role::Handler { failure })
    }

    fn new(
        reader: ChannelReader,
        codec: SharedCodec,
        max: usize,
        method: Arc<str>,
        role: Role,
    ) -> Self {
        Receiver {
            reader,
            codec,
            max,
            method,
            role,
            state: RecvState::Open,
            failed: None,
            _slot: None,
            _t: PhantomData,
        }
    }

    pub(crate) fn hold(&mut self, slot: Slot) {
        self._slot = Some(slot);
    }

    pub(crate) fn method(&self) -> &str {
        &self.method
    }

    /// The next message; `Ok(None)` at the end of the stream, after which
    /// it keeps returning `Ok(None)`; after an error it keeps returning
    /// that error. Cancel-safe.
    ///
    /// On a handler's side, a caller that abandoned its requests (dropped
    /// the call without `finish`) gives `Cancelled`, not the end.
    pub async fn recv(&mut self) -> Result<Option<T>, RpcError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The remote peer's name.
    pub fn remote_peer(&self) -> &str {
        self.reader.meta().remote_peer()
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, RpcError>> {
        let res = ready!(self.poll_recv_inner(cx));
        if let Err(e) = &res {
            self.state = RecvState::Done;
            self.failed = Some(e.duplicate());
        }
        Poll::Ready(res)
    }

    fn poll_recv_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, RpcError>> {
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.duplicate()));
        }
        if let Role::Caller {
            timer: Some(timer),
            timeout,
            ..
        } = &mut self.role
            && self.state != RecvState::Done
            && timer.as_mut().poll(cx).is_ready()
        {
            self.state = RecvState::Done;
            return Poll::Ready(Err(RpcError::DeadlineExceeded {
                method: self.method.to_string(),
                timeout: timeout.unwrap_or_default(),
            }));
        }
        if let Role::Caller {
            idle: Some((idle, timer)),
            ..
        } = &mut self.role
            && self.state != RecvState::Done
            && timer.as_mut().poll(cx).is_ready()
        {
            self.state = RecvState::Done;
            return Poll::Ready(Err(RpcError::IdleTimeout {
                method: self.method.to_string(),
                idle: *idle,
            }));
        }
        loop {
            match self.state {
                RecvState::Done => return Poll::Ready(Ok(None)),
                RecvState::Ending => return self.poll_ending(cx, None),
                RecvState::Open => {}
            }
            let frame = ready!(self.reader.poll_read_frame_max(cx, self.max));
            match frame {
                Ok(Some(bytes))
                    if bytes.is_empty() && matches!(self.role, Role::Handler { .. }) =>
                {
                    // The caller's end-of-requests marker.
                    self.state = RecvState::Done;
                    return Poll::Ready(Ok(None));
                }
                Ok(Some(bytes)) => {
                    if let Role::Caller {
                        idle: Some((idle, timer)),
                        ..
                    } = &mut self.role
                    {
                        timer.as_mut().reset(tokio::time::Instant::now() + *idle);
                    }
                    return Poll::Ready(self.decode(&bytes).map(Some));
                }
                Ok(None) => self.state = RecvState::Ending,
                Err(e) => {
                    self.state = RecvState::Ending;
                    return self.poll_ending(cx, Some(e));
                }
            }
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<T, RpcError> {
        codec::decode::<T>(&*self.codec, bytes).map_err(|e| {
            let err = RpcError::Codec {
                method: self.method.to_string(),
                side: Side::Local,
                message: format!("cannot decode a message with {}: {e}", self.codec.name()),
            };
            if let Role::Handler { failure } = &self.role {
                record(
                    failure,
                    Origin::BadRequest,
                    Status::invalid_argument(format!(
                        "{}: cannot decode the request with {}: {e}",
                        self.method,
                        self.codec.name()
                    )),
                );
            }
            err
        })
    }

    /// After the data stream ended (cleanly, or with `failed`): on a
    /// caller's side, a status on the error stream decides the outcome.
    fn poll_ending(
        &mut self,
        cx: &mut Context<'_>,
        failed: Option<ChannelError>,
    ) -> Poll<Result<Option<T>, RpcError>> {
        let method = &self.method;
        match &self.role {
            Role::Handler { failure } => {
                self.state = RecvState::Done;
                match failed {
                    // EOF without the end marker: the caller dropped the
                    // call (or broke the protocol); either way its requests
                    // did not end.
                    None => Poll::Ready(Err(RpcError::Cancelled {
                        method: method.to_string(),
                        reason: "the caller abandoned the call: its requests stopped without an end marker".into(),
                    })),
                    Some(ChannelError::Frame(FrameError::TooLarge { len, max })) => {
                        let st = too_large_status(method, len, max);
                        record(failure, Origin::TooLarge, st);
                        Poll::Ready(Err(RpcError::TooLarge {
                            method: method.to_string(),
                            side: Side::Local,
                            len,
                            max,
                        }))
                    }
                    Some(e) => Poll::Ready(Err(RpcError::transport(method, e))),
                }
            }
            Role::Caller { timeout, .. } => {
                let timeout = *timeout;
                // After a broken data stream, the error stream may still
                // be open; a status there explains the break.
                let status = match self.reader.poll_read_error(cx) {
                    Poll::Ready(Ok(Some(frame))) => Some(frame),
                    Poll::Ready(_) => None,
                    Poll::Pending if failed.is_none() => return Poll::Pending,
                    Poll::Pending => None,
                };
                self.state = RecvState::Done;
                let peer = self.reader.meta().remote_peer();
                if let Some(frame) = status {
                    return Poll::Ready(Err(from_wire(method, peer, &frame, timeout)));
                }
                Poll::Ready(match failed {
                    None => Ok(None),
                    Some(ChannelError::Frame(FrameError::TooLarge { len, max })) => {
                        Err(RpcError::TooLarge {
                            method: method.to_string(),
                            side: Side::Local,
                            len,
                            max,
                        })
                    }
                    Some(e) => Err(RpcError::transport(method, e)),
                })
            }
        }
    }
}

impl<T: DeserializeOwned> Stream for Receiver<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // `Receiver` is `Unpin`: its only pinned part is boxed.
        let this = self.get_mut();
        this.poll_recv(cx).map(Result::transpose)
    }
}

fn record(slot: &FailureSlot, origin: Origin, status: Status) {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some((origin, status));
    }
}

/// The status a server sends for a request over its size limit; the
/// details carry the claimed length and the limit (two big-endian u64s).
pub(crate) fn too_large_status(method: &str, len: u64, max: usize) -> Status {
    let mut details = Vec::with_capacity(16);
    details.extend_from_slice(&len.to_be_bytes());
    details.extend_from_slice(&(max as u64).to_be_bytes());
    Status::new(
        Code::RESOURCE_EXHAUSTED,
        format!("{method}: a request of {len} bytes exceeds this server's limit of {max} bytes"),
    )
    .with_details(details)
}
