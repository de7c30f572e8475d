//! The only module that names `russh`: session setup in both roles, the
//! event handlers that feed [`ConnShared`], and thin wrappers over russh's
//! channel and session handles.
//!
//! Data is taken from russh's `Handler` callbacks, never from its per-channel
//! queues: we drop each channel's read half at once, so russh's bounded
//! queue for it is closed and can never fill up and stall the session loop
//! (BRIEF section 3). Our own buffers and credit take over from there.

pub(crate) mod handler;
pub(crate) mod keys;
pub(crate) mod trust;

use std::borrow::Cow;
use std::sync::Arc;

use russh::keys::PrivateKeyWithHashAlg;
use russh::{
    ChannelId, ChannelOpenFailure, ChannelWriteHalf, MethodKind, MethodSet, client, server,
};

use crate::channel::state::Out;
use crate::config::Config;
use crate::ssh::keys::Identity;

/// Ciphers in order of preference: AES-256-GCM first, as it is the fastest
/// where the CPU has AES instructions (most servers); then
/// chacha20-poly1305, then CTR modes for old peers.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

/// Signature algorithms for host and user keys: russh's defaults without
/// `ssh-rsa` (RSA with SHA-1 signatures).
const KEY_ALGORITHMS: &[russh::keys::Algorithm] = &[
    russh::keys::Algorithm::Ed25519,
    russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP256,
    },
    russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP384,
    },
    russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP521,
    },
    russh::keys::Algorithm::Rsa {
        hash: Some(russh::keys::HashAlg::Sha512),
    },
    russh::keys::Algorithm::Rsa {
        hash: Some(russh::keys::HashAlg::Sha256),
    },
];

/// Algorithms offered: russh's safe defaults for key exchange (with the
/// strict-kex extension, the Terrapin countermeasure) and MACs (no SHA-1),
/// our cipher order, and no SHA-1 signatures.
fn preferred() -> russh::Preferred {
    russh::Preferred {
        cipher: Cow::Borrowed(CIPHERS),
        key: Cow::Borrowed(KEY_ALGORITHMS),
        ..russh::Preferred::default()
    }
}

/// The russh configurations derived from ours, built once per peer.
pub(crate) struct SshConfigs {
    pub(crate) server: Arc<server::Config>,
    pub(crate) client: Arc<client::Config>,
}

