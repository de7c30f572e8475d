//! Tuning and limits. Every limit that guards against a remote peer has a
//! documented default and a reason; setters validate their input.

mod backoff;
mod error;

use std::time::Duration;

use crate::proto::Limits;
pub use backoff::Backoff;
pub use error::ConfigError;

/// How long a closing connection waits for its session to say goodbye,
/// and for queued data to reach it.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Configuration shared by every connection of a [`Peer`](crate::Peer).
///
/// Fields are private; use the setters, which validate. Defaults are chosen
/// for services on a LAN or loopback; every one is documented on its setter.
///
/// ```
/// use std::time::Duration;
/// let config = duplex::Config::default()
///     .channel_window(4 << 20).unwrap()
///     .open_timeout(Duration::from_secs(5));
/// assert_eq!(config.get_channel_window(), 4 << 20);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Config does nothing until given to a peer (PeerBuilder::config)"]
pub struct Config {
    pub(crate) limits: Limits,
    pub(crate) max_frame_len: usize,
    pub(crate) channel_window: u32,
    pub(crate) max_channel_window: u32,
    pub(crate) plain_channel_buffer: usize,
    pub(crate) max_channels_per_connection: usize,
    pub(crate) max_pending_channels: usize,
    pub(crate) max_nesting_depth: u32,
    pub(crate) accept_backlog: usize,
    pub(crate) open_timeout: Duration,
    pub(crate) accept_timeout: Duration,
    pub(crate) accept_channels: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_max: usize,
    pub(crate) max_send_buffer: usize,
    pub(crate) rekey_bytes: u64,
    pub(crate) rekey_interval: Duration,
    pub(crate) connect_backoff: Backoff,
    pub(crate) reconnect: bool,
    pub(crate) peer_wait_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_unauthenticated: usize,
    pub(crate) max_auth_attempts: usize,
    pub(crate) max_connection_buffer: u64,
    pub(crate) max_peer_buffer: u64,
    pub(crate) max_total_buffer: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_frame_len: 8 << 20,
            channel_window: 128 << 10,
            max_channel_window: 4 << 20,
            plain_channel_buffer: 1 << 20,
            max_channels_per_connection: 1024,
            max_pending_channels: 1024,
            max_nesting_depth: 8,
            accept_backlog: 1024,
            open_timeout: Duration::from_secs(30),
            accept_timeout: Duration::from_secs(10),
            accept_channels: true,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            max_send_buffer: 64 << 20,
            rekey_bytes: 1 << 30,
            rekey_interval: Duration::from_secs(3600),
            connect_backoff: Backoff::default(),
            reconnect: true,
            peer_wait_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_unauthenticated: 128,
            max_auth_attempts: 6,
            max_connection_buffer: 128 << 20,
            max_peer_buffer: 128 << 20,
            max_total_buffer: 512 << 20,
        }
    }
}

fn check(name: &'static str, ok: bool, why: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(name, why()))
    }
}

impl Config {
    /// Largest message frame (and error frame) accepted or sent, in bytes.
    /// Default 8 MiB.
    ///
    /// DOS mitigation: a frame's length prefix is checked against this
    /// before anything is allocated for it, so a peer cannot make us reserve
    /// what it claims. Must be between 1 and 1 GiB.
    pub fn max_frame_len(mut self, bytes: usize) -> Result<Self, ConfigError> {
        check("max_frame_len", (1..=1 << 30).contains(&bytes), || {
            format!("{bytes} is not between 1 and 1 GiB")
        })?;
        self.max_frame_len = bytes;
        Ok(self)
    }

