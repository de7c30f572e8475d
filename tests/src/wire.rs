//! A scripted wire-level peer for conformance tests (in the manner of h2's
//! mock peers): raw SSH with russh, in either role, where the test writes
//! the exchange record by record and expects each event the Duplex peer
//! sends, with a timeout.
//!
//! - [`WireConn::dial`] dials a Duplex listener as a raw SSH client;
//!   [`WireConn::hello`] says hello with a raw header string.
//! - [`WireListener::bind`] listens for a Duplex dialler as a raw SSH
//!   server; [`WireListener::accept`] gives the connection, and
//!   [`WireConn::answer_hello`] answers the dialler's `@hello`.
//! - On a connection: [`WireConn::open`] (raw `direct-tcpip` fields) and
//!   [`WireConn::expect_open`] (the remote's opens, to confirm or refuse).
//! - On a channel ([`WireChannel`]): `send_*` verbs (data, extended data,
//!   control records, SSH EOF, close) and `expect_*` verbs, each bounded by
//!   [`WAIT`] and failing the test with what arrived instead.
//!
//! Events leave the russh handler through one bounded mpsc (so their order
//! across channels is the order russh saw them) and are sorted into
//! per-channel queues as the test asks for them. `WINDOW` records are
//! counted ([`WireChannel::granted`]) and, unless a channel asks for them
//! ([`WireChannel::keep_windows`]), skipped by the `expect_*` verbs: the
//! Duplex side sends them whenever its application reads.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duplex::Identity;
use russh::{ChannelId, ChannelOpenFailure, client, server};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The extended-data type of control records.
pub const CONTROL: u32 = 0x6475_7801;
/// The extended-data type of error frames (SSH's stderr).
pub const STDERR: u32 = 1;
/// How long every `expect_*` waits before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound of the queue from the russh handler to the test (events of all
/// channels of one connection): a test that does not read its events
/// stops the session loop once this many are waiting.
const EVENT_QUEUE: usize = 4096;

// ---------------------------------------------------------------- records

/// A 4-byte big-endian length, then `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A control record as the harness decodes it (leniently: a body of the
/// wrong size gives [`Record::Other`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Record {
    /// 1: window, the acceptor's channel number.
    Accept { window: u32, id: u32 },
    /// 2: increment.
    Window(u32),
    /// 3: reason.
    Reject(String),
    /// 4: header block.
    Hello(String),
    /// 5: header block.
    Trailers(String),
    /// 6: reason.
    ParentClosed(String),
    /// 7: empty body (protocol version 2).
    Eof,
    /// 8: reason (protocol version 2).
    ProtocolError(String),
    /// 9: reason (protocol version 3).
    Abort(String),
    /// Anything else: the type byte and the body, as they came.
    Other { ty: u8, body: Vec<u8> },
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Accept { window, id } => write!(f, "ACCEPT(window {window}, id {id})"),
            Record::Window(n) => write!(f, "WINDOW({n})"),
            Record::Reject(r) => write!(f, "REJECT({r:?})"),
            Record::Hello(h) => write!(f, "HELLO({h:?})"),
            Record::Trailers(h) => write!(f, "TRAILERS({h:?})"),
            Record::ParentClosed(r) => write!(f, "PARENT_CLOSED({r:?})"),
            Record::Eof => write!(f, "EOF record"),
            Record::ProtocolError(r) => write!(f, "PROTOCOL_ERROR({r:?})"),
            Record::Abort(r) => write!(f, "ABORT({r:?})"),
            Record::Other { ty, body } => write!(
                f,
                "record type {ty} with {} body bytes {:?}",
                body.len(),
                &body[..body.len().min(32)]
            ),
        }
    }
}

impl Record {
    /// The record's payload: type byte and body (not framed).
    pub fn payload(&self) -> Vec<u8> {
        let (ty, body): (u8, Vec<u8>) = match self {
            Record::Accept { window, id } => {
                let mut b = window.to_be_bytes().to_vec();
                b.extend_from_slice(&id.to_be_bytes());
                (1, b)
            }
            Record::Window(n) => (2, n.to_be_bytes().to_vec()),
            Record::Reject(r) => (3, r.as_bytes().to_vec()),
            Record::Hello(h) => (4, h.as_bytes().to_vec()),
            Record::Trailers(h) => (5, h.as_bytes().to_vec()),
            Record::ParentClosed(r) => (6, r.as_bytes().to_vec()),
            Record::Eof => (7, Vec::new()),
            Record::ProtocolError(r) => (8, r.as_bytes().to_vec()),
            Record::Abort(r) => (9, r.as_bytes().to_vec()),
            Record::Other { ty, body } => (*ty, body.clone()),
        };
        let mut p = vec![ty];
        p.extend_from_slice(&body);
        p
    }

    /// The record framed for the wire (length prefix included).
    pub fn encode(&self) -> Vec<u8> {
        frame(&self.payload())
    }

    /// Decodes one record payload.
    pub fn decode(payload: &[u8]) -> Record {
        let Some((&ty, body)) = payload.split_first() else {
            return Record::Other {
                ty: 0,
                body: Vec::new(),
            };
        };
        let text = || String::from_utf8(body.to_vec()).ok();
        let u32_at = |i: usize| {
            body.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let decoded = match ty {
            1 if body.len() == 8 => u32_at(0)
                .zip(u32_at(4))
                .map(|(window, id)| Record::Accept { window, id }),
            2 if body.len() == 4 => u32_at(0).map(Record::Window),
            3 => text().map(Record::Reject),
            4 => text().map(Record::Hello),
            5 => text().map(Record::Trailers),
            6 => text().map(Record::ParentClosed),
            7 if body.is_empty() => Some(Record::Eof),
            8 => text().map(Record::ProtocolError),
            9 => text().map(Record::Abort),
            _ => None,
        };
        decoded.unwrap_or_else(|| Record::Other {
            ty,
            body: body.to_vec(),
        })
    }
}

// ---------------------------------------------------------------- headers

/// Percent-encodes one key or value as PROTOCOL.md section 4 says.
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes a header block.
pub fn headers(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes a header block leniently (for checking what a peer sent).
pub fn parse_headers(block: &str) -> Vec<(String, String)> {
    if block.is_empty() {
        return Vec::new();
    }
    block
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (unpct(k), unpct(v)),
            None => (unpct(p), String::new()),
        })
        .collect()
}

