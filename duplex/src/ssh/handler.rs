//! russh event handlers for both roles. Each checks what is its role's to
//! check (the host key; the client's key and name), then forwards every
//! channel event to a [`SessionEvents`], with one body per event for both
//! roles (the `forward_channel_events` macro).

use std::sync::{Arc, Mutex};

use russh::keys::ssh_key;
use russh::server::{Auth, Msg as ServerMsg, Session as ServerSession};
use russh::{Channel, ChannelId, client, server};

use super::channel::{IncomingOpen, OpenReply, WriteHalf};
use super::config::{KEY_ALGORITHMS, describe};
use super::events::SessionEvents;
use super::keys::PublicKey;
use super::trust::{HostKeyError, KnownHosts};

/// Tells the events that the session ended when russh drops the handler,
/// which it does exactly when the session task finishes.
struct EndSignal<E: SessionEvents>(Arc<E>);

impl<E: SessionEvents> Drop for EndSignal<E> {
    fn drop(&mut self) {
        self.0.on_ended();
    }
}

/// The open as the handler saw it, either role.
fn incoming(
    write: WriteHalf,
    host_to_connect: &str,
    port_to_connect: u32,
    originator_address: &str,
    originator_port: u32,
    reply: OpenReply,
) -> IncomingOpen {
    IncomingOpen {
        write,
        service: host_to_connect.to_owned(),
        originator: originator_address.to_owned(),
        port_to_connect,
        originator_port,
        reply,
    }
}

/// The channel events both roles forward alike; `$session` is the role's
/// session type.
macro_rules! forward_channel_events {
    ($session:ty) => {
        async fn channel_open_confirmation(
            &mut self,
            id: ChannelId,
            _max_packet_size: u32,
            _window_size: u32,
            _session: &mut $session,
        ) -> Result<(), Self::Error> {
            E::on_confirm(&self.events, id.number());
            Ok(())
        }

        async fn data(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            _session: &mut $session,
        ) -> Result<(), Self::Error> {
            self.events.on_data(channel.number(), data);
            Ok(())
        }

        async fn extended_data(
            &mut self,
            channel: ChannelId,
            code: u32,
            data: &[u8],
            _session: &mut $session,
        ) -> Result<(), Self::Error> {
            self.events.on_ext(channel.number(), code, data);
            Ok(())
        }

        async fn channel_eof(
            &mut self,
            channel: ChannelId,
            _session: &mut $session,
        ) -> Result<(), Self::Error> {
            self.events.on_eof(channel.number());
            Ok(())
        }

        async fn channel_close(
            &mut self,
            channel: ChannelId,
            _session: &mut $session,
        ) -> Result<(), Self::Error> {
            self.events.on_close(channel.number());
            Ok(())
        }
    };
}

pub(crate) struct ClientHandler<E: SessionEvents> {
    events: Arc<E>,
    known_hosts: Arc<KnownHosts>,
    host_name: String,
    pub(crate) verdict: Arc<Mutex<Option<HostKeyError>>>,
    _end: EndSignal<E>,
}

impl<E: SessionEvents> ClientHandler<E> {
    pub(crate) fn new(events: Arc<E>, known_hosts: Arc<KnownHosts>, host_name: String) -> Self {
        Self {
            _end: EndSignal(events.clone()),
            events,
            known_hosts,
            host_name,
            verdict: Arc::new(Mutex::new(None)),
        }
    }
}

impl<E: SessionEvents> client::Handler for ClientHandler<E> {
    type Error = russh::Error;

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(host = %self.host_name, kex = ?names.kex, "keys exchanged");
        Ok(())
    }

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
                self.events.on_host_key(key.fingerprint());
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
        let open = incoming(
            WriteHalf::from_client(channel),
            host_to_connect,
            port_to_connect,
            originator_address,
            originator_port,
            OpenReply::Client(reply),
        );
        E::on_open(&self.events, open).await;
        Ok(())
    }

    forward_channel_events!(client::Session);

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let why = match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the remote disconnected ({})", info.message)
            }
            client::DisconnectReason::Error(e) => describe(&e),
        };
        self.events.on_disconnect(why);
        Ok(())
    }
}

/// Whether user authentication may use this signature algorithm (not
/// `ssh-rsa`, whose signatures use SHA-1).
fn strong(algorithm: &ssh_key::Algorithm) -> bool {
    KEY_ALGORITHMS.contains(algorithm)
}

pub(crate) struct ServerHandler<E: SessionEvents> {
    events: Arc<E>,
    _end: EndSignal<E>,
}

impl<E: SessionEvents> ServerHandler<E> {
    pub(crate) fn new(events: Arc<E>) -> Self {
        Self {
            _end: EndSignal(events.clone()),
            events,
        }
    }

    fn trusted(&self, key: &ssh_key::PublicKey) -> bool {
        self.events.authorizes(&PublicKey(key.clone()))
    }

    fn refused(&self, user: &str, key: &ssh_key::PublicKey, why: &str) {
        let fp = PublicKey(key.clone()).fingerprint();
        self.events.on_key_refused(user, &fp, why);
    }

    /// Whether the key may connect under the peer name `user` (names bound
    /// to keys in the authorized keys).
    fn may_use(&self, user: &str, key: &ssh_key::PublicKey) -> bool {
        let fp = PublicKey(key.clone()).fingerprint();
        match self.events.check_name(&fp, user) {
            Ok(()) => true,
            Err(e) => {
                self.events
                    .on_key_refused(user, &fp, &format!("a name it may not use: {e}"));
                false
            }
        }
    }
}

impl<E: SessionEvents> server::Handler for ServerHandler<E> {
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
            self.refused(user, offer.public_key, "a weak signature algorithm");
            return Ok(Auth::reject());
        }
        if !self.trusted(offer.public_key) {
            self.refused(
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
            self.refused(user, key.public_key, "a weak signature algorithm");
            return Ok(Auth::reject());
        }
        if !self.trusted(key.public_key) {
            self.refused(user, key.public_key, "not in the authorized keys");
            return Ok(Auth::reject());
        }
        if !self.may_use(user, key.public_key) {
            return Ok(Auth::reject());
        }
        self.events
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
        let open = incoming(
            WriteHalf::from_server(channel),
            host_to_connect,
            port_to_connect,
            originator_address,
            originator_port,
            OpenReply::Server(reply),
        );
        E::on_open(&self.events, open).await;
        Ok(())
    }

    forward_channel_events!(ServerSession);
}