    /// Per-channel initial receive window: how many bytes a remote Duplex
    /// peer may send on one channel before our application reads them.
    /// Default 128 KiB.
    ///
    /// This is the credit of Duplex's own flow control (see
    /// `docs/PROTOCOL.md`): the remote can never have more than the window
    /// in unread bytes buffered in our memory per channel, and a channel
    /// whose application does not read stops its sender without slowing any
    /// other channel. The window bounds throughput to one window per round
    /// trip of a grant, so it grows while the application keeps up, up to
    /// [`max_channel_window`](Self::max_channel_window) (4 MiB keeps one
    /// channel at the speed of the SSH connection on loopback; measured in
    /// `docs/BENCHMARKS.md`). The cost of a window: each channel reserves
    /// it from the buffer budgets ([`max_connection_buffer`](Self::max_connection_buffer),
    /// [`max_peer_buffer`](Self::max_peer_buffer) and
    /// [`max_total_buffer`](Self::max_total_buffer); 128 MiB holds 1024
    /// channels of 128 KiB, the defaults), and a channel whose application
    /// stops reading may hold that much memory. Must be between 32 KiB and
    /// 1 GiB.
    pub fn channel_window(mut self, bytes: u32) -> Result<Self, ConfigError> {
        check(
            "channel_window",
            (32 << 10..=1 << 30).contains(&bytes),
            || format!("{bytes} is not between 32 KiB and 1 GiB"),
        )?;
        self.channel_window = bytes;
        Ok(self)
    }

    /// How far a channel's receive window may grow while its application
    /// keeps up. Default 4 MiB.
    ///
    /// A channel starts with [`channel_window`](Self::channel_window). When
    /// its sender runs out of credit while the application has read nearly
    /// everything (the window, not the reader, is what limits the channel),
    /// the window doubles, up to this size, while the connection's
    /// reservations stay under half of
    /// [`max_connection_buffer`](Self::max_connection_buffer) (the other
    /// half is kept for channels yet to open). A channel whose application reads slowly
    /// keeps its window. Set it to `channel_window` (or less) for windows
    /// that never grow. Must be between 32 KiB and 1 GiB.
    ///
    /// ```
    /// use duplex::Config;
    /// let fixed = Config::default().max_channel_window(1 << 20).unwrap();
    /// assert_eq!(fixed.get_max_channel_window(), 1 << 20);
    /// ```
    pub fn max_channel_window(mut self, bytes: u32) -> Result<Self, ConfigError> {
        check(
            "max_channel_window",
            (32 << 10..=1 << 30).contains(&bytes),
            || format!("{bytes} is not between 32 KiB and 1 GiB"),
        )?;
        self.max_channel_window = bytes;
        Ok(self)
    }

    /// Buffered bytes per channel opened by a plain SSH client (one that does
    /// not speak Duplex's flow control, such as `ssh -W`). Default 1 MiB.
    ///
    /// This is the SSH window such a channel is offered, and what the
    /// application reads is granted back: a client that sends faster than
    /// the application reads is held back by its own channel (TCP-like),
    /// while the connection keeps reading for its other channels. Must be
    /// between 32 KiB and 1 GiB.
    pub fn plain_channel_buffer(mut self, bytes: usize) -> Result<Self, ConfigError> {
        check(
            "plain_channel_buffer",
            (32 << 10..=1 << 30).contains(&bytes),
            || format!("{bytes} is not between 32 KiB and 1 GiB"),
        )?;
        self.plain_channel_buffer = bytes;
        Ok(self)
    }

    /// Most header pairs accepted on a channel open. Default 64.
    ///
    /// DOS mitigation: bounds the work and memory one open can cost.
    pub fn max_header_count(mut self, count: usize) -> Result<Self, ConfigError> {
        check("max_header_count", (1..=4096).contains(&count), || {
            format!("{count} is not between 1 and 4096")
        })?;
        self.limits.max_header_count = count;
        Ok(self)
    }

    /// Most bytes of encoded headers accepted on a channel open. Default
    /// 16 KiB; at most 30 KiB, since the open must fit in one SSH packet.
    ///
    /// DOS mitigation: bounds the memory one open can cost.
    pub fn max_header_bytes(mut self, bytes: usize) -> Result<Self, ConfigError> {
        check("max_header_bytes", (64..=30 << 10).contains(&bytes), || {
            format!("{bytes} is not between 64 bytes and 30 KiB")
        })?;
        self.limits.max_header_bytes = bytes;
        Ok(self)
    }

