//! Opens from this side: parent references, the open handshake, the
//! dialler's hello, and the SSH open seen through if its caller gives up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{ChannelError, OpenError};
use crate::proto::HELLO_SERVICE;
use crate::proto::chan::{Kind, OpenPhase};
use crate::proto::headers::Headers;
use crate::proto::hello;
use crate::proto::nest::{ParentRef, TOP_LEVEL};
use crate::proto::open::{OPEN_PROHIBITED, OPEN_RESOURCE_SHORTAGE};
use crate::proto::service::ServiceName;
use crate::ssh::{OpenFailed, WriteHalf};

use super::chan::ChanShared;
use super::owned::Owned;
use super::*;

/// First pause before asking a remote at a limit again; it doubles up to
/// [`ROOM_RETRY_MAX`].
const ROOM_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(2);
const ROOM_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(200);
/// How often an open waiting for receive buffer looks again without a
/// channel having left the table.
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(20);

impl ConnShared {
    // ---- opening ----

    /// Opens a channel (nested in `parent` if given), in the caller's task.
    /// Dropping the returned future never strands a half-open channel: the
    /// SSH open is seen through by `PendingOpen`, and every later step holds
    /// an `Owned`, whose drop closes it.
    pub(crate) async fn open(
        self: &Arc<Self>,
        service: ServiceName,
        headers: Headers,
        parent: Option<Arc<ChanShared>>,
    ) -> Result<Owned, OpenError> {
        // Our initial receive window leads the block, so the remote may
        // answer with data at once (no `WINDOW` record to wait for).
        let encoded =
            headers.encode_with_window(self.config.channel_window, &self.config.limits)?;
        if self.host.draining.is_cancelled() {
            return Err(OpenError::Shutdown);
        }
        let wire = match &parent {
            None => ParentRef::encode(None),
            Some(p) => ParentRef::encode(Some(self.parent_ref(p, &service)?)),
        };
        let Some(wire) = wire else {
            return Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(parent.as_deref()),
                reason: "its channel number cannot be named in an open".into(),
            });
        };
        self.open_inner(service, headers, encoded, wire, parent)
            .await
    }

    /// How the remote names `parent`, after checking a child may be opened
    /// in it.
    pub(super) fn parent_ref(
        &self,
        parent: &ChanShared,
        service: &ServiceName,
    ) -> Result<ParentRef, OpenError> {
        let parent_service = || parent_service(Some(parent));
        if parent.kind != Kind::Duplex {
            return Err(OpenError::NotNestable {
                service: service.to_string(),
                parent: parent_service(),
            });
        }
        let depth = parent.meta.get().map_or(0, |m| m.depth()) + 1;
        let limit = self.config.max_nesting_depth;
        if depth > limit {
            return Err(OpenError::DepthLimit {
                service: service.to_string(),
                depth,
                limit,
            });
        }
        if let Some(reason) = parent.closed_reason() {
            return Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(),
                reason,
            });
        }
        if !parent.outgoing {
            return Ok(ParentRef::Mine(parent.id));
        }
        match parent.remote_id.get() {
            Some(&n) => Ok(ParentRef::Yours(n)),
            None => Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(),
                reason: "the parent is not open yet".into(),
            }),
        }
    }

    pub(super) async fn open_inner(
        self: &Arc<Self>,
        service: ServiceName,
        headers: Headers,
        encoded: String,
        wire: (u32, u32),
        parent: Option<Arc<ChanShared>>,
    ) -> Result<Owned, OpenError> {
        // The remote's name is only formatted for an error.
        let lost = |reason: String| OpenError::ConnectionLost {
            peer: self.remote_name(),
            service: service.to_string(),
            reason: reason.into(),
        };
        if self.ended.is_cancelled() || self.cancel.is_cancelled() {
            return Err(lost(self.end_reason()));
        }
        if self.handle.get().is_none() {
            return Err(lost("the session is not running".into()));
        }
        let deadline = tokio::time::Instant::now() + self.config.open_timeout;
        let timeout = || OpenError::Timeout {
            peer: self.remote_name(),
            service: service.to_string(),
            after: self.config.open_timeout,
        };
        let window = u64::from(self.config.channel_window);
        let reservation = match self.reserve(window) {
            Ok(r) => r,
            // Our receive buffer is spoken for: wait for room, as
            // channels close, within the open timeout.
            Err(why) => match self.wait_for_room(window, deadline).await {
                Some(r) => r,
                None if self.ended.is_cancelled() => return Err(lost(self.end_reason())),
                None => {
                    return Err(OpenError::LocalLimit {
                        service: service.to_string(),
                        why: format!("{why}; waited {:?} for room", self.config.open_timeout),
                    });
                }
            },
        };
        let mut encoded = encoded;
        let mut pause = ROOM_RETRY_FIRST;
        // The remote's last refusal on a limit, reported if the open
        // timeout passes while it is asked again.
        let mut last = None;
        let write = loop {
            let r = tokio::select! {
                r = PendingOpen::new(self.clone(), service.clone(), encoded, wire) => r,
                _ = self.ended.cancelled() => Err(OpenFailed::Gone),
                _ = tokio::time::sleep_until(deadline) => match last.take() {
                    Some(refused) => break Err(refused),
                    None => return Err(timeout()),
                },
            };
            // The remote is at a limit (channels, pending channels, its
            // accept queue or receive buffer): it gives no signal when room
            // comes, so ask again after a pause, within the open timeout.
            if let Err(OpenFailed::Refused(OPEN_RESOURCE_SHORTAGE, said)) = &r
                && said.as_deref().is_none_or(|s| !s.contains("shutting down"))
                && tokio::time::Instant::now() + pause < deadline
            {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.ended.cancelled() => return Err(lost(self.end_reason())),
                }
                pause = (pause * 2).min(ROOM_RETRY_MAX);
                encoded =
                    headers.encode_with_window(self.config.channel_window, &self.config.limits)?;
                last = r.err();
                continue;
            }
            break r;
        };
        let write = match write {
            Ok(w) => w,
            Err(OpenFailed::Refused(code, said)) => {
                let meaning = match code {
                    OPEN_RESOURCE_SHORTAGE => "resource shortage",
                    OPEN_PROHIBITED => "prohibited",
                    _ => "refused",
                };
                let why = match said {
                    Some(text) => format!("{meaning}: {text}"),
                    None => match code {
                        OPEN_RESOURCE_SHORTAGE => {
                            "resource shortage (a channel or accept-queue limit was reached; the remote did not say which)".to_owned()
                        }
                        OPEN_PROHIBITED => "prohibited (a reserved or invalid service, or malformed headers; the remote did not say which)".to_owned(),
                        _ => meaning.to_owned(),
                    },
                };
                return Err(OpenError::Refused {
                    peer: self.remote_name(),
                    service: service.to_string(),
                    code,
                    why,
                });
            }
            Err(OpenFailed::Gone) => return Err(lost(self.end_reason())),
        };
        let id = write.id();
        let chan = self.claim(id);
        chan.hold(reservation);
        let _ = chan.writer.set(write);
        chan.kick();
        let parent_meta = parent.as_ref().and_then(|p| p.meta.get().cloned());
        let _ = chan
            .meta
            .set(Arc::new(self.meta(service.clone(), headers, parent_meta)));
        let channel = Owned::new(chan.clone());
        if let Some(p) = &parent
            && let Err(reason) = p.adopt(&chan)
        {
            return Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(Some(&**p)),
                reason,
            });
        }

        loop {
            let notified = chan.opened.notified();
            let (phase, failed, closed) = chan.open_phase();
            match phase {
                OpenPhase::Accepted | OpenPhase::Hello(_) => return Ok(channel),
                OpenPhase::Rejected(reason) => {
                    let peer = self.remote_name();
                    let service = service.to_string();
                    if reason == crate::proto::open::no_service(&service, &peer) {
                        return Err(OpenError::NoService { peer, service });
                    }
                    return Err(OpenError::Rejected {
                        peer,
                        service,
                        reason,
                    });
                }
                OpenPhase::Waiting => {}
            }
            if let Some(e) = failed {
                if let ChannelError::ParentClosed(reason) = e {
                    return Err(OpenError::ParentClosed {
                        service: service.to_string(),
                        parent: parent_service(parent.as_deref()),
                        reason,
                    });
                }
                return Err(lost(e.to_string()));
            }
            if closed {
                return Err(lost(
                    "the remote closed the channel without answering".into(),
                ));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(OpenError::Timeout {
                    peer: self.remote_name(),
                    service: service.to_string(),
                    after: self.config.open_timeout,
                });
            }
        }
    }

    /// Waits until `bytes` of receive buffer can be reserved for a new
    /// channel (channels closing free theirs), up to `deadline`. One opener
    /// of the peer waits at a time, in arrival order; the others queue
    /// behind it, so a burst of waiting opens wakes one task per change.
    /// `None` at the deadline or when the connection ended.
    async fn wait_for_room(
        &self,
        bytes: u64,
        deadline: tokio::time::Instant,
    ) -> Option<crate::proto::budget::Reservation> {
        let gate = tokio::select! {
            g = self.host.room.lock() => g,
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = self.ended.cancelled() => return None,
        };
        loop {
            let changed = self.host.channels_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Ok(r) = self.reserve(bytes) {
                drop(gate);
                return Some(r);
            }
            // A channel's buffer is released when its last handle goes,
            // which may come after it left the table: look again now and
            // then, too.
            let tick = tokio::time::Instant::now() + ROOM_POLL;
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(tick.min(deadline)) => {}
                _ = self.ended.cancelled() => return None,
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Dialler side of the hello: open `@hello`, return the listener's name
    /// (and remember the connection's version).
    pub(crate) async fn hello(self: &Arc<Self>) -> Result<String, String> {
        let encoded = hello::dialler_hello(&self.host.name)
            .encode(&self.config.limits)
            .map_err(|e| e.to_string())?;
        let Some(handle) = self.handle.get() else {
            return Err("the session is not running".into());
        };
        let write = match handle.open(HELLO_SERVICE, encoded, TOP_LEVEL).await {
            Ok(w) => w,
            Err(OpenFailed::Refused(..)) => {
                return Err("the remote refused the Duplex hello (it is not a Duplex peer, or speaks another protocol version)".into());
            }
            Err(OpenFailed::Gone) => return Err(self.end_reason()),
        };
        let id = write.id();
        let chan = self.claim(id);
        let _ = chan.writer.set(write);
        chan.kick();
        let guard = Owned::new(chan.clone());
        loop {
            let notified = chan.opened.notified();
            let (phase, failed, closed) = chan.open_phase();
            match phase {
                OpenPhase::Hello(h) => {
                    drop(guard);
                    // The version was taken in the session loop (see
                    // `on_listener_hello`); this only reads the name.
                    return hello::dialler_check(&h).map(|(name, _)| name);
                }
                OpenPhase::Rejected(r) => return Err(r),
                OpenPhase::Accepted => return Err("unexpected answer to hello".into()),
                OpenPhase::Waiting => {}
            }
            if let Some(e) = failed {
                return Err(e.to_string());
            }
            if closed {
                return Err("the remote closed the hello channel without answering".into());
            }
            notified.await;
        }
    }
}

/// The SSH open of a channel we open. If it is dropped before the remote
/// answered (the caller gave up, or the open timed out), a task sees the
/// open through and closes the channel, so none is left half-open at the
/// remote. Every step after it holds an `Owned`, whose drop closes it:
/// so `open` needs no task of its own.
pub(super) struct PendingOpen {
    conn: Arc<ConnShared>,
    fut: Option<SshOpen>,
}

pub(super) type SshOpen = Pin<Box<dyn Future<Output = Result<WriteHalf, OpenFailed>> + Send>>;

impl PendingOpen {
    pub(super) fn new(
        conn: Arc<ConnShared>,
        service: ServiceName,
        encoded: String,
        wire: (u32, u32),
    ) -> Self {
        let c = conn.clone();
        let fut = Box::pin(async move {
            match c.handle.get() {
                Some(h) => h.open(service.as_str(), encoded, wire).await,
                None => Err(OpenFailed::Gone),
            }
        });
        PendingOpen {
            conn,
            fut: Some(fut),
        }
    }
}

impl Future for PendingOpen {
    type Output = Result<WriteHalf, OpenFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(OpenFailed::Gone));
        };
        let res = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(res)
    }
}

impl Drop for PendingOpen {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        // Outside a runtime (it is shutting down) there is no session to
        // answer either.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        self.conn.host.tracker.spawn_on(
            async move {
                if let Ok(write) = fut.await {
                    let chan = conn.claim(write.id());
                    let _ = chan.writer.set(write);
                    chan.kick();
                    drop(Owned::new(chan)); // closes it
                }
            },
            &rt,
        );
    }
}
