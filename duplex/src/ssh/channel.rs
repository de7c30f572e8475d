//! Duplex-typed adapters over russh's channel handles: the sending half of
//! a channel, the deferred answer to an incoming open, and the open as the
//! handler saw it.

use russh::{ChannelId, ChannelMsg, ChannelOpenFailure, ChannelWriteHalf, TrySend, client, server};

use super::config::describe;
use crate::proto::chan::Out;

/// The session took no more data: it is gone, for this reason.
#[derive(Debug, Clone)]
pub(crate) struct SendFailed(pub(crate) String);

/// Why `WriteHalf::try_send` did not send.
pub(crate) enum NotNow {
    /// It would have had to wait: the item, unsent.
    Wait(Out),
    Gone(SendFailed),
}

/// The sending side of one SSH channel.
pub(crate) enum WriteHalf {
    Client(ChannelWriteHalf<client::Msg>),
    Server(ChannelWriteHalf<server::Msg>),
}

impl WriteHalf {
    pub(crate) fn from_client(ch: russh::Channel<client::Msg>) -> Self {
        let (read, write) = ch.split();
        drop(read); // closes russh's queue for this channel: see module docs
        WriteHalf::Client(write)
    }

    pub(crate) fn from_server(ch: russh::Channel<server::Msg>) -> Self {
        let (read, write) = ch.split();
        drop(read);
        WriteHalf::Server(write)
    }

    pub(crate) fn id(&self) -> u32 {
        match self {
            WriteHalf::Client(w) => w.id().number(),
            WriteHalf::Server(w) => w.id().number(),
        }
    }

    /// Hands one item to the session. Waits for SSH window space (bounded
    /// by the remote's window) and for room in the session's queue.
    /// Fails once the session is gone, saying why.
    pub(crate) async fn send(&self, item: Out) -> Result<(), SendFailed> {
        let sent = match self {
            WriteHalf::Client(w) => send(w, item).await,
            WriteHalf::Server(w) => send(w, item).await,
        };
        sent.map_err(|e| SendFailed(describe(&e)))
    }

    /// Hands one item to the session if that needs no waiting: room in the
    /// session's queue, and for data the remote's window for all of it in
    /// one packet; `admit` runs last and may refuse (the connection's
    /// backlog). Nothing is consumed when it returns `NotNow::Wait`.
    pub(crate) fn try_send(&self, item: Out, admit: impl FnOnce() -> bool) -> Result<(), NotNow> {
        let msg = match item {
            Out::Data(data) => ChannelMsg::Data { data },
            Out::Ext(ext, data) => ChannelMsg::ExtendedData { data, ext },
            Out::Eof => ChannelMsg::Eof,
            Out::Close => ChannelMsg::Close,
        };
        let tried = match self {
            WriteHalf::Client(w) => w.try_send_now(msg, admit),
            WriteHalf::Server(w) => w.try_send_now(msg, admit),
        };
        match tried {
            Ok(()) => Ok(()),
            Err(TrySend::Gone) => Err(NotNow::Gone(SendFailed(describe(&russh::Error::SendError)))),
            Err(TrySend::WouldWait(msg)) => Err(NotNow::Wait(match msg {
                ChannelMsg::Data { data } => Out::Data(data),
                ChannelMsg::ExtendedData { data, ext } => Out::Ext(ext, data),
                ChannelMsg::Eof => Out::Eof,
                // Only the four kinds above go in.
                _ => Out::Close,
            })),
        }
    }

    /// The channel's SSH number, as russh's handles name it.
    pub(super) fn ssh_id(&self) -> ChannelId {
        match self {
            WriteHalf::Client(w) => w.id(),
            WriteHalf::Server(w) => w.id(),
        }
    }

    /// Whether this is the server role's half.
    pub(super) fn is_server(&self) -> bool {
        matches!(self, WriteHalf::Server(_))
    }
}

async fn send<S>(w: &ChannelWriteHalf<S>, item: Out) -> Result<(), russh::Error>
where
    S: From<(ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    match item {
        Out::Data(b) => w.data_bytes(b).await,
        Out::Ext(code, b) => w.extended_data_bytes(code, b).await,
        Out::Eof => w.eof().await,
        Out::Close => w.close().await,
    }
}

/// The answer to an incoming channel open, which russh lets us defer.
pub(crate) enum OpenReply {
    Client(client::ChannelOpenHandle),
    Server(server::ChannelOpenHandle),
}

impl OpenReply {
    /// Offers `window` bytes of SSH window and grants more only on
    /// request (`WriteHalf::grant`), instead of russh's refill on receipt.
    pub(crate) fn manual_window(&mut self, window: u32) {
        if let OpenReply::Server(r) = self {
            r.set_manual_window(window);
        }
    }

    pub(crate) async fn accept(self) {
        match self {
            OpenReply::Client(r) => r.accept().await,
            OpenReply::Server(r) => r.accept().await,
        }
    }

    pub(crate) async fn reject(self, code: u32, reason: &str) {
        tracing::debug!(code, reason, "refusing a channel open");
        let why = ChannelOpenFailure::Other {
            code,
            reason: reason.to_owned(),
        };
        match self {
            OpenReply::Client(r) => r.reject(why).await,
            OpenReply::Server(r) => r.reject(why).await,
        }
    }
}

/// A channel open request from the remote, as the handler saw it.
pub(crate) struct IncomingOpen {
    pub(crate) write: WriteHalf,
    pub(crate) service: String,
    pub(crate) originator: String,
    /// Says whose channel number `originator_port` is (see `proto::nest`).
    pub(crate) port_to_connect: u32,
    /// The parent channel's number plus one, or 0 (see `proto::nest`).
    pub(crate) originator_port: u32,
    pub(crate) reply: OpenReply,
}

/// Why our open failed at the SSH level.
pub(crate) enum OpenFailed {
    /// The reason code, and the remote's description when it gave one.
    Refused(u32, Option<String>),
    Gone,
}