    /// Most channels open at once on one connection, counting both
    /// directions and channels not yet accepted. Default 1024 (as many as
    /// the default [`max_connection_buffer`](Self::max_connection_buffer)
    /// holds at the default window).
    ///
    /// DOS mitigation: with [`channel_window`](Self::channel_window) this
    /// bounds the memory a connection can hold.
    pub fn max_channels_per_connection(mut self, count: usize) -> Result<Self, ConfigError> {
        check(
            "max_channels_per_connection",
            (1..=1 << 20).contains(&count),
            || format!("{count} is not between 1 and 1048576"),
        )?;
        self.max_channels_per_connection = count;
        Ok(self)
    }

    /// Most incoming channels of one connection waiting for the application
    /// to accept them. Default 1024, so that a burst as large as
    /// [`max_channels_per_connection`](Self::max_channels_per_connection)
    /// waits for the application instead of failing. Opens beyond it are
    /// refused at once, with a reason that names this limit.
    pub fn max_pending_channels(mut self, count: usize) -> Result<Self, ConfigError> {
        check(
            "max_pending_channels",
            (1..=1 << 16).contains(&count),
            || format!("{count} is not between 1 and 65536"),
        )?;
        self.max_pending_channels = count;
        Ok(self)
    }

    /// How deep channels may nest: a channel opened with
    /// [`Channel::open`](crate::Channel::open) inside a top-level channel
    /// is at depth 1, one inside that at depth 2, and so on. Default 8; 0
    /// turns nesting off: an application that never takes nested channels
    /// sets 0, so that a remote's nested open is rejected at once
    /// ("NAME takes no nested channels") rather than after
    /// [`accept_timeout`](Self::accept_timeout).
    ///
    /// Checked on both sides: opening deeper than our own limit fails with
    /// [`OpenError::DepthLimit`](crate::OpenError::DepthLimit) before
    /// anything is sent, and a remote opening deeper than our limit is
    /// rejected with a reason that says so. DOS mitigation: every level
    /// keeps its ancestors' state alive, and closing a parent walks its
    /// descendants.
    pub fn max_nesting_depth(mut self, depth: u32) -> Result<Self, ConfigError> {
        check("max_nesting_depth", depth <= 64, || {
            format!("{depth} is not between 0 and 64")
        })?;
        self.max_nesting_depth = depth;
        Ok(self)
    }

    /// Capacity of the peer-wide queue of incoming channels that
    /// [`Peer::accept`](crate::Peer::accept) reads. Default 1024. Opens
    /// arriving while it is full are refused at once, with a reason that
    /// names this limit.
    pub fn accept_backlog(mut self, count: usize) -> Result<Self, ConfigError> {
        check("accept_backlog", (1..=1 << 20).contains(&count), || {
            format!("{count} is not between 1 and 1048576")
        })?;
        self.accept_backlog = count;
        Ok(self)
    }

    /// Most connections one listener (one [`Peer::bind`](crate::Peer::bind)
    /// endpoint) holds at once, authenticated or not. Default 1024.
    ///
    /// DOS mitigation: each connection costs a task, buffers and a file
    /// descriptor. A connection beyond the limit is told so in a line of
    /// text before the SSH version exchange (which SSH clients show or
    /// log) and closed; the others are unaffected.
    pub fn max_connections(mut self, count: usize) -> Result<Self, ConfigError> {
        check("max_connections", (1..=1 << 20).contains(&count), || {
            format!("{count} is not between 1 and 1048576")
        })?;
        self.max_connections = count;
        Ok(self)
    }

