//! Raw russh with Duplex's settings (russh's default window and packet
//! size, the same cipher order, TCP_NODELAY): the floor of our overhead.
//!
//! The server echoes data on session channels and swallows data on
//! direct-tcpip channels to `sink` (closing at EOF); everything happens in
//! its handler callbacks, the cheapest way russh offers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg};
use russh::server::{Auth, Msg as ServerMsg, Session};
use russh::{Channel, ChannelId, ChannelMsg, client, server};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{MSG_SIZE, Params, stats};

pub const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

fn preferred() -> russh::Preferred {
    russh::Preferred {
        cipher: Cow::Borrowed(CIPHERS),
        ..russh::Preferred::default()
    }
}

pub fn key() -> Result<PrivateKey> {
    Ok(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?)
}

enum Mode {
    Echo,
    Sink,
}

struct Handler {
    client_key: russh::keys::PublicKey,
    modes: HashMap<ChannelId, Mode>,
    /// Channels opened and connections authenticated, for the memory
    /// figures.
    opened: Arc<AtomicUsize>,
    authenticated: Arc<AtomicUsize>,
}

impl server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if key.public_key.key_data() == self.client_key.key_data() {
            self.authenticated.fetch_add(1, Ordering::Relaxed);
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if offer.public_key.key_data() == self.client_key.key_data() {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<ServerMsg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.modes.insert(channel.id(), Mode::Echo);
        self.opened.fetch_add(1, Ordering::Relaxed);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<ServerMsg>,
        _host: &str,
        _port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.modes.insert(channel.id(), Mode::Sink);
        reply.accept().await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Mode::Echo) = self.modes.get(&channel) {
            session.data(channel, Bytes::copy_from_slice(data))?;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.close(channel)?;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.modes.remove(&channel);
        Ok(())
    }
}

pub fn server_config(key: PrivateKey) -> Arc<server::Config> {
    Arc::new(server::Config {
        keys: vec![key],
        auth_rejection_time: std::time::Duration::from_millis(250),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        preferred: preferred(),
        ..server::Config::default()
    })
}

/// A listener serving the raw russh handler; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub opened: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    _task: crate::Owned,
}

pub async fn start(client_key: russh::keys::PublicKey) -> Result<Server> {
    let config = server_config(key()?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let opened = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (o, c) = (opened.clone(), connections.clone());
    let task = tokio::spawn(async move {
        let mut sessions = JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let handler = Handler {
                client_key: client_key.clone(),
                modes: HashMap::new(),
                opened: o.clone(),
                authenticated: c.clone(),
            };
            let config = config.clone();
            sessions.spawn(async move {
                if let Ok(session) = server::run_stream(config, s, handler).await {
                    let _ = session.await;
                }
            });
            while sessions.try_join_next().is_some() {}
        }
    });
    Ok(Server {
        addr,
        opened,
        connections,
        _task: crate::Owned(task),
    })
}

pub struct ClientHandler;

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        nodelay: true,
        preferred: preferred(),
        ..client::Config::default()
    })
}

pub type Handle = client::Handle<ClientHandler>;

/// TCP connect, key exchange and public-key authentication.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<client::Config>,
    key: &Arc<PrivateKey>,
) -> Result<Handle> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut h = client::connect_stream(config, s, ClientHandler).await?;
    let auth = h
        .authenticate_publickey("bench", PrivateKeyWithHashAlg::new(key.clone(), None))
        .await?;
    if !auth.success() {
        bail!("raw russh authentication failed");
    }
    Ok(h)
}

/// The client end of a raw russh connection.
pub struct Pair {
    pub server: Server,
    pub handle: Arc<Handle>,
    pub key: Arc<PrivateKey>,
    pub config: Arc<client::Config>,
}

pub async fn start_pair() -> Result<Pair> {
    let key = Arc::new(key()?);
    let server = start(key.public_key().clone()).await?;
    let config = client_config();
    let handle = Arc::new(connect(server.addr, config.clone(), &key).await?);
    Ok(Pair {
        server,
        handle,
        key,
        config,
    })
}

/// Waits for the server's close (after our EOF).
async fn await_close(ch: &mut Channel<client::Msg>) -> Result<()> {
    while let Some(msg) = ch.wait().await {
        if let ChannelMsg::Close = msg {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes of channel data.
async fn read_exact(ch: &mut Channel<client::Msg>, buf: &mut [u8]) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match ch.wait().await {
            Some(ChannelMsg::Data { data }) => {
                let n = data.len().min(buf.len() - got);
                buf[got..got + n].copy_from_slice(&data[..n]);
                got += n;
            }
            Some(_) => {}
            None => bail!("channel ended mid-echo"),
        }
    }
    Ok(())
}

pub async fn bulk(pair: &Pair, p: &Params, streams: usize) -> Result<f64> {
    let per = p.bulk_bytes / streams as u64;
    let mut chans = Vec::new();
    for _ in 0..streams {
        chans.push(
            pair.handle
                .channel_open_direct_tcpip("sink", 1, "bench", 0)
                .await?,
        );
    }
    let start = Instant::now();
    let mut set = JoinSet::new();
    for mut ch in chans {
        set.spawn(async move {
            for chunk in crate::writes(per) {
                ch.data(chunk).await?;
            }
            ch.eof().await?;
            await_close(&mut ch).await
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(stats::mib_per_sec(per * streams as u64, start.elapsed()))
}

pub async fn rtt(pair: &Pair, p: &Params) -> Result<(f64, f64)> {
    let mut ch = pair.handle.channel_open_session().await?;
    let msg = [7u8; MSG_SIZE];
    let mut back = [0u8; MSG_SIZE];
    let mut samples = Vec::with_capacity(p.round_trips);
    for i in 0..p.warmup + p.round_trips {
        let t = Instant::now();
        ch.data(&msg[..]).await?;
        read_exact(&mut ch, &mut back).await?;
        if i >= p.warmup {
            samples.push(t.elapsed());
        }
    }
    ch.close().await?;
    Ok(stats::p50_p99(samples))
}

/// Session channel open + one 64-byte echo + close.
pub async fn open_rate(pair: &Pair, opens: usize, tasks: usize) -> Result<f64> {
    let handle = pair.handle.clone();
    crate::spread(opens, tasks, move || {
        let handle = handle.clone();
        async move {
            let mut ch = handle.channel_open_session().await?;
            let msg = [7u8; MSG_SIZE];
            let mut back = [0u8; MSG_SIZE];
            ch.data(&msg[..]).await?;
            read_exact(&mut ch, &mut back).await?;
            ch.close().await?;
            Ok(())
        }
    })
    .await
}

pub async fn setup(pair: &Pair, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let h = connect(pair.server.addr, pair.config.clone(), &pair.key).await?;
        times.push(t.elapsed());
        h.disconnect(russh::Disconnect::ByApplication, "", "")
            .await
            .context("disconnect")?;
    }
    Ok(crate::tcp::median_ms(times))
}

/// Idle session channels for the memory figure.
pub async fn open_idle(handle: &Arc<Handle>, n: usize) -> Result<Vec<Channel<client::Msg>>> {
    let mut set = JoinSet::new();
    let per = n.div_ceil(16);
    for t in 0..16 {
        let h = handle.clone();
        let k = per.min(n.saturating_sub(t * per));
        set.spawn(async move {
            let mut v = Vec::with_capacity(k);
            for _ in 0..k {
                v.push(h.channel_open_session().await?);
            }
            anyhow::Ok(v)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r?.context("opening idle channels")?);
    }
    Ok(all)
}