/// The first value of `key` in an encoded block.
pub fn header(block: &str, key: &str) -> Option<String> {
    parse_headers(block)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// A russh private key for a Duplex identity (through a temporary file).
pub fn russh_key(id: &Identity) -> russh::keys::PrivateKey {
    let dir = crate::TempDir::new("wirekey");
    let path = dir.0.join("k");
    id.save(&path).unwrap();
    russh::keys::load_secret_key(&path, None).unwrap()
}

// ---------------------------------------------------------------- events

/// What arrived on a channel, as the script sees it.
#[derive(Clone, PartialEq, Eq)]
pub enum Ev {
    /// Channel data.
    Data(Vec<u8>),
    /// Extended data of a type other than [`CONTROL`].
    Ext(u32, Vec<u8>),
    /// One complete control record.
    Record(Record),
    /// `SSH_MSG_CHANNEL_EOF`.
    Eof,
    /// `SSH_MSG_CHANNEL_CLOSE`.
    Close,
    /// The connection ended.
    Gone(String),
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |b: &[u8]| {
            let s = String::from_utf8_lossy(&b[..b.len().min(48)]).into_owned();
            format!("{} bytes {s:?}", b.len())
        };
        match self {
            Ev::Data(d) => write!(f, "data: {}", show(d)),
            Ev::Ext(t, d) => write!(f, "extended data type {t}: {}", show(d)),
            Ev::Record(r) => write!(f, "{r:?}"),
            Ev::Eof => write!(f, "SSH EOF"),
            Ev::Close => write!(f, "SSH close"),
            Ev::Gone(why) => write!(f, "the connection ended ({why})"),
        }
    }
}

/// An open refused at the SSH level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The reason code (1 administratively prohibited, 4 resource
    /// shortage, ...).
    pub code: u32,
    /// The description, when russh passes it on (its client does, through
    /// `Handler::channel_open_failure`; its server drops it).
    pub description: Option<String>,
}

enum RawEv {
    Data(Vec<u8>),
    Ext(u32, Vec<u8>),
    Eof,
    Close,
}

enum Raw {
    Chan(u32, RawEv),
    Incoming(Box<Incoming>),
    OpenFailure(u32, String),
    Auth(String),
    Gone(String),
}

#[derive(Default)]
struct Queues {
    chans: HashMap<u32, VecDeque<RawEv>>,
    incoming: VecDeque<Box<Incoming>>,
    failures: VecDeque<(u32, String)>,
    users: Vec<String>,
    gone: Option<String>,
}

struct Shared {
    rx: tokio::sync::Mutex<mpsc::Receiver<Raw>>,
    q: Mutex<Queues>,
}

impl Shared {
    fn new(rx: mpsc::Receiver<Raw>) -> Arc<Shared> {
        Arc::new(Shared {
            rx: tokio::sync::Mutex::new(rx),
            q: Mutex::new(Queues::default()),
        })
    }

    /// Waits until `take` finds something in the queues, sorting events
    /// into them meanwhile; `None` at the deadline.
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut take: impl FnMut(&mut Queues) -> Option<T>,
    ) -> Option<T> {
        loop {
            if let Some(x) = take(&mut self.q.lock().unwrap()) {
                return Some(x);
            }
            let mut rx = tokio::time::timeout_at(deadline, self.rx.lock())
                .await
                .ok()?;
            if let Some(x) = take(&mut self.q.lock().unwrap()) {
                return Some(x);
            }
            if self.q.lock().unwrap().gone.is_some() {
                // Nothing more will come; let `take` see the end.
                drop(rx);
                return take(&mut self.q.lock().unwrap());
            }
            let raw = tokio::time::timeout_at(deadline, rx.recv()).await.ok()?;
            let mut q = self.q.lock().unwrap();
            match raw {
                Some(Raw::Chan(id, ev)) => q.chans.entry(id).or_default().push_back(ev),
                Some(Raw::Incoming(inc)) => q.incoming.push_back(inc),
                Some(Raw::OpenFailure(code, d)) => q.failures.push_back((code, d)),
                Some(Raw::Auth(user)) => q.users.push(user),
                Some(Raw::Gone(why)) => {
                    q.gone.get_or_insert(why);
                }
                None => {
                    q.gone.get_or_insert_with(|| "session ended".into());
                }
            }
        }
    }
}

// ---------------------------------------------------------------- handlers

/// The russh client handler of a harness dialler.
pub struct DialHandler {
    tx: mpsc::Sender<Raw>,
}

impl client::Handler for DialHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let _ = self
            .tx
            .send(Raw::Chan(channel.number(), RawEv::Data(data.to_vec())))
            .await;
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        ext: u32,
        data: &[u8],
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let ev = RawEv::Ext(ext, data.to_vec());
        let _ = self.tx.send(Raw::Chan(channel.number(), ev)).await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let _ = self.tx.send(Raw::Chan(channel.number(), RawEv::Eof)).await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let _ = self
            .tx
            .send(Raw::Chan(channel.number(), RawEv::Close))
            .await;
        Ok(())
    }

    async fn channel_open_failure(
        &mut self,
        _: ChannelId,
        reason: ChannelOpenFailure,
        description: &str,
        _: &str,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let _ = self
            .tx
            .send(Raw::OpenFailure(reason.code(), description.to_owned()))
            .await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let id = channel.id().number();
        let (read, write) = channel.split();
        drop(read); // events come through the handler
        let inc = Incoming {
            host: host.to_owned(),
            port,
            originator: originator.to_owned(),
            originator_port,
            id,
            writer: Writer::C(write),
            reply: Reply::C(reply),
            shared: None,
        };
        let _ = self.tx.send(Raw::Incoming(Box::new(inc))).await;
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let _ = self.tx.send(Raw::Gone(format!("{reason:?}"))).await;
        Ok(())
    }
}

