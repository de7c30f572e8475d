//! Trust: which peers may connect to us (`authorized_keys`), and which host
//! keys we accept from the peers we connect to (`known_hosts` or pinned
//! keys). Nothing is trusted by default; the accept-anything options carry
//! `danger_` in their names.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key;
use russh::keys::ssh_key::known_hosts::{HostPatterns, Marker};
use sha1::Sha1;

use super::keys::{Fingerprint, KeyError, PublicKey};

/// One trusted client key.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// The key.
    pub key: PublicKey,
    /// The comment after the key (often `user@host`), possibly empty.
    pub comment: String,
    /// The options field before the key, verbatim (possibly empty).
    pub options: String,
    /// The peer names bound to the key (`duplex-name="..."` options): if
    /// any, the key may connect only under one of them, and no other key
    /// may use them.
    pub names: Vec<String>,
}

/// A peer claimed a name its key may not use (see [`AuthorizedKeys`] and
/// [`KnownHosts::pin_named`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameBindingError {
    /// The key has names bound to it, and this is not one of them.
    #[error("key {fingerprint} may only be used under the name(s) {allowed}, not {claimed:?}")]
    NotItsName {
        /// The key's fingerprint.
        fingerprint: Fingerprint,
        /// The name it claimed.
        claimed: String,
        /// The names bound to it.
        allowed: String,
    },
    /// The name is bound to a different key.
    #[error("the name {claimed:?} is bound to another key; key {fingerprint} may not use it")]
    TakenByAnother {
        /// The key's fingerprint.
        fingerprint: Fingerprint,
        /// The name it claimed.
        claimed: String,
    },
}

/// Checks `claimed` against name bindings `(fingerprint, name)`: a key with
/// bound names must use one of them, and a name bound to a key is that
/// key's alone.
fn check_binding<'a>(
    bindings: impl Iterator<Item = (&'a Fingerprint, &'a str)>,
    key: &Fingerprint,
    claimed: &str,
) -> Result<(), NameBindingError> {
    let mut own = Vec::new();
    let mut taken = false;
    for (k, name) in bindings {
        if k == key {
            own.push(name);
        } else if name == claimed {
            taken = true;
        }
    }
    if !own.is_empty() {
        if own.contains(&claimed) {
            return Ok(());
        }
        return Err(NameBindingError::NotItsName {
            fingerprint: key.clone(),
            claimed: claimed.to_owned(),
            allowed: own.join(", "),
        });
    }
    if taken {
        return Err(NameBindingError::TakenByAnother {
            fingerprint: key.clone(),
            claimed: claimed.to_owned(),
        });
    }
    Ok(())
}

/// The values of every `option="value"` (or `option=value`) in an
/// `authorized_keys` options field.
fn option_values(options: &str, option: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = options;
    while !rest.is_empty() {
        // One option: up to the next comma outside quotes.
        let mut in_quote = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quote => escaped = true,
                '"' => in_quote = !in_quote,
                ',' if !in_quote => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let (one, tail) = rest.split_at(end);
        rest = tail.strip_prefix(',').unwrap_or(tail);
        if let Some((name, value)) = one.split_once('=')
            && name.trim().eq_ignore_ascii_case(option)
        {
            let v = value.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            out.push(v.replace("\\\"", "\""));
        }
    }
    out
}

/// The `authorized_keys` option that binds a peer name to a key; followed
/// by `=`, also the comment token that does so in `known_hosts` lines and
/// `.pub` files.
pub(crate) const NAME_OPTION: &str = "duplex-name";

/// Why `name` breaks the peer-name rules (those of
/// [`PeerBuilder::build`](crate::PeerBuilder::build)), if it does.
fn peer_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character")
    } else {
        None
    }
}

