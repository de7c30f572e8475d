//! Two channel state machines wired back to back, with no session, socket,
//! runtime or clock: what one queues (`next_out`) is delivered to the other
//! as the SSH layer would (`on_data`, `on_ext`, `on_eof`, `on_close`).
//!
//! [`run`] drives a pair with a script of operations (writes, reads, error
//! frames, trailers, half-closes, closes, partial deliveries, and raw
//! records from a hostile remote) and checks the invariants after every
//! step. The unit tests, a property test and the `chan_pair` fuzz target
//! all use it.

// A test harness: a broken invariant or a refused step panics.
#![allow(clippy::panic, clippy::unwrap_used, clippy::indexing_slicing)]

use std::cell::Cell;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;

use super::{Chan, Env, Kind, Out, Spec, Told, Violation, WriteRefused};
use crate::proto::budget::{self, Budget, Level, Reservation, Share};
use crate::proto::frame::{self, FrameError};
use crate::proto::headers::Headers;
use crate::proto::{EXT_CONTROL, EXT_ERROR, Limits};

/// The window a pair's channels start with.
pub(crate) const W: u32 = 64 << 10;
/// The most it grows to.
pub(crate) const MAX_W: u32 = 1 << 20;
/// The largest error frame payload.
pub(crate) const MAX_FRAME: usize = 16 << 10;

/// The failure type of the pair's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum E {
    Frame(String),
    Protocol(String),
    /// The connection is gone.
    #[cfg_attr(not(test), allow(dead_code))]
    Lost,
    /// An ancestor ended (the connection-level pair, `proto::pair`).
    ParentClosed(String),
    /// The remote reported a violation by this side (`PROTOCOL_ERROR`).
    Reported(String),
    /// The remote abandoned the channel (`ABORT`, or a close with no EOF).
    Aborted(String),
}

impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            E::Frame(why) => write!(f, "bad error frame: {why}"),
            E::Protocol(why) => write!(f, "protocol violation by the remote: {why}"),
            E::Lost => f.write_str("connection lost"),
            E::ParentClosed(why) => write!(f, "parent closed: {why}"),
            E::Reported(why) => write!(f, "the remote reported a violation: {why}"),
            E::Aborted(why) => write!(f, "the remote aborted: {why}"),
        }
    }
}

impl From<FrameError> for E {
    fn from(e: FrameError) -> Self {
        E::Frame(e.to_string())
    }
}

/// A connection as the channel sees it.
pub(crate) struct TestEnv {
    pub(crate) limits: Limits,
    pub(crate) budget: Option<Arc<Budget>>,
    pub(crate) awaiting_hello: bool,
    pub(crate) ssh_granted: Cell<u64>,
}

impl TestEnv {
    pub(crate) fn new() -> Self {
        TestEnv {
            limits: Limits::default(),
            budget: None,
            awaiting_hello: false,
            ssh_granted: Cell::new(0),
        }
    }

    /// Window growth reserves from a budget of `limit` bytes.
    pub(crate) fn with_budget(limit: u64) -> Self {
        TestEnv {
            budget: Some(Budget::new(limit, Level::Connection)),
            ..TestEnv::new()
        }
    }
}

impl Env for TestEnv {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn awaiting_hello(&self) -> bool {
        self.awaiting_hello
    }

    fn on_hello(&self, hello: &Headers) -> Result<(), String> {
        match hello.get("refuse") {
            Some(why) => Err(why.to_string()),
            None => Ok(()),
        }
    }

    fn reserve(&self, extra: u64) -> Option<Reservation> {
        let b = self.budget.clone()?;
        budget::reserve([Some(b), None, None], extra, Share::Half).ok()
    }

    fn can_grant_ssh(&self) -> bool {
        true
    }

    fn grant_ssh(&self, n: u32) {
        self.ssh_granted.set(self.ssh_granted.get() + u64::from(n));
    }
}