/// The russh server handler of a harness listener: accepts any
/// `publickey` authentication.
pub struct ListenHandler {
    tx: mpsc::Sender<Raw>,
}

impl server::Handler for ListenHandler {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        _: server::VerifiedPublicKey<'_>,
    ) -> Result<server::Auth, Self::Error> {
        let _ = self.tx.send(Raw::Auth(user.to_owned())).await;
        Ok(server::Auth::Accept)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let _ = self
            .tx
            .send(Raw::Chan(channel.number(), RawEv::Data(data.to_vec())))
            .await;
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        ext: u32,
        data: &[u8],
        _: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let ev = RawEv::Ext(ext, data.to_vec());
        let _ = self.tx.send(Raw::Chan(channel.number(), ev)).await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let _ = self.tx.send(Raw::Chan(channel.number(), RawEv::Eof)).await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let _ = self
            .tx
            .send(Raw::Chan(channel.number(), RawEv::Close))
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: russh::Channel<server::Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let id = channel.id().number();
        let (read, write) = channel.split();
        drop(read);
        let inc = Incoming {
            host: host.to_owned(),
            port,
            originator: originator.to_owned(),
            originator_port,
            id,
            writer: Writer::S(write),
            reply: Reply::S(reply),
            shared: None,
        };
        let _ = self.tx.send(Raw::Incoming(Box::new(inc))).await;
        Ok(())
    }
}

// ---------------------------------------------------------------- writers

enum Writer {
    C(russh::ChannelWriteHalf<client::Msg>),
    S(russh::ChannelWriteHalf<server::Msg>),
}

macro_rules! on_writer {
    ($w:expr, $x:ident => $e:expr) => {
        match $w {
            Writer::C($x) => $e,
            Writer::S($x) => $e,
        }
    };
}

enum Reply {
    C(client::ChannelOpenHandle),
    S(server::ChannelOpenHandle),
}

enum Side {
    Client(tokio::sync::Mutex<client::Handle<DialHandler>>),
    Server(server::Handle),
}

// ---------------------------------------------------------------- connection

/// One SSH connection driven by a script.
pub struct WireConn {
    side: Side,
    shared: Arc<Shared>,
    /// Serialises our opens, so an open failure's description is matched
    /// to its open.
    opening: tokio::sync::Mutex<()>,
}

/// The listener's answer to a harness hello.
#[derive(Debug, Clone)]
pub struct HelloAnswer {
    /// The `HELLO` record's header block, encoded.
    pub block: String,
    /// The same, decoded.
    pub headers: Vec<(String, String)>,
}

