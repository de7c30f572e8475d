//! Channel headers and their wire encoding.
//!
//! Headers are ordered key/value pairs (duplicates allowed). On the wire they
//! travel in the `originator address` string of a `direct-tcpip` channel open
//! as `key=value` pairs joined by `&`, with every byte outside the unreserved
//! set percent-encoded (`%XX`, upper-case hex). The encoding is ASCII, so it
//! survives any SSH implementation that treats the field as a string.

use std::fmt;

use super::Limits;

/// Ordered key/value pairs sent when a channel is opened (and, later, as
/// trailers when it is finished).
///
/// Keys are non-empty; keys and values are UTF-8 strings. Order is kept and a
/// key may appear more than once.
///
/// ```
/// use duplex::Headers;
/// let mut h = Headers::new();
/// h.push("content-type", "text/plain");
/// h.push("trace", "a b&c");
/// assert_eq!(h.get("trace"), Some("a b&c"));
/// assert_eq!(h.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every key and value, one after the other, in one buffer (two
    /// allocations for the whole list, not two per pair).
    text: String,
    /// Where each pair's key and value end in `text`; a key starts where
    /// the pair before ended.
    ends: Vec<(usize, usize)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a pair. Validation (non-empty key, size limits) happens when the
    /// headers are sent.
    pub fn push(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> &mut Self {
        self.text.push_str(key.as_ref());
        let key_end = self.text.len();
        self.text.push_str(value.as_ref());
        self.ends.push((key_end, self.text.len()));
        self
    }

    /// Builder-style [`push`](Self::push).
    pub fn with(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.push(key, value);
        self
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every value for `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, end)| {
            let key = self.text.get(start..key_end).unwrap_or_default();
            let value = self.text.get(key_end..end).unwrap_or_default();
            start = end;
            (key, value)
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Encodes for the wire, checking the limits a receiver with the same
    /// limits would apply.
    pub(crate) fn encode(&self, limits: &Limits) -> Result<String, HeaderError> {
        let mut out = String::with_capacity(self.encoded_len_guess());
        self.encode_into(&mut out, limits)?;
        Ok(out)
    }

    /// The header block of an open: the opener's initial receive window
    /// (`@window=N`, `docs/PROTOCOL.md` section 3), then the pairs as
    /// [`encode`](Self::encode) makes them, built in one buffer. The limits
    /// apply to the pairs, as in `encode`.
    pub(crate) fn encode_with_window(
        &self,
        window: u32,
        limits: &Limits,
    ) -> Result<String, HeaderError> {
        let mut out = String::with_capacity(WINDOW_PREFIX.len() + 11 + self.encoded_len_guess());
        out.push_str(WINDOW_PREFIX);
        push_decimal(&mut out, window);
        if !self.is_empty() {
            out.push('&');
        }
        self.encode_into(&mut out, limits)?;
        Ok(out)
    }

    /// The encoded length if nothing needs escaping (the usual case), so
    /// the block is built without growing its buffer.
    fn encoded_len_guess(&self) -> usize {
        self.text.len() + 2 * self.ends.len()
    }

    /// Appends the encoded pairs to `out`, checking the limits.
    fn encode_into(&self, out: &mut String, limits: &Limits) -> Result<(), HeaderError> {
        if self.len() > limits.max_header_count {
            return Err(HeaderError::TooMany {
                count: self.len(),
                max: limits.max_header_count,
            });
        }
        let start = out.len();
        for (i, (k, v)) in self.iter().enumerate() {
            if k.is_empty() {
                return Err(HeaderError::EmptyKey);
            }
            if i > 0 {
                out.push('&');
            }
            escape_into(k, out);
            out.push('=');
            escape_into(v, out);
        }
        let len = out.len() - start;
        if len > limits.max_header_bytes {
            return Err(HeaderError::TooLarge {
                len,
                max: limits.max_header_bytes,
            });
        }
        Ok(())
    }

    /// Decodes the wire form, enforcing `limits` before allocating per pair.
    pub(crate) fn decode(s: &str, limits: &Limits) -> Result<Self, HeaderError> {
        if s.len() > limits.max_header_bytes {
            return Err(HeaderError::TooLarge {
                len: s.len(),
                max: limits.max_header_bytes,
            });
        }
        let mut h = Self::default();
        if s.is_empty() {
            return Ok(h);
        }
        // One allocation for each buffer (the count is checked below as
        // the pairs are taken).
        let count = s.bytes().filter(|&b| b == b'&').count() + 1;
        h.ends.reserve_exact(count.min(limits.max_header_count));
        h.text.reserve_exact(s.len());
        for pair in s.split('&') {
            if h.len() == limits.max_header_count {
                return Err(HeaderError::TooMany {
                    count: s.split('&').count(),
                    max: limits.max_header_count,
                });
            }
            let (k, v) = pair.split_once('=').ok_or(HeaderError::Malformed)?;
            let start = h.text.len();
            unescape_into(k, &mut h.text)?;
            let key_end = h.text.len();
            if key_end == start {
                return Err(HeaderError::EmptyKey);
            }
            unescape_into(v, &mut h.text)?;
            h.ends.push((key_end, h.text.len()));
        }
        Ok(h)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Self::default();
        for (k, v) in iter {
            h.push(k, v);
        }
        h
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

/// The first pair of an open's header block when it carries the opener's
/// initial receive window: `@window=N` (`docs/PROTOCOL.md` section 3).
const WINDOW_PREFIX: &str = "%40window=";

/// The block in two steps (the reference `encode_with_window` is tested
/// against).
#[cfg(test)]
pub(crate) fn with_window(window: u32, encoded: &str) -> String {
    if encoded.is_empty() {
        format!("{WINDOW_PREFIX}{window}")
    } else {
        format!("{WINDOW_PREFIX}{window}&{encoded}")
    }
}

/// Splits the opener's initial window (if the block starts with it) from
/// the application's headers. The window is 1 to 10 decimal digits that
/// fit in a u32; anything else is malformed.
pub(crate) fn split_window(block: &str) -> Result<(Option<u32>, &str), HeaderError> {
    let Some(rest) = block.strip_prefix(WINDOW_PREFIX) else {
        if block.starts_with("@window=") {
            return Err(HeaderError::BadWindow(
                "its '@' is not percent-encoded (send %40window=N)",
            ));
        }
        return Ok((None, block));
    };
    let (digits, headers) = match rest.split_once('&') {
        Some((_, "")) => return Err(HeaderError::BadWindow("an '&' with nothing after it")),
        Some((d, h)) => (d, h),
        None => (rest, ""),
    };
    if digits.is_empty() {
        return Err(HeaderError::BadWindow("no digits"));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::BadWindow("not decimal digits"));
    }
    if digits.len() > 10 {
        return Err(HeaderError::BadWindow("more than 10 digits"));
    }
    let window = digits
        .parse()
        .map_err(|_| HeaderError::BadWindow("over 4294967295"))?;
    Ok((Some(window), headers))
}

/// Why a header block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// More pairs than the configured maximum.
    #[error("too many headers: {count} (the limit is {max})")]
    TooMany {
        /// Pairs seen (or sent).
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The encoded block is larger than the configured maximum.
    #[error("header block too large: {len} bytes encoded (the limit is {max})")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A header key is empty.
    #[error("header key is empty")]
    EmptyKey,
    /// A pair without `=`, or a bad `%XX` escape.
    #[error("malformed header block (expected key=value pairs joined by '&', %XX escapes)")]
    Malformed,
    /// The opener's `@window` pair (PROTOCOL.md section 3) is malformed.
    #[error("malformed @window pair: {0}")]
    BadWindow(&'static str),
    /// An escape decodes to bytes that are not UTF-8.
    #[error("header is not valid UTF-8 after unescaping")]
    NotUtf8,
}

/// Which bytes go on the wire as they are (a table: this runs for every
/// byte of every header block, both ways). Built at compile time: a `u8`
/// index into 256 entries, and any panic here would fail the build.
#[allow(clippy::indexing_slicing)]
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b: u8 = 0;
    loop {
        table[b as usize] = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b',');
        if b == u8::MAX {
            break table;
        }
        b += 1;
    }
};

fn is_unreserved(b: u8) -> bool {
    UNRESERVED.get(usize::from(b)).copied().unwrap_or(false)
}

/// Appends `s` percent-encoded: runs of unreserved bytes are copied whole.
fn escape_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut run = 0; // where the current run of unreserved bytes starts
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if is_unreserved(b) {
            continue;
        }
        // A run is ASCII and starts and ends at char boundaries (a byte
        // outside it is escaped, and so is every byte of a non-ASCII
        // char); an empty one may not, and `get` gives `None` for it.
        out.push_str(s.get(run..i).unwrap_or(""));
        out.push('%');
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or(""));
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: u32) {
    use std::fmt::Write;
    let _ = write!(out, "{n}");
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `s` percent-decoded to `out`.
fn unescape_into(s: &str, out: &mut String) -> Result<(), HeaderError> {
    // Nothing escaped (the usual case): the text as it is, once every byte
    // is known to be allowed (one pass over it).
    if s.bytes().all(is_unreserved) {
        out.push_str(s);
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = it.next().and_then(hex_val).ok_or(HeaderError::Malformed)?;
            let lo = it.next().and_then(hex_val).ok_or(HeaderError::Malformed)?;
            bytes.push(hi << 4 | lo);
        } else if is_unreserved(b) {
            bytes.push(b);
        } else {
            return Err(HeaderError::Malformed);
        }
    }
    out.push_str(std::str::from_utf8(&bytes).map_err(|_| HeaderError::NotUtf8)?);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_openers_window_leads_the_block() {
        let h = Headers::from([("k", "v")]);
        let s = with_window(1 << 20, &h.encode(&Limits::default()).unwrap());
        assert_eq!(s, "%40window=1048576&k=v");
        assert_eq!(split_window(&s).unwrap(), (Some(1 << 20), "k=v"));
        assert_eq!(with_window(7, ""), "%40window=7");
        assert_eq!(split_window("%40window=7").unwrap(), (Some(7), ""));
        assert_eq!(
            split_window("%40window=4294967295&a=b").unwrap(),
            (Some(u32::MAX), "a=b")
        );
        // An application's own `@window` pair, later in the block, is only
        // a header.
        assert_eq!(
            split_window("a=b&%40window=1").unwrap(),
            (None, "a=b&%40window=1")
        );
        assert_eq!(split_window("").unwrap(), (None, ""));
        for (bad, why) in [
            ("%40window=", "no digits"),
            ("%40window=&a=b", "no digits"),
            ("%40window=4294967296", "over 4294967295"),
            ("%40window=99999999999", "more than 10 digits"),
            ("%40window=-1", "not decimal digits"),
            ("%40window=1x", "not decimal digits"),
            ("%40window=1&", "an '&' with nothing after it"),
            ("%40window= 1", "not decimal digits"),
        ] {
            assert_eq!(split_window(bad), Err(HeaderError::BadWindow(why)), "{bad}");
        }
    }

    #[test]
    fn the_unreserved_bytes_are_the_documented_set() {
        let set = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:,";
        for b in 0..=u8::MAX {
            assert_eq!(is_unreserved(b), set.contains(&b), "byte {b:#04x}");
        }
    }

    #[test]
    fn golden_encoding() {
        let h = Headers::from([("k", "v"), ("a b", "x=y&z"), ("k", "é")]);
        let s = h.encode(&Limits::default()).unwrap();
        assert_eq!(s, "k=v&a%20b=x%3Dy%26z&k=%C3%A9");
        assert_eq!(Headers::decode(&s, &Limits::default()).unwrap(), h);
        assert_eq!(
            Headers::decode("", &Limits::default()).unwrap(),
            Headers::new()
        );
        assert_eq!(Headers::new().encode(&Limits::default()).unwrap(), "");
    }

    #[test]
    fn rejects_malformed() {
        let l = Limits::default();
        for bad in ["k", "=v", "k=v&", "k=%4", "k=%zz", "k=a b", "k=%FF"] {
            assert!(Headers::decode(bad, &l).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_header_count: 2,
            max_header_bytes: 16,
        };
        assert!(matches!(
            Headers::decode("a=1&b=2&c=3", &l),
            Err(HeaderError::TooMany { count: 3, max: 2 })
        ));
        assert!(matches!(
            Headers::decode("a=12345678901234567890", &l),
            Err(HeaderError::TooLarge { .. })
        ));
        let h = Headers::from([("a", "1"), ("b", "2"), ("c", "3")]);
        assert!(h.encode(&l).is_err());
        assert!(h.encode_with_window(1, &l).is_err());
        // The byte limit is the pairs', not the window's.
        let h = Headers::from([("a", "12345678901234")]);
        assert_eq!(h.encode(&l).unwrap().len(), 16);
        assert_eq!(
            h.encode_with_window(u32::MAX, &l).unwrap(),
            "%40window=4294967295&a=12345678901234"
        );
        let h = Headers::from([("a", "123456789012345")]);
        assert!(matches!(
            h.encode_with_window(1, &l),
            Err(HeaderError::TooLarge { len: 17, max: 16 })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::vec((".{1,12}", ".{0,20}"), 0..8)) {
            let h: Headers = pairs.into_iter().collect();
            let l = Limits { max_header_bytes: 1 << 20, ..Limits::default() };
            let s = h.encode(&l).unwrap();
            prop_assert!(s.is_ascii());
            prop_assert_eq!(Headers::decode(&s, &l).unwrap(), h);
        }

        #[test]
        fn escaping_matches_byte_by_byte(s in "\\PC{0,40}") {
            let mut fast = String::new();
            escape_into(&s, &mut fast);
            let mut slow = String::new();
            for &b in s.as_bytes() {
                if is_unreserved(b) {
                    slow.push(char::from(b));
                } else {
                    slow.push_str(&format!("%{b:02X}"));
                }
            }
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn the_open_block_is_the_window_then_the_pairs(
            window: u32,
            pairs in proptest::collection::vec((".{1,12}", ".{0,20}"), 0..8),
        ) {
            let h: Headers = pairs.into_iter().collect();
            let l = Limits { max_header_bytes: 1 << 20, ..Limits::default() };
            let block = h.encode_with_window(window, &l).unwrap();
            prop_assert_eq!(&block, &with_window(window, &h.encode(&l).unwrap()));
            let (w, rest) = split_window(&block).unwrap();
            prop_assert_eq!(w, Some(window));
            prop_assert_eq!(Headers::decode(rest, &l).unwrap(), h);
        }

        #[test]
        fn decode_never_panics(s in ".{0,64}") {
            let _ = Headers::decode(&s, &Limits::default());
        }
    }
}
