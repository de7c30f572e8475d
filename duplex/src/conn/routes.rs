//! Which queue a top-level channel the remote opened goes to: the routing
//! rule of `Peer::acceptor` and `Peer::accept` (PROTOCOL.md section 3.3).
//!
//! 1. An acceptor that claimed the channel's service gets it.
//! 2. Otherwise the peer's general queue (`Peer::accept`) gets it, if the
//!    application has ever called `accept`, or never made an acceptor (a
//!    peer that routes nothing keeps its channels for a later `accept`).
//! 3. Otherwise the oldest fallback acceptor gets it (an RPC server, which
//!    answers an unknown method with `UNIMPLEMENTED`).
//! 4. Otherwise nothing on the peer takes it: it is refused at once.
//!
//! Pure bookkeeping over any queue type `Q`, so the rule is unit-tested
//! without channels.

use foldhash::HashMap;

/// One acceptor's queue, and whether its channels are accepted as they
/// arrive.
#[derive(Clone)]
pub(crate) struct Claim<Q> {
    id: u64,
    queue: Q,
    at_once: bool,
}

/// Where a channel goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<Q> {
    /// An acceptor's queue: one that claimed the service (`claimed`), or a
    /// fallback.
    Acceptor {
        queue: Q,
        at_once: bool,
        claimed: bool,
    },
    /// The general queue (`Peer::accept`).
    General { at_once: bool },
    /// Nothing on the peer takes it.
    NoService,
}

/// A service another acceptor holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken(pub(crate) String);

pub(crate) struct Routes<Q> {
    claims: HashMap<Box<str>, Claim<Q>>,
    /// Acceptors that also take unclaimed channels, oldest first.
    fallbacks: Vec<Claim<Q>>,
    /// Services of the general queue accepted as they arrive
    /// (`Peer::accept_at_once`), each with its number of registrations.
    general_at_once: HashMap<Box<str>, usize>,
    /// The application called `Peer::accept`.
    general: bool,
    /// An acceptor was ever made.
    routed: bool,
    next_id: u64,
}

impl<Q> Default for Routes<Q> {
    fn default() -> Self {
        Routes {
            claims: HashMap::default(),
            fallbacks: Vec::new(),
            general_at_once: HashMap::default(),
            general: false,
            routed: false,
            next_id: 1,
        }
    }
}

impl<Q: Clone> Routes<Q> {
    /// Where a channel for `service` goes.
    pub(crate) fn route(&self, service: &str) -> Route<Q> {
        if let Some(c) = self.claims.get(service) {
            return Route::Acceptor {
                queue: c.queue.clone(),
                at_once: c.at_once,
                claimed: true,
            };
        }
        if self.general || !self.routed {
            let at_once =
                !self.general_at_once.is_empty() && self.general_at_once.contains_key(service);
            return Route::General { at_once };
        }
        match self.fallbacks.first() {
            Some(c) => Route::Acceptor {
                queue: c.queue.clone(),
                at_once: c.at_once,
                claimed: false,
            },
            None => Route::NoService,
        }
    }

