//! What one side's application does (accept, reject, write, read,
//! half-close, close), its send turns, and its invariants.

use super::*;

impl Peer {
    // ---- the application ----

    /// Whether the application holds the channel: accepted on both sides
    /// (an opener's `open` returns only then), not waiting for an answer.
    pub(crate) fn holds(&self, id: ChannelId) -> bool {
        self.mux
            .get(id)
            .is_some_and(|c| !c.pending && c.chan.is_established())
    }

    /// Answers a channel the remote opened with `answer`, if it still
    /// waits for one; true when it did.
    fn answer(&mut self, id: ChannelId, answer: impl FnOnce(&mut Chan<E>)) -> bool {
        let Some(ch) = self.mux.get_mut(id) else {
            // Closed while it waited: the answer only counts it down.
            if self.offers.contains(&id) {
                self.unpend(id);
            }
            return false;
        };
        if !ch.pending {
            return false;
        }
        ch.pending = false;
        answer(&mut ch.chan);
        ch.settle();
        self.unpend(id);
        true
    }

    /// Accepts a channel the remote opened.
    pub(crate) fn accept(&mut self, id: ChannelId) {
        self.answer(id, |chan| chan.accept_duplex(id.0));
    }

    /// Rejects a channel the remote opened.
    pub(crate) fn reject(&mut self, id: ChannelId, why: &str) {
        let reason = why.to_owned();
        if self.answer(id, |chan| chan.send_control(&Control::Reject { reason })) {
            self.close(id);
        }
    }

    /// Writes up to `n` bytes of the channel's pattern; how many it took.
    pub(crate) fn write(&mut self, id: ChannelId, n: usize, me: Side) -> Result<usize, String> {
        let Some(ch) = self.mux.get_mut(id) else {
            return Ok(0);
        };
        if ch.pending || ch.chan.closed_reason().is_some() {
            return Ok(0);
        }
        let n = n.min(MAX_CHUNK);
        let key = (me, id.0);
        let data: Vec<u8> = (ch.written..ch.written + n as u64)
            .map(|o| pattern(key, o))
            .collect();
        let r = ch
            .chan
            .poll_write(None, n, |k| Bytes::copy_from_slice(&data[..k]));
        ch.settle();
        match r {
            Poll::Ready(Ok(k)) => {
                ch.written += k as u64;
                Ok(k)
            }
            // Refused (written or closed already, failed): the
            // application sees the error; nothing was taken.
            Poll::Pending | Poll::Ready(Err(_)) => Ok(0),
        }
    }

    /// Reads up to `max` bytes, checking them against the writer's
    /// pattern (`remote` is the writer's side); how many arrived, `None`
    /// at the end of the stream or on failure.
    pub(crate) fn read(
        &mut self,
        id: ChannelId,
        max: usize,
        remote: Side,
    ) -> Result<Option<usize>, String> {
        let Some(ch) = self.mux.get_mut(id) else {
            return Ok(None);
        };
        if ch.pending || ch.reader_gone {
            return Ok(None);
        }
        let mut got = Vec::new();
        let r = ch
            .chan
            .poll_read(max, |b| got.extend_from_slice(b), &self.env);
        ch.settle();
        let key = (remote, ch.peer);
        for (i, b) in got.iter().enumerate() {
            let at = ch.read + i as u64;
            if *b != pattern(key, at) {
                return Err(format!(
                    "{}: byte {at} of channel {} is wrong",
                    self.name, id.0
                ));
            }
        }
        ch.read += got.len() as u64;
        Ok(match r {
            Poll::Ready(Ok(())) if got.is_empty() => None,
            Poll::Ready(Ok(())) | Poll::Pending => Some(got.len()),
            Poll::Ready(Err(_)) => None,
        })
    }

    /// The application drops its reader.
    pub(crate) fn drop_reader(&mut self, id: ChannelId) {
        if let Some(ch) = self.mux.get_mut(id) {
            ch.chan.reader_dropped(&self.env);
            ch.reader_gone = true;
            ch.settle();
        }
    }

