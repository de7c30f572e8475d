//! The call headers: codec, timeout and call kind. No I/O.
//!
//! A call is a channel whose service name is the method. Its open headers:
//!
//! | header        | value                                          |
//! |---------------|------------------------------------------------|
//! | `rpc-codec`   | codec name (`msgpack`, `json`); default msgpack |
//! | `rpc-timeout` | time the caller will wait, relative: `250ms`   |
//! | `rpc-kind`    | `unary`, `server-stream`, `client-stream`, `bidi` |
//! | `rpc-request` | a single-request call's request, base64 (URL-safe, no padding) |
//!
//! Requests and responses are message frames on the data stream, each one
//! encoded value; the caller sends EOF after its last request and the
//! server after its last response. A failed call ends with a status on the
//! error stream (see [`status`](crate::status)).

use std::fmt;
use std::time::Duration;

use duplex::Headers;

use crate::status::{Code, Origin, Status};

/// Header naming the codec.
pub const CODEC_HEADER: &str = "rpc-codec";
/// Header carrying the caller's timeout, as a relative duration.
pub const TIMEOUT_HEADER: &str = "rpc-timeout";
/// Header naming the call kind the caller expects.
pub const KIND_HEADER: &str = "rpc-kind";
/// Header carrying a unary or server-streaming call's request, when it is
/// small enough (see [`INLINE_MAX`]): the call then takes one round trip.
pub const REQUEST_HEADER: &str = "rpc-request";
/// Largest encoded request a caller puts in [`REQUEST_HEADER`]: 4 KiB of
/// base64, well within the default 16 KiB of headers a peer accepts.
pub const INLINE_MAX: usize = 3 << 10;

/// A request as the value of [`REQUEST_HEADER`].
pub fn encode_inline(body: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
}

/// The request in a [`REQUEST_HEADER`] value; `None` if it is not base64.
pub fn decode_inline(value: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()
}

/// The shape of a method: how many requests and responses it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStream,
    /// A stream of requests, one response.
    ClientStream,
    /// Streams both ways.
    Bidi,
    /// The handler takes the channel itself.
    Raw,
}

impl Kind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStream => "server-stream",
            Kind::ClientStream => "client-stream",
            Kind::Bidi => "bidi",
            Kind::Raw => "raw",
        }
    }

    /// Parses a header value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unary" => Kind::Unary,
            "server-stream" => Kind::ServerStream,
            "client-stream" => Kind::ClientStream,
            "bidi" => Kind::Bidi,
            "raw" => Kind::Raw,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest timeout accepted from the wire: longer ones are clamped (a
/// year is "no deadline" for any practical purpose, and keeps `Instant`
/// arithmetic from overflowing).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Formats a timeout for the header: whole milliseconds, rounded up so a
/// short timeout never becomes zero.
pub fn format_timeout(timeout: Duration) -> String {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    format!("{ms}ms")
}

/// Parses a timeout header: a decimal integer of at most 18 digits and a
/// unit (`ns`, `us`, `ms`, `s`, `m`, `h`). Values above [`MAX_TIMEOUT`] are
/// clamped to it.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return None,
    };
    Some(d.min(MAX_TIMEOUT))
}

/// The codec of a call that names none (`docs/PROTOCOL.md` 9.1).
pub(crate) const DEFAULT_CODEC: &str = "msgpack";

/// A call's open headers, checked: the server's verdict on them before any
/// handler runs (PROTOCOL.md 9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallHead {
    /// Which of the server's codecs (by index in the names given).
    pub(crate) codec: usize,
    /// The caller's timeout, if it gave one.
    pub(crate) timeout: Option<Duration>,
    /// The request sent in the open (`rpc-request`).
    pub(crate) inline: Option<Vec<u8>>,
}

