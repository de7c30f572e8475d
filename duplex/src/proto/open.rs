//! The verdict on a channel open the remote sent, without I/O: every check
//! of an incoming open (service name, limits, the open's headers and window,
//! its parent reference, nesting rules) and of the listener's side of the
//! hello, as pure functions of the open's fields, the connection's counts
//! and the configuration. Each refusal carries the SSH reason code and the
//! text the opener reads, naming the limit and the `Config` knob that
//! raises it (PROTOCOL.md sections 2, 3, 6 and 8).

use std::time::Duration;

use super::Limits;
use super::headers::{Headers, split_window};
use super::hello::{self, Version};
use super::nest::ParentRef;
use super::service::ServiceName;

/// SSH open failure reason code "administratively prohibited" (RFC 4254
/// section 5.1).
pub(crate) const OPEN_PROHIBITED: u32 = 1;
/// SSH open failure reason code "resource shortage".
pub(crate) const OPEN_RESOURCE_SHORTAGE: u32 = 4;

/// The open as the remote sent it (a `direct-tcpip` channel open).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenFields<'a> {
    /// The host to connect: the service.
    pub(crate) service: &'a str,
    /// The originator address: `@window` and the headers (Duplex), or an
    /// address (a plain SSH client).
    pub(crate) originator: &'a str,
    /// Whose number the parent reference is (see `nest`).
    pub(crate) port_to_connect: u32,
    /// The parent's number plus one, or 0 (see `nest`).
    pub(crate) originator_port: u32,
}

/// What the connection knows when an open arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditions<'a> {
    /// Our peer name, for the texts.
    pub(crate) me: &'a str,
    /// The remote speaks Duplex on this connection (it is the listener, or
    /// it said hello).
    pub(crate) duplex: bool,
    /// Our peer is shutting down.
    pub(crate) draining: bool,
    /// Channels on the connection now, pending ones included.
    pub(crate) channels: usize,
    /// Channels waiting for the application to accept them.
    pub(crate) pending: usize,
}

/// The limits that apply to incoming opens (from `Config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenLimits<'a> {
    pub(crate) max_channels: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_nesting_depth: u32,
    pub(crate) accept_channels: bool,
    pub(crate) headers: &'a Limits,
}

/// An open refused at the SSH level (an open failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: u32,
    pub(crate) reason: String,
    /// What was wrong.
    pub(crate) cause: Cause,
}

/// What an open was refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Not a valid service name: the open does not count as the
    /// connection's first (a hello may still follow).
    Name,
    /// A limit was reached: the refusal is logged (rate-limited) with who
    /// asked, since a remote may be probing it.
    Limit,
    /// Anything else: reserved, malformed, shutting down, not accepted.
    Other,
}

impl Refusal {
    fn prohibited(reason: impl Into<String>) -> Self {
        Refusal {
            code: OPEN_PROHIBITED,
            reason: reason.into(),
            cause: Cause::Other,
        }
    }

    fn limit(reason: String) -> Self {
        Refusal {
            code: OPEN_RESOURCE_SHORTAGE,
            reason,
            cause: Cause::Limit,
        }
    }
}

/// A well-formed open, to be accepted if the application (or the parent)
/// takes it and the memory budgets have room.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accepted {
    pub(crate) service: ServiceName,
    pub(crate) headers: Headers,
    /// The opener's initial receive window (credit to send with), if it
    /// announced one.
    pub(crate) window: Option<u32>,
    /// The parent of a nested open.
    pub(crate) parent: Option<ParentRef>,
    /// A Duplex channel (else a plain SSH client's).
    pub(crate) duplex: bool,
}

/// The verdict on an incoming open.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// The connection's first open from a dialler, for `@hello`: see
    /// [`hello_verdict`].
    Hello,
    /// Refuse the SSH open.
    Refuse(Refusal),
    /// Accept the SSH open only to send `REJECT` with this reason and
    /// close: a Duplex opener reads the whole reason that way.
    Reject(String),
    /// Take it (see [`Accepted`]).
    Accept(Accepted),
}