/// The set-up of a pair's channels.
pub(crate) fn spec(outgoing: bool, v2: bool) -> Spec {
    Spec {
        kind: Kind::Duplex,
        v2,
        abort_record: v2,
        outgoing,
        window: W,
        max_window: MAX_W,
        plain_buffer: 32 << 10,
        max_frame: MAX_FRAME,
    }
}

/// A channel pair: `a` opened it, `b` accepted.
pub(crate) struct Pair {
    pub(crate) a: Chan<E>,
    pub(crate) b: Chan<E>,
    pub(crate) env: TestEnv,
    /// A send turn is running on a, on b: as in the driver, a side's queue
    /// moves only once its effects asked for a turn, until it runs dry.
    turns: [bool; 2],
}

impl Pair {
    /// Opened by `a` with a full window of credit, not answered yet.
    pub(crate) fn opening(v2: bool, env: TestEnv) -> Pair {
        let mut a = Chan::new(&spec(true, v2), u64::from(W));
        let mut b = Chan::new(&spec(false, v2), 0);
        b.credit(W); // the window `a` announced in its open
        let _ = a.take_effects();
        let _ = b.take_effects();
        Pair {
            a,
            b,
            env,
            turns: [false; 2],
        }
    }

    /// Takes both sides' effects, starting the send turns they ask for.
    fn note_turns(&mut self) {
        if self.a.take_effects().send {
            self.turns[0] = true;
        }
        if self.b.take_effects().send {
            self.turns[1] = true;
        }
    }

    /// Opened and accepted.
    pub(crate) fn open(v2: bool, env: TestEnv) -> Pair {
        let mut p = Pair::opening(v2, env);
        p.b.accept_duplex(7);
        let told = p.b_to_a().unwrap_or_default();
        assert_eq!(told.first().and_then(|t| t.accepted), Some(7));
        p
    }

    #[cfg(test)]
    pub(crate) fn a_to_b(&mut self) -> Result<Vec<Told>, Violation> {
        deliver(&mut self.a, &mut self.b, &self.env, usize::MAX)
    }

    pub(crate) fn b_to_a(&mut self) -> Result<Vec<Told>, Violation> {
        deliver(&mut self.b, &mut self.a, &self.env, usize::MAX)
    }
}

/// Delivers up to `max` items `from` queued to `to`, as the SSH layer
/// would, whether or not a send turn was asked for.
pub(crate) fn deliver(
    from: &mut Chan<E>,
    to: &mut Chan<E>,
    env: &TestEnv,
    max: usize,
) -> Result<Vec<Told>, Violation> {
    deliver_turn(from, to, env, max, &mut true)
}

/// Writes as much of `data` as `ch` takes now; returns how much.
#[cfg(test)]
pub(crate) fn write(ch: &mut Chan<E>, data: &[u8]) -> usize {
    match ch.poll_write(None, data.len(), |n| Bytes::copy_from_slice(&data[..n])) {
        Poll::Ready(Ok(n)) => n,
        Poll::Ready(Err(e)) => panic!("write refused: {e:?}"),
        Poll::Pending => 0,
    }
}

/// Reads everything buffered in `ch`; `None` at the end of the stream.
#[cfg(test)]
pub(crate) fn read(ch: &mut Chan<E>, env: &TestEnv) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match ch.poll_read(usize::MAX, |b| got.extend_from_slice(b), env) {
        Poll::Ready(Ok(())) if got.is_empty() => None,
        Poll::Ready(Ok(())) | Poll::Pending => Some(got),
        Poll::Ready(Err(e)) => panic!("read failed: {e:?}"),
    }
}

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    A,
    B,
}

/// One step of a script.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Writes up to this many bytes of data (as credit allows).
    Write(Side, usize),
    /// Writes an error frame of this many bytes (or more of the one begun).
    WriteErr(Side, usize),
    /// Reads up to this many bytes of data.
    Read(Side, usize),
    /// Reads one error frame.
    ReadErr(Side),
    /// Delivers up to this many of the side's queued items to the other.
    Deliver(Side, usize),
    /// Finishes writing (with trailers if set).
    Eof(Side, bool),
    /// Closes the channel.
    Close(Side),
    /// The application drops its reader.
    DropReader(Side),
    /// A hostile remote: raw bytes on a stream (`None` = data) arrive at
    /// the side, as if from the other.
    Raw(Side, Option<u32>, Vec<u8>),
}