impl HelloAnswer {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn port_of(ep: &duplex::Endpoint) -> u16 {
    crate::port(ep)
}

impl WireConn {
    /// Connects to a Duplex listener (SSH handshake only, no
    /// authentication yet).
    pub async fn connect(ep: &duplex::Endpoint) -> WireConn {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let h = tokio::time::timeout(
            WAIT,
            client::connect(
                Arc::new(client::Config::default()),
                ("127.0.0.1", port_of(ep)),
                DialHandler { tx },
            ),
        )
        .await
        .expect("timed out connecting")
        .expect("SSH connect failed");
        WireConn {
            side: Side::Client(tokio::sync::Mutex::new(h)),
            shared: Shared::new(rx),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// Authenticates with `publickey`: true when accepted.
    pub async fn auth(&self, user: &str, key: &Identity) -> bool {
        let Side::Client(h) = &self.side else {
            panic!("only a dialler authenticates")
        };
        let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(russh_key(key)), None);
        let mut h = h.lock().await;
        tokio::time::timeout(WAIT, h.authenticate_publickey(user, key))
            .await
            .expect("timed out authenticating")
            .map(|r| r.success())
            .unwrap_or(false)
    }

    /// Tries the `password` method: true when accepted.
    pub async fn auth_password(&self, user: &str, password: &str) -> bool {
        let Side::Client(h) = &self.side else {
            panic!("only a dialler authenticates")
        };
        let mut h = h.lock().await;
        tokio::time::timeout(WAIT, h.authenticate_password(user, password))
            .await
            .expect("timed out authenticating")
            .map(|r| r.success())
            .unwrap_or(false)
    }

    /// Tries the `none` method: true when accepted.
    pub async fn auth_none(&self, user: &str) -> bool {
        let Side::Client(h) = &self.side else {
            panic!("only a dialler authenticates")
        };
        let mut h = h.lock().await;
        tokio::time::timeout(WAIT, h.authenticate_none(user))
            .await
            .expect("timed out authenticating")
            .map(|r| r.success())
            .unwrap_or(false)
    }

    /// Connects and authenticates as `user` with `key`, failing the test
    /// otherwise.
    pub async fn dial(ep: &duplex::Endpoint, user: &str, key: &Identity) -> WireConn {
        let c = WireConn::connect(ep).await;
        assert!(
            c.auth(user, key).await,
            "authentication as {user:?} refused"
        );
        c
    }

    /// [`dial`](Self::dial), then a hello `name=USER&version=1&max-version=2`:
    /// a protocol-version-2 Duplex connection.
    pub async fn dial_v2(ep: &duplex::Endpoint, user: &str, key: &Identity) -> WireConn {
        let c = WireConn::dial(ep, user, key).await;
        let a = c
            .hello(&format!("name={}&version=1&max-version=2", pct(user)))
            .await
            .expect("hello refused");
        assert_eq!(a.get("version"), Some("2"), "{a:?}");
        c
    }

    /// [`dial`](Self::dial), then a hello `name=USER&version=1&max-version=3`:
    /// a protocol-version-3 Duplex connection.
    pub async fn dial_v3(ep: &duplex::Endpoint, user: &str, key: &Identity) -> WireConn {
        let c = WireConn::dial(ep, user, key).await;
        let a = c
            .hello(&format!("name={}&version=1&max-version=3", pct(user)))
            .await
            .expect("hello refused");
        assert_eq!(a.get("version"), Some("3"), "{a:?}");
        c
    }

    /// [`dial`](Self::dial), then a hello `name=USER&version=1`: a
    /// version-1 connection.
    pub async fn dial_v1(ep: &duplex::Endpoint, user: &str, key: &Identity) -> WireConn {
        let c = WireConn::dial(ep, user, key).await;
        let a = c
            .hello(&format!("name={}&version=1", pct(user)))
            .await
            .expect("hello refused");
        assert_eq!(a.get("version"), Some("1"), "{a:?}");
        c
    }

    /// Opens `@hello` with `block` as the originator string and reads the
    /// answer: the `HELLO` record, then SSH EOF and close (anything else
    /// fails the test).
    pub async fn hello(&self, block: &str) -> Result<HelloAnswer, Refused> {
        let mut ch = self.open("@hello", 1, block, 0).await?;
        ch.keep_windows(true);
        let block = ch.expect_hello().await;
        ch.expect_eof().await;
        ch.expect_only_close().await;
        Ok(HelloAnswer {
            headers: parse_headers(&block),
            block,
        })
    }

    /// Opens a `direct-tcpip` channel with these raw fields; returns it
    /// once confirmed, or the SSH-level refusal.
    pub async fn open(
        &self,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
    ) -> Result<WireChannel, Refused> {
        let _serial = self.opening.lock().await;
        let r = match &self.side {
            Side::Client(h) => {
                let h = h.lock().await;
                let r = tokio::time::timeout(
                    WAIT,
                    h.channel_open_direct_tcpip(host, port, originator, originator_port),
                )
                .await
                .expect("timed out waiting for the open's answer");
                r.map(|c| {
                    let id = c.id().number();
                    (id, Writer::C(c.split().1))
                })
            }
            Side::Server(h) => {
                let r = tokio::time::timeout(
                    WAIT,
                    h.channel_open_direct_tcpip(host, port, originator, originator_port),
                )
                .await
                .expect("timed out waiting for the open's answer");
                r.map(|c| {
                    let id = c.id().number();
                    (id, Writer::S(c.split().1))
                })
            }
        };
        match r {
            Ok((id, writer)) => Ok(WireChannel::new(id, writer, self.shared.clone())),
            Err(russh::Error::ChannelOpenFailure(f)) => {
                let description = match self.side {
                    Side::Client(_) => {
                        let deadline = Instant::now() + WAIT;
                        let (code, d) = self
                            .shared
                            .wait_for(deadline, |q| q.failures.pop_front())
                            .await
                            .expect("no open failure reported to the handler");
                        assert_eq!(code, f.code());
                        Some(d)
                    }
                    Side::Server(_) => None,
                };
                Err(Refused {
                    code: f.code(),
                    description,
                })
            }
            Err(e) => panic!("open of {host:?} failed: {e:?}"),
        }
    }

    /// A top-level open: `port to connect` 1, `originator port` 0.
    pub async fn open_top(&self, service: &str, originator: &str) -> Result<WireChannel, Refused> {
        self.open(service, 1, originator, 0).await
    }

    /// A top-level open with a `@window` pair, expecting the confirmation
    /// and then `ACCEPT`: returns the channel and the ACCEPT's window and
    /// channel number.
    pub async fn open_accepted(
        &self,
        service: &str,
        window: u32,
        block: &str,
    ) -> (WireChannel, u32, u32) {
        let originator = if block.is_empty() {
            format!("%40window={window}")
        } else {
            format!("%40window={window}&{block}")
        };
        let mut ch = self
            .open_top(service, &originator)
            .await
            .unwrap_or_else(|r| panic!("open of {service:?} refused: {r:?}"));
        let (w, id) = ch.expect_accept().await;
        (ch, w, id)
    }

    /// The next channel the remote opens (failing after [`WAIT`]).
    pub async fn expect_open(&self) -> Incoming {
        let deadline = Instant::now() + WAIT;
        let got = self
            .shared
            .wait_for(deadline, |q| {
                if let Some(i) = q.incoming.pop_front() {
                    Some(Ok(i))
                } else {
                    q.gone.clone().map(Err)
                }
            })
            .await;
        match got {
            Some(Ok(mut inc)) => {
                inc.shared = Some(self.shared.clone());
                *inc
            }
            Some(Err(why)) => panic!("the connection ended ({why}) before an open"),
            None => panic!("no open from the remote within {WAIT:?}"),
        }
    }

    /// Fails if the remote opens a channel within `ms` milliseconds.
    pub async fn expect_no_open_within(&self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        if let Some(inc) = self
            .shared
            .wait_for(deadline, |q| q.incoming.pop_front())
            .await
        {
            panic!(
                "unexpected open from the remote: {:?} port {} originator {:?}/{}",
                inc.host, inc.port, inc.originator, inc.originator_port
            );
        }
    }

    /// Waits until the connection ends (failing after [`WAIT`]); returns
    /// the reason russh gave.
    pub async fn expect_disconnect(&self) -> String {
        let deadline = Instant::now() + WAIT;
        self.shared
            .wait_for(deadline, |q| q.gone.clone())
            .await
            .unwrap_or_else(|| panic!("the connection is still up after {WAIT:?}"))
    }

    /// The SSH user names the remote authenticated with (listener role).
    pub fn users(&self) -> Vec<String> {
        self.shared.q.lock().unwrap().users.clone()
    }

    /// Ends the connection.
    pub async fn disconnect(&self) {
        match &self.side {
            Side::Client(h) => {
                let _ = h
                    .lock()
                    .await
                    .disconnect(russh::Disconnect::ByApplication, "bye", "en")
                    .await;
            }
            Side::Server(h) => {
                let _ = h
                    .disconnect(russh::Disconnect::ByApplication, "bye".into(), "en".into())
                    .await;
            }
        }
    }

    /// Listener role: answers the dialler's `@hello` (which must be the
    /// next open) with a `HELLO` record holding `block`, then SSH EOF and
    /// close. Returns the dialler's hello (its originator string).
    pub async fn answer_hello(&self, block: &str) -> OpenInfo {
        let inc = self.expect_open().await;
        assert_eq!(inc.host, "@hello", "expected the hello, got {inc:?}");
        let info = inc.info();
        let ch = inc.confirm().await;
        ch.send_record(&Record::Hello(block.to_owned())).await;
        ch.send_eof().await;
        ch.send_close().await;
        info
    }
}

// ---------------------------------------------------------------- listener

/// A raw SSH server for a Duplex peer to dial.
pub struct WireListener {
    listener: tokio::net::TcpListener,
    config: Arc<server::Config>,
    /// `tcp://127.0.0.1:PORT`, for `Peer::connect`.
    pub endpoint: String,
}

impl WireListener {
    /// Listens on 127.0.0.1 with `host` as the SSH host key.
    pub async fn bind(host: &Identity) -> WireListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        let config = server::Config {
            keys: vec![russh_key(host)],
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            ..Default::default()
        };
        WireListener {
            listener,
            config: Arc::new(config),
            endpoint,
        }
    }