/// A `duplex-name=` token in a key's comment that binds no valid name (see
/// [`PublicKey::bound_names`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token}: {reason}")]
#[non_exhaustive]
pub struct BoundNameError {
    /// The token, as far as it could be read.
    pub token: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The peer names bound by `duplex-name=NAME` (or `duplex-name="NAME"`)
/// tokens in a key's comment field; other tokens are ignored. A token whose
/// name breaks the peer-name rules, or an unclosed quote, is an error: a
/// binding is never silently dropped.
fn comment_names(comment: &str) -> Result<Vec<String>, BoundNameError> {
    const NAME_TOKEN: &str = "duplex-name=";
    let mut out: Vec<String> = Vec::new();
    let mut rest = comment.trim_start();
    while !rest.is_empty() {
        let is_token = rest
            .get(..NAME_TOKEN.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(NAME_TOKEN));
        let Some(value) = rest.get(NAME_TOKEN.len()..).filter(|_| is_token) else {
            // Some other token: skip it.
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            rest = rest.get(end..).unwrap_or_default().trim_start();
            continue;
        };
        let (name, tail) = if let Some(quoted) = value.strip_prefix('"') {
            let mut escaped = false;
            let mut close = None;
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(close) = close else {
                return Err(BoundNameError {
                    token: format!("{NAME_TOKEN}\"{quoted}"),
                    reason: "the quote is not closed".into(),
                });
            };
            let tail = quoted.get(close + 1..).unwrap_or_default();
            if tail.starts_with(|c: char| !c.is_whitespace()) {
                let token = quoted.split(char::is_whitespace).next().unwrap_or_default();
                return Err(BoundNameError {
                    token: format!("{NAME_TOKEN}\"{token}"),
                    reason: "text after the closing quote".into(),
                });
            }
            let name = quoted
                .get(..close)
                .unwrap_or_default()
                .replace("\\\"", "\"");
            (name, tail)
        } else {
            let end = value.find(char::is_whitespace).unwrap_or(value.len());
            let (name, tail) = value.split_at(end);
            (name.to_owned(), tail)
        };
        if let Some(why) = peer_name_problem(&name) {
            return Err(BoundNameError {
                token: format!("{NAME_TOKEN}{name:?}"),
                reason: format!(
                    "not a peer name ({why}; use 1 to 255 bytes with no control characters)"
                ),
            });
        }
        if !out.contains(&name) {
            out.push(name);
        }
        rest = tail.trim_start();
    }
    Ok(out)
}

impl PublicKey {
    /// The peer names the key's comment binds to it: each
    /// `duplex-name=NAME` token (repeatable; `duplex-name="NAME"` for a
    /// name with spaces) in the text after the key, as in a `.pub` file:
    ///
    /// ```text
    /// ssh-ed25519 AAAA... billing@host duplex-name=billing
    /// ```
    ///
    /// OpenSSH ignores the comment, so the file stays usable by `ssh`.
    /// Pass the names to [`KnownHosts::pin_named`] (or
    /// [`AuthorizedKeys::add_named`]). A token whose name breaks the
    /// peer-name rules (1 to 255 bytes, no control characters), or whose
    /// quote is not closed, is an error.
    ///
    /// ```
    /// let id = duplex::Identity::generate();
    /// let line = format!(
    ///     "{} me@host duplex-name=billing duplex-name=\"two words\"",
    ///     id.public_key().to_openssh()
    /// );
    /// let key = duplex::PublicKey::parse(&line).unwrap();
    /// assert_eq!(key.bound_names().unwrap(), ["billing", "two words"]);
    /// ```
    pub fn bound_names(&self) -> Result<Vec<String>, BoundNameError> {
        comment_names(self.0.comment().as_str_lossy())
    }
}

/// The keys allowed to connect to us, in the format of OpenSSH's
/// `authorized_keys` (options, key, comment; `#` comments).
///
/// A connecting peer's name is the SSH user name it logs in with, which it
/// chooses. To stop a trusted peer from posing as another, bind names to
/// keys with the `duplex-name` option (repeatable):
/// `duplex-name="alice" ssh-ed25519 AAAA...`. A key with bound names may
/// connect only under one of them, and a bound name may be used only by its
/// key; keys without bound names may use any name not bound to another key.
/// The names bound to one key on several lines combine: the key may use
/// any of them (a line of that key with no `duplex-name` adds no name and
/// lifts no restriction).
///
/// ```
/// let alice = duplex::Identity::generate();
/// let text = format!("# team\n{}\n", alice.public_key().to_openssh());
/// let keys = duplex::AuthorizedKeys::parse(&text).unwrap();
/// assert!(keys.authorizes(&alice.public_key()));
/// assert!(!keys.authorizes(&duplex::Identity::generate().public_key()));
///
/// let bound = format!("duplex-name=\"alice\" {}", alice.public_key().to_openssh());
/// let keys = duplex::AuthorizedKeys::parse(&bound).unwrap();
/// let alice_fp = alice.public_key().fingerprint();
/// assert!(keys.check_name(&alice_fp, "alice").is_ok());
/// assert!(keys.check_name(&alice_fp, "bob").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    entries: Vec<AuthorizedKey>,
    accept_any: bool,
}

