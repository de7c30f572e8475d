//! Sessions in both roles: the client's handshake and authentication, the
//! server's start, and a handle to a running session.

use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelOpenFailure, client, server};

use super::channel::{OpenFailed, WriteHalf};
use super::config::{SshConfigs, describe};
use super::events::SessionEvents;
use super::handler;
use super::keys::Identity;
use super::trust;

/// A handle to a running session, either role, whose events go to `E`.
pub(crate) enum SessionHandle<E: SessionEvents> {
    Client(client::Handle<handler::ClientHandler<E>>),
    Server(server::Handle),
}

impl<E: SessionEvents> SessionHandle<E> {
    /// Grants the remote `n` more bytes of a channel's SSH window (a plain
    /// client's channel, accepted with `OpenReply::manual_window`). Does
    /// not wait; a session that ended takes nothing.
    pub(crate) fn grant(&self, channel: &WriteHalf, n: u32) {
        if let SessionHandle::Server(h) = self
            && channel.is_server()
        {
            let _ = h.window_adjust(channel.ssh_id(), n);
        }
    }

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
pub(crate) async fn client_handshake<S, E: SessionEvents>(
    configs: &SshConfigs,
    stream: S,
    handler: handler::ClientHandler<E>,
    user: &str,
    identity: &Identity,
) -> Result<SessionHandle<E>, HandshakeError>
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
pub(crate) async fn server_start<S, E: SessionEvents>(
    configs: &SshConfigs,
    stream: S,
    handler: handler::ServerHandler<E>,
) -> Result<SessionHandle<E>, String>
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
