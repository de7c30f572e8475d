//! russh's configurations for both roles, the algorithms we offer, and
//! how russh's errors read in ours.

use std::borrow::Cow;
use std::sync::Arc;

use russh::{MethodKind, MethodSet, client, server};

use super::keys::Identity;
use crate::config::Config;

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
pub(super) const KEY_ALGORITHMS: &[russh::keys::Algorithm] = &[
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

/// How many messages russh's session queue holds (channel messages and
/// the handle's requests) before their senders wait.
const SESSION_QUEUE: usize = 256;

/// russh's queue per channel: none (russh patch 9). Duplex takes every
/// channel message in the handler's callbacks and never reads the queue,
/// which cost each channel on each end about 2.7 KB of allocations and
/// a copy of every data packet.
const CHANNEL_QUEUE: usize = 0;

/// Most channel data a well-behaved remote can have in flight towards us:
/// every byte it may send on a channel is credit we granted (a Duplex
/// channel's window, a plain channel's SSH window), and all of it is
/// reserved from `Config::max_connection_buffer`; a sixteenth more covers
/// the framing around it (SSH's message header per packet, Duplex's frame
/// and record headers). While a key re-exchange we started waits for the
/// remote's `KEXINIT`, the remote may send all of it (its send buffer and
/// the sockets between us hold it when ours arrives: megabytes on a busy
/// connection with many channels), so russh's own bound, twice its window
/// size (4 MiB), would end such a connection at a re-exchange.
fn data_in_flight(config: &Config) -> u64 {
    config.max_connection_buffer + config.max_connection_buffer / 16 + (1 << 20)
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
        let limits = russh::Limits {
            rekey_write_limit: config.rekey_bytes as usize,
            rekey_read_limit: config.rekey_bytes as usize,
            rekey_time_limit: config.rekey_interval,
        };
        let data_during_rekey = Some(data_in_flight(config));
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
            limits: limits.clone(),
            event_buffer_size: SESSION_QUEUE,
            channel_buffer_size: CHANNEL_QUEUE,
            max_channel_data_during_rekey: data_during_rekey,
            ..server::Config::default()
        };
        let client = client::Config {
            client_id: id(),
            inactivity_timeout: None,
            keepalive_interval: config.keepalive_interval,
            keepalive_max: config.keepalive_max,
            preferred: preferred(),
            limits,
            event_buffer_size: SESSION_QUEUE,
            channel_buffer_size: CHANNEL_QUEUE,
            max_channel_data_during_rekey: data_during_rekey,
            ..client::Config::default()
        };
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}

/// What a russh error means, in words for our errors and logs.
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