/// What one direction of the pair has carried.
#[derive(Default)]
struct Flow {
    /// Data bytes written (their values follow a fixed pattern).
    sent: u64,
    /// Data bytes read.
    got: u64,
    /// Error frames begun, and the unwritten rest of the current one.
    frames_sent: u32,
    frame_rest: Option<Bytes>,
    /// Error frames read.
    frames_got: u32,
    /// The writer finished (EOF or close).
    ended: bool,
    /// The reader was dropped.
    reader_gone: bool,
}

/// The byte at `offset` of a direction's data.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Runs `ops` on a fresh, accepted pair and checks after every step:
/// a remote that keeps to the protocol is never refused; a reader gets
/// exactly what was written, in order, error frames whole and in order;
/// nothing buffers more than the largest window; hostile input fails the
/// channel with a reason and never panics. At the end, unless something
/// closed or failed the channel, everything written arrives.
pub(crate) fn run(v2: bool, ops: &[Op]) -> Result<(), String> {
    let mut p = Pair::open(v2, TestEnv::with_budget(8 << 20));
    p.note_turns();
    // Index 0: a to b; 1: b to a.
    let mut flows = [Flow::default(), Flow::default()];
    let mut hostile = false;
    let mut closed = false;
    for op in ops {
        step(&mut p, &mut flows, op, &mut hostile, &mut closed)?;
        for (ch, name) in [(&p.a, "a"), (&p.b, "b")] {
            if ch.buffered() as u64 > u64::from(MAX_W) + MAX_FRAME as u64 {
                return Err(format!("{name} buffered {} bytes", ch.buffered()));
            }
        }
    }
    if hostile || closed || p.a.failed().is_some() || p.b.failed().is_some() {
        return Ok(());
    }
    // Drain both ways: everything written arrives.
    for _ in 0..100_000 {
        for side in [Side::A, Side::B] {
            step(
                &mut p,
                &mut flows,
                &Op::Deliver(side, usize::MAX),
                &mut hostile,
                &mut closed,
            )?;
            step(
                &mut p,
                &mut flows,
                &Op::Read(side, usize::MAX),
                &mut hostile,
                &mut closed,
            )?;
            step(
                &mut p,
                &mut flows,
                &Op::ReadErr(side),
                &mut hostile,
                &mut closed,
            )?;
            // Finish a frame begun, so it can arrive.
            step(
                &mut p,
                &mut flows,
                &Op::WriteErr(side, 0),
                &mut hostile,
                &mut closed,
            )?;
        }
        let done = |f: &Flow| {
            f.reader_gone
                || (f.got == f.sent && f.frame_rest.is_none() && f.frames_got == f.frames_sent)
        };
        if done(&flows[0]) && done(&flows[1]) {
            return Ok(());
        }
    }
    Err(format!(
        "stalled: a to b {}/{} bytes, {}/{} frames; b to a {}/{} bytes, {}/{} frames",
        flows[0].got,
        flows[0].sent,
        flows[0].frames_got,
        flows[0].frames_sent,
        flows[1].got,
        flows[1].sent,
        flows[1].frames_got,
        flows[1].frames_sent
    ))
}

