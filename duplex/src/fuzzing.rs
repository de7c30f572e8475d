//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a
//! stable API). Each one feeds arbitrary bytes to a decoder of remote input
//! the way the connection code does, and checks the decoder's invariants:
//! no panic, nothing longer than its limit, and re-encoding what was
//! decoded gives it back.

use crate::proto::Limits;
use crate::proto::control::{self, Control, Parser};
use crate::proto::frame::Assembler;
use crate::proto::headers::{Headers, split_window};
use crate::proto::hello;
use crate::proto::nest::ParentRef;
use crate::proto::service::ServiceName;

/// Splits `data` into chunks whose sizes come from the data itself: the
/// first byte is a seed for the chunk sizes, the rest is the stream.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (seed, mut rest) = match data.split_first() {
        Some((s, r)) => (usize::from(*s), r),
        None => (1, data),
    };
    let mut i = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        i = i.wrapping_add(1);
        let n = (seed.wrapping_mul(i) % 97 + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        Some(a)
    })
}

/// Error and data frames, reassembled from arbitrary chunks with a small
/// frame limit.
pub fn frames(data: &[u8]) {
    const MAX: usize = 1024;
    let mut asm = Assembler::new(MAX);
    for chunk in chunks(data) {
        match asm.push(chunk) {
            Ok(frames) => {
                for f in frames {
                    assert!(f.len() <= MAX, "frame over the limit");
                }
                assert!(asm.partial_len() <= MAX + 4, "buffered more than a frame");
            }
            Err(_) => return,
        }
    }
    let _ = asm.finish();
}

/// Control records, as a stream of chunks and one by one.
pub fn control(data: &[u8]) {
    let mut parser = Parser::new();
    for chunk in chunks(data) {
        match parser.push(chunk) {
            Ok(records) => {
                for r in records {
                    check_control(&r);
                }
            }
            Err(_) => break,
        }
    }
    if let Ok(r) = Control::decode(data) {
        check_control(&r);
    }
}

fn check_control(r: &Control) {
    let framed = r.encode();
    assert!(
        framed.len() <= control::MAX_RECORD + 4,
        "record over the limit"
    );
    let body = framed.get(4..).unwrap_or_default();
    match Control::decode(body) {
        Ok(back) => assert_eq!(&back, r, "control record does not round-trip"),
        Err(e) => panic!("re-encoded record does not decode: {e}"),
    }
}

/// The metadata of a channel open: the parent reference (two numbers),
/// the service name and the header block.
pub fn open_meta(data: &[u8]) {
    let word = |i: usize| {
        data.get(i..i + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0)
    };
    if let Ok(Some(p)) = ParentRef::decode(word(0), word(4)) {
        let (port, orig) = ParentRef::encode(Some(p)).unwrap_or_default();
        assert_eq!(ParentRef::decode(port, orig).ok(), Some(Some(p)));
    }
    let rest = data.get(8..).unwrap_or_default();
    let (service, headers) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    if let Ok(s) = std::str::from_utf8(service)
        && let Ok(name) = ServiceName::new_any(s)
    {
        assert!(name.as_str().len() <= 255);
    }
    if let Ok(text) = std::str::from_utf8(headers) {
        let limits = Limits::default();
        // As the connection does: the opener's window, then the headers.
        let Ok((window, text)) = split_window(text) else {
            return;
        };
        if let Ok(h) = Headers::decode(text, &limits) {
            assert!(h.len() <= limits.max_header_count, "too many headers");
            let again = h
                .encode(&limits)
                .unwrap_or_else(|e| panic!("decoded headers do not encode: {e}"));
            let back = Headers::decode(&again, &limits).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, h, "headers do not round-trip");
            // The same block as a hello, both ways (section 2): the chosen
            // version is always one both sides speak.
            if let Ok(v) = hello::listener_choose(&h, "fuzz") {
                assert!((hello::MIN_VERSION..=hello::MAX_VERSION).contains(&v.0));
            }
            if let Ok((_, v)) = hello::dialler_check(&h) {
                assert!((hello::MIN_VERSION..=hello::MAX_VERSION).contains(&v.0));
            }
            if let Some(w) = window {
                // The block an opener builds: the window, then the pairs.
                let block = h
                    .encode_with_window(w, &limits)
                    .unwrap_or_else(|e| panic!("decoded headers do not encode: {e}"));
                assert_eq!(split_window(&block), Ok((Some(w), again.as_str())));
            }
        }
    }
}

/// Two channel state machines back to back, driven by a script decoded
/// from the data (writes, reads, error frames, trailers, half-closes,
/// closes, partial deliveries, raw records from a hostile remote), with
/// the pair's invariants checked after every step (see
/// `proto::chan::pair::run`): a correct remote is never refused, readers
/// get what was written in order, buffers stay bounded, and hostile input
/// fails the channel with a reason.
pub fn chan_pair(data: &[u8]) {
    use crate::proto::chan::pair;
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let ops = pair::ops_from_bytes(rest);
    if let Err(e) = pair::run(first & 1 == 1, &ops) {
        panic!("channel pair invariant broken: {e}");
    }
}

/// Two connections back to back, each a channel table (`proto::mux`) of
/// channel state machines, driven by a script decoded from the data: opens
/// from both sides, nested in channels of either side (and raw parent
/// references), accepts and rejects, writes, reads, half-closes, closes,
/// partial send turns and deliveries, raw records from a hostile remote;
/// with both sides' invariants checked after every step (see
/// `proto::pair::run`): the mux's index and tree stay consistent, nothing
/// escapes a cascade, pending counts match, buffers and windows stay
/// bounded, readers get what was written, a violation is seen only on a
/// channel a hostile remote touched.
pub fn mux_pair(data: &[u8]) {
    use crate::proto::pair;
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let ops = pair::ops_from_bytes(rest);
    if let Err(e) = pair::run(first & 1 == 1, &ops) {
        panic!("connection pair invariant broken: {e}");
    }
}
