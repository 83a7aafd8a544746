//! When to renew an SVID, and what to serve meanwhile.
//!
//! Renewal happens at a fraction of the lifetime (50% by default) with ±10% jitter, clamped to
//! a configurable minimum and maximum delay. When a renewal fails, the last good SVID is kept
//! (as long as it is valid) and the renewal is retried with exponential backoff, never later
//! than its expiry. Time is injected through [`Clock`], so tests run in microseconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::serving::ServingCert;
use crate::svid::Svid;

/// A certificate with a validity window, which a [`Rotator`] keeps fresh (SVIDs, node SVIDs,
/// ingress serving certificates).
pub trait Validity: Send + Sync {
    /// Start of validity.
    fn not_before(&self) -> SystemTime;
    /// End of validity.
    fn not_after(&self) -> SystemTime;
    /// What the certificate is for, in messages (a SPIFFE ID, DNS names).
    fn subject(&self) -> String;
}

impl Validity for Svid {
    fn not_before(&self) -> SystemTime {
        Svid::not_before(self)
    }
    fn not_after(&self) -> SystemTime {
        Svid::not_after(self)
    }
    fn subject(&self) -> String {
        self.id().to_string()
    }
}

impl Validity for ServingCert {
    fn not_before(&self) -> SystemTime {
        ServingCert::not_before(self)
    }
    fn not_after(&self) -> SystemTime {
        ServingCert::not_after(self)
    }
    fn subject(&self) -> String {
        self.dns_names().join(",")
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to (for tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A clock stopped at `t`.
    #[must_use]
    pub fn new(t: SystemTime) -> Self {
        Self(Mutex::new(t))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *t += d;
    }

    /// Sets the clock.
    pub fn set(&self, to: SystemTime) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// When to refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Fraction of the lifetime after which to renew (0.5).
    pub fraction: f64,
    /// Jitter as a fraction of the lifetime, applied ± (0.1).
    pub jitter: f64,
    /// Shortest delay between issuance and renewal.
    pub min_delay: Duration,
    /// Longest delay between issuance and renewal.
    pub max_delay: Duration,
    /// First retry delay after a failed renewal (doubles each failure).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            jitter: 0.1,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl RefreshPolicy {
    /// When to renew a certificate valid from `not_before` to `not_after`. `sample` is a
    /// uniform random number in `[0, 1)` (0.5 = no jitter). Never later than `not_after`.
    #[must_use]
    pub fn refresh_at(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
        sample: f64,
    ) -> SystemTime {
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO);
        let f =
            (self.fraction + self.jitter * (2.0 * sample.clamp(0.0, 1.0) - 1.0)).clamp(0.0, 1.0);
        let delay = lifetime
            .mul_f64(f)
            .clamp(self.min_delay, self.max_delay.max(self.min_delay));
        (not_before + delay).min(not_after)
    }

    /// The retry delay after `failures` consecutive failures (1 = first failure).
    #[must_use]
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max)
    }
}

/// What a workload identity can serve right now.
#[derive(Debug)]
pub enum SvidState<C = Svid> {
    /// No SVID has been obtained yet: refuse TLS handshakes.
    Initializing,
    /// A valid SVID (possibly the last good one while renewal fails).
    Available(Arc<C>),
    /// No valid SVID: the last one expired and renewal keeps failing.
    Unavailable(Arc<str>),
}

impl<C> Clone for SvidState<C> {
    fn clone(&self) -> Self {
        match self {
            Self::Initializing => Self::Initializing,
            Self::Available(c) => Self::Available(Arc::clone(c)),
            Self::Unavailable(e) => Self::Unavailable(Arc::clone(e)),
        }
    }
}

/// Keeps one identity's SVID fresh. Pure state machine: the caller asks [`Rotator::due`],
/// performs the issuance however it likes (local CA, CSR over gRPC) and reports the result
/// with [`Rotator::on_result`].
pub struct Rotator<C = Svid> {
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    sample: Box<dyn FnMut() -> f64 + Send>,
    current: Option<Arc<C>>,
    next_attempt: SystemTime,
    failures: u32,
    last_error: Option<Arc<str>>,
}

impl<C: Validity> std::fmt::Debug for Rotator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("current", &self.current.as_ref().map(|c| c.subject()))
            .field("next_attempt", &self.next_attempt)
            .field("failures", &self.failures)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl<C: Validity> Rotator<C> {
    /// A rotator with no SVID yet (due immediately), using random jitter.
    #[must_use]
    pub fn new(policy: RefreshPolicy, clock: Arc<dyn Clock>) -> Self {
        Self::with_sampler(policy, clock, Box::new(rand::random::<f64>))
    }

    /// As [`Rotator::new`] with a given jitter sampler (tests pass a constant).
    #[must_use]
    pub fn with_sampler(
        policy: RefreshPolicy,
        clock: Arc<dyn Clock>,
        sample: Box<dyn FnMut() -> f64 + Send>,
    ) -> Self {
        let now = clock.now();
        Self {
            policy,
            clock,
            sample,
            current: None,
            next_attempt: now,
            failures: 0,
            last_error: None,
        }
    }

    /// True when a renewal should be attempted now.
    #[must_use]
    pub fn due(&self) -> bool {
        self.clock.now() >= self.next_attempt
    }

    /// When the next renewal attempt is due.
    #[must_use]
    pub fn next_attempt(&self) -> SystemTime {
        self.next_attempt
    }

    /// Makes a renewal due now (the certificate in service stays until the new one arrives),
    /// e.g. after a CA rollover switched to a new root.
    pub fn renew_now(&mut self) {
        self.next_attempt = self.next_attempt.min(self.clock.now());
    }

    /// How long until the next attempt (zero when due).
    #[must_use]
    pub fn wait(&self) -> Duration {
        self.next_attempt
            .duration_since(self.clock.now())
            .unwrap_or(Duration::ZERO)
    }

    /// Consecutive failed renewals.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The error of the latest failed attempt, while failures last.
    #[must_use]
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Records the outcome of a renewal attempt. On success the new SVID is served and the next
    /// renewal scheduled; on failure the last good SVID is kept and a retry scheduled.
    pub fn on_result<E: std::fmt::Display>(&mut self, result: Result<C, E>) {
        let now = self.clock.now();
        match result {
            Ok(svid) => {
                self.next_attempt =
                    self.policy
                        .refresh_at(svid.not_before(), svid.not_after(), (self.sample)());
                self.current = Some(Arc::new(svid));
                self.failures = 0;
                self.last_error = None;
            }
            Err(e) => {
                self.failures += 1;
                self.last_error = Some(e.to_string().into());
                let mut next = now + self.policy.retry_delay(self.failures);
                if let Some(cur) = &self.current
                    && cur.not_after() > now
                {
                    next = next.min(cur.not_after());
                }
                self.next_attempt = next;
            }
        }
    }

    /// What can be served now.
    #[must_use]
    pub fn state(&self) -> SvidState<C> {
        let now = self.clock.now();
        match &self.current {
            Some(s) if s.not_after() > now => SvidState::Available(Arc::clone(s)),
            Some(s) => {
                SvidState::Unavailable(self.last_error.clone().unwrap_or_else(|| {
                    format!("{} expired and was not renewed", s.subject()).into()
                }))
            }
            None => match &self.last_error {
                Some(e) => SvidState::Unavailable(Arc::clone(e)),
                None => SvidState::Initializing,
            },
        }
    }

    /// The SVID being served, if any is valid now.
    #[must_use]
    pub fn current(&self) -> Option<Arc<C>> {
        match self.state() {
            SvidState::Available(s) => Some(s),
            _ => None,
        }
    }
}