    /// Claims `services` for a new acceptor with queue `queue`; all of them
    /// or, if one is held by another acceptor, none.
    pub(crate) fn claim<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a str> + Clone,
        queue: Q,
    ) -> Result<u64, Taken> {
        if let Some(s) = services
            .clone()
            .into_iter()
            .find(|s| self.claims.contains_key(*s))
        {
            return Err(Taken(s.to_owned()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.routed = true;
        let claim = Claim {
            id,
            queue,
            at_once: false,
        };
        for s in services {
            self.claims.insert(s.into(), claim.clone());
        }
        Ok(id)
    }

    /// Has acceptor `id`'s channels accepted as they arrive.
    pub(crate) fn set_at_once(&mut self, id: u64) {
        for c in self.claims.values_mut().chain(self.fallbacks.iter_mut()) {
            if c.id == id {
                c.at_once = true;
            }
        }
    }

    /// Makes acceptor `id` a fallback too: it gets unclaimed channels when
    /// nothing calls `Peer::accept`.
    pub(crate) fn add_fallback(&mut self, id: u64, queue: Q) {
        let at_once = self.claims.values().any(|c| c.id == id && c.at_once);
        if !self.fallbacks.iter().any(|c| c.id == id) {
            self.fallbacks.push(Claim { id, queue, at_once });
        }
    }

    /// Acceptor `id` is gone: its services are unclaimed again.
    pub(crate) fn release(&mut self, id: u64) {
        self.claims.retain(|_, c| c.id != id);
        self.fallbacks.retain(|c| c.id != id);
    }

    /// The application calls `Peer::accept`: it takes unclaimed channels
    /// from now on.
    pub(crate) fn set_general(&mut self) {
        self.general = true;
    }

    pub(crate) fn is_general(&self) -> bool {
        self.general
    }

    /// Counts a registration of `service` of the general queue for
    /// acceptance at once, in (`on`) or out.
    pub(crate) fn set_general_at_once(&mut self, service: &str, on: bool) {
        let map = &mut self.general_at_once;
        if on {
            *map.entry(service.into()).or_insert(0) += 1;
        } else if let Some(n) = map.get_mut(service) {
            *n -= 1;
            if *n == 0 {
                map.remove(service);
            }
        }
    }

    /// The peer stopped: drops every acceptor's queue handle.
    pub(crate) fn clear(&mut self) {
        self.claims.clear();
        self.fallbacks.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn acceptor(queue: u8, claimed: bool) -> Route<u8> {
        Route::Acceptor {
            queue,
            at_once: false,
            claimed,
        }
    }

    #[test]
    fn a_peer_that_routes_nothing_keeps_every_channel_for_accept() {
        let r = Routes::<u8>::default();
        assert_eq!(r.route("x"), Route::General { at_once: false });
    }

    #[test]
    fn claimed_services_go_to_their_acceptor_and_the_rest_is_refused() {
        let mut r = Routes::default();
        let id = r.claim(["Calc.Add", "Calc.Sub"], 1).unwrap();
        assert_eq!(r.route("Calc.Add"), acceptor(1, true));
        assert_eq!(r.route("Calc.Sub"), acceptor(1, true));
        assert_eq!(r.route("echo"), Route::NoService);
        r.release(id);
        // Released, the peer still routes: nothing takes the service.
        assert_eq!(r.route("Calc.Add"), Route::NoService);
    }

    #[test]
    fn accept_takes_what_nobody_claimed_before_any_fallback() {
        let mut r = Routes::default();
        let id = r.claim(["Calc.Add"], 1).unwrap();
        r.add_fallback(id, 1);
        assert_eq!(r.route("Calc.Nope"), acceptor(1, false));
        r.set_general();
        assert_eq!(r.route("Calc.Nope"), Route::General { at_once: false });
        assert_eq!(r.route("Calc.Add"), acceptor(1, true));
    }

    #[test]
    fn a_service_has_one_acceptor_and_a_refused_claim_claims_nothing() {
        let mut r = Routes::default();
        r.claim(["a"], 1).unwrap();
        assert_eq!(r.claim(["b", "a"], 2), Err(Taken("a".into())));
        assert_eq!(r.route("b"), Route::NoService);
    }

    #[test]
    fn the_oldest_live_fallback_gets_unclaimed_channels() {
        let mut r = Routes::default();
        let one = r.claim(["a"], 1).unwrap();
        let two = r.claim(["b"], 2).unwrap();
        r.add_fallback(one, 1);
        r.add_fallback(two, 2);
        r.set_at_once(two);
        assert_eq!(r.route("c"), acceptor(1, false));
        r.release(one);
        assert_eq!(
            r.route("c"),
            Route::Acceptor {
                queue: 2,
                at_once: true,
                claimed: false
            }
        );
        // Released, "a" is unclaimed: the fallback takes it too.
        assert_eq!(r.route("a"), r.route("c"));
        r.release(two);
        assert_eq!(r.route("a"), Route::NoService);
    }

    #[test]
    fn at_once_registrations_of_the_general_queue_count() {
        let mut r = Routes::<u8>::default();
        r.set_general_at_once("echo", true);
        r.set_general_at_once("echo", true);
        r.set_general_at_once("echo", false);
        assert_eq!(r.route("echo"), Route::General { at_once: true });
        r.set_general_at_once("echo", false);
        assert_eq!(r.route("echo"), Route::General { at_once: false });
    }
}
