//! Opens from the remote: the verdict, nested opens, the hello, refusals.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::conn::chan::ChanShared;
use crate::events::Direction;
use crate::proto::EXT_CONTROL;
use crate::proto::chan::{Kind, Out};
use crate::proto::control::Control;
use crate::proto::headers::Headers;
use crate::proto::hello;
use crate::proto::mux::Unknown;
use crate::proto::nest::ParentRef;
use crate::proto::open::{self as rules, OPEN_PROHIBITED, OPEN_RESOURCE_SHORTAGE, Verdict};
use crate::proto::service::ServiceName;
use crate::ssh::IncomingOpen;

use super::meta::ChannelMeta;
use super::owned::{Deliver, Offer, Sink};
use super::routes::Route;
use super::*;

impl ConnShared {
    /// The remote asked to open a channel.
    pub(super) async fn open_from_remote(self: &Arc<Self>, open: IncomingOpen) {
        // Everything a listener opens to us is Duplex; a dialler is Duplex
        // once it said hello.
        let inbound = self.direction == Direction::Inbound;
        let duplex = !inbound || self.duplex.load(Ordering::Acquire);
        let (channels, pending) = {
            let chans = self.channels();
            // Pending Duplex channels are in the table already.
            (chans.open_count(), chans.pending())
        };
        let at = rules::Conditions {
            me: &self.host.name,
            duplex,
            draining: self.host.draining.is_cancelled(),
            channels,
            pending,
        };
        let fields = rules::OpenFields {
            service: &open.service,
            originator: &open.originator,
            port_to_connect: open.port_to_connect,
            originator_port: open.originator_port,
        };
        let verdict = rules::verdict(&fields, &at, &self.open_limits(), inbound);
        if !duplex && inbound && verdict.ends_hello() {
            self.opened_any.store(true, Ordering::Release);
        }
        let accepted = match verdict {
            Verdict::Hello => return self.on_hello(open).await,
            Verdict::Refuse(r) if r.cause == rules::Cause::Limit => {
                return self.refuse_limit(open, &r.reason).await;
            }
            Verdict::Refuse(r) => return open.reply.reject(r.code, &r.reason).await,
            Verdict::Reject(why) => return self.refuse(open, why).await,
            Verdict::Accept(a) => a,
        };
        let rules::Accepted {
            service,
            headers,
            window,
            parent,
            duplex,
        } = accepted;
        if let Some(parent) = parent {
            return self
                .on_nested_open(open, service, headers, window, parent)
                .await;
        }
        let (handoff, at_once) = match self.host.route(service.as_str()) {
            Route::General { at_once } => match self.host.incoming_tx.clone().try_reserve_owned() {
                Ok(p) => (Handoff::Queue(p), at_once),
                Err(_) => {
                    let why = format!(
                        "{}'s accept queue (channels waiting for Peer::accept) is full (limit {}, Config::accept_backlog)",
                        self.host.name, self.config.accept_backlog
                    );
                    return self.refuse_limit(open, &why).await;
                }
            },
            Route::Acceptor {
                queue: Sink::Call(f),
                at_once,
                ..
            } => (Handoff::Call(f), at_once),
            Route::Acceptor {
                queue: Sink::Queue(queue),
                at_once,
                claimed,
            } => match queue.try_reserve_owned() {
                Ok(p) => (Handoff::Queue(p), at_once),
                Err(_) => {
                    let whose = if claimed {
                        format!("the acceptor of {service:?}")
                    } else {
                        "the acceptor of unclaimed services".to_owned()
                    };
                    let why = format!(
                        "{whose} on {} is full (limit {}, Config::accept_backlog)",
                        self.host.name, self.config.accept_backlog
                    );
                    return self.refuse_limit(open, &why).await;
                }
            },
            Route::NoService => {
                let why = rules::no_service(service.as_str(), &self.host.name);
                tracing::debug!(%service, remote = %self.remote_label(), "refused a channel: {why}");
                if duplex {
                    return self.refuse(open, why).await;
                }
                return open.reply.reject(OPEN_PROHIBITED, &why).await;
            }
        };
        let buffer = if duplex {
            u64::from(self.config.channel_window)
        } else {
            self.config.plain_channel_buffer as u64
        };
        let reservation = match self.reserve(buffer) {
            Ok(r) => r,
            Err(why) => return self.refuse_limit(open, &why).await,
        };
        let id = open.write.id();
        let kind = if duplex { Kind::Duplex } else { Kind::Plain };
        let at_once = duplex && at_once;
        // A plain client's credit is the SSH window we offer it (granted
        // back as the application reads, see `Kind::Plain`).
        let mut open = open;
        let credit = if duplex {
            0
        } else {
            let window = u32::try_from(self.config.plain_channel_buffer).unwrap_or(u32::MAX);
            open.reply.manual_window(window);
            u64::from(window)
        };
        let chan = ChanShared::new(self.clone(), id, kind, credit, false);
        chan.hold(reservation);
        if let Some(w) = window {
            chan.credit(w);
        }
        let meta = Arc::new(self.meta(service, headers, None));
        let _ = chan.meta.set(meta);
        let _ = chan.writer.set(open.write);
        self.channels().add_pending(!duplex);
        if duplex {
            self.register(&chan);
            open.reply.accept().await;
            if at_once {
                // The application takes every channel of this service: the
                // `ACCEPT` leaves now, with the confirmation, rather than
                // from its task after a wake-up. The channel still waits in
                // the accept queue, and the accept timeout closes it if the
                // application does not take it in time.
                chan.accept_duplex();
            }
        } else {
            // A plain client learns the application's answer from the SSH
            // open reply itself, so it waits for `accept`/`reject`.
            chan.set_plain_reply(open.reply);
        }
        tracing::debug!(channel = id, peer = %self.remote_name(), "incoming channel");
        self.host
            .pending
            .watch(watched(&chan), &self.host.tracker, &self.host.cancel);
        match handoff {
            Handoff::Queue(permit) => drop(permit.send(Offer::new(chan))),
            Handoff::Call(f) => f(Offer::new(chan)),
        }
    }

