//! Two connections wired back to back in memory, with no session, socket,
//! runtime or clock: each side a [`Mux`] of channel state machines
//! ([`Chan`]) with a connection budget and open limits, and between them
//! what the SSH layer carries, in order per direction: opens with their
//! fields, confirmations and open failures, data, extended data, EOF and
//! close ([`Msg`]).
//!
//! Opens are judged on the receiving side by the real rules
//! (`proto::open::verdict`, `nested_verdict`, `unknown_parent`), nested
//! parents resolved through the mux's index, budgets reserved through
//! `proto::budget`; each side does what the driver (`conn/`) does with a
//! verdict, a delivery, a violation and a channel's end, including the
//! cascade through the nesting tree (the tree first, then the channel's
//! own state). A send turn is modelled as in `proto::chan::pair`: a
//! channel's queue moves to the wire only once its effects asked for a
//! turn ([`Peer::pump`]), and the wire moves to the other side only on
//! [`Pair::deliver`], so a test or a script decides what is in flight.
//!
//! [`run`] drives a pair with a script over several channels ([`Op`]) and
//! checks the invariants after every step; the unit tests (`pair/tests.rs`),
//! a property test and the `mux_pair` fuzz target use it.

// A test harness: a broken invariant or a refused step panics.
#![allow(clippy::panic, clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::task::Poll;

use bytes::Bytes;

use super::ChannelId;
use super::budget::{self, Reservation, Share};
use super::chan::pair::{E, MAX_FRAME, MAX_W, Side, TestEnv, W, spec};
use super::chan::{Chan, MAX_CHUNK, Out, Told};
use super::control::Control;
use super::mux::Mux;
use super::nest::ParentRef;
use super::open::{self, Conditions, OPEN_RESOURCE_SHORTAGE, OpenFields, OpenLimits, Verdict};

/// One side's limits (the `Config` values the open rules read) and its
/// connection budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lim {
    pub(crate) max_channels: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_depth: u32,
    /// `Config::max_connection_buffer`.
    pub(crate) budget: u64,
}

impl Default for Lim {
    fn default() -> Self {
        Lim {
            max_channels: 64,
            max_pending: 16,
            max_depth: 4,
            budget: 64 * u64::from(W),
        }
    }
}

/// What the SSH layer carries; numbers are the recipient's own.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Open {
        sender: u32,
        service: String,
        originator: String,
        port: u32,
        oport: u32,
    },
    Confirm {
        recipient: u32,
        sender: u32,
    },
    Failure {
        recipient: u32,
        code: u32,
        reason: String,
    },
    Data {
        recipient: u32,
        data: Bytes,
    },
    Ext {
        recipient: u32,
        code: u32,
        data: Bytes,
    },
    Eof {
        recipient: u32,
    },
    Close {
        recipient: u32,
    },
}

/// The header block of an open carrying only the opener's window
/// (`docs/PROTOCOL.md` section 3; a unit test checks `split_window`
/// reads it back).
pub(crate) fn open_block(window: u32) -> String {
    format!("%40window={window}")
}

/// One channel as a side holds it.
pub(crate) struct Ch {
    pub(crate) chan: Chan<E>,
    /// The remote's number for it (where what we send goes).
    pub(crate) peer: u32,
    pub(crate) service: String,
    /// 0 at the top level.
    pub(crate) depth: u32,
    /// Waiting for our application's answer.
    pub(crate) pending: bool,
    /// A send turn is running.
    turn: bool,
    /// Its initial window's share of the budget.
    _held: Option<Reservation>,
    /// Data bytes this side wrote and read on it.
    pub(crate) written: u64,
    pub(crate) read: u64,
    pub(crate) reader_gone: bool,
}

impl Ch {
    fn new(chan: Chan<E>, peer: u32, service: &str, depth: u32, held: Option<Reservation>) -> Ch {
        Ch {
            chan,
            peer,
            service: service.to_owned(),
            depth,
            pending: false,
            turn: false,
            _held: held,
            written: 0,
            read: 0,
            reader_gone: false,
        }
    }

    /// Takes the effects of the last call, starting the turn they ask for.
    fn settle(&mut self) {
        if self.chan.take_effects().send {
            self.turn = true;
        }
    }
}

/// An open sent and not yet answered at the SSH level.
struct Opening {
    service: String,
    parent: Option<ChannelId>,
    depth: u32,
    held: Reservation,
}

/// How the descendants of an ended channel end (as `conn/chan/nest.rs`).
#[derive(Clone)]
struct Ending {
    local: E,
    remote: Option<String>,
    close: bool,
}

/// One side of the pair: a connection's channel table and what it sent.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    other: &'static str,
    pub(crate) mux: Mux<Ch>,
    pub(crate) env: TestEnv,
    pub(crate) lim: Lim,
    v2: bool,
    next_id: u32,
    opening: BTreeMap<u32, Opening>,
    /// Opens the remote refused at the SSH level: code and reason.
    pub(crate) refused: BTreeMap<u32, (u32, String)>,
    /// Opens given up after the confirmation (the parent ended meanwhile).
    pub(crate) gave_up: BTreeMap<u32, String>,
    /// Channels out of the table (closed both ways), kept for inspection.
    pub(crate) gone: BTreeMap<u32, Ch>,
    /// Sent, not delivered yet, in order.
    pub(crate) wire: VecDeque<Msg>,
    /// Channels the remote opened, waiting for the application.
    pub(crate) offers: Vec<ChannelId>,
    /// The violations this side saw: our number, and why.
    pub(crate) violations: Vec<(u32, String)>,
    /// Channels forgotten with children still in the tree (a cascade
    /// missed them): must stay empty.
    pub(crate) orphaned: Vec<u32>,
}