impl SshConfigs {
    pub(crate) fn new(config: &Config, identity: &Identity) -> Self {
        let id = || {
            russh::SshId::Standard(Cow::Owned(format!(
                "SSH-2.0-duplex_{}",
                env!("CARGO_PKG_VERSION")
            )))
        };
        let server = server::Config {
            server_id: id(),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            // Rejections take this long, so a scanner learns little by
            // timing; the initial "none" probe every client sends is free.
            auth_rejection_time: std::time::Duration::from_millis(250),
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            keys: vec![(*identity.0).clone()],
            max_auth_attempts: config.max_auth_attempts,
            inactivity_timeout: None,
            keepalive_interval: config.keepalive_interval,
            keepalive_max: config.keepalive_max,
            preferred: preferred(),
            ..server::Config::default()
        };
        let client = client::Config {
            client_id: id(),
            inactivity_timeout: None,
            keepalive_interval: config.keepalive_interval,
            keepalive_max: config.keepalive_max,
            preferred: preferred(),
            ..client::Config::default()
        };
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
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

    /// Grants the remote `n` more bytes of this channel's SSH window (a
    /// plain client's channel, accepted with `OpenReply::manual_window`).
    /// Does not wait; a session that ended takes nothing.
    pub(crate) fn grant(&self, session: &SessionHandle, n: u32) {
        if let (WriteHalf::Server(w), SessionHandle::Server(h)) = (self, session) {
            let _ = h.window_adjust(w.id(), n);
        }
    }

    /// Hands one item to the session. Waits for SSH window space (bounded
    /// by the remote's window) and for room in the session's queue.
    pub(crate) async fn send(&self, item: Out) -> Result<(), russh::Error> {
        match self {
            WriteHalf::Client(w) => send(w, item).await,
            WriteHalf::Server(w) => send(w, item).await,
        }
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

/// A handle to a running session, either role.
pub(crate) enum SessionHandle {
    Client(client::Handle<handler::ClientHandler>),
    Server(server::Handle),
}

impl SessionHandle {
    /// Opens a `direct-tcpip` channel carrying a Duplex open; `parent` is
    /// the (port to connect, originator port) pair of `proto::nest`.
    pub(crate) async fn open(
        &self,
        service: &str,
        originator: String,
        parent: (u32, u32),
    ) -> Result<WriteHalf, OpenFailed> {
        let (port, parent) = parent;
        let res = match self {
            SessionHandle::Client(h) => h
                .channel_open_direct_tcpip(service, port, originator, parent)
                .await
                .map(WriteHalf::from_client),
            SessionHandle::Server(h) => h
                .channel_open_direct_tcpip(service, port, originator, parent)
                .await
                .map(WriteHalf::from_server),
        };
        res.map_err(|e| match e {
            russh::Error::ChannelOpenFailure(ChannelOpenFailure::Other { code, reason }) => {
                // Bounded: a remote's text in our error.
                let reason: String = reason.chars().take(1024).collect();
                OpenFailed::Refused(code, Some(reason))
            }
            russh::Error::ChannelOpenFailure(f) => OpenFailed::Refused(f.code(), None),
            _ => OpenFailed::Gone,
        })
    }

    pub(crate) async fn disconnect(&self, why: &str) {
        let reason = russh::Disconnect::ByApplication;
        let _ = match self {
            SessionHandle::Client(h) => h.disconnect(reason, why, "en").await,
            SessionHandle::Server(h) => h
                .disconnect(reason, why.to_owned(), "en".to_owned())
                .await
                .map_err(|_| russh::Error::SendError),
        };
    }
}

/// Runs the client side of the handshake: key exchange (checking the host
/// key), public-key authentication as `user`.
pub(crate) async fn client_handshake<S>(
    configs: &SshConfigs,
    stream: S,
    handler: handler::ClientHandler,
    user: &str,
    identity: &Identity,
) -> Result<SessionHandle, HandshakeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let host_key_verdict = handler.verdict.clone();
    let mut handle = match client::connect_stream(configs.client.clone(), stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(err) = host_key_verdict.lock().ok().and_then(|mut v| v.take()) {
                return Err(HandshakeError::HostKey(err));
            }
            return Err(HandshakeError::Ssh(describe(&e)));
        }
    };
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let key = PrivateKeyWithHashAlg::new(identity.0.clone(), hash);
    match handle.authenticate_publickey(user, key).await {
        Ok(r) if r.success() => Ok(SessionHandle::Client(handle)),
        // Not a refusal of our key: the listener ended the session before
        // answering (one that ends unfinished handshakes under load does).
        Ok(_) if handle.is_closed() => Err(HandshakeError::Ssh(
            "the listener closed the connection during authentication, before answering (it may be overloaded with unfinished handshakes); a retry may succeed".to_owned(),
        )),
        Ok(_) => Err(HandshakeError::AuthRejected),
        Err(e) => Err(HandshakeError::Ssh(describe(&e))),
    }
}

/// Starts the server side of a session on `stream`.
pub(crate) async fn server_start<S>(
    configs: &SshConfigs,
    stream: S,
    handler: handler::ServerHandler,
) -> Result<SessionHandle, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match server::run_stream(configs.server.clone(), stream, handler).await {
        // The session runs in a task russh spawned; we learn of its end
        // when it drops the handler (see `handler::EndSignal`).
        Ok(running) => Ok(SessionHandle::Server(running.handle())),
        Err(e) => Err(describe(&e)),
    }
}

pub(crate) enum HandshakeError {
    HostKey(trust::HostKeyError),
    AuthRejected,
    Ssh(String),
}

pub(crate) fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the connection closed without a goodbye (the remote process or the network went away)"
                .to_owned()
        }
        russh::Error::IO(io) => io.to_string(),
        russh::Error::KeepaliveTimeout => {
            "the remote stopped answering keepalives (network gone, or the process is frozen)"
                .to_owned()
        }
        russh::Error::Disconnect => "the remote closed the connection".to_owned(),
        russh::Error::NoCommonAlgo { kind, ours, theirs } => format!(
            "no common {kind:?} algorithm (ours: {}; theirs: {})",
            ours.join(","),
            theirs.join(",")
        ),
        other => other.to_string(),
    }
}