    /// The next connection, once its dialler authenticated.
    pub async fn accept(&self) -> WireConn {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("no connection within the wait")
            .unwrap();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let watch = tx.clone();
        let session = server::run_stream(self.config.clone(), stream, ListenHandler { tx })
            .await
            .expect("SSH server session failed to start");
        let handle = session.handle();
        tokio::spawn(async move {
            let r = session.await;
            let _ = watch.send(Raw::Gone(format!("session ended: {r:?}"))).await;
        });
        let conn = WireConn {
            side: Side::Server(handle),
            shared: Shared::new(rx),
            opening: tokio::sync::Mutex::new(()),
        };
        let deadline = Instant::now() + WAIT;
        conn.shared
            .wait_for(deadline, |q| {
                (!q.users.is_empty() || q.gone.is_some()).then_some(())
            })
            .await
            .expect("the dialler did not authenticate");
        conn
    }
}

// ---------------------------------------------------------------- incoming

/// The fields of an open, as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenInfo {
    /// `host to connect`: the service name.
    pub host: String,
    /// `port to connect`.
    pub port: u32,
    /// `originator IP address`.
    pub originator: String,
    /// `originator port`.
    pub originator_port: u32,
    /// The receiver's (our) number for the channel.
    pub id: u32,
}

/// A channel the remote opened, waiting for the script's answer.
pub struct Incoming {
    /// `host to connect`: the service name.
    pub host: String,
    /// `port to connect`.
    pub port: u32,
    /// `originator IP address`: `@window` pair and header block.
    pub originator: String,
    /// `originator port`.
    pub originator_port: u32,
    /// Our number for the channel.
    pub id: u32,
    writer: Writer,
    reply: Reply,
    shared: Option<Arc<Shared>>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open of {:?}, port {}, originator {:?}, originator port {}",
            self.host, self.port, self.originator, self.originator_port
        )
    }
}

impl Incoming {
    /// The `@window` pair's value, when the originator string leads with
    /// one.
    pub fn window(&self) -> Option<u32> {
        let first = self.originator.split('&').next()?;
        first.strip_prefix("%40window=")?.parse().ok()
    }

    /// The header block after the `@window` pair.
    pub fn block(&self) -> &str {
        match self.originator.strip_prefix("%40window=") {
            Some(rest) => rest.split_once('&').map(|(_, b)| b).unwrap_or(""),
            None => &self.originator,
        }
    }

    /// The open's fields, detached from the reply.
    pub fn info(&self) -> OpenInfo {
        OpenInfo {
            host: self.host.clone(),
            port: self.port,
            originator: self.originator.clone(),
            originator_port: self.originator_port,
            id: self.id,
        }
    }

    /// Confirms the open at the SSH level.
    pub async fn confirm(self) -> WireChannel {
        match self.reply {
            Reply::C(r) => r.accept().await,
            Reply::S(r) => r.accept().await,
        }
        WireChannel::new(
            self.id,
            self.writer,
            self.shared.expect("not from expect_open"),
        )
    }

    /// Confirms, then answers `ACCEPT` with `window` and our channel number.
    pub async fn accept(self, window: u32) -> WireChannel {
        let ch = self.confirm().await;
        ch.send_accept(window).await;
        ch
    }

    /// Refuses the open at the SSH level.
    pub async fn refuse(self, code: u32, description: &str) {
        let f = match code {
            1 => ChannelOpenFailure::AdministrativelyProhibited,
            2 => ChannelOpenFailure::ConnectFailed,
            3 => ChannelOpenFailure::UnknownChannelType,
            4 => ChannelOpenFailure::ResourceShortage,
            code => ChannelOpenFailure::Other {
                code,
                reason: description.to_owned(),
            },
        };
        let f = if description.is_empty() {
            f
        } else {
            ChannelOpenFailure::Other {
                code: f.code(),
                reason: description.to_owned(),
            }
        };
        match self.reply {
            Reply::C(r) => r.reject(f).await,
            Reply::S(r) => r.reject(f).await,
        }
    }
}

// ---------------------------------------------------------------- channel