fn step(
    p: &mut Pair,
    flows: &mut [Flow; 2],
    op: &Op,
    hostile: &mut bool,
    closed: &mut bool,
) -> Result<(), String> {
    let env = &p.env;
    // `me` is the side acting, `out` the flow it writes, `inn` the flow it
    // reads.
    let [turn_a, turn_b] = &mut p.turns;
    let (me, other, out, inn, turn) = match op_side(op) {
        Side::A => {
            let [ab, ba] = flows;
            (&mut p.a, &mut p.b, ab, ba, turn_a)
        }
        Side::B => {
            let [ab, ba] = flows;
            (&mut p.b, &mut p.a, ba, ab, turn_b)
        }
    };
    match op {
        Op::Write(_, n) => {
            if out.ended || me.failed().is_some() || me.closed_in() {
                return Ok(());
            }
            let data: Vec<u8> = (out.sent..out.sent + *n as u64).map(pattern).collect();
            match me.poll_write(None, data.len(), |k| Bytes::copy_from_slice(&data[..k])) {
                Poll::Ready(Ok(k)) => out.sent += k as u64,
                Poll::Ready(Err(e)) => return Err(format!("write refused: {e:?}")),
                Poll::Pending => {}
            }
        }
        Op::WriteErr(_, n) => {
            if out.ended || me.failed().is_some() || me.closed_in() {
                return Ok(());
            }
            let rest = match out.frame_rest.take() {
                Some(rest) => rest,
                None if *n == 0 => return Ok(()),
                None => {
                    out.frames_sent += 1;
                    let mut payload = vec![0u8; (*n).min(MAX_FRAME)];
                    payload[0] = out.frames_sent as u8;
                    frame::encode(&payload, MAX_FRAME).map_err(|e| e.to_string())?
                }
            };
            match me.poll_write(Some(EXT_ERROR), rest.len(), |k| rest.slice(..k)) {
                Poll::Ready(Ok(k)) if k < rest.len() => out.frame_rest = Some(rest.slice(k..)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(format!("error write refused: {e:?}")),
                Poll::Pending => out.frame_rest = Some(rest),
            }
        }
        Op::Read(_, n) => {
            if inn.reader_gone {
                return Ok(());
            }
            let mut got = Vec::new();
            match me.poll_read(*n, |b| got.extend_from_slice(b), env) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(e)) if *hostile || *closed => {
                    let _ = e;
                }
                Poll::Ready(Err(e)) => return Err(format!("read failed: {e:?}")),
            }
            if got.len() > *n {
                return Err(format!("read {} bytes, asked for {n}", got.len()));
            }
            for (i, b) in got.iter().enumerate() {
                if *b != pattern(inn.got + i as u64) && !*hostile {
                    return Err(format!("byte {} out of order", inn.got + i as u64));
                }
            }
            inn.got += got.len() as u64;
            if inn.got > inn.sent && !*hostile {
                return Err(format!("read {} bytes of {} written", inn.got, inn.sent));
            }
        }
        Op::ReadErr(_) => {
            if inn.reader_gone {
                return Ok(());
            }
            match me.poll_read_error(env) {
                Poll::Ready(Ok(Some(f))) => {
                    inn.frames_got += 1;
                    if f.first() != Some(&(inn.frames_got as u8)) && !*hostile {
                        return Err(format!("error frame {} out of order", inn.frames_got));
                    }
                }
                Poll::Ready(Ok(None)) | Poll::Pending => {}
                Poll::Ready(Err(_)) if *hostile || *closed => {}
                Poll::Ready(Err(e)) => return Err(format!("error read failed: {e:?}")),
            }
        }
        Op::Deliver(_, _) if !*turn => {}
        Op::Deliver(_, k) => match deliver_turn(me, other, env, *k, turn) {
            Ok(told) => {
                for t in told {
                    if let Some(r) = t.reported
                        && !*hostile
                    {
                        return Err(format!("a correct side was reported: {r}"));
                    }
                    if let Some(r) = t.aborted {
                        // The sides of this harness never abort.
                        if !*hostile {
                            return Err(format!("a correct side aborted: {r}"));
                        }
                        other.fail(E::Aborted(r));
                    }
                }
            }
            Err(why) if *hostile => {
                // What the driver does with a violation: fail, report, close.
                other.note_violation(why.to_string());
                other.fail(E::Protocol(why.to_string()));
                other.send_close_after_failure();
            }
            Err(why) => return Err(format!("a correct remote was refused: {why}")),
        },
        Op::Eof(_, trailers) => {
            if *trailers {
                let t = Headers::new().with("n", out.sent.to_string());
                let enc = t.encode(&env.limits).map_err(|e| e.to_string())?;
                match me.send_trailers(enc) {
                    Ok(()) | Err(WriteRefused::WriteClosed) => {}
                    Err(_) if me.failed().is_some() || me.closed_in() => {}
                    Err(e) => return Err(format!("trailers refused: {e:?}")),
                }
            } else {
                me.send_eof();
            }
            // A frame cut short by the EOF never finishes.
            if out.frame_rest.take().is_some() {
                *closed = true;
            }
            out.ended = true;
        }
        Op::Close(_) => {
            me.send_close();
            out.ended = true;
            *closed = true;
        }
        Op::DropReader(_) => {
            me.reader_dropped(env);
            inn.reader_gone = true;
        }
        Op::Raw(_, stream, bytes) => {
            *hostile = true;
            let r = match stream {
                None => me.on_data(bytes, env).map(|()| Told::default()),
                Some(code) => me.on_ext(*code, bytes, env),
            };
            if let Err(why) = r {
                if why.is_empty() {
                    return Err("a violation without a reason".into());
                }
                me.note_violation(why.to_string());
                me.fail(E::Protocol(why.to_string()));
                me.send_close_after_failure();
            }
        }
    }
    p.note_turns();
    Ok(())
}