impl Verdict {
    /// Whether this open counts as the connection's first (a later hello
    /// is refused). Everything but a hello and a malformed name does.
    pub(crate) fn ends_hello(&self) -> bool {
        !matches!(
            self,
            Verdict::Hello
                | Verdict::Refuse(Refusal {
                    cause: Cause::Name,
                    ..
                })
        )
    }
}

/// Checks an incoming open, in the order of PROTOCOL.md: the service name,
/// the hello, reserved names, shutdown, the channel and pending limits, the
/// open's window and headers, its parent reference, and whether we accept
/// channels at all. What is left to the caller needs the connection's
/// tables and queues: the parent's lookup ([`nested_verdict`]), the accept
/// queue and the memory budgets.
pub(crate) fn verdict(
    open: &OpenFields<'_>,
    at: &Conditions<'_>,
    limits: &OpenLimits<'_>,
    inbound: bool,
) -> Verdict {
    let service = match ServiceName::new_any(open.service) {
        Ok(s) => s,
        Err(e) => {
            return Verdict::Refuse(Refusal {
                cause: Cause::Name,
                ..Refusal::prohibited(e.to_string())
            });
        }
    };
    if !at.duplex && inbound && service.as_str() == super::HELLO_SERVICE {
        return Verdict::Hello;
    }
    if service.is_reserved() {
        return Verdict::Refuse(Refusal::prohibited(format!(
            "service {service} is reserved"
        )));
    }
    if at.draining {
        return Verdict::Refuse(Refusal {
            code: OPEN_RESOURCE_SHORTAGE,
            reason: "the peer is shutting down".into(),
            cause: Cause::Other,
        });
    }
    let me = at.me;
    if at.channels >= limits.max_channels {
        return Verdict::Refuse(Refusal::limit(format!(
            "too many channels on this connection to {me} (limit {}, Config::max_channels_per_connection)",
            limits.max_channels
        )));
    }
    if at.pending >= limits.max_pending {
        return Verdict::Refuse(Refusal::limit(format!(
            "too many channels waiting for {me}'s application to accept them (limit {}, Config::max_pending_channels)",
            limits.max_pending
        )));
    }
    if !at.duplex {
        // A plain client's originator is an address, not headers, and it
        // cannot nest.
        if !limits.accept_channels {
            return Verdict::Refuse(Refusal::prohibited(no_channels(me)));
        }
        return Verdict::Accept(Accepted {
            service,
            headers: Headers::new(),
            window: None,
            parent: None,
            duplex: false,
        });
    }
    let (window, headers) = match split_window(open.originator)
        .and_then(|(w, h)| Ok((w, Headers::decode(h, limits.headers)?)))
    {
        Ok(wh) => wh,
        Err(e) => {
            return Verdict::Refuse(Refusal::prohibited(format!("malformed open: {e}")));
        }
    };
    let parent = match ParentRef::decode(open.port_to_connect, open.originator_port) {
        Ok(p) => p,
        Err(e) => {
            return Verdict::Refuse(Refusal::prohibited(format!("malformed open: {e}")));
        }
    };
    match parent {
        Some(_) if limits.max_nesting_depth == 0 => {
            return Verdict::Reject(format!(
                "{me} takes no nested channels (Config::max_nesting_depth is 0)"
            ));
        }
        None if !limits.accept_channels => return Verdict::Reject(no_channels(me)),
        _ => {}
    }
    Verdict::Accept(Accepted {
        service,
        headers,
        window,
        parent,
        duplex: true,
    })
}

/// The reason a top-level open is refused when nothing on the peer takes
/// its service (PROTOCOL.md section 3.3): no acceptor claims it, no
/// fallback takes it, and the application does not call `Peer::accept`.
pub(crate) fn no_service(service: &str, me: &str) -> String {
    format!("no service {service:?} on {me}")
}

fn no_channels(me: &str) -> String {
    format!(
        "{me} accepts no channels from its peers (it only opens them; Config::accept_channels is off)"
    )
}

/// What a nested open needs to know of the channel its parent reference
/// found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParentView<'a> {
    /// A Duplex channel (a plain SSH client's cannot hold children).
    pub(crate) duplex: bool,
    /// Accepted on both sides.
    pub(crate) established: bool,
    /// Why it takes no more children (closed or failed), if so.
    pub(crate) closed: Option<&'a str>,
    /// Its own depth (0 at the top level).
    pub(crate) depth: u32,
}