impl AuthorizedKeys {
    /// An empty list: nobody may connect.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `authorized_keys` text. A line that does not parse is an error
    /// naming the line, rather than a silently ignored key.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (options, key) = parse_authorized_line(line).map_err(|e| KeyError::Parse {
                path: None,
                why: format!("authorized_keys line {}: {e}", n + 1),
            })?;
            entries.push(AuthorizedKey {
                comment: key.comment().to_string(),
                options: options.to_owned(),
                names: option_values(options, NAME_OPTION),
                key: PublicKey(key),
            });
        }
        Ok(Self {
            entries,
            accept_any: false,
        })
    }

    /// Reads an `authorized_keys` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        Self::parse(&text).map_err(|e| e.with_path(path))
    }

    /// Adds a key.
    pub fn add(&mut self, key: PublicKey) -> &mut Self {
        self.entries.push(AuthorizedKey {
            key,
            comment: String::new(),
            options: String::new(),
            names: Vec::new(),
        });
        self
    }

    /// Adds a key bound to a peer name: it may connect only as `name`, and
    /// no other key may use `name`. Call again to bind more names.
    pub fn add_named(&mut self, key: PublicKey, name: &str) -> &mut Self {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.key == key && !e.names.is_empty())
        {
            e.names.push(name.to_owned());
        } else {
            self.entries.push(AuthorizedKey {
                key,
                comment: String::new(),
                options: format!("{NAME_OPTION}=\"{name}\""),
                names: vec![name.to_owned()],
            });
        }
        self
    }

    /// Whether the key with this fingerprint may connect under the name
    /// `claimed`, given the names bound to keys.
    pub fn check_name(&self, key: &Fingerprint, claimed: &str) -> Result<(), NameBindingError> {
        let fps: Vec<(Fingerprint, &str)> = self
            .entries
            .iter()
            .flat_map(|e| {
                let fp = e.key.fingerprint();
                e.names.iter().map(move |n| (fp.clone(), n.as_str()))
            })
            .collect();
        check_binding(fps.iter().map(|(f, n)| (f, *n)), key, claimed)
    }

    /// Builder-style [`add`](Self::add).
    pub fn with(mut self, key: PublicKey) -> Self {
        self.add(key);
        self
    }

    /// Lets any key connect. Only for tests and demos: anyone who can reach
    /// the port becomes a peer.
    pub fn danger_accept_any() -> Self {
        Self {
            entries: Vec::new(),
            accept_any: true,
        }
    }

    /// True if `key` may connect.
    pub fn authorizes(&self, key: &PublicKey) -> bool {
        self.accept_any || self.entries.iter().any(|e| e.key == *key)
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[AuthorizedKey] {
        &self.entries
    }
}

/// Splits an `authorized_keys` line into its options field (possibly
/// empty) and key, as sshd does: a line either starts with a key type, or
/// with options (which may hold double-quoted strings with spaces) and then
/// the key.
fn parse_authorized_line(line: &str) -> Result<(&str, ssh_key::PublicKey), ssh_key::Error> {
    if let Ok(key) = ssh_key::PublicKey::from_openssh(line) {
        return Ok(("", key));
    }
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = line.len();
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            ' ' | '\t' if !in_quote => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (options, rest) = line.split_at(end);
    let key = ssh_key::PublicKey::from_openssh(rest.trim_start())?;
    Ok((options, key))
}

#[derive(Debug, Clone)]
struct KnownHost {
    patterns: HostPatterns,
    key: PublicKey,
    revoked: bool,
}