    /// The remote opened a channel inside one of this connection's
    /// channels: check the parent and the depth, and hand the child to the
    /// parent's `accept`. Refusals go in a `REJECT` record, so the opener
    /// reads the reason (russh drops the text of SSH open failures).
    pub(super) async fn on_nested_open(
        self: &Arc<Self>,
        open: IncomingOpen,
        service: ServiceName,
        headers: Headers,
        window: Option<u32>,
        parent: ParentRef,
    ) {
        let me = &self.host.name;
        // `Yours(n)`: a channel the remote opened, by our own number for
        // it; `Mine(n)`: a channel we opened, by the number the remote gave
        // in its ACCEPT (the mux's index).
        let found = {
            let chans = self.channels();
            chans.resolve(parent).map(|id| chans.get(id).cloned())
        };
        let parent = match found {
            Ok(Some(p)) => p,
            // (`Ok(None)` cannot be: the mux resolves to channels it holds.)
            unknown => {
                let ours = matches!(unknown, Err(Unknown { ours: true }));
                let why = rules::unknown_parent(parent, me, ours);
                return self.refuse(open, why).await;
            }
        };
        let parent_meta = parent.meta.get().cloned();
        let closed = parent.closed_reason();
        let view = rules::ParentView {
            duplex: parent.kind == Kind::Duplex,
            established: parent.is_established(),
            closed: closed.as_deref(),
            depth: parent_meta.as_ref().map_or(0, |m| m.depth()),
        };
        if let Err(why) = rules::nested_verdict(&view, me, self.config.max_nesting_depth) {
            return self.refuse(open, why).await;
        }
        let reservation = match self.reserve(u64::from(self.config.channel_window)) {
            Ok(r) => r,
            Err(why) => return self.refuse(open, why).await,
        };
        let id = open.write.id();
        let chan = ChanShared::new(self.clone(), id, Kind::Duplex, 0, false);
        chan.hold(reservation);
        if let Some(w) = window {
            chan.credit(w);
        }
        let _ = chan
            .meta
            .set(Arc::new(self.meta(service, headers, parent_meta)));
        let _ = chan.writer.set(open.write);
        self.register(&chan);
        open.reply.accept().await;
        if let Err(why) = parent.adopt(&chan) {
            // The parent closed meanwhile.
            chan.send_control(&Control::Reject {
                reason: why.to_string(),
            });
            chan.send_close();
            return;
        }
        self.channels().add_pending(false);
        tracing::debug!(channel = id, parent = parent.id, "incoming nested channel");
        self.host
            .pending
            .watch(watched(&chan), &self.host.tracker, &self.host.cancel);
        if let Some(child) = parent.offer_child(chan) {
            Offer::new(child).reject("the parent channel closed").await;
        }
    }

    /// Accepts the SSH open only to refuse the Duplex channel with a reason.
    /// Refuses a top-level open on a limit (SSH open failure, code 4, with
    /// `why` as the description, which names the limit and its knob), and
    /// logs it, rate-limited, with who asked.
    pub(super) async fn refuse_limit(&self, open: IncomingOpen, why: &str) {
        let service = &open.service;
        if let Some(n) = self.host.refusals.opens.allow() {
            tracing::warn!(
                remote = %self.remote_label(),
                %service,
                "refused a channel open: {why}{}",
                crate::lograte::left_out(n)
            );
        }
        open.reply.reject(OPEN_RESOURCE_SHORTAGE, why).await;
    }