    /// Finishes writing.
    pub(crate) fn send_eof(&mut self, id: ChannelId) {
        if let Some(ch) = self.mux.get_mut(id) {
            ch.chan.send_eof();
            ch.settle();
        }
    }

    /// Raw bytes on a stream (`None` = data) arrive on a channel as if
    /// from the remote (a hostile one).
    pub(crate) fn raw(&mut self, id: ChannelId, stream: Option<u32>, bytes: &[u8]) {
        match stream {
            None => self.on_data(id, bytes),
            Some(code) => self.on_ext(id, code, bytes),
        }
    }

    // ---- sending ----

    /// Runs the send turns: up to `max` items of each channel that asked
    /// for one go to the wire. A channel whose close went is forgotten.
    pub(crate) fn pump(&mut self, max: usize) {
        let mut turns: Vec<ChannelId> = self
            .mux
            .ids()
            .filter(|i| self.mux.get(*i).is_some_and(|c| c.turn))
            .collect();
        turns.sort();
        for id in turns {
            self.pump_one(id, max);
        }
    }

    /// Runs one channel's send turn, up to `max` items.
    pub(crate) fn pump_one(&mut self, id: ChannelId, max: usize) {
        for _ in 0..max {
            let Some(ch) = self.mux.get_mut(id) else {
                break;
            };
            if !ch.turn {
                break;
            }
            let Some(out) = ch.chan.next_out() else {
                ch.turn = false;
                ch.settle();
                break;
            };
            ch.settle();
            let recipient = ch.peer;
            let closing = matches!(out, Out::Close);
            self.wire.push_back(match out {
                Out::Data(data) => Msg::Data { recipient, data },
                Out::Ext(code, data) => Msg::Ext {
                    recipient,
                    code,
                    data,
                },
                Out::Eof => Msg::Eof { recipient },
                Out::Close => Msg::Close { recipient },
            });
            if closing {
                self.forget(id);
                break;
            }
        }
    }

    /// Our close went: the channel leaves the table (`ConnShared::forget`).
    pub(super) fn forget(&mut self, id: ChannelId) {
        if let Some(r) = self.mux.remove(id) {
            if !r.children.is_empty() {
                self.orphaned.push(id.0);
            }
            self.gone.insert(id.0, r.chan);
        }
    }

    /// The invariants of one side: the mux's own; a channel that closed or
    /// failed has ended in the tree (nothing escapes a cascade); nothing
    /// was forgotten with children; the pending count is the offers
    /// waiting; no channel buffers more than the largest window, and no
    /// window is past its maximum.
    pub(crate) fn check(&self) -> Result<(), String> {
        let name = self.name;
        self.mux.check().map_err(|e| format!("{name}: {e}"))?;
        if !self.orphaned.is_empty() {
            return Err(format!("{name} forgot {:?} with children", self.orphaned));
        }
        let waiting: BTreeSet<ChannelId> = self.offers.iter().copied().collect();
        if self.mux.pending() != self.offers.len() || waiting.len() != self.offers.len() {
            return Err(format!(
                "{name}: pending {} for offers {:?}",
                self.mux.pending(),
                self.offers
            ));
        }
        for id in self.mux.ids() {
            let ch = self.mux.get(id).unwrap();
            if ch.chan.closed_reason().is_some() && !self.mux.is_ended(id) {
                return Err(format!("{name}: {id} closed but not ended in the tree"));
            }
            if ch.pending != waiting.contains(&id) {
                return Err(format!(
                    "{name}: {id} pending {} but not offered",
                    ch.pending
                ));
            }
            if ch.chan.buffered() as u64 > u64::from(MAX_W) + MAX_FRAME as u64 {
                return Err(format!("{name}: {id} buffers {}", ch.chan.buffered()));
            }
            if ch.chan.window() > u64::from(MAX_W) {
                return Err(format!(
                    "{name}: {id}'s window {} is past the maximum",
                    ch.chan.window()
                ));
            }
        }
        Ok(())
    }
}
