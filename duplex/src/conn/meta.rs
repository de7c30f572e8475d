//! What is known about a channel (its service, headers, peers and parent),
//! held by the channel's driver and shown by every handle of it.

use std::sync::{Arc, OnceLock};

use crate::proto::headers::Headers;
use crate::proto::service::ServiceName;
use crate::ssh::keys::Fingerprint;

/// What is known about a channel: its service, headers, the two peers, and
/// its parent if it is nested. The same for channels we opened and channels
/// we accepted. Trailers come later, from [`Channel::trailers`](crate::Channel::trailers).
///
/// Cheap to clone: clones share one copy.
#[derive(Debug, Clone)]
pub struct ChannelMeta {
    inner: Arc<MetaInner>,
}

#[derive(Debug)]
struct MetaInner {
    service: ServiceName,
    headers: Headers,
    local_peer: Arc<str>,
    remote_peer: Arc<str>,
    remote_fingerprint: Option<Fingerprint>,
    endpoint: Arc<str>,
    parent: Option<Arc<ChannelMeta>>,
}

impl ChannelMeta {
    pub(crate) fn new(
        service: ServiceName,
        headers: Headers,
        (local_peer, remote_peer, endpoint): (Arc<str>, Arc<str>, Arc<str>),
        remote_fingerprint: Option<Fingerprint>,
        parent: Option<Arc<ChannelMeta>>,
    ) -> Self {
        ChannelMeta {
            inner: Arc::new(MetaInner {
                service,
                headers,
                local_peer,
                remote_peer,
                remote_fingerprint,
                endpoint,
                parent,
            }),
        }
    }

    /// The service the channel was opened for.
    pub fn service(&self) -> &str {
        self.inner.service.as_str()
    }

    /// The headers sent with the open (empty for plain SSH clients).
    pub fn headers(&self) -> &Headers {
        &self.inner.headers
    }

    /// Our peer name.
    pub fn local_peer(&self) -> &str {
        &self.inner.local_peer
    }

    /// The remote peer's name.
    pub fn remote_peer(&self) -> &str {
        &self.inner.remote_peer
    }

    /// The remote peer's key fingerprint.
    pub fn remote_fingerprint(&self) -> Option<&Fingerprint> {
        self.inner.remote_fingerprint.as_ref()
    }

    /// The endpoint of the connection that carries the channel.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// For a nested channel, its parent's meta (whose own `parent` leads
    /// further up); `None` for a top-level channel.
    pub fn parent(&self) -> Option<&ChannelMeta> {
        self.inner.parent.as_deref()
    }

    /// How deep the channel is nested: 0 for a top-level channel, 1 for a
    /// channel opened inside one, and so on.
    pub fn depth(&self) -> u32 {
        let mut depth = 0;
        let mut up = self.parent();
        while let Some(p) = up {
            depth += 1;
            up = p.parent();
        }
        depth
    }
}

impl ChannelMeta {
    /// The meta of a channel whose meta was never set. Every channel handed
    /// to the application has its meta set first; this only exists so that
    /// reading it has no panic path.
    pub(crate) fn unknown() -> &'static ChannelMeta {
        static EMPTY: OnceLock<ChannelMeta> = OnceLock::new();
        EMPTY.get_or_init(|| {
            ChannelMeta::new(
                ServiceName::new_any("@unknown").unwrap_or_else(|_| unreachable_name()),
                Headers::new(),
                (Arc::from(""), Arc::from(""), Arc::from("")),
                None,
                None,
            )
        })
    }
}

#[allow(clippy::panic)] // "@unknown" is a valid reserved name by construction
fn unreachable_name() -> ServiceName {
    panic!("invalid built-in service name")
}
