//! russh event handlers for both roles. They translate callbacks into calls
//! on [`ConnShared`], which holds the logic shared by both roles.

use std::sync::{Arc, Mutex};

use russh::keys::ssh_key;
use russh::server::{Auth, Msg as ServerMsg, Session as ServerSession};
use russh::{Channel, ChannelId, client, server};

use super::keys::PublicKey;
use super::trust::{HostKeyError, KnownHosts};
use super::{IncomingOpen, OpenReply, WriteHalf};
use crate::conn::ConnShared;

/// Fires the connection's `ended` token when russh drops the handler, which
/// it does exactly when the session task finishes.
struct EndSignal(Arc<ConnShared>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        self.0.ended.cancel();
    }
}

pub(crate) struct ClientHandler {
    conn: Arc<ConnShared>,
    known_hosts: Arc<KnownHosts>,
    host_name: String,
    pub(crate) verdict: Arc<Mutex<Option<HostKeyError>>>,
    _end: EndSignal,
}

impl ClientHandler {
    pub(crate) fn new(
        conn: Arc<ConnShared>,
        known_hosts: Arc<KnownHosts>,
        host_name: String,
    ) -> Self {
        Self {
            _end: EndSignal(conn.clone()),
            conn,
            known_hosts,
            host_name,
            verdict: Arc::new(Mutex::new(None)),
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false); // certificates are not supported
        };
        let key = PublicKey(key.clone());
        match self.known_hosts.check_name(&self.host_name, &key) {
            Ok(()) => {
                self.conn.set_remote_key(key.fingerprint());
                Ok(true)
            }
            Err(e) => {
                if let Ok(mut v) = self.verdict.lock() {
                    *v = Some(e);
                }
                Ok(false)
            }
        }
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let open = IncomingOpen {
            write: WriteHalf::from_client(channel),
            service: host_to_connect.to_owned(),
            originator: originator_address.to_owned(),
            port_to_connect,
            originator_port,
            reply: OpenReply::Client(reply),
        };
        self.conn.on_open(open).await;
        Ok(())
    }

    async fn channel_open_confirmation(
        &mut self,
        id: ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.conn.on_confirm(id.number());
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.conn.on_data(channel.number(), data).await;
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        ext: u32,
        data: &[u8],
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.conn.on_ext(channel.number(), ext, data);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.conn.on_eof(channel.number());
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.conn.on_close(channel.number());
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let why = match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the remote disconnected ({})", info.message)
            }
            client::DisconnectReason::Error(e) => super::describe(&e),
        };
        self.conn.set_end_reason(why);
        Ok(())
    }
}

/// Whether user authentication may use this signature algorithm (not
/// `ssh-rsa`, whose signatures use SHA-1).
fn strong(algorithm: &ssh_key::Algorithm) -> bool {
    super::KEY_ALGORITHMS.contains(algorithm)
}

pub(crate) struct ServerHandler {
    conn: Arc<ConnShared>,
    _end: EndSignal,
}

impl ServerHandler {
    pub(crate) fn new(conn: Arc<ConnShared>) -> Self {
        Self {
            _end: EndSignal(conn.clone()),
            conn,
        }
    }

    fn trusted(&self, key: &ssh_key::PublicKey) -> bool {
        self.conn.authorizes(&PublicKey(key.clone()))
    }

    /// Logs a refused key, rate-limited (a scanner can cause this at will),
    /// with the address, the claimed name and the key's fingerprint.
    fn log_refused(&self, user: &str, key: &ssh_key::PublicKey, why: &str) {
        if let Some(n) = self.conn.core.refusals.keys.allow() {
            tracing::info!(
                endpoint = %self.conn.endpoint,
                user,
                fingerprint = %PublicKey(key.clone()).fingerprint(),
                "refused a key at authentication: {why}{}",
                crate::lograte::left_out(n)
            );
        }
    }

    /// Whether the key may connect under the peer name `user` (names bound
    /// to keys in the authorized keys).
    fn may_use(&self, user: &str, key: &ssh_key::PublicKey) -> bool {
        let fp = PublicKey(key.clone()).fingerprint();
        match self.conn.check_name(&fp, user) {
            Ok(()) => true,
            Err(e) => {
                self.log_refused(user, key, &format!("a name it may not use: {e}"));
                false
            }
        }
    }
}

impl server::Handler for ServerHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if !strong(offer.algorithm) {
            self.log_refused(user, offer.public_key, "a weak signature algorithm");
            return Ok(Auth::reject());
        }
        if !self.trusted(offer.public_key) {
            self.log_refused(
                user,
                offer.public_key,
                "not in the authorized keys (offered)",
            );
            return Ok(Auth::reject());
        }
        Ok(if self.may_use(user, offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !strong(key.algorithm) {
            self.log_refused(user, key.public_key, "a weak signature algorithm");
            return Ok(Auth::reject());
        }
        if !self.trusted(key.public_key) {
            self.log_refused(user, key.public_key, "not in the authorized keys");
            return Ok(Auth::reject());
        }
        if !self.may_use(user, key.public_key) {
            return Ok(Auth::reject());
        }
        self.conn
            .on_authenticated(user, PublicKey(key.public_key.clone()).fingerprint());
        Ok(Auth::Accept)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<ServerMsg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        let open = IncomingOpen {
            write: WriteHalf::from_server(channel),
            service: host_to_connect.to_owned(),
            originator: originator_address.to_owned(),
            port_to_connect,
            originator_port,
            reply: OpenReply::Server(reply),
        };
        self.conn.on_open(open).await;
        Ok(())
    }

    async fn channel_open_confirmation(
        &mut self,
        id: ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.conn.on_confirm(id.number());
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.conn.on_data(channel.number(), data).await;
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        code: u32,
        data: &[u8],
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.conn.on_ext(channel.number(), code, data);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.conn.on_eof(channel.number());
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.conn.on_close(channel.number());
        Ok(())
    }
}
