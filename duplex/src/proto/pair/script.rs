//! Scripts over a connection pair: operations on several channels from
//! both sides, partial send turns and deliveries, raw records from a
//! hostile remote, with the invariants checked after every step.

use std::collections::BTreeSet;

use super::{Lim, Pair, Side};
use crate::proto::ChannelId;
use crate::proto::nest::{REF_MINE, REF_YOURS};
use crate::proto::{EXT_CONTROL, EXT_ERROR};

/// One step of a script. Channels are named by slot: the index of the
/// open that made them, in the order of the script's opens.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Opens a channel, nested in the slot's channel if given.
    Open(Side, Option<u8>),
    /// Opens with an arbitrary parent reference (port to connect,
    /// originator port): a confused or hostile opener.
    OpenRaw(Side, u32, u32),
    /// Accepts the n-th channel waiting for the side's application.
    Accept(Side, u8),
    /// Rejects it.
    Reject(Side, u8),
    Write(Side, u8, usize),
    Read(Side, u8, usize),
    Eof(Side, u8),
    Close(Side, u8),
    DropReader(Side, u8),
    /// Runs the side's send turns, up to this many items per channel.
    Pump(Side, usize),
    /// Delivers up to this many of the side's messages to the other.
    Deliver(Side, usize),
    /// Raw bytes on a stream (`None` = data) arrive at the side on the
    /// slot's channel, as if from the other.
    Raw(Side, u8, Option<u32>, Vec<u8>),
}