/// Everything that came on a channel until its close ([`WireChannel::read_to_end`]).
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    /// The channel data, concatenated.
    pub data: Vec<u8>,
    /// Extended data of type 1 (error frames), concatenated.
    pub stderr: Vec<u8>,
    /// Every control record, `WINDOW` included, in order.
    pub records: Vec<Record>,
    /// Every event in order, data and records included.
    pub events: Vec<Ev>,
    /// An SSH EOF came.
    pub ssh_eof: bool,
    /// The channel was closed (rather than the connection ending).
    pub closed: bool,
}

impl Transcript {
    /// The records other than `WINDOW`.
    pub fn records_but_windows(&self) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| !matches!(r, Record::Window(_)))
            .cloned()
            .collect()
    }

    /// The error frames in `stderr`.
    pub fn error_frames(&self) -> Vec<Vec<u8>> {
        split_frames(&self.stderr)
    }

    /// The message frames in `data`.
    pub fn data_frames(&self) -> Vec<Vec<u8>> {
        split_frames(&self.data)
    }
}

/// Splits complete frames off `buf` (a trailing partial frame is left out).
pub fn split_frames(mut buf: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + n {
            break;
        }
        out.push(buf[4..4 + n].to_vec());
        buf = &buf[4 + n..];
    }
    out
}

/// One channel of a [`WireConn`], scripted by the test.
pub struct WireChannel {
    /// Our SSH channel number for it.
    pub id: u32,
    writer: Writer,
    shared: Arc<Shared>,
    ready: VecDeque<Ev>,
    control: Vec<u8>,
    stderr: Vec<u8>,
    granted: u64,
    keep_windows: bool,
}

impl fmt::Debug for WireChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireChannel({})", self.id)
    }
}

impl WireChannel {
    fn new(id: u32, writer: Writer, shared: Arc<Shared>) -> WireChannel {
        WireChannel {
            id,
            writer,
            shared,
            ready: VecDeque::new(),
            control: Vec::new(),
            stderr: Vec::new(),
            granted: 0,
            keep_windows: false,
        }
    }

    /// Whether `expect_*` verbs see `WINDOW` records (default: they skip
    /// them, counting them in [`granted`](Self::granted)).
    pub fn keep_windows(&mut self, keep: bool) {
        self.keep_windows = keep;
    }

    /// The sum of the `WINDOW` increments received so far.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Takes one event from the connection's queues into `ready`; false at
    /// the deadline.
    async fn pull(&mut self, deadline: Instant) -> bool {
        let id = self.id;
        let raw = self
            .shared
            .wait_for(deadline, |q| {
                match q.chans.get_mut(&id).and_then(|c| c.pop_front()) {
                    Some(ev) => Some(Ok(ev)),
                    None => q.gone.clone().map(Err),
                }
            })
            .await;
        match raw {
            None => false,
            Some(Err(why)) => {
                self.ready.push_back(Ev::Gone(why));
                true
            }
            Some(Ok(RawEv::Data(d))) => {
                self.ready.push_back(Ev::Data(d));
                true
            }
            Some(Ok(RawEv::Ext(CONTROL, d))) => {
                self.control.extend_from_slice(&d);
                while let Some(len) = self.control.get(..4) {
                    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    if self.control.len() < 4 + n {
                        break;
                    }
                    let rec = Record::decode(&self.control[4..4 + n]);
                    self.control.drain(..4 + n);
                    if let Record::Window(n) = rec {
                        self.granted += u64::from(n);
                    }
                    self.ready.push_back(Ev::Record(rec));
                }
                true
            }
            Some(Ok(RawEv::Ext(t, d))) => {
                self.ready.push_back(Ev::Ext(t, d));
                true
            }
            Some(Ok(RawEv::Eof)) => {
                self.ready.push_back(Ev::Eof);
                true
            }
            Some(Ok(RawEv::Close)) => {
                self.ready.push_back(Ev::Close);
                true
            }
        }
    }