    pub(super) async fn refuse(self: &Arc<Self>, open: IncomingOpen, why: String) {
        let chan = ChanShared::new(self.clone(), open.write.id(), Kind::Duplex, 0, false);
        tracing::debug!(channel = chan.id, %why, "refusing a channel");
        let _ = chan.writer.set(open.write);
        self.register(&chan);
        open.reply.accept().await;
        chan.send_control(&Control::Reject { reason: why });
        chan.send_close();
    }

    /// The limits incoming opens are checked against.
    pub(super) fn open_limits(&self) -> rules::OpenLimits<'_> {
        rules::OpenLimits {
            max_channels: self.config.max_channels_per_connection,
            max_pending: self.config.max_pending_channels,
            max_nesting_depth: self.config.max_nesting_depth,
            accept_channels: self.config.accept_channels,
            headers: &self.config.limits,
        }
    }

    pub(super) fn meta(
        &self,
        service: ServiceName,
        headers: Headers,
        parent: Option<Arc<ChannelMeta>>,
    ) -> ChannelMeta {
        let remote = self.remote.get();
        let names = match remote {
            // Known for good once the remote is registered: share them.
            Some(r) => self
                .meta_names
                .get_or_init(|| {
                    (
                        self.host.name.clone(),
                        r.name.clone(),
                        self.endpoint.as_str().into(),
                    )
                })
                .clone(),
            None => (
                self.host.name.clone(),
                self.remote_name().into(),
                self.endpoint.as_str().into(),
            ),
        };
        ChannelMeta::new(
            service,
            headers,
            names,
            remote
                .map(|r| r.fingerprint.clone())
                .or_else(|| self.remote_key.get().cloned()),
            parent,
        )
    }

    /// The listener's side of the hello: check the dialler's name and
    /// versions, answer with our name and the connection's version, and
    /// register the peer. A hello is taken only as the connection's first
    /// open and within the handshake time limit; otherwise the connection
    /// stays plain.
    pub(super) async fn on_hello(self: &Arc<Self>, open: IncomingOpen) {
        // Whatever the answer, this was the connection's first open: a
        // refused hello leaves it plain for good.
        let at = rules::HelloConditions {
            opened_before: self.opened_any.swap(true, Ordering::AcqRel),
            elapsed: self.started.elapsed(),
            limit: self.config.handshake_timeout,
            user: self.remote_user.get().map(|u| &**u),
        };
        let version = match rules::hello_verdict(&open.originator, &at, &self.config.limits) {
            Ok(v) => v,
            Err(why) => return open.reply.reject(OPEN_PROHIBITED, &why).await,
        };
        let (Some(user), Some(fp)) = (self.remote_user.get(), self.remote_key.get()) else {
            return open
                .reply
                .reject(OPEN_PROHIBITED, "not authenticated")
                .await;
        };
        let remote = Remote {
            name: user.clone(),
            fingerprint: fp.clone(),
        };
        // Created before the version is set: the hello channel itself ends
        // the same way in every version (HELLO, then SSH EOF and close).
        let id = open.write.id();
        let chan = ChanShared::new(self.clone(), id, Kind::Duplex, 0, false);
        let _ = chan.writer.set(open.write);
        self.version.store(version.0, Ordering::Release);
        let _ = self.remote.set(remote);
        self.duplex.store(true, Ordering::Release);
        self.register(&chan);
        open.reply.accept().await;
        let ours = hello::listener_hello(&self.host.name, version);
        let encoded = ours.encode(&self.config.limits).unwrap_or_default();
        // Send the answer before the application can learn of the peer (and
        // open channels to it): our opens share the session queue with this
        // data, so they cannot overtake it. Not awaited here, in the session
        // loop, since that queue is drained by this very loop.
        let conn = self.clone();
        self.host.tracker.spawn(async move {
            if let Some(w) = chan.writer.get() {
                let hello = Out::Ext(EXT_CONTROL, Control::Hello { headers: encoded }.encode());
                if w.send(hello).await.is_ok() {
                    conn.registry.register(conn.clone());
                }
            }
            chan.send_close();
        });
    }
}

/// How a channel from the remote reaches the application: a place
/// reserved in a queue, or the function of an acceptor that dispatches.
enum Handoff {
    Queue(tokio::sync::mpsc::OwnedPermit<Offer>),
    Call(Deliver),
}