/// Checks a nested open against the parent it names; returns the child's
/// depth, or the reason for the `REJECT`.
pub(crate) fn nested_verdict(
    parent: &ParentView<'_>,
    me: &str,
    max_depth: u32,
) -> Result<u32, String> {
    if !parent.duplex {
        return Err("the parent is a plain SSH channel, which cannot hold nested channels".into());
    }
    if !parent.established {
        return Err("the parent channel is not accepted on both sides yet".into());
    }
    if let Some(why) = parent.closed {
        return Err(why.to_owned());
    }
    let depth = parent.depth + 1;
    if depth > max_depth {
        return Err(format!(
            "nesting depth {depth} is over {me}'s limit of {max_depth} (Config::max_nesting_depth)"
        ));
    }
    Ok(depth)
}

/// Why a parent reference found no channel it may name: `ours` when
/// [`ParentRef::Yours`] named a channel that we opened (it must be named
/// with the other kind).
pub(crate) fn unknown_parent(parent: ParentRef, me: &str, ours: bool) -> String {
    match parent {
        ParentRef::Yours(n) if ours => format!(
            "channel {n} on {me} was opened by {me}: name it with reference kind 2 and your own number"
        ),
        ParentRef::Yours(n) => format!(
            "no channel numbered {n} on {me} was opened by you (reference kind 1 names a channel you opened, by {me}'s number from its ACCEPT)"
        ),
        ParentRef::Mine(n) => format!(
            "no channel that {me} opened has your number {n} (reference kind 2 names a channel you accepted, by your own number)"
        ),
    }
}

/// What the listener knows when a dialler's hello arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HelloConditions<'a> {
    /// Another channel was opened before it.
    pub(crate) opened_before: bool,
    /// Time since the connection started (the caller reads the clock).
    pub(crate) elapsed: Duration,
    /// `Config::handshake_timeout`.
    pub(crate) limit: Duration,
    /// The authenticated user name (the claimed peer name), once known.
    pub(crate) user: Option<&'a str>,
}