    /// The next event, `WINDOW` records included; `None` at the deadline.
    async fn next_raw_by(&mut self, deadline: Instant) -> Option<Ev> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if !self.pull(deadline).await {
                return None;
            }
        }
    }

    /// The next event, skipping `WINDOW` records unless kept.
    async fn next_by(&mut self, deadline: Instant) -> Option<Ev> {
        loop {
            let e = self.next_raw_by(deadline).await?;
            if !self.keep_windows && matches!(e, Ev::Record(Record::Window(_))) {
                continue;
            }
            return Some(e);
        }
    }

    /// The next event (skipping `WINDOW` records unless kept), failing the
    /// test after [`WAIT`].
    pub async fn next_event(&mut self) -> Ev {
        let deadline = Instant::now() + WAIT;
        match self.next_by(deadline).await {
            Some(e) => e,
            None => panic!("channel {}: no event within {WAIT:?}", self.id),
        }
    }

    /// The next event within `within`, or `None`.
    pub async fn try_next_event(&mut self, within: Duration) -> Option<Ev> {
        self.next_by(Instant::now() + within).await
    }

    /// Puts an event back in front (a script that looked ahead).
    pub fn unread(&mut self, ev: Ev) {
        self.ready.push_front(ev);
    }

    async fn expect_what(&mut self, what: &str) -> Ev {
        let deadline = Instant::now() + WAIT;
        match self.next_by(deadline).await {
            Some(e) => e,
            None => panic!(
                "channel {}: expected {what}, got nothing within {WAIT:?}",
                self.id
            ),
        }
    }

    /// Reads exactly `n` bytes of channel data (across messages); any other
    /// event first fails the test.
    pub async fn read_data(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(n.min(1 << 20));
        while got.len() < n {
            match self.expect_what("data").await {
                Ev::Data(d) => {
                    let want = n - got.len();
                    if d.len() > want {
                        got.extend_from_slice(&d[..want]);
                        self.ready.push_front(Ev::Data(d[want..].to_vec()));
                    } else {
                        got.extend_from_slice(&d);
                    }
                }
                other => panic!(
                    "channel {}: expected {} more data bytes (of {n}), got {other:?}",
                    self.id,
                    n - got.len()
                ),
            }
        }
        got
    }

    /// Expects exactly these data bytes next.
    pub async fn expect_data(&mut self, want: &[u8]) {
        let got = self.read_data(want.len()).await;
        assert!(
            got == want,
            "channel {}: data differs: got {:?}, want {:?}",
            self.id,
            String::from_utf8_lossy(&got[..got.len().min(64)]),
            String::from_utf8_lossy(&want[..want.len().min(64)])
        );
    }

    /// Expects one message frame on the data stream; returns its payload.
    pub async fn expect_data_frame(&mut self) -> Vec<u8> {
        let len = self.read_data(4).await;
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.read_data(n).await
    }

    /// Expects a control record next.
    pub async fn expect_record(&mut self) -> Record {
        match self.expect_what("a control record").await {
            Ev::Record(r) => r,
            other => panic!(
                "channel {}: expected a control record, got {other:?}",
                self.id
            ),
        }
    }

    /// Expects `ACCEPT`; returns its window and channel number.
    pub async fn expect_accept(&mut self) -> (u32, u32) {
        match self.expect_what("ACCEPT").await {
            Ev::Record(Record::Accept { window, id }) => (window, id),
            other => panic!("channel {}: expected ACCEPT, got {other:?}", self.id),
        }
    }

    /// Expects `REJECT`; returns its reason.
    pub async fn expect_reject(&mut self) -> String {
        match self.expect_what("REJECT").await {
            Ev::Record(Record::Reject(r)) => r,
            other => panic!("channel {}: expected REJECT, got {other:?}", self.id),
        }
    }

    /// Expects `HELLO`; returns its header block.
    pub async fn expect_hello(&mut self) -> String {
        match self.expect_what("HELLO").await {
            Ev::Record(Record::Hello(h)) => h,
            other => panic!("channel {}: expected HELLO, got {other:?}", self.id),
        }
    }

    /// Expects `TRAILERS`; returns its header block.
    pub async fn expect_trailers(&mut self) -> String {
        match self.expect_what("TRAILERS").await {
            Ev::Record(Record::Trailers(h)) => h,
            other => panic!("channel {}: expected TRAILERS, got {other:?}", self.id),
        }
    }

    /// Expects `PARENT_CLOSED`; returns its reason.
    pub async fn expect_parent_closed(&mut self) -> String {
        match self.expect_what("PARENT_CLOSED").await {
            Ev::Record(Record::ParentClosed(r)) => r,
            other => panic!("channel {}: expected PARENT_CLOSED, got {other:?}", self.id),
        }
    }

    /// Expects the `EOF` record (protocol version 2).
    pub async fn expect_eof_record(&mut self) {
        match self.expect_what("the EOF record").await {
            Ev::Record(Record::Eof) => {}
            other => panic!(
                "channel {}: expected the EOF record, got {other:?}",
                self.id
            ),
        }
    }

    /// Expects `PROTOCOL_ERROR` (protocol version 2); returns its reason.
    pub async fn expect_protocol_error(&mut self) -> String {
        match self.expect_what("PROTOCOL_ERROR").await {
            Ev::Record(Record::ProtocolError(r)) => r,
            other => panic!(
                "channel {}: expected PROTOCOL_ERROR, got {other:?}",
                self.id
            ),
        }
    }

    /// Expects a `WINDOW` record next (whatever `keep_windows` says);
    /// returns its increment.
    pub async fn expect_window(&mut self) -> u32 {
        let deadline = Instant::now() + WAIT;
        match self.next_raw_by(deadline).await {
            Some(Ev::Record(Record::Window(n))) => n,
            other => panic!("channel {}: expected WINDOW, got {other:?}", self.id),
        }
    }

    /// Reads events until the `WINDOW` increments received add up to at
    /// least `total`; other events are kept for later `expect_*` calls.
    pub async fn wait_granted(&mut self, total: u64) {
        let deadline = Instant::now() + WAIT;
        while self.granted < total {
            if !self.pull(deadline).await {
                panic!(
                    "channel {}: {} of {total} bytes of credit granted after {WAIT:?}",
                    self.id, self.granted
                );
            }
            if let Some(e @ (Ev::Close | Ev::Gone(_))) = self.ready.back() {
                panic!(
                    "channel {}: {e:?} with {} of {total} bytes of credit granted",
                    self.id, self.granted
                );
            }
        }
    }

    /// Expects extended data of type `code` next; returns it.
    pub async fn expect_ext(&mut self, code: u32) -> Vec<u8> {
        match self.expect_what("extended data").await {
            Ev::Ext(c, d) if c == code => d,
            other => panic!(
                "channel {}: expected extended data type {code}, got {other:?}",
                self.id
            ),
        }
    }

    /// Expects one error frame (extended type 1, across messages); returns
    /// its payload.
    pub async fn expect_error_frame(&mut self) -> Vec<u8> {
        loop {
            if self.stderr.len() >= 4 {
                let n = u32::from_be_bytes([
                    self.stderr[0],
                    self.stderr[1],
                    self.stderr[2],
                    self.stderr[3],
                ]) as usize;
                if self.stderr.len() >= 4 + n {
                    let f = self.stderr[4..4 + n].to_vec();
                    self.stderr.drain(..4 + n);
                    return f;
                }
            }
            let d = self.expect_ext(STDERR).await;
            self.stderr.extend_from_slice(&d);
        }
    }

    /// Expects SSH EOF next.
    pub async fn expect_eof(&mut self) {
        match self.expect_what("SSH EOF").await {
            Ev::Eof => {}
            other => panic!("channel {}: expected SSH EOF, got {other:?}", self.id),
        }
    }

    /// Expects the close next.
    pub async fn expect_close(&mut self) {
        match self.expect_what("the close").await {
            Ev::Close => {}
            other => panic!("channel {}: expected the close, got {other:?}", self.id),
        }
    }

    /// Expects the close, allowing one SSH EOF right before it; returns
    /// whether that EOF came.
    pub async fn expect_end(&mut self) -> bool {
        match self.expect_what("the close").await {
            Ev::Close => false,
            Ev::Eof => {
                self.expect_only_close().await;
                true
            }
            other => panic!(
                "channel {}: expected the close (or SSH EOF, then the close), got {other:?}",
                self.id
            ),
        }
    }

    /// Expects the end of a channel the remote finished normally: its
    /// `EOF` record (if any), then its SSH EOF (if any), then the close.
    pub async fn expect_finish(&mut self) {
        match self.expect_what("the close").await {
            Ev::Record(Record::Eof) => {
                self.expect_end().await;
            }
            Ev::Eof => self.expect_only_close().await,
            Ev::Close => {}
            other => panic!(
                "channel {}: expected the end (EOF record, SSH EOF, close), got {other:?}",
                self.id
            ),
        }
    }

    /// Expects the close as the very next event, `WINDOW` records counting
    /// as something else: after a version-2 SSH EOF nothing but the close
    /// may come.
    pub async fn expect_only_close(&mut self) {
        let deadline = Instant::now() + WAIT;
        match self.next_raw_by(deadline).await {
            Some(Ev::Close) => {}
            other => panic!(
                "channel {}: expected nothing but the close, got {other:?}",
                self.id
            ),
        }
    }

    /// Fails if any event (`WINDOW` records included) arrives within `ms`
    /// milliseconds. Only where no later event can prove the point.
    pub async fn expect_quiet(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        if let Some(e) = self.next_raw_by(deadline).await {
            panic!("channel {}: expected nothing, got {e:?}", self.id);
        }
    }

    /// Reads every event until the close (or the connection's end).
    pub async fn read_to_end(&mut self) -> Transcript {
        let deadline = Instant::now() + WAIT;
        let mut t = Transcript::default();
        loop {
            let Some(e) = self.next_raw_by(deadline).await else {
                panic!(
                    "channel {}: not closed within {WAIT:?}; so far {:?}",
                    self.id, t.events
                );
            };
            t.events.push(e.clone());
            match e {
                Ev::Data(d) => t.data.extend_from_slice(&d),
                Ev::Ext(STDERR, d) => t.stderr.extend_from_slice(&d),
                Ev::Ext(..) => {}
                Ev::Record(r) => t.records.push(r),
                Ev::Eof => t.ssh_eof = true,
                Ev::Close => {
                    t.closed = true;
                    return t;
                }
                Ev::Gone(_) => return t,
            }
        }
    }

    // ---- sending ----

    async fn sent(&self, what: &str, r: Result<(), russh::Error>) {
        if let Err(e) = r {
            panic!("channel {}: sending {what} failed: {e:?}", self.id);
        }
    }

    /// Sends channel data, returning russh's error (for floods that the
    /// remote may cut off).
    pub async fn try_send_data(&self, data: Vec<u8>) -> Result<(), russh::Error> {
        let data = bytes::Bytes::from(data);
        on_writer!(&self.writer, w => w.data_bytes(data).await)
    }

    /// Sends channel data.
    pub async fn send_data(&self, data: &[u8]) {
        let r = tokio::time::timeout(WAIT, self.try_send_data(data.to_vec()))
            .await
            .expect("timed out sending data");
        self.sent("data", r).await;
    }

    /// Sends extended data of type `code`.
    pub async fn send_ext(&self, code: u32, data: &[u8]) {
        let data = bytes::Bytes::from(data.to_vec());
        let r = tokio::time::timeout(WAIT, async {
            on_writer!(&self.writer, w => w.extended_data_bytes(code, data).await)
        })
        .await
        .expect("timed out sending extended data");
        self.sent("extended data", r).await;
    }

    /// Sends raw bytes on the control stream (any framing, or none).
    pub async fn send_control(&self, bytes: &[u8]) {
        self.send_ext(CONTROL, bytes).await;
    }

    /// Sends one control record.
    pub async fn send_record(&self, r: &Record) {
        self.send_control(&r.encode()).await;
    }

    /// Sends `ACCEPT` with `window` and our own channel number.
    pub async fn send_accept(&self, window: u32) {
        let id = self.id;
        self.send_record(&Record::Accept { window, id }).await;
    }

    /// Sends `WINDOW`.
    pub async fn send_window(&self, increment: u32) {
        self.send_record(&Record::Window(increment)).await;
    }

    /// Sends the `EOF` record (protocol version 2).
    pub async fn send_eof_record(&self) {
        self.send_record(&Record::Eof).await;
    }

    /// Sends one error frame on extended type 1.
    pub async fn send_error_frame(&self, payload: &[u8]) {
        self.send_ext(STDERR, &frame(payload)).await;
    }

    /// Sends one message frame on the data stream.
    pub async fn send_data_frame(&self, payload: &[u8]) {
        self.send_data(&frame(payload)).await;
    }

    /// Sends `SSH_MSG_CHANNEL_EOF`.
    pub async fn send_eof(&self) {
        let r = tokio::time::timeout(WAIT, async { on_writer!(&self.writer, w => w.eof().await) })
            .await
            .expect("timed out sending EOF");
        self.sent("EOF", r).await;
    }

    /// Sends `SSH_MSG_CHANNEL_CLOSE`. Nothing is reported on the channel
    /// afterwards, the remote's answering close included: russh forgets a
    /// channel once it sent its close.
    pub async fn send_close(&self) {
        let r = tokio::time::timeout(WAIT, async {
            on_writer!(&self.writer, w => w.close().await)
        })
        .await
        .expect("timed out sending the close");
        self.sent("the close", r).await;
    }
}
