//! The hello exchange (PROTOCOL.md section 2), without I/O: what the
//! dialler sends, how the listener chooses the connection's version, and
//! how the dialler checks the answer.

use super::headers::Headers;

/// The lowest protocol version this implementation speaks.
pub(crate) const MIN_VERSION: u32 = 1;
/// The highest protocol version this implementation speaks.
pub(crate) const MAX_VERSION: u32 = 3;

/// What a connection's version changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(pub(crate) u32);

impl Version {
    /// Version 2: half-close is an `EOF` record and SSH EOF comes only
    /// when nothing but the close follows (RFC 4254 section 5.3).
    pub(crate) fn eof_record(self) -> bool {
        self.0 >= 2
    }

    /// Version 3: a channel abandoned unfinished says why, in an `ABORT`
    /// record before its close.
    pub(crate) fn abort_record(self) -> bool {
        self.0 >= 3
    }
}

/// The dialler's hello header block: its name, the lowest version it
/// speaks (`version`, which version-1 listeners compare with `1`) and the
/// highest (`max-version`).
pub(crate) fn dialler_hello(name: &str) -> Headers {
    Headers::new()
        .with("name", name)
        .with("version", MIN_VERSION.to_string())
        .with("max-version", MAX_VERSION.to_string())
}

/// The listener's answer in its `HELLO` record.
pub(crate) fn listener_hello(name: &str, version: Version) -> Headers {
    Headers::new()
        .with("name", name)
        .with("version", version.0.to_string())
}

/// A version number as the hello carries it: 1 to 9 decimal digits.
fn parse_version(v: &str) -> Option<u32> {
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The listener's checks of a dialler's hello: its name must be the SSH
/// user name it authenticated with, and the versions must overlap. Returns
/// the connection's version, or the reason for refusing the hello.
pub(crate) fn listener_choose(hello: &Headers, user: &str) -> Result<Version, String> {
    match hello.get("name") {
        None => return Err("the hello has no name (it must carry the dialler's peer name)".into()),
        Some(n) if n != user => {
            return Err(format!(
                "the hello names the dialler {n:?}, but it authenticated as {user:?}; the two must be equal"
            ));
        }
        Some(_) => {}
    }
    let Some(low) = hello.get("version") else {
        return Err(format!(
            "the hello has no version; this peer speaks versions {MIN_VERSION} to {MAX_VERSION}"
        ));
    };
    let Some(low) = parse_version(low) else {
        return Err(format!(
            "the hello's version {low:?} is not a number; this peer speaks versions {MIN_VERSION} to {MAX_VERSION}"
        ));
    };
    let high = match hello.get("max-version") {
        None => low,
        Some(h) => match parse_version(h) {
            Some(h) if h >= low => h,
            _ => {
                return Err(format!(
                    "the hello's max-version {h:?} is not a number at least its version {low}"
                ));
            }
        },
    };
    if low > MAX_VERSION || high < MIN_VERSION {
        return Err(format!(
            "Duplex protocol version mismatch: the dialler speaks versions {low} to {high}, this peer speaks {MIN_VERSION} to {MAX_VERSION}"
        ));
    }
    Ok(Version(high.min(MAX_VERSION)))
}

/// The dialler's checks of the listener's `HELLO`: the listener's name and
/// the connection's version.
pub(crate) fn dialler_check(answer: &Headers) -> Result<(String, Version), String> {
    let version = answer.get("version").unwrap_or("");
    let v = parse_version(version)
        .filter(|v| (MIN_VERSION..=MAX_VERSION).contains(v))
        .ok_or_else(|| {
            format!(
                "protocol version mismatch: the listener answered version {version:?}, we speak {MIN_VERSION} to {MAX_VERSION}"
            )
        })?;
    let name = answer
        .get("name")
        .ok_or_else(|| "the listener's hello has no name".to_owned())?;
    Ok((name.to_owned(), Version(v)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h = h.with(*k, *v);
        }
        h
    }

    #[test]
    fn our_hello_offers_both_versions() {
        let ours = dialler_hello("alice");
        assert_eq!(listener_choose(&ours, "alice"), Ok(Version(3)));
        let enc = ours.encode(&super::super::Limits::default()).unwrap();
        assert_eq!(enc, "name=alice&version=1&max-version=3");
    }

    #[test]
    fn version_one_diallers_get_version_one() {
        let v1 = h(&[("name", "a"), ("version", "1")]);
        assert_eq!(listener_choose(&v1, "a"), Ok(Version(1)));
        assert!(!Version(1).eof_record());
        assert!(Version(2).eof_record());
        assert!(!Version(2).abort_record());
        assert!(Version(3).abort_record() && Version(3).eof_record());
    }

    #[test]
    fn a_future_dialler_is_met_at_our_highest() {
        let v = h(&[("name", "a"), ("version", "1"), ("max-version", "7")]);
        assert_eq!(listener_choose(&v, "a"), Ok(Version(3)));
        // A version-2 dialler gets version 2.
        let v = h(&[("name", "a"), ("version", "1"), ("max-version", "2")]);
        assert_eq!(listener_choose(&v, "a"), Ok(Version(2)));
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            (h(&[("version", "1")]), "has no name"),
            (h(&[("name", "b"), ("version", "1")]), "authenticated as"),
            (h(&[("name", "a")]), "has no version"),
            (h(&[("name", "a"), ("version", "x")]), "not a number"),
            (h(&[("name", "a"), ("version", "4")]), "version mismatch"),
            (
                h(&[("name", "a"), ("version", "2"), ("max-version", "1")]),
                "max-version",
            ),
            (
                h(&[("name", "a"), ("version", "0"), ("max-version", "0")]),
                "mismatch",
            ),
            (
                h(&[("name", "a"), ("version", "99999999999")]),
                "not a number",
            ),
        ];
        for (hello, want) in cases {
            let err = listener_choose(&hello, "a").unwrap_err();
            assert!(err.contains(want), "{err} does not contain {want}");
        }
    }

    #[test]
    fn dialler_checks_the_answer() {
        let ok = listener_hello("srv", Version(2));
        assert_eq!(dialler_check(&ok), Ok(("srv".into(), Version(2))));
        assert!(dialler_check(&h(&[("name", "s"), ("version", "4")])).is_err());
        assert!(dialler_check(&h(&[("name", "s"), ("version", "0")])).is_err());
        assert!(
            dialler_check(&h(&[("version", "1")]))
                .unwrap_err()
                .contains("no name")
        );
    }
}