fn other(s: Side) -> Side {
    match s {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

/// The opens of a script: who opened each slot, under its own number.
struct Slots {
    opened: Vec<(Side, u32)>,
    /// Slots a hostile remote touched (raw records, raw opens): their
    /// bytes and violations are not held against the pair.
    hostile: BTreeSet<usize>,
}

impl Slots {
    fn pick(&self, slot: u8) -> Option<usize> {
        if self.opened.is_empty() {
            return None;
        }
        Some(usize::from(slot) % self.opened.len())
    }

    /// The side's number for the slot's channel, once it has one.
    fn id(&self, p: &Pair, side: Side, slot: usize) -> Option<ChannelId> {
        let (opener, id) = self.opened[slot];
        if side == opener {
            return Some(ChannelId(id));
        }
        p.counterpart(opener, id).map(ChannelId)
    }

    /// The slot a side's channel belongs to.
    fn of(&self, p: &Pair, side: Side, id: u32) -> Option<usize> {
        (0..self.opened.len()).find(|&s| self.id(p, side, s) == Some(ChannelId(id)))
    }
}

/// Runs `ops` on a fresh pair and checks after every step: both sides'
/// invariants (`Peer::check`: the mux's, nothing escaping a cascade, the
/// pending counts, bounded buffers and windows); a reader gets its
/// writer's bytes in order; a violation is seen only on a channel a
/// hostile remote touched. At the end, the pair runs until quiet with
/// every reader reading: on every channel no one closed, failed or
/// touched, everything written arrives.
pub(crate) fn run(v2: bool, ops: &[Op]) -> Result<(), String> {
    let lim = Lim {
        max_channels: 24,
        max_pending: 8,
        max_depth: 3,
        budget: 48 * u64::from(super::W),
    };
    let mut p = Pair::new(v2, lim, lim);
    let mut slots = Slots {
        opened: Vec::new(),
        hostile: BTreeSet::new(),
    };
    let mut seen = [0usize; 2];
    for op in ops {
        step(&mut p, &mut slots, op)?;
        p.check()?;
        blame(&p, &slots, &mut seen)?;
    }
    // Until quiet, every reader reading.
    for _ in 0..1_000 {
        p.settle();
        let mut moved = 0;
        for s in 0..slots.opened.len() {
            for side in [Side::A, Side::B] {
                if let Some(id) = slots.id(&p, side, s) {
                    match p.peer(side).read(id, usize::MAX, other(side)) {
                        Ok(Some(n)) => moved += n,
                        Ok(None) => {}
                        Err(e) if slots.hostile.contains(&s) => drop(e),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        p.check()?;
        blame(&p, &slots, &mut seen)?;
        if moved == 0 && p.a.wire.is_empty() && p.b.wire.is_empty() {
            break;
        }
    }
    for s in 0..slots.opened.len() {
        if slots.hostile.contains(&s) {
            continue;
        }
        for writer in [Side::A, Side::B] {
            let reader = other(writer);
            let (Some(w), Some(r)) = (slots.id(&p, writer, s), slots.id(&p, reader, s)) else {
                continue;
            };
            let (Some(wc), Some(rc)) = (p.get(writer).mux.get(w), p.get(reader).mux.get(r)) else {
                continue; // closed both ways
            };
            let ended = |c: &super::Ch| c.chan.closed_reason().is_some();
            if ended(wc) || ended(rc) || rc.reader_gone || rc.pending {
                continue;
            }
            if rc.read != wc.written {
                return Err(format!(
                    "slot {s}: {:?} wrote {} bytes, {:?} read {}",
                    writer, wc.written, reader, rc.read
                ));
            }
        }
    }
    Ok(())
}

/// A violation on a channel no hostile remote touched is a correct remote
/// refused.
fn blame(p: &Pair, slots: &Slots, seen: &mut [usize; 2]) -> Result<(), String> {
    for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
        let peer = p.get(side);
        for (id, why) in &peer.violations[seen[i]..] {
            match slots.of(p, side, *id) {
                Some(s) if slots.hostile.contains(&s) => {}
                s => return Err(format!("{side:?} saw a violation on slot {s:?}: {why}")),
            }
        }
        seen[i] = peer.violations.len();
    }
    Ok(())
}

fn step(p: &mut Pair, slots: &mut Slots, op: &Op) -> Result<(), String> {
    // The slot's channel, if the side's application holds it (raw records
    // arrive on any channel the side has).
    let on = |p: &Pair, slots: &Slots, side: Side, slot: u8| {
        let s = slots.pick(slot)?;
        let id = slots.id(p, side, s)?;
        p.get(side).holds(id).then_some((s, id))
    };
    let any = |p: &Pair, slots: &Slots, side: Side, slot: u8| {
        let s = slots.pick(slot)?;
        Some((s, slots.id(p, side, s)?))
    };
    match op {
        Op::Open(side, parent) => {
            // A parent among the channels the side's application holds.
            let parent = match parent {
                Some(k) => {
                    let held: Vec<ChannelId> = (0..slots.opened.len())
                        .filter_map(|s| slots.id(p, *side, s))
                        .filter(|id| p.get(*side).holds(*id))
                        .collect();
                    if held.is_empty() {
                        return Ok(());
                    }
                    Some(held[usize::from(*k) % held.len()])
                }
                None => None,
            };
            if let Ok(id) = p.peer(*side).open("svc", parent) {
                slots.opened.push((*side, id));
            }
        }
        Op::OpenRaw(side, port, oport) => {
            if let Some(id) = p.peer(*side).open_raw("raw", *port, *oport) {
                slots.hostile.insert(slots.opened.len());
                slots.opened.push((*side, id));
            }
        }
        Op::Accept(side, n) | Op::Reject(side, n) => {
            let me = p.peer(*side);
            if me.offers.is_empty() {
                return Ok(());
            }
            let id = me.offers[usize::from(*n) % me.offers.len()];
            if matches!(op, Op::Accept(..)) {
                me.accept(id);
            } else {
                me.reject(id, "not wanted");
            }
        }
        Op::Write(side, slot, n) => {
            if let Some((_, id)) = on(p, slots, *side, *slot) {
                p.peer(*side).write(id, *n, *side)?;
            }
        }
        Op::Read(side, slot, n) => {
            if let Some((s, id)) = on(p, slots, *side, *slot) {
                match p.peer(*side).read(id, *n, other(*side)) {
                    Ok(_) => {}
                    Err(_) if slots.hostile.contains(&s) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Op::Eof(side, slot) => {
            if let Some((_, id)) = on(p, slots, *side, *slot) {
                p.peer(*side).send_eof(id);
            }
        }
        Op::Close(side, slot) => {
            if let Some((_, id)) = on(p, slots, *side, *slot) {
                p.peer(*side).close(id);
            }
        }
        Op::DropReader(side, slot) => {
            if let Some((_, id)) = on(p, slots, *side, *slot) {
                p.peer(*side).drop_reader(id);
            }
        }
        Op::Pump(side, k) => p.peer(*side).pump(*k),
        Op::Deliver(side, k) => {
            p.deliver(*side, *k);
        }
        Op::Raw(side, slot, stream, bytes) => {
            if let Some((s, id)) = any(p, slots, *side, *slot) {
                slots.hostile.insert(s);
                p.peer(*side).raw(id, *stream, bytes);
            }
        }
    }
    Ok(())
}

/// A script from arbitrary bytes (for the fuzz target and the property
/// test): each op is a tag byte, a slot byte and a 16-bit argument.
pub(crate) fn ops_from_bytes(mut data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let take = |n: usize, data: &mut &[u8]| -> Option<Vec<u8>> {
        let (a, b) = data.split_at_checked(n)?;
        *data = b;
        Some(a.to_vec())
    };
    while let Some(head) = take(4, &mut data) {
        let side = if head[0] & 1 == 0 { Side::A } else { Side::B };
        let slot = head[1];
        let n = usize::from(u16::from_be_bytes([head[2], head[3]])) * 2;
        // Weighted so that scripts open, nest and accept often enough to
        // build trees, and hostile records stay rare.
        let op = match (head[0] >> 1) % 32 {
            0..=3 => Op::Open(side, None),
            4..=9 => Op::Open(side, Some(slot)),
            10 => {
                let port = [REF_YOURS, REF_MINE, 3][usize::from(slot % 3)];
                // Near the numbers the sides give (100.. and 500..).
                let base = if slot & 4 == 0 { 100 } else { 500 };
                Op::OpenRaw(side, port, base + u32::from(head[3] % 32) + 1)
            }
            11..=14 => Op::Accept(side, slot),
            15 => Op::Reject(side, slot),
            16..=18 => Op::Write(side, slot, n),
            19..=21 => Op::Read(side, slot, n + 1),
            22 => Op::Eof(side, slot),
            23 => Op::Close(side, slot),
            24 => Op::DropReader(side, slot),
            25..=27 => Op::Pump(side, n / 64 + 1),
            28..=30 => Op::Deliver(side, n / 64 + 1),
            _ => {
                let len = usize::from(head[3] % 64);
                let Some(bytes) = take(len, &mut data) else {
                    break;
                };
                let stream = match head[2] % 4 {
                    0 => None,
                    1 => Some(EXT_ERROR),
                    _ => Some(EXT_CONTROL),
                };
                Op::Raw(side, slot, stream, bytes)
            }
        };
        ops.push(op);
        if ops.len() >= 2_000 {
            break;
        }
    }
    ops
}
