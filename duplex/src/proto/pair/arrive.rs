//! What arrives at one side of the pair, and how its channels end: opens
//! judged by the rules, confirmations, deliveries, violations, and the
//! cascade through the nesting tree (as `conn/accept.rs`, `conn/chan.rs`
//! and `conn/chan/nest.rs` do).

use super::*;

impl Peer {
    // ---- what arrives ----

    pub(super) fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Open {
                sender,
                service,
                originator,
                port,
                oport,
            } => self.on_open(sender, &service, &originator, port, oport),
            Msg::Confirm { recipient, sender } => self.on_confirm(recipient, sender),
            Msg::Failure {
                recipient,
                code,
                reason,
            } => {
                self.opening.remove(&recipient);
                self.refused.insert(recipient, (code, reason));
            }
            Msg::Data { recipient, data } => self.on_data(ChannelId(recipient), &data),
            Msg::Ext {
                recipient,
                code,
                data,
            } => self.on_ext(ChannelId(recipient), code, &data),
            Msg::Eof { recipient } => {
                if let Some(ch) = self.mux.get_mut(ChannelId(recipient)) {
                    ch.chan.on_eof();
                    ch.settle();
                }
            }
            Msg::Close { recipient } => self.on_close(ChannelId(recipient)),
        }
    }

    /// The remote opened a channel: the verdict, then what `conn/accept.rs`
    /// does with it.
    pub(super) fn on_open(
        &mut self,
        sender: u32,
        service: &str,
        originator: &str,
        port: u32,
        oport: u32,
    ) {
        let at = Conditions {
            me: self.name,
            duplex: true,
            draining: false,
            channels: self.mux.open_count(),
            pending: self.mux.pending(),
        };
        let limits = OpenLimits {
            max_channels: self.lim.max_channels,
            max_pending: self.lim.max_pending,
            max_nesting_depth: self.lim.max_depth,
            accept_channels: true,
            headers: &self.env.limits,
        };
        let fields = OpenFields {
            service,
            originator,
            port_to_connect: port,
            originator_port: oport,
        };
        let a = match open::verdict(&fields, &at, &limits, true) {
            Verdict::Accept(a) => a,
            Verdict::Refuse(r) => {
                return self.wire.push_back(Msg::Failure {
                    recipient: sender,
                    code: r.code,
                    reason: r.reason,
                });
            }
            Verdict::Reject(why) => return self.refuse(sender, why),
            Verdict::Hello => panic!("a hello on a Duplex connection"),
        };
        let mut depth = 0;
        let mut parent = None;
        if let Some(pr) = a.parent {
            let p = match self.mux.resolve(pr) {
                Ok(p) => p,
                Err(u) => return self.refuse(sender, open::unknown_parent(pr, self.name, u.ours)),
            };
            let pch = self.mux.get(p).unwrap();
            let closed = pch.chan.closed_reason();
            let view = open::ParentView {
                duplex: true,
                established: pch.chan.is_established(),
                closed: closed.as_deref(),
                depth: pch.depth,
            };
            depth = match open::nested_verdict(&view, self.name, self.lim.max_depth) {
                Ok(d) => d,
                Err(why) => return self.refuse(sender, why),
            };
            parent = Some(p);
        }
        let held = match self.reserve() {
            Ok(h) => h,
            // Top level: an SSH open failure on a limit; nested: `REJECT`.
            Err(why) if parent.is_none() => {
                return self.wire.push_back(Msg::Failure {
                    recipient: sender,
                    code: OPEN_RESOURCE_SHORTAGE,
                    reason: why,
                });
            }
            Err(why) => return self.refuse(sender, why),
        };
        let id = self.next_id();
        let mut chan = Chan::new(&spec(false, self.v2), 0);
        if let Some(w) = a.window {
            chan.credit(w);
        }
        let mut ch = Ch::new(chan, sender, a.service.as_str(), depth, Some(held));
        ch.pending = true;
        self.mux.insert(ChannelId(id), ch, false);
        self.wire.push_back(Msg::Confirm {
            recipient: sender,
            sender: id,
        });
        if let Some(p) = parent
            && self.mux.adopt(p, ChannelId(id)).is_err()
        {
            let why = self.mux.get(p).and_then(|c| c.chan.closed_reason());
            let why = why.unwrap_or_else(|| "the parent channel is closing".into());
            let ch = self.mux.get_mut(ChannelId(id)).unwrap();
            ch.pending = false;
            ch.chan.send_control(&Control::Reject { reason: why });
            return self.close(ChannelId(id));
        }
        self.mux.add_pending(false);
        self.offers.push(ChannelId(id));
    }

    /// Accepts the SSH open only to send `REJECT` with `why` and close.
    pub(super) fn refuse(&mut self, sender: u32, why: String) {
        let id = self.next_id();
        let mut ch = Ch::new(Chan::new(&spec(false, self.v2), 0), sender, "", 0, None);
        ch.chan.send_control(&Control::Reject { reason: why });
        ch.settle();
        self.mux.insert(ChannelId(id), ch, false);
        self.wire.push_back(Msg::Confirm {
            recipient: sender,
            sender: id,
        });
        self.close(ChannelId(id));
    }

    /// Our open was confirmed: the channel joins the table and its parent
    /// (if the parent ended meanwhile, the open gives up and closes it).
    pub(super) fn on_confirm(&mut self, id: u32, peer: u32) {
        let Some(o) = self.opening.remove(&id) else {
            return;
        };
        let chan = Chan::new(&spec(true, self.v2), u64::from(W));
        let ch = Ch::new(chan, peer, &o.service, o.depth, Some(o.held));
        self.mux.insert(ChannelId(id), ch, true);
        if let Some(p) = o.parent
            && self.mux.adopt(p, ChannelId(id)).is_err()
        {
            let why = self.mux.get(p).and_then(|c| c.chan.closed_reason());
            self.gave_up.insert(id, why.unwrap_or_default());
            self.drop_channel(ChannelId(id));
        }
    }

    pub(super) fn on_data(&mut self, id: ChannelId, data: &[u8]) {
        let Some(ch) = self.mux.get_mut(id) else {
            return;
        };
        let r = ch.chan.on_data(data, &self.env);
        ch.settle();
        if let Err(why) = r {
            self.violation(id, why.to_string());
        }
    }

    pub(super) fn on_ext(&mut self, id: ChannelId, code: u32, data: &[u8]) {
        let Some(ch) = self.mux.get_mut(id) else {
            return;
        };
        let told = ch.chan.on_ext(code, data, &self.env);
        ch.settle();
        match told {
            Ok(t) => self.told(id, t),
            Err(why) => self.violation(id, why.to_string()),
        }
    }

    /// What `conn/chan.rs`'s `on_ext` does with what the records told.
    pub(super) fn told(&mut self, id: ChannelId, t: Told) {
        if let Some(n) = t.accepted {
            self.mux.set_remote(id, n);
        }
        if let Some(reason) = t.reported {
            return self.fail(id, E::Reported(reason));
        }
        if let Some(reason) = t.aborted {
            return self.fail(id, E::Aborted(reason));
        }
        if let Some(reason) = t.parent_closed {
            let nested = self.mux.get(id).is_some_and(|c| c.depth > 0);
            if !nested {
                return self.violation(
                    id,
                    "sent PARENT_CLOSED on a channel that has no parent".into(),
                );
            }
            let ending = Ending {
                local: E::ParentClosed(reason),
                remote: None,
                close: false,
            };
            self.end_by_parent(id, &ending);
        }
    }

    /// The remote closed the channel: out of the table and the tree, its
    /// children handed back with it and ended.
    pub(super) fn on_close(&mut self, id: ChannelId) {
        let Some(r) = self.mux.remove(id) else {
            return;
        };
        let mut ch = r.chan;
        if ch.chan.on_close() {
            ch.chan
                .set_failed(E::Aborted(format!("{} closed it with no EOF", self.other)));
        }
        ch.settle();
        if ch.pending {
            ch.pending = false;
            self.unpend(id);
        }
        let ending = Ending {
            local: E::ParentClosed(format!("{:?} was closed by {}", ch.service, self.other)),
            remote: None,
            close: true,
        };
        self.gone.insert(id.0, ch);
        self.end_children(r.children, &ending);
    }

    // ---- ends ----

    /// A violation by the remote: fail the channel (with its descendants),
    /// then close it, telling a version-2 remote why.
    pub(super) fn violation(&mut self, id: ChannelId, why: String) {
        self.violations.push((id.0, why.clone()));
        if let Some(ch) = self.mux.get_mut(id) {
            ch.chan
                .note_violation(format!("{why} (seen by {})", self.name));
        }
        self.fail(id, E::Protocol(why));
        if let Some(ch) = self.mux.get_mut(id) {
            ch.chan.send_close_after_failure();
            ch.settle();
        }
    }

    /// Fails a channel; its descendants end (told why, unless the
    /// connection is gone).
    pub(crate) fn fail(&mut self, id: ChannelId, err: E) {
        let children = self.mux.end(id);
        let Some(ch) = self.mux.get_mut(id) else {
            return;
        };
        ch.chan.fail(err.clone());
        ch.settle();
        let svc = ch.service.clone();
        let ending = match err {
            E::Lost => Ending {
                local: err,
                remote: None,
                close: false,
            },
            other => Ending {
                local: E::ParentClosed(format!("{svc:?} failed: {other}")),
                remote: Some(format!("{svc:?} failed on {}: {other}", self.name)),
                close: true,
            },
        };
        self.end_children(children, &ending);
    }

    /// Our application closes the channel; its descendants end at once.
    pub(crate) fn close(&mut self, id: ChannelId) {
        let children = self.mux.end(id);
        let Some(ch) = self.mux.get_mut(id) else {
            return;
        };
        ch.chan.send_close();
        ch.settle();
        let svc = ch.service.clone();
        let ending = Ending {
            local: E::ParentClosed(format!("{svc:?} was closed on this side")),
            remote: Some(format!("{svc:?} was closed by {}", self.name)),
            close: true,
        };
        self.end_children(children, &ending);
    }

    /// What dropping a channel nobody holds does (`conn::owned::Owned`).
    pub(super) fn drop_channel(&mut self, id: ChannelId) {
        if let Some(ch) = self.mux.get_mut(id) {
            ch.chan.reader_dropped(&self.env);
            ch.chan.send_eof();
            ch.settle();
        }
        self.close(id);
    }

    /// Ends a channel because an ancestor ended, and its descendants.
    pub(super) fn end_by_parent(&mut self, id: ChannelId, ending: &Ending) {
        let children = self.mux.end(id);
        if let Some(ch) = self.mux.get_mut(id) {
            let _ =
                ch.chan
                    .end_by_parent(ending.local.clone(), ending.remote.as_deref(), ending.close);
            ch.settle();
        }
        self.end_children(children, ending);
    }

    /// The cascade: each child's own end hands back its children. A child
    /// still waiting for our application is refused with it.
    pub(super) fn end_children(&mut self, children: Vec<ChannelId>, ending: &Ending) {
        let mut todo = children;
        while let Some(c) = todo.pop() {
            // The tree first, as the driver does.
            todo.extend(self.mux.end(c));
            let Some(ch) = self.mux.get_mut(c) else {
                continue;
            };
            let _ =
                ch.chan
                    .end_by_parent(ending.local.clone(), ending.remote.as_deref(), ending.close);
            ch.settle();
            if ch.pending {
                ch.pending = false;
                self.unpend(c);
            }
        }
    }

    pub(super) fn unpend(&mut self, id: ChannelId) {
        self.mux.pending_done(false);
        self.offers.retain(|o| *o != id);
    }
}