/// The host keys we accept from peers we connect to: entries in OpenSSH's
/// `known_hosts` format (patterns with `*`, `?` and `!`, `[host]:port` for
/// ports other than 22, hashed `|1|` names, `@revoked`), and keys pinned for
/// any host.
///
/// For `tcp://HOST:PORT` the name looked up is `HOST` (port 22) or
/// `[HOST]:PORT`, as OpenSSH does; for `unix:///PATH` it is `PATH`; for a
/// stream it is the label given to `connect_stream`.
///
/// # Names bound to host keys
///
/// A listener announces its peer name in its hello, and any trusted key
/// could announce any name. To stop one trusted listener from posing as
/// another, bind names to keys with a `duplex-name=NAME` token in the
/// comment field of a line (the text after the key; repeatable, and
/// `duplex-name="NAME"` for a name with spaces):
///
/// ```text
/// [10.0.0.5]:7000 ssh-ed25519 AAAA... billing host duplex-name=billing
/// ```
///
/// OpenSSH ignores the comment, so the file stays usable by `ssh`. Names
/// follow the peer-name rules (1 to 255 bytes, no control characters); a
/// token that breaks them is a parse error naming the line. The names bound
/// to one key combine over all its lines (and with
/// [`pin_named`](Self::pin_named)), whatever host each line is for. A
/// listener whose key has bound names must announce one of them, and a
/// bound name may be announced only by its key; otherwise the dialler
/// closes the connection (`ConnectError::NameRefused`). Tokens on
/// `@revoked` lines bind nothing.
///
/// ```
/// let server = duplex::Identity::generate();
/// let line = format!("[127.0.0.1]:7000 {}", server.public_key().to_openssh());
/// let kh = duplex::KnownHosts::parse(&line).unwrap();
/// assert!(kh.check("127.0.0.1", 7000, &server.public_key()).is_ok());
/// assert!(kh.check("127.0.0.1", 7001, &server.public_key()).is_err());
///
/// let named = format!("{line} duplex-name=billing");
/// let kh = duplex::KnownHosts::parse(&named).unwrap();
/// let fp = server.public_key().fingerprint();
/// assert!(kh.check_peer_name(&fp, "billing").is_ok());
/// assert!(kh.check_peer_name(&fp, "payroll").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<KnownHost>,
    pinned: Vec<PublicKey>,
    /// Peer names bound to host keys (see `pin_named`).
    names: Vec<(Fingerprint, String)>,
    accept_any: bool,
}

/// Why a host key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyError {
    /// We trust other keys for this host.
    #[error("host key mismatch for {host}: expected {}, got {actual}", fingerprints(.expected))]
    Mismatch {
        /// The host name looked up.
        host: String,
        /// The fingerprints we trust for it.
        expected: Vec<Fingerprint>,
        /// The fingerprint the remote presented.
        actual: Fingerprint,
    },
    /// We trust no key for this host.
    #[error(
        "unknown host key for {host}: {actual} is not in known_hosts and not pinned (add it to trust this host)"
    )]
    Unknown {
        /// The host name looked up.
        host: String,
        /// The fingerprint the remote presented.
        actual: Fingerprint,
    },
    /// The key is marked `@revoked`.
    #[error("host key {actual} for {host} is revoked")]
    Revoked {
        /// The host name looked up.
        host: String,
        /// The fingerprint the remote presented.
        actual: Fingerprint,
    },
}