impl CallHead {
    /// Checks the headers of a call to `method`, a `kind` method, against
    /// the codecs the server speaks (in the order they were added, each
    /// named by `name`); a refusal is the status to answer with and what it
    /// is for.
    pub(crate) fn parse<C>(
        method: &str,
        headers: &Headers,
        kind: Kind,
        codecs: &[C],
        name: impl Fn(&C) -> &str,
    ) -> Result<CallHead, (Origin, Status)> {
        let codec = match headers.get(CODEC_HEADER) {
            // The protocol's default, whatever order codecs were added in.
            None => codecs
                .iter()
                .position(|c| name(c) == DEFAULT_CODEC)
                .or((!codecs.is_empty()).then_some(0)),
            Some(asked) => codecs.iter().position(|c| name(c) == asked),
        };
        let Some(codec) = codec else {
            let asked = headers.get(CODEC_HEADER).unwrap_or("(none)");
            let st = Status::new(
                Code::UNIMPLEMENTED,
                format!(
                    "{method}: codec {asked:?} is not supported; this server speaks {}",
                    codecs.iter().map(&name).collect::<Vec<_>>().join(", ")
                ),
            );
            return Err((Origin::UnsupportedCodec, st));
        };
        if let Some(called) = headers.get(KIND_HEADER)
            && Kind::parse(called) != Some(kind)
        {
            let st = Status::new(
                Code::UNIMPLEMENTED,
                format!("the method is {kind}, called as {called}"),
            );
            return Err((Origin::WrongKind, st));
        }
        let timeout = match headers.get(TIMEOUT_HEADER) {
            None => None,
            Some(value) => match parse_timeout(value) {
                Some(t) => Some(t),
                None => {
                    let st = Status::invalid_argument(format!(
                        "{method}: invalid {TIMEOUT_HEADER} header {value:?} (expected for example 250ms)"
                    ));
                    return Err((Origin::BadRequest, st));
                }
            },
        };
        let inline = match headers.get(REQUEST_HEADER) {
            None => None,
            Some(_) if !matches!(kind, Kind::Unary | Kind::ServerStream) => {
                let st = Status::invalid_argument(format!(
                    "{method}: a {kind} call takes its requests as frames, not in {REQUEST_HEADER}"
                ));
                return Err((Origin::BadRequest, st));
            }
            Some(value) => match decode_inline(value) {
                Some(body) => Some(body),
                None => {
                    let st = Status::invalid_argument(format!(
                        "{method}: the {REQUEST_HEADER} header is not base64 (URL-safe, unpadded)"
                    ));
                    return Err((Origin::BadRequest, st));
                }
            },
        };
        Ok(CallHead {
            codec,
            timeout,
            inline,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timeouts() {
        assert_eq!(format_timeout(Duration::from_millis(100)), "100ms");
        assert_eq!(format_timeout(Duration::from_micros(1)), "1ms");
        assert_eq!(format_timeout(Duration::ZERO), "0ms");
        assert_eq!(parse_timeout("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("7us"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("999999999999999999h"), Some(MAX_TIMEOUT));
        assert_eq!(parse_timeout("99999999h"), Some(MAX_TIMEOUT));
        for bad in [
            "",
            "ms",
            "1",
            "1x",
            "-1ms",
            "1 ms",
            "1.5s",
            "1000000000000000000ns",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kinds() {
        for k in [
            Kind::Unary,
            Kind::ServerStream,
            Kind::ClientStream,
            Kind::Bidi,
            Kind::Raw,
        ] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("stream"), None);
    }

    fn head(pairs: &[(&str, &str)], kind: Kind) -> Result<CallHead, (Origin, Status)> {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.push(*k, *v);
        }
        CallHead::parse("Calc.Add", &h, kind, &["json", "msgpack"], |c| c)
    }

    #[test]
    fn call_heads() {
        let ok = head(&[], Kind::Unary).unwrap();
        assert_eq!(ok.codec, 1, "msgpack is the default whatever the order");
        assert_eq!((ok.timeout, ok.inline), (None, None));
        let full = head(
            &[
                (CODEC_HEADER, "json"),
                (KIND_HEADER, "unary"),
                (TIMEOUT_HEADER, "250ms"),
                (REQUEST_HEADER, &encode_inline(b"hi")),
            ],
            Kind::Unary,
        )
        .unwrap();
        assert_eq!(full.codec, 0);
        assert_eq!(full.timeout, Some(Duration::from_millis(250)));
        assert_eq!(full.inline.as_deref(), Some(&b"hi"[..]));
        let only_json =
            CallHead::parse("M", &Headers::new(), Kind::Unary, &["json"], |c| c).unwrap();
        assert_eq!(only_json.codec, 0);

        let (o, st) = head(&[(CODEC_HEADER, "cbor")], Kind::Unary).unwrap_err();
        assert_eq!(o, Origin::UnsupportedCodec);
        assert_eq!(
            st.message(),
            "Calc.Add: codec \"cbor\" is not supported; this server speaks json, msgpack"
        );
        let (o, st) = head(&[(KIND_HEADER, "bidi")], Kind::Unary).unwrap_err();
        assert_eq!(o, Origin::WrongKind);
        assert_eq!(st.message(), "the method is unary, called as bidi");
        let (o, st) = head(&[(TIMEOUT_HEADER, "soon")], Kind::Unary).unwrap_err();
        assert_eq!(o, Origin::BadRequest);
        assert!(st.message().contains("invalid rpc-timeout header \"soon\""));
        let (o, _) = head(&[(REQUEST_HEADER, "aGk")], Kind::Bidi).unwrap_err();
        assert_eq!(o, Origin::BadRequest);
        let (_, st) = head(&[(REQUEST_HEADER, "***")], Kind::Unary).unwrap_err();
        assert!(st.message().contains("not base64"));
    }

    proptest! {
        /// Any header values get a verdict, never a panic.
        #[test]
        fn call_head_never_panics(codec in ".{0,12}", kind in ".{0,12}", timeout in ".{0,24}", request in ".{0,64}") {
            let _ = head(&[(CODEC_HEADER, &codec), (KIND_HEADER, &kind), (TIMEOUT_HEADER, &timeout), (REQUEST_HEADER, &request)], Kind::ServerStream);
        }

        #[test]
        fn parse_never_panics(s in ".{0,24}") {
            let _ = parse_timeout(&s);
        }

        #[test]
        fn format_parse_round_trips(ms in 0u64..1_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_timeout(&format_timeout(d)), Some(d));
        }
    }
}
