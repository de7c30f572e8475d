//! Jittered exponential backoff for dialling: how [`Peer::connect`] retries
//! and how a lost connection is re-dialled. Pure arithmetic, no I/O.
//!
//! [`Peer::connect`]: crate::Peer::connect

use std::time::Duration;

use super::error::ConfigError;

/// Retry timing for dialling an endpoint.
///
/// The wait before retry `n` (1-based) is `initial × factorⁿ⁻¹`, capped at
/// `max_interval`, then spread by ±50 % at random (so peers that lost the
/// same server do not all come back at the same instant), and capped at
/// `max_interval` again.
///
/// [`Peer::connect`](crate::Peer::connect) gives up after `max_attempts`
/// attempts or once `max_elapsed` has passed, whichever comes first.
/// Re-dialling a connection that was lost goes on until
/// [`disconnect`](crate::Peer::disconnect) or
/// [`shutdown`](crate::Peer::shutdown), with the same waits (the limits do
/// not apply), and starts again from `initial` after each success.
///
/// Defaults, after the original Duplex: 100 ms initial wait, factor *e*,
/// 10 s at most between attempts, at most 8 attempts and 30 s in all.
///
/// Every setter returns the `Backoff`, so a chain needs no `?`;
/// [`Config::connect_backoff`](crate::Config::connect_backoff) checks the
/// values once, where the `Backoff` is used.
///
/// ```
/// use std::time::Duration;
/// let b = duplex::Backoff::default()
///     .initial(Duration::from_millis(50))
///     .max_interval(Duration::from_secs(2))
///     .max_attempts(Some(3));
/// assert_eq!(b.get_max_attempts(), Some(3));
/// let config = duplex::Config::default().connect_backoff(b)?;
/// # let _ = config;
/// # Ok::<(), duplex::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a Backoff does nothing until given to Config::connect_backoff"]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max_interval: Duration,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: std::f64::consts::E,
            max_interval: Duration::from_secs(10),
            max_attempts: Some(8),
            max_elapsed: Some(Duration::from_secs(30)),
        }
    }
}

impl Backoff {
    /// Retry forever: the default waits (100 ms, growing by *e* up to 10 s
    /// between attempts), with no limit on attempts or time. For an agent
    /// that must reach its server however long that takes:
    ///
    /// ```
    /// let config = duplex::Config::default().connect_backoff(duplex::Backoff::forever())?;
    /// # let _ = config;
    /// # Ok::<(), duplex::ConfigError>(())
    /// ```
    pub fn forever() -> Self {
        Backoff::default().max_attempts(None).max_elapsed(None)
    }

    /// Wait before the first retry (before jitter). At least 1 ms, and at
    /// most `max_interval` ([`Config::connect_backoff`] checks both).
    ///
    /// [`Config::connect_backoff`]: crate::Config::connect_backoff
    pub fn initial(mut self, wait: Duration) -> Self {
        self.initial = wait;
        self
    }

    /// Growth of the wait per attempt. Between 1 and 100
    /// ([`Config::connect_backoff`] checks it).
    ///
    /// [`Config::connect_backoff`]: crate::Config::connect_backoff
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Longest wait between two attempts. At least the initial wait
    /// ([`Config::connect_backoff`] checks it).
    ///
    /// [`Config::connect_backoff`]: crate::Config::connect_backoff
    pub fn max_interval(mut self, wait: Duration) -> Self {
        self.max_interval = wait;
        self
    }

    /// Most attempts `connect` makes (the first included); `None` for no
    /// limit. `Some(1)` (or `Some(0)`) means no retry.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Longest time `connect` keeps trying; `None` for no limit. An attempt
    /// in progress when it passes still finishes (bounded by the handshake
    /// timeout), but no new one starts.
    pub fn max_elapsed(mut self, limit: Option<Duration>) -> Self {
        self.max_elapsed = limit;
        self
    }