    /// Most inbound connections still in their handshake (key exchange,
    /// authentication, hello) at once, over all listeners. Default 128.
    ///
    /// DOS mitigation: when a new connection arrives at the limit, the
    /// unfinished handshake that has read nothing for the longest is ended
    /// to make room (the oldest of those, on a tie), and its socket is
    /// released at once. Clients that never finish (half-open, silent,
    /// slow) cannot keep a real one out: a real handshake reads every few
    /// milliseconds, so a flood of stalled connections ends its own. Each
    /// handshake is also bounded by
    /// [`handshake_timeout`](Self::handshake_timeout).
    pub fn max_unauthenticated(mut self, count: usize) -> Result<Self, ConfigError> {
        check(
            "max_unauthenticated",
            (1..=1 << 16).contains(&count),
            || format!("{count} is not between 1 and 65536"),
        )?;
        self.max_unauthenticated = count;
        Ok(self)
    }

    /// Authentication attempts (keys offered) allowed per inbound
    /// connection before it is disconnected. Default 6, as OpenSSH's
    /// `MaxAuthTries`.
    ///
    /// DOS mitigation: bounds the signature checks one connection costs;
    /// every rejection also waits 250 ms.
    pub fn max_auth_attempts(mut self, count: usize) -> Result<Self, ConfigError> {
        check("max_auth_attempts", (1..=100).contains(&count), || {
            format!("{count} is not between 1 and 100")
        })?;
        self.max_auth_attempts = count;
        Ok(self)
    }

    /// Most bytes one connection may buffer for the channels it receives
    /// on, counted as each channel's full receive window
    /// ([`channel_window`](Self::channel_window), or
    /// [`plain_channel_buffer`](Self::plain_channel_buffer) for plain SSH
    /// clients, plus what a window grew by), reserved when the channel is
    /// opened and released when it ends. Default 128 MiB (1024 channels
    /// with the default window). At least 1 MiB.
    ///
    /// DOS mitigation: a peer that opens many channels and sends into each
    /// without reading cannot make us hold more than this for it. An open
    /// beyond it is refused (resource shortage), in either direction, with
    /// an error naming this limit. See also
    /// [`max_peer_buffer`](Self::max_peer_buffer) (one remote over all its
    /// connections) and [`max_total_buffer`](Self::max_total_buffer) (all
    /// remotes together).
    pub fn max_connection_buffer(mut self, bytes: u64) -> Result<Self, ConfigError> {
        check("max_connection_buffer", bytes >= 1 << 20, || {
            format!("{bytes} is less than 1 MiB")
        })?;
        self.max_connection_buffer = bytes;
        Ok(self)
    }

    /// Most bytes one remote peer (one key) may make us buffer over all its
    /// connections, counted as [`max_connection_buffer`](Self::max_connection_buffer)
    /// counts them. Default 128 MiB. At least 1 MiB.
    ///
    /// DOS mitigation: a trusted key that connects many times cannot
    /// multiply its share; other remotes keep theirs.
    pub fn max_peer_buffer(mut self, bytes: u64) -> Result<Self, ConfigError> {
        check("max_peer_buffer", bytes >= 1 << 20, || {
            format!("{bytes} is less than 1 MiB")
        })?;
        self.max_peer_buffer = bytes;
        Ok(self)
    }

    /// Most bytes all remotes together may make us buffer, counted as
    /// [`max_connection_buffer`](Self::max_connection_buffer) counts them.
    /// Default 512 MiB. At least 1 MiB.
    ///
    /// DOS mitigation: the most receive buffer this peer can be made to
    /// hold, whatever the number of connections and keys; with the
    /// defaults, four remotes at their [`max_peer_buffer`](Self::max_peer_buffer).
    pub fn max_total_buffer(mut self, bytes: u64) -> Result<Self, ConfigError> {
        check("max_total_buffer", bytes >= 1 << 20, || {
            format!("{bytes} is less than 1 MiB")
        })?;
        self.max_total_buffer = bytes;
        Ok(self)
    }