fn fingerprints(f: &[Fingerprint]) -> String {
    f.iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl KnownHosts {
    /// An empty list: no host is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `known_hosts` text, with the names bound by `duplex-name=`
    /// comment tokens (see [`KnownHosts`]). `@cert-authority` lines are
    /// skipped (certificates are not supported).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut entries = Vec::new();
        let mut names: Vec<(Fingerprint, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry: ssh_key::known_hosts::Entry =
                line.parse().map_err(|e: ssh_key::Error| KeyError::Parse {
                    path: None,
                    why: format!("known_hosts line {}: {e}", n + 1),
                })?;
            if entry.marker() == Some(&Marker::CertAuthority) {
                continue;
            }
            let key = PublicKey(entry.public_key().clone());
            let revoked = entry.marker() == Some(&Marker::Revoked);
            let bound = key.bound_names().map_err(|e| KeyError::Parse {
                path: None,
                why: format!("known_hosts line {}: {e}", n + 1),
            })?;
            if !revoked {
                let fp = key.fingerprint();
                for name in bound {
                    add_binding(&mut names, &fp, name);
                }
            }
            entries.push(KnownHost {
                patterns: entry.host_patterns().clone(),
                key,
                revoked,
            });
        }
        Ok(Self {
            entries,
            pinned: Vec::new(),
            names,
            accept_any: false,
        })
    }

    /// Reads a `known_hosts` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        Self::parse(&text).map_err(|e| e.with_path(path))
    }

    /// Trusts `key` for every host.
    pub fn pin(&mut self, key: PublicKey) -> &mut Self {
        self.pinned.push(key);
        self
    }

    /// Builder-style [`pin`](Self::pin).
    pub fn with_pinned(mut self, key: PublicKey) -> Self {
        self.pin(key);
        self
    }

    /// Trusts `key` for every host, under the peer name `name` only: a
    /// listener with this key must announce itself as `name`, and no other
    /// listener may (so one trusted peer cannot take another's calls).
    /// Call again to bind more names to the key.
    ///
    /// To take the names from the key's own comment (a `.pub` file's
    /// `duplex-name=` tokens), pass each of
    /// [`PublicKey::bound_names`] here.
    pub fn pin_named(&mut self, key: PublicKey, name: &str) -> &mut Self {
        let fp = key.fingerprint();
        if !self.pinned.contains(&key) {
            self.pinned.push(key);
        }
        add_binding(&mut self.names, &fp, name.to_owned());
        self
    }

    /// Whether the listener with this host key may call itself `claimed`,
    /// given the names bound with [`pin_named`](Self::pin_named) and by
    /// `duplex-name=` tokens in `known_hosts` lines.
    pub fn check_peer_name(
        &self,
        key: &Fingerprint,
        claimed: &str,
    ) -> Result<(), NameBindingError> {
        check_binding(
            self.names.iter().map(|(f, n)| (f, n.as_str())),
            key,
            claimed,
        )
    }

    /// Accepts any host key. Only for tests and demos: it gives up protection
    /// against a man in the middle.
    pub fn danger_accept_any() -> Self {
        Self {
            accept_any: true,
            ..Self::default()
        }
    }

    /// Checks the key `host:port` presented.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), HostKeyError> {
        let name = if port == 22 {
            host.to_ascii_lowercase()
        } else {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        };
        self.check_name(&name, key)
    }

    pub(crate) fn check_name(&self, name: &str, key: &PublicKey) -> Result<(), HostKeyError> {
        let actual = key.fingerprint();
        let matching: Vec<&KnownHost> = self
            .entries
            .iter()
            .filter(|e| host_matches(&e.patterns, name))
            .collect();
        if matching.iter().any(|e| e.revoked && e.key == *key) {
            return Err(HostKeyError::Revoked {
                host: name.to_owned(),
                actual,
            });
        }
        if self.accept_any
            || self.pinned.contains(key)
            || matching.iter().any(|e| !e.revoked && e.key == *key)
        {
            return Ok(());
        }
        let expected: Vec<Fingerprint> = matching
            .iter()
            .filter(|e| !e.revoked)
            .map(|e| e.key.fingerprint())
            .chain(self.pinned.iter().map(PublicKey::fingerprint))
            .collect();
        if expected.is_empty() {
            Err(HostKeyError::Unknown {
                host: name.to_owned(),
                actual,
            })
        } else {
            Err(HostKeyError::Mismatch {
                host: name.to_owned(),
                expected,
                actual,
            })
        }
    }
}

/// Binds `name` to `fp`, once.
fn add_binding(names: &mut Vec<(Fingerprint, String)>, fp: &Fingerprint, name: String) {
    if !names.iter().any(|(f, n)| f == fp && *n == name) {
        names.push((fp.clone(), name));
    }
}

fn host_matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(salt) else {
                return false;
            };
            mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for p in list {
                let p = p.to_ascii_lowercase();
                if let Some(neg) = p.strip_prefix('!') {
                    if glob(neg.as_bytes(), name.as_bytes()) {
                        return false;
                    }
                } else if glob(p.as_bytes(), name.as_bytes()) {
                    positive = true;
                }
            }
            positive
        }
    }
}

/// `*` and `?` glob matching, iterative (no recursion depth to exhaust).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests;