    /// Whether the values are in range: the check
    /// [`Config::connect_backoff`](crate::Config::connect_backoff) makes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial < Duration::from_millis(1) {
            return Err(ConfigError::new("backoff initial", "less than 1 ms"));
        }
        if !(1.0..=100.0).contains(&self.factor) {
            return Err(ConfigError::new(
                "backoff factor",
                format!("{} is not between 1 and 100", self.factor),
            ));
        }
        if self.max_interval < self.initial {
            return Err(ConfigError::new(
                "backoff max_interval",
                format!(
                    "{:?} is less than the initial wait {:?}",
                    self.max_interval, self.initial
                ),
            ));
        }
        Ok(())
    }

    /// The configured attempt limit.
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The configured time limit.
    pub fn get_max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The configured longest wait.
    pub fn get_max_interval(&self) -> Duration {
        self.max_interval
    }

    /// The wait before retry `retry` (1 for the first retry); `unit` is a
    /// random number in `[0, 1)` that spreads it.
    pub(crate) fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = self.max_interval.as_secs_f64();
        let base = (self.initial.as_secs_f64() * self.factor.powi(exp)).min(max);
        let spread = base * (0.5 + unit.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(spread.min(max)).unwrap_or(self.max_interval)
    }

    /// Whether `connect` may start attempt `attempt` (1-based) after
    /// `elapsed`, having waited `next_wait` more.
    pub(crate) fn allows(&self, attempt: u32, elapsed: Duration, next_wait: Duration) -> bool {
        let attempts_ok = self.max_attempts.is_none_or(|m| attempt <= m);
        let time_ok = self.max_elapsed.is_none_or(|m| elapsed + next_wait <= m);
        attempts_ok && time_ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_by_the_factor_and_caps() {
        let b = Backoff::default();
        let mid = |n| b.delay(n, 0.5).as_millis();
        assert_eq!(mid(1), 100);
        assert_eq!(mid(2), 271); // 100 ms × e
        assert_eq!(mid(3), 738);
        assert_eq!(mid(20), 10_000);
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(u32::MAX, 0.99), Duration::from_secs(10));
    }

    #[test]
    fn limits() {
        let b = Backoff::default()
            .max_attempts(Some(3))
            .max_elapsed(Some(Duration::from_secs(1)));
        assert!(b.allows(3, Duration::ZERO, Duration::ZERO));
        assert!(!b.allows(4, Duration::ZERO, Duration::ZERO));
        assert!(!b.allows(2, Duration::from_millis(900), Duration::from_millis(200)));
        let unbounded = b.max_attempts(None).max_elapsed(None);
        assert!(unbounded.allows(u32::MAX, Duration::MAX, Duration::ZERO));
        assert!(Backoff::default().factor(0.5).validate().is_err());
        assert!(Backoff::default().factor(f64::NAN).validate().is_err());
        assert!(
            Backoff::default()
                .initial(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            Backoff::default()
                .max_interval(Duration::from_millis(10))
                .validate()
                .is_err()
        );
        assert!(Backoff::default().validate().is_ok());
        let forever = Backoff::forever();
        assert!(forever.validate().is_ok());
        assert_eq!(forever.get_max_attempts(), None);
        assert_eq!(forever.get_max_elapsed(), None);
        assert!(forever.allows(u32::MAX, Duration::MAX, Duration::ZERO));
    }

    proptest! {
        #[test]
        fn delay_stays_within_bounds(
            initial_ms in 1u64..10_000,
            factor in 1.0f64..100.0,
            max_ms in 10_000u64..100_000,
            retry in any::<u32>(),
            unit in 0.0f64..1.0,
        ) {
            let b = Backoff::default()
                .initial(Duration::from_millis(initial_ms))
                .factor(factor)
                .max_interval(Duration::from_millis(max_ms));
            prop_assert!(b.validate().is_ok());
            let d = b.delay(retry, unit);
            prop_assert!(d <= Duration::from_millis(max_ms));
            prop_assert!(d >= Duration::from_millis(initial_ms) / 2 - Duration::from_micros(1));
        }
    }
}