    /// How long an incoming channel (top-level or nested, from a Duplex
    /// peer or a plain SSH client) may wait for the application to accept
    /// or reject it. Default 10 s, well under the opener's
    /// [`open_timeout`](Self::open_timeout) (30 s by default), so the
    /// opener learns why rather than timing out.
    ///
    /// A channel still waiting then is rejected with a reason naming the
    /// service, this peer and this setting (a `REJECT` record, or for a
    /// plain SSH client an open failure), and leaves the accept queue
    /// unseen: [`Peer::accept`](crate::Peer::accept) and
    /// [`Children::accept`](crate::Children::accept) skip it. DOS
    /// mitigation: a pending channel holds one of the connection's
    /// [`max_pending_channels`](Self::max_pending_channels) slots and its
    /// receive window; nobody can hold them longer than this. Must be
    /// between 1 ms and 1 hour.
    pub fn accept_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        check(
            "accept_timeout",
            (Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&timeout),
            || format!("{timeout:?} is not between 1 ms and 1 hour"),
        )?;
        self.accept_timeout = timeout;
        Ok(self)
    }

    /// The configured [`accept_timeout`](Self::accept_timeout).
    pub fn get_accept_timeout(&self) -> Duration {
        self.accept_timeout
    }

    /// Whether this peer's application accepts top-level channels from
    /// its remotes (with [`Peer::accept`](crate::Peer::accept), or an RPC
    /// server). Default true.
    ///
    /// A peer that only opens channels (a command-line client, a caller
    /// that serves no callbacks) turns this off: every top-level channel a
    /// remote opens to it is then rejected at once with
    /// "NAME accepts no channels", instead of waiting out
    /// [`accept_timeout`](Self::accept_timeout). Nested channels are
    /// governed by [`max_nesting_depth`](Self::max_nesting_depth).
    pub fn accept_channels(mut self, on: bool) -> Self {
        self.accept_channels = on;
        self
    }

    /// How long [`Peer::open`](crate::Peer::open) waits for the remote
    /// application to accept or reject a channel. Default 30 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Time allowed for a new connection to finish key exchange,
    /// authentication and the Duplex hello, in either role. Default 10 s.
    ///
    /// DOS mitigation: a silent or slow client cannot hold a connection
    /// slot longer than this.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// SSH keepalive: after this long without hearing from the remote, send
    /// a keepalive request; after [`keepalive_max`](Self::keepalive_max)
    /// unanswered ones the connection is closed. Default 15 s; `None`
    /// disables keepalives (and then a dead peer is only noticed when a write
    /// fails).
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// Unanswered keepalives before the connection is declared dead.
    /// Default 3: a remote that went silent (network gone, process frozen)
    /// is detected within about `keepalive_interval × (keepalive_max + 1)`,
    /// 60 s by default. A healthy idle connection answers them and stays up
    /// indefinitely: there is no inactivity timeout.
    pub fn keepalive_max(mut self, count: usize) -> Self {
        self.keepalive_max = count.max(1);
        self
    }

    /// Most bytes a connection buffers for the network before its SSH
    /// session waits. Default 64 MiB; at least 1 MiB.
    ///
    /// Channels hand data to the session only while less than half of this
    /// is buffered, so the rest is always room for what the session must
    /// write to keep reading (window grants, control records): a connection
    /// busy in both directions never stalls, however much credit its
    /// channels were granted. Writes are buffered at all because two
    /// sessions writing at once must not wait on each other (see the
    /// `transport` module).
    pub fn max_send_buffer(mut self, bytes: usize) -> Result<Self, ConfigError> {
        check("max_send_buffer", bytes >= 1 << 20, || {
            format!("{bytes} is less than 1 MiB")
        })?;
        self.max_send_buffer = bytes;
        Ok(self)
    }

    /// When a connection re-exchanges its keys: after it has sent or
    /// received `bytes`, or after `interval`, whichever comes first.
    /// Default 1 GiB and 1 hour, RFC 4253's recommendation (section 9).
    ///
    /// Either side may start a re-exchange; channels keep their data and
    /// order through it, whatever is in flight. Lower limits bound how much
    /// traffic one set of keys protects, at the cost of a key exchange (a
    /// round trip and about a millisecond of CPU on each side) each time.
    /// `bytes` must be between 64 KiB and 1 GiB, `interval` at least 1 s.
    pub fn rekey_limit(mut self, bytes: u64, interval: Duration) -> Result<Self, ConfigError> {
        check("rekey_limit", (64 << 10..=1 << 30).contains(&bytes), || {
            format!("{bytes} bytes is not between 64 KiB and 1 GiB")
        })?;
        check("rekey_limit", interval >= Duration::from_secs(1), || {
            format!("an interval of {interval:?} is less than 1 s")
        })?;
        self.rekey_bytes = bytes;
        self.rekey_interval = interval;
        Ok(self)
    }

    /// How [`Peer::connect`](crate::Peer::connect) retries an endpoint it
    /// cannot reach (refused, unreachable, DNS failure, timeout, a
    /// handshake cut short), and how a lost connection is re-dialled. See
    /// [`Backoff`] for the defaults. Authentication failures, host key
    /// mismatches and protocol mismatches are never retried.
    ///
    /// Fails if a value of the `Backoff` is out of range (see
    /// [`Backoff::validate`]). [`Backoff::forever`] retries without limit.
    pub fn connect_backoff(mut self, backoff: Backoff) -> Result<Self, ConfigError> {
        backoff.validate()?;
        self.connect_backoff = backoff;
        Ok(self)
    }

    /// Whether a connection made with [`Peer::connect`](crate::Peer::connect)
    /// is re-dialled in the background when it ends unexpectedly. Default
    /// on; it stops at [`disconnect`](crate::Peer::disconnect),
    /// [`drop_peer`](crate::Peer::drop_peer) or
    /// [`shutdown`](crate::Peer::shutdown), or when the remote rejects our
    /// key or shows another host key. Channels open when the connection
    /// died fail; they are never resumed. Watch
    /// [`Peer::events`](crate::Peer::events) to follow it.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// How long [`Peer::open`](crate::Peer::open) waits for a peer of that
    /// name to be connected (it may be starting, or reconnecting) before it
    /// fails with [`OpenError::NoSuchPeer`](crate::OpenError::NoSuchPeer).
    /// Default 10 s; zero fails at once.
    pub fn peer_wait_timeout(mut self, timeout: Duration) -> Self {
        self.peer_wait_timeout = timeout;
        self
    }

    /// How long [`Peer::shutdown`](crate::Peer::shutdown) lets open channels
    /// finish (no new connections or channels are accepted meanwhile)
    /// before it closes everything. Default 5 s; zero closes at once.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The configured [`drain_timeout`](Self::drain_timeout).
    pub fn get_drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The configured [`peer_wait_timeout`](Self::peer_wait_timeout).
    pub fn get_peer_wait_timeout(&self) -> Duration {
        self.peer_wait_timeout
    }

    /// The configured [`max_frame_len`](Self::max_frame_len).
    pub fn get_max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The configured [`channel_window`](Self::channel_window).
    pub fn get_channel_window(&self) -> u32 {
        self.channel_window
    }

    /// The largest a channel's receive window grows to: the larger of
    /// [`max_channel_window`](Self::max_channel_window) and
    /// [`channel_window`](Self::channel_window).
    pub fn get_max_channel_window(&self) -> u32 {
        self.max_channel_window.max(self.channel_window)
    }

    /// The configured [`plain_channel_buffer`](Self::plain_channel_buffer).
    pub fn get_plain_channel_buffer(&self) -> usize {
        self.plain_channel_buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_validate() {
        assert!(Config::default().channel_window(10).is_err());
        assert!(Config::default().max_frame_len(0).is_err());
        assert!(Config::default().max_header_bytes(64 << 10).is_err());
        let c = Config::default().max_frame_len(1024);
        assert!(c.is_ok_and(|c| c.get_max_frame_len() == 1024));
    }
}
