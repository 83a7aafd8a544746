//! Rotation timing with an injected clock: renew at 50% ± 10% of lifetime, clamped; keep the
//! last good SVID while renewal fails; retry with backoff, never after expiry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identityd_certs::rotation::{Clock, ManualClock, RefreshPolicy, Rotator, SvidState};
use identityd_certs::{Ca, CaOptions, SpiffeId, TrustDomain};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn refresh_at_half_life_with_bounded_jitter_and_clamps() {
    let p = RefreshPolicy::default();
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let na = nb + HOUR;
    assert_eq!(p.refresh_at(nb, na, 0.5), nb + HOUR / 2);
    assert_eq!(p.refresh_at(nb, na, 0.0), nb + HOUR.mul_f64(0.4));
    assert_eq!(p.refresh_at(nb, na, 1.0), nb + HOUR.mul_f64(0.6));
    for i in 0..100 {
        let t = p.refresh_at(nb, na, f64::from(i) / 100.0);
        assert!(t >= nb + HOUR.mul_f64(0.4) && t <= nb + HOUR.mul_f64(0.6));
    }
    let clamped = RefreshPolicy {
        min_delay: Duration::from_secs(2000),
        max_delay: Duration::from_secs(2100),
        ..p
    };
    assert_eq!(
        clamped.refresh_at(nb, na, 0.0),
        nb + Duration::from_secs(2000)
    );
    assert_eq!(
        clamped.refresh_at(nb, na, 1.0),
        nb + Duration::from_secs(2100)
    );
    // Never past expiry, even if min_delay says so.
    let long_min = RefreshPolicy {
        min_delay: 2 * HOUR,
        ..p
    };
    assert_eq!(long_min.refresh_at(nb, na, 0.5), na);
    assert_eq!(p.retry_delay(1), Duration::from_millis(500));
    assert_eq!(p.retry_delay(3), Duration::from_secs(2));
    assert_eq!(p.retry_delay(30), Duration::from_secs(60));
}

#[test]
fn keeps_last_good_svid_while_renewal_fails() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = SystemTime::now();
    let ca = Ca::init(
        &dir.path().join("ca"),
        TrustDomain::new("td").unwrap(),
        CaOptions::default(),
        t0,
    )
    .unwrap();
    let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let mut r = Rotator::with_sampler(RefreshPolicy::default(), clock.clone(), Box::new(|| 0.5));

    assert!(matches!(r.state(), SvidState::Initializing));
    assert!(r.due(), "due at once without an SVID");
    r.on_result(ca.issue(&id, HOUR, clock.now()).map_err(|e| e.to_string()));
    let first = r.current().expect("available");
    assert!(!r.due());
    // 50% of the (backdated) lifetime.
    let expect = first.not_before()
        + first
            .not_after()
            .duration_since(first.not_before())
            .unwrap()
            / 2;
    assert_eq!(r.next_attempt(), expect);

    clock.set(r.next_attempt());
    assert!(r.due());
    r.on_result(Err::<identityd_certs::Svid, _>("CA unreachable"));
    assert_eq!(r.failures(), 1);
    let still = r.current().expect("last good SVID kept");
    assert!(Arc::ptr_eq(&still, &first));
    assert!(r.wait() <= Duration::from_millis(500));

    // Keep failing up to expiry: retries never scheduled after expiry; then Unavailable.
    for _ in 0..200 {
        clock.set(r.next_attempt());
        if clock.now() >= first.not_after() {
            break;
        }
        r.on_result(Err::<identityd_certs::Svid, _>("CA unreachable"));
        assert!(r.next_attempt() <= first.not_after().max(clock.now() + Duration::from_secs(60)));
    }
    clock.set(first.not_after() + Duration::from_secs(1));
    match r.state() {
        SvidState::Unavailable(e) => assert!(e.contains("CA unreachable"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Recovery.
    r.on_result(ca.issue(&id, HOUR, clock.now()).map_err(|e| e.to_string()));
    assert!(r.current().is_some());
    assert_eq!(r.failures(), 0);
}