/// The listener's verdict on a dialler's hello (the `@hello` open's
/// originator): the version to speak, or the reason for refusing it, after
/// which the connection stays plain.
pub(crate) fn hello_verdict(
    originator: &str,
    at: &HelloConditions<'_>,
    limits: &Limits,
) -> Result<Version, String> {
    if at.opened_before {
        return Err("a hello must be the connection's first channel open; channels were opened before it, so this connection stays plain".into());
    }
    if at.elapsed > at.limit {
        return Err(format!(
            "the hello came {:.1}s after the connection started, past the handshake time limit of {:?} (Config::handshake_timeout); this connection stays plain",
            at.elapsed.as_secs_f64(),
            at.limit
        ));
    }
    let hello = Headers::decode(originator, limits).map_err(|e| format!("malformed hello: {e}"))?;
    let Some(user) = at.user else {
        return Err("not authenticated".into());
    };
    hello::listener_choose(&hello, user)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::proto::headers::with_window;
    use crate::proto::nest::{REF_MINE, REF_YOURS};
    use proptest::prelude::*;

    fn limits(headers: &Limits) -> OpenLimits<'_> {
        OpenLimits {
            max_channels: 4,
            max_pending: 2,
            max_nesting_depth: 3,
            accept_channels: true,
            headers,
        }
    }

    fn at() -> Conditions<'static> {
        Conditions {
            me: "alice",
            duplex: true,
            draining: false,
            channels: 0,
            pending: 0,
        }
    }

    fn open<'a>(service: &'a str, originator: &'a str) -> OpenFields<'a> {
        OpenFields {
            service,
            originator,
            port_to_connect: REF_YOURS,
            originator_port: 0,
        }
    }

    fn refusal(v: Verdict) -> Refusal {
        match v {
            Verdict::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_duplex_open_is_accepted_with_its_window_and_headers() {
        let l = Limits::default();
        let block = with_window(65536, "a=1");
        let v = verdict(&open("echo", &block), &at(), &limits(&l), true);
        let Verdict::Accept(a) = v else {
            panic!("{v:?}")
        };
        assert_eq!(a.service.as_str(), "echo");
        assert_eq!(a.window, Some(65536));
        assert_eq!(a.headers.get("a"), Some("1"));
        assert_eq!(a.parent, None);
        assert!(a.duplex);
    }

    #[test]
    fn a_plain_client_open_ignores_its_originator() {
        let l = Limits::default();
        let plain = Conditions {
            duplex: false,
            ..at()
        };
        let v = verdict(&open("echo", "127.0.0.1"), &plain, &limits(&l), true);
        let Verdict::Accept(a) = v else {
            panic!("{v:?}")
        };
        assert!(!a.duplex);
        assert!(a.headers.is_empty());
        assert_eq!(a.window, None);
    }

    #[test]
    fn refusals_name_the_limit_and_the_knob() {
        let l = Limits::default();
        let full = Conditions {
            channels: 4,
            ..at()
        };
        let r = refusal(verdict(&open("echo", ""), &full, &limits(&l), true));
        assert_eq!(r.code, OPEN_RESOURCE_SHORTAGE);
        assert_eq!(r.cause, Cause::Limit);
        assert!(
            r.reason
                .contains("limit 4, Config::max_channels_per_connection"),
            "{}",
            r.reason
        );
        let waiting = Conditions { pending: 2, ..at() };
        let r = refusal(verdict(&open("echo", ""), &waiting, &limits(&l), true));
        assert!(
            r.reason.contains("limit 2, Config::max_pending_channels"),
            "{}",
            r.reason
        );
        let draining = Conditions {
            draining: true,
            ..at()
        };
        let r = refusal(verdict(&open("echo", ""), &draining, &limits(&l), true));
        assert_eq!(r.reason, "the peer is shutting down");
        assert_eq!(r.cause, Cause::Other);
    }

    #[test]
    fn names_and_blocks_are_checked() {
        let l = Limits::default();
        let r = refusal(verdict(&open("@x", ""), &at(), &limits(&l), true));
        assert_eq!(r.reason, "service @x is reserved");
        assert_eq!(r.code, OPEN_PROHIBITED);
        let v = verdict(&open("", ""), &at(), &limits(&l), true);
        assert!(!v.ends_hello());
        let r = refusal(v);
        assert_eq!(r.code, OPEN_PROHIBITED);
        assert_eq!(r.cause, Cause::Name);
        let r = refusal(verdict(
            &open("echo", "@window=x"),
            &at(),
            &limits(&l),
            true,
        ));
        assert!(r.reason.starts_with("malformed open: "), "{}", r.reason);
        let bad_ref = OpenFields {
            port_to_connect: 7,
            originator_port: 3,
            ..open("echo", "")
        };
        let r = refusal(verdict(&bad_ref, &at(), &limits(&l), true));
        assert_eq!(
            r.reason,
            "malformed open: unknown parent reference kind 7 (expected 1 or 2)"
        );
    }

    #[test]
    fn the_hello_is_only_recognised_from_a_dialler_before_duplex() {
        let l = Limits::default();
        let plain = Conditions {
            duplex: false,
            ..at()
        };
        assert_eq!(
            verdict(&open("@hello", ""), &plain, &limits(&l), true),
            Verdict::Hello
        );
        assert!(!Verdict::Hello.ends_hello());
        // Once Duplex, or towards a dialler, it is a reserved name.
        let r = refusal(verdict(&open("@hello", ""), &at(), &limits(&l), true));
        assert_eq!(r.reason, "service @hello is reserved");
        let r = refusal(verdict(&open("@hello", ""), &plain, &limits(&l), false));
        assert_eq!(r.reason, "service @hello is reserved");
    }

    #[test]
    fn nesting_rules() {
        let l = Limits::default();
        let nested = OpenFields {
            port_to_connect: REF_MINE,
            originator_port: 8,
            ..open("child", "")
        };
        let Verdict::Accept(a) = verdict(&nested, &at(), &limits(&l), true) else {
            panic!()
        };
        assert_eq!(a.parent, Some(ParentRef::Mine(7)));
        let flat = OpenLimits {
            max_nesting_depth: 0,
            ..limits(&l)
        };
        assert_eq!(
            verdict(&nested, &at(), &flat, true),
            Verdict::Reject(
                "alice takes no nested channels (Config::max_nesting_depth is 0)".into()
            )
        );
        // Accepting no top-level channels still takes nested ones.
        let closed = OpenLimits {
            accept_channels: false,
            ..limits(&l)
        };
        assert!(matches!(
            verdict(&nested, &at(), &closed, true),
            Verdict::Accept(_)
        ));
        assert!(matches!(
            verdict(&open("echo", ""), &at(), &closed, true),
            Verdict::Reject(_)
        ));

        let parent = ParentView {
            duplex: true,
            established: true,
            closed: None,
            depth: 2,
        };
        assert_eq!(nested_verdict(&parent, "alice", 3), Ok(3));
        assert_eq!(
            nested_verdict(&parent, "alice", 2),
            Err("nesting depth 3 is over alice's limit of 2 (Config::max_nesting_depth)".into())
        );
        let plain = ParentView {
            duplex: false,
            ..parent
        };
        assert!(
            nested_verdict(&plain, "alice", 9)
                .unwrap_err()
                .contains("plain SSH")
        );
        let early = ParentView {
            established: false,
            ..parent
        };
        assert!(
            nested_verdict(&early, "alice", 9)
                .unwrap_err()
                .contains("not accepted on both sides")
        );
        let gone = ParentView {
            closed: Some("the parent was closed on this side"),
            ..parent
        };
        assert_eq!(
            nested_verdict(&gone, "alice", 9),
            Err("the parent was closed on this side".into())
        );
        assert!(unknown_parent(ParentRef::Yours(3), "alice", true).contains("kind 2"));
        assert!(unknown_parent(ParentRef::Mine(3), "alice", false).contains("your number 3"));
    }

    #[test]
    fn hello_rules() {
        let l = Limits::default();
        let hello = hello::dialler_hello("bob").encode(&l).unwrap();
        let ok = HelloConditions {
            opened_before: false,
            elapsed: Duration::from_millis(5),
            limit: Duration::from_secs(10),
            user: Some("bob"),
        };
        assert!(hello_verdict(&hello, &ok, &l).is_ok());
        let late = HelloConditions {
            elapsed: Duration::from_secs(11),
            ..ok
        };
        let why = hello_verdict(&hello, &late, &l).unwrap_err();
        assert!(why.contains("Config::handshake_timeout"), "{why}");
        let second = HelloConditions {
            opened_before: true,
            ..ok
        };
        assert!(
            hello_verdict(&hello, &second, &l)
                .unwrap_err()
                .contains("first channel open")
        );
        let anon = HelloConditions { user: None, ..ok };
        assert_eq!(
            hello_verdict(&hello, &anon, &l),
            Err("not authenticated".into())
        );
        assert!(
            hello_verdict("%%", &ok, &l)
                .unwrap_err()
                .starts_with("malformed hello")
        );
    }

    proptest! {
        /// Any open, however malformed, gets a verdict (no panic), and a
        /// refusal always says why.
        #[test]
        fn every_open_gets_a_verdict(
            service in ".{0,80}",
            originator in ".{0,300}",
            port in any::<u32>(),
            parent in any::<u32>(),
            channels in 0usize..8,
            pending in 0usize..4,
            duplex in any::<bool>(),
            inbound in any::<bool>(),
        ) {
            let l = Limits::default();
            let at = Conditions { channels, pending, duplex, ..at() };
            let fields = OpenFields { service: &service, originator: &originator, port_to_connect: port, originator_port: parent };
            match verdict(&fields, &at, &limits(&l), inbound) {
                Verdict::Refuse(r) => prop_assert!(!r.reason.is_empty()),
                Verdict::Reject(r) => prop_assert!(!r.is_empty()),
                Verdict::Accept(a) => {
                    prop_assert!(channels < 4 && pending < 2);
                    prop_assert!(!a.service.is_reserved());
                    prop_assert!(a.duplex == duplex);
                }
                Verdict::Hello => prop_assert!(!duplex && inbound),
            }
        }
    }
}