/// Delivers up to `max` items of a running send turn; the turn ends when
/// the queue runs dry.
fn deliver_turn(
    from: &mut Chan<E>,
    to: &mut Chan<E>,
    env: &TestEnv,
    max: usize,
    turn: &mut bool,
) -> Result<Vec<Told>, Violation> {
    let mut told = Vec::new();
    for _ in 0..max {
        let Some(out) = from.next_out() else {
            *turn = false;
            break;
        };
        match out {
            Out::Data(b) => to.on_data(&b, env)?,
            Out::Ext(code, b) => told.push(to.on_ext(code, &b, env)?),
            Out::Eof => to.on_eof(),
            Out::Close => {
                if to.on_close() {
                    to.set_failed(E::Aborted("closed with no EOF".into()));
                }
            }
        }
    }
    Ok(told)
}

fn op_side(op: &Op) -> Side {
    match op {
        Op::Write(s, _)
        | Op::WriteErr(s, _)
        | Op::Read(s, _)
        | Op::ReadErr(s)
        | Op::Deliver(s, _)
        | Op::Eof(s, _)
        | Op::Close(s)
        | Op::DropReader(s)
        | Op::Raw(s, _, _) => *s,
    }
}

/// A script from arbitrary bytes (for the fuzz target): each op is a tag
/// byte and its arguments.
pub(crate) fn ops_from_bytes(mut data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let take = |n: usize, data: &mut &[u8]| -> Option<Vec<u8>> {
        let (a, b) = data.split_at_checked(n)?;
        *data = b;
        Some(a.to_vec())
    };
    while let Some(head) = take(3, &mut data) {
        let side = if head[0] & 1 == 0 { Side::A } else { Side::B };
        let n = usize::from(u16::from_be_bytes([head[1], head[2]])) * 2;
        let op = match (head[0] >> 1) % 12 {
            0 | 1 => Op::Write(side, n),
            2 => Op::WriteErr(side, n % MAX_FRAME + 1),
            3 | 4 => Op::Read(side, n + 1),
            5 => Op::ReadErr(side),
            6 | 7 => Op::Deliver(side, n / 8 + 1),
            8 => Op::Eof(side, head[1] & 1 == 1),
            9 => Op::Close(side),
            10 => Op::DropReader(side),
            _ => {
                let len = usize::from(head[2] % 64);
                let Some(bytes) = take(len, &mut data) else {
                    break;
                };
                let stream = match head[1] % 4 {
                    0 => None,
                    1 => Some(EXT_ERROR),
                    2 | 3 => Some(EXT_CONTROL),
                    _ => None,
                };
                Op::Raw(side, stream, bytes)
            }
        };
        ops.push(op);
        if ops.len() >= 2_000 {
            break;
        }
    }
    ops
}