impl Peer {
    pub(crate) fn new(name: &'static str, other: &'static str, v2: bool, lim: Lim) -> Peer {
        Peer {
            name,
            other,
            mux: Mux::new(),
            env: TestEnv::with_budget(lim.budget),
            lim,
            v2,
            // Each side numbers from its own base, so a number sent to the
            // wrong side is unlikely to name anything there.
            next_id: if name == "a" { 100 } else { 500 },
            opening: BTreeMap::new(),
            refused: BTreeMap::new(),
            gave_up: BTreeMap::new(),
            gone: BTreeMap::new(),
            wire: VecDeque::new(),
            offers: Vec::new(),
            violations: Vec::new(),
            orphaned: Vec::new(),
        }
    }

    fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// The channel we number `id`, in the table or gone.
    pub(crate) fn ch(&self, id: u32) -> Option<&Ch> {
        self.mux.get(ChannelId(id)).or_else(|| self.gone.get(&id))
    }

    fn reserve(&self) -> Result<Reservation, String> {
        let b = self.env.budget.clone();
        budget::reserve([b, None, None], u64::from(W), Share::All)
            .map_err(|r| r.describe(self.name, || self.other.to_owned()))
    }

    // ---- opening ----

    /// Opens a channel (nested in `parent`), as `conn/open.rs` does: the
    /// local checks, the budget, then the SSH open. Our number for it, or
    /// why it was not sent.
    pub(crate) fn open(&mut self, service: &str, parent: Option<ChannelId>) -> Result<u32, String> {
        let (wire, depth) = match parent {
            None => (ParentRef::encode(None), 0),
            Some(p) => {
                let ch = self.mux.get(p).ok_or("no such parent")?;
                let depth = ch.depth + 1;
                if depth > self.lim.max_depth {
                    return Err(format!("depth {depth} over {}", self.lim.max_depth));
                }
                if let Some(why) = ch.chan.closed_reason() {
                    return Err(why);
                }
                let r = match self.mux.is_outgoing(p) {
                    Some(false) => ParentRef::Mine(p.0),
                    _ => match self.mux.remote(p) {
                        Some(n) => ParentRef::Yours(n),
                        None => return Err("the parent is not open yet".into()),
                    },
                };
                (ParentRef::encode(Some(r)), depth)
            }
        };
        let (port, oport) = wire.ok_or("unencodable parent")?;
        let held = self.reserve()?;
        let id = self.next_id();
        self.opening.insert(
            id,
            Opening {
                service: service.to_owned(),
                parent,
                depth,
                held,
            },
        );
        self.wire.push_back(Msg::Open {
            sender: id,
            service: service.to_owned(),
            originator: open_block(W),
            port,
            oport,
        });
        Ok(id)
    }

    /// An open with an arbitrary parent reference (a hostile or confused
    /// opener): the channel is top-level on this side.
    pub(crate) fn open_raw(&mut self, service: &str, port: u32, oport: u32) -> Option<u32> {
        let held = self.reserve().ok()?;
        let id = self.next_id();
        let o = Opening {
            service: service.to_owned(),
            parent: None,
            depth: 0,
            held,
        };
        self.opening.insert(id, o);
        self.wire.push_back(Msg::Open {
            sender: id,
            service: service.to_owned(),
            originator: open_block(W),
            port,
            oport,
        });
        Some(id)
    }
}

/// The byte at `offset` of what side `key.0` writes on its channel
/// `key.1`: each channel and direction has its own pattern.
fn pattern(key: (Side, u32), offset: u64) -> u8 {
    let seed = u64::from(key.1) * 7 + if key.0 == Side::A { 0 } else { 3 };
    ((offset + seed) % 251) as u8
}

/// Two sides back to back.
pub(crate) struct Pair {
    pub(crate) a: Peer,
    pub(crate) b: Peer,
}

impl Pair {
    pub(crate) fn new(v2: bool, a: Lim, b: Lim) -> Pair {
        Pair {
            a: Peer::new("a", "b", v2, a),
            b: Peer::new("b", "a", v2, b),
        }
    }

    /// The side acting and the other one.
    pub(crate) fn sides(&mut self, s: Side) -> (&mut Peer, &mut Peer) {
        match s {
            Side::A => (&mut self.a, &mut self.b),
            Side::B => (&mut self.b, &mut self.a),
        }
    }

    pub(crate) fn peer(&mut self, s: Side) -> &mut Peer {
        self.sides(s).0
    }

    pub(crate) fn get(&self, s: Side) -> &Peer {
        match s {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Delivers up to `max` of what `from` sent to the other side, in
    /// order; how many went.
    pub(crate) fn deliver(&mut self, from: Side, max: usize) -> usize {
        let (me, other) = self.sides(from);
        let mut n = 0;
        while n < max {
            let Some(msg) = me.wire.pop_front() else {
                break;
            };
            other.on_msg(msg);
            n += 1;
        }
        n
    }

    /// Runs every send turn and delivers everything, both ways, until
    /// nothing moves (without reading: what needs credit waits for it).
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000 {
            self.a.pump(usize::MAX);
            self.b.pump(usize::MAX);
            let moved = self.deliver(Side::A, usize::MAX) + self.deliver(Side::B, usize::MAX);
            if moved == 0 {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Both sides' invariants.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.a.check()?;
        self.b.check()
    }

    /// The other side's number for the channel `side` numbers `id`, once
    /// known there.
    pub(crate) fn counterpart(&self, side: Side, id: u32) -> Option<u32> {
        self.get(side).ch(id).map(|c| c.peer)
    }
}

mod app;
mod arrive;
mod script;
pub(crate) use script::{ops_from_bytes, run};

#[cfg(test)]
mod tests;
