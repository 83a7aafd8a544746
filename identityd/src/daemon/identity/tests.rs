//! The identity table on an injected clock with a fake CA: jittered renewals, backoff during an
//! outage, the last good SVID kept until it expires, then fail closed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use identityd_certs::rotation::{Clock, ManualClock, RefreshPolicy};
use identityd_certs::{Ca, CaOptions, ServingCert, SpiffeId, Svid, TrustDomain};

use super::{CaError, Identities, IdentityTable, Issuer, WorkloadWant};
use crate::daemon::ingress::CertWant;

const HOUR: Duration = Duration::from_secs(3600);

/// A CA in-process that can be switched off (an outage: every request fails).
struct FakeCa {
    ca: Ca,
    clock: Arc<ManualClock>,
    down: AtomicBool,
    calls: AtomicUsize,
    _dir: tempfile::TempDir,
}

impl FakeCa {
    fn new(clock: Arc<ManualClock>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(
            &dir.path().join("ca"),
            TrustDomain::new("cluster.local").unwrap(),
            CaOptions::default(),
            clock.now() - Duration::from_secs(60),
        )
        .unwrap();
        Self {
            ca,
            clock,
            down: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            _dir: dir,
        }
    }
}

fn stalled(rpc: &'static str) -> CaError {
    CaError::Timeout {
        rpc,
        endpoint: "https://ca.test:15012".into(),
    }
}

impl Issuer for FakeCa {
    async fn sign_workload(
        &self,
        id: &SpiffeId,
        _want: &WorkloadWant,
        ttl: Duration,
    ) -> Result<Svid, CaError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(stalled("SignWorkload"));
        }
        Ok(self
            .ca
            .issue(id, ttl, self.clock.now())
            .expect("the test CA issues"))
    }

    async fn sign_serving(&self, w: &CertWant, ttl: Duration) -> Result<ServingCert, CaError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(stalled("SignServing"));
        }
        Ok(self
            .ca
            .issue_serving(&w.dns_names, ttl, self.clock.now())
            .expect("the test CA issues"))
    }
}

fn ids(n: usize) -> BTreeMap<SpiffeId, WorkloadWant> {
    (0..n)
        .map(|i| {
            (
                SpiffeId::parse(&format!("spiffe://cluster.local/ns/ns{i}/sa/sa{i}")).unwrap(),
                WorkloadWant {
                    namespace: format!("ns{i}"),
                    pod: format!("pod{i}"),
                },
            )
        })
        .collect()
}

fn t0() -> SystemTime {
    // Whole seconds: certificate validity is second-granular.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(now)
}

#[tokio::test]
async fn a_thousand_identities_issued_together_renew_spread_over_the_jitter_window() {
    let start = t0();
    let clock = Arc::new(ManualClock::new(start));
    let ca = FakeCa::new(Arc::clone(&clock));
    let mut table = IdentityTable::new(
        RefreshPolicy::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
        HOUR,
    );
    table.set_wanted(ids(1000), Vec::new());
    assert_eq!(table.renew_due(&ca).await, 1000, "all due at once");
    let svids = table.snapshot().svids;
    assert_eq!(svids.len(), 1000);
    // Nothing is due again right away.
    assert_eq!(table.renew_due(&ca).await, 0);

    // Every SVID was issued at the same instant, so they share one validity window.
    let any = svids.values().next().unwrap();
    let (nb, life) = (
        any.not_before(),
        any.not_after().duration_since(any.not_before()).unwrap(),
    );
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for t in table.workload_schedule() {
        let after = t.duration_since(nb).unwrap();
        assert!(
            after >= life.mul_f64(0.4) && after <= life.mul_f64(0.6),
            "renewal at {after:?} is outside 50% ± 10% of the lifetime {life:?}"
        );
        *per_second.entry(after.as_secs()).or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap();
    // 1,000 renewals over a 720 s window: ~1.4 per second on average. Without jitter all
    // 1,000 would fall into one second.
    assert!(
        busiest <= 20,
        "at most 2% of the renewals in any one second, saw {busiest}"
    );
    assert!(
        per_second.len() >= 400,
        "renewals spread over many seconds, saw {}",
        per_second.len()
    );
}

#[tokio::test]
async fn without_jitter_the_same_thousand_renew_in_one_second() {
    // The check above can fail: the half-life schedule the daemon used before renews every
    // identity issued together in the same second.
    let clock = Arc::new(ManualClock::new(t0()));
    let ca = FakeCa::new(Arc::clone(&clock));
    let no_jitter = RefreshPolicy {
        jitter: 0.0,
        ..RefreshPolicy::default()
    };
    let mut table = IdentityTable::new(no_jitter, Arc::clone(&clock) as Arc<dyn Clock>, HOUR);
    table.set_wanted(ids(1000), Vec::new());
    table.renew_due(&ca).await;
    let seconds: std::collections::BTreeSet<u64> = table
        .workload_schedule()
        .iter()
        .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
        .collect();
    assert!(seconds.len() <= 2, "{} distinct seconds", seconds.len());
}

#[tokio::test]
async fn during_a_ca_outage_the_last_good_svid_serves_until_expiry_then_fails_closed() {
    let start = t0();
    let clock = Arc::new(ManualClock::new(start));
    let ca = FakeCa::new(Arc::clone(&clock));
    let mut table = IdentityTable::new(
        RefreshPolicy::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
        HOUR,
    );
    let wanted = ids(1);
    let id = wanted.keys().next().unwrap().clone();
    table.set_wanted(wanted.clone(), Vec::new());
    table.renew_due(&ca).await;
    let issued = table.snapshot().svids[&id].clone();
    assert_eq!(issued.not_after(), start + HOUR);

    // The CA goes away at renewal time.
    ca.down.store(true, Ordering::SeqCst);
    clock.set(table.next_attempt().unwrap());
    let mut attempts = Vec::new();
    while clock.now() < start + HOUR {
        if table.renew_due(&ca).await > 0 {
            attempts.push(clock.now());
        }
        let Identities { svids, status, .. } = table.snapshot();
        if clock.now() < start + HOUR {
            assert!(
                svids
                    .get(&id)
                    .is_some_and(|s| s.not_after() == issued.not_after()),
                "the last good SVID stays in service during the outage"
            );
            assert_eq!(status[0].state, "available");
        }
        clock.set(table.next_attempt().unwrap());
    }
    // Backoff: the gaps between attempts grow (500 ms doubling, capped at 60 s).
    let gaps: Vec<Duration> = attempts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap())
        .collect();
    assert!(gaps.len() > 10, "retried during the outage: {gaps:?}");
    assert_eq!(gaps[0], Duration::from_millis(500), "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(60)),
        "{gaps:?}"
    );
    let calls_in_outage = ca.calls.load(Ordering::SeqCst) - 1;
    assert!(
        calls_in_outage < 200,
        "backoff, not a retry storm: {calls_in_outage} calls in half an hour"
    );

    // Past expiry: nothing is served for that identity any more (fail closed)…
    clock.set(start + HOUR);
    let Identities { svids, status, .. } = table.snapshot();
    assert!(!svids.contains_key(&id), "an expired SVID is not served");
    assert_eq!(status[0].state, "unavailable");
    assert!(
        status[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer")),
        "{status:?}"
    );
    // …and the mesh plan gives its workload no inbound mTLS chain: a strict workload without
    // an SVID takes no connection (the classifier keeps sending its traffic to Envoy).
    let st = lab_state();
    let td = TrustDomain::new("cluster.local").unwrap();
    let web = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let with = BTreeMap::from([(
        web.clone(),
        Arc::new(ca.ca.issue(&web, HOUR, clock.now()).unwrap()),
    )]);
    let served = crate::daemon::mesh::plan_mesh(&st, "n1", &td, &with, "B");
    let unserved = crate::daemon::mesh::plan_mesh(&st, "n1", &td, &BTreeMap::new(), "B");
    let inbound_web = |m: &identityd_envoy::mesh::MeshConfig| {
        let snap = identityd_envoy::translate::translate_checked(m).expect("valid");
        snap.resources(identityd_envoy::server::type_url::CLUSTER)
            .is_some_and(|c| {
                c.keys()
                    .any(|k| k.starts_with("inbound|") && k.ends_with("shop/web-v1"))
            })
    };
    assert!(
        inbound_web(&served),
        "with its SVID, web has an inbound mTLS cluster"
    );
    assert!(
        !inbound_web(&unserved),
        "without it, no inbound chain: the workload takes no connection"
    );

    // The CA comes back: the next retry renews without a restart.
    ca.down.store(false, Ordering::SeqCst);
    clock.set(table.next_attempt().unwrap());
    assert_eq!(table.renew_due(&ca).await, 1);
    let Identities { svids, status, .. } = table.snapshot();
    assert!(svids.contains_key(&id));
    assert_eq!(status[0].state, "available");
    assert_eq!(status[0].failures, 0);
}

#[tokio::test]
async fn unwanted_identities_are_dropped_and_kept_ones_are_not_reissued() {
    let clock = Arc::new(ManualClock::new(t0()));
    let ca = FakeCa::new(Arc::clone(&clock));
    let mut table = IdentityTable::new(
        RefreshPolicy::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
        HOUR,
    );
    let serving = CertWant {
        secret: "ingress-cert/Gateway/shop/web/https".into(),
        kind: "Gateway".into(),
        namespace: "shop".into(),
        name: "web".into(),
        dns_names: vec!["web.shop.example".into()],
    };
    table.set_wanted(ids(3), vec![serving.clone()]);
    assert_eq!(table.renew_due(&ca).await, 4);
    table.set_wanted(ids(2), vec![serving.clone()]);
    assert_eq!(
        table.renew_due(&ca).await,
        0,
        "kept entries keep their certificates"
    );
    let Identities {
        svids,
        serving: certs,
        status,
        ..
    } = table.snapshot();
    assert_eq!(svids.len(), 2);
    assert_eq!(certs.len(), 1);
    assert_eq!(status.len(), 3);
    // New names for the same listener: a new certificate.
    let renamed = CertWant {
        dns_names: vec!["shop.example".into()],
        ..serving
    };
    table.set_wanted(ids(2), vec![renamed]);
    assert!(table.snapshot().serving.is_empty());
    assert_eq!(table.renew_due(&ca).await, 1);
    assert_eq!(
        table
            .snapshot()
            .serving
            .values()
            .next()
            .unwrap()
            .1
            .dns_names(),
        ["shop.example"]
    );
}

fn lab_state() -> crate::model::ClusterState {
    let text = include_str!("../../model/testdata/lab-cluster.yaml");
    let objects = crate::source::decode::decode_all(text)
        .into_iter()
        .filter_map(|(_, r)| r.ok().flatten());
    crate::model::ClusterState::from_objects(1, objects)
}

#[tokio::test]
async fn after_a_ca_switch_svids_under_the_old_root_renew_at_once_and_only_they() {
    let clock = Arc::new(ManualClock::new(t0()));
    let mut ca = FakeCa::new(Arc::clone(&clock));
    let mut table = IdentityTable::new(
        RefreshPolicy::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
        HOUR,
    );
    table.set_wanted(ids(3), vec![]);
    assert_eq!(table.renew_due(&ca).await, 3);
    let dir = ca._dir.path().join("ca");
    ca.ca.rollover(&dir, HOUR, clock.now()).unwrap();
    let bundle = ca.ca.bundle(clock.now());
    let new_root = identityd_certs::bundle::root_fingerprint(ca.ca.root());
    // A root the bundle does not hold: nothing to chain to, nothing renewed.
    assert_eq!(table.renew_not_under(&"00".repeat(32), &bundle), 0);
    assert_eq!(
        table.renew_due(&ca).await,
        0,
        "nothing due before the switch is seen"
    );
    assert_eq!(table.renew_not_under(&new_root, &bundle), 3);
    assert_eq!(
        table.renew_due(&ca).await,
        3,
        "renewed now, not at half their lifetime"
    );
    // Now under the new root: nothing more.
    assert_eq!(table.renew_not_under(&new_root, &bundle), 0);
    let only_new = identityd_certs::Bundle::new(
        TrustDomain::new("cluster.local").unwrap(),
        vec![ca.ca.root().clone()],
    )
    .unwrap();
    for svid in table.snapshot().svids.values() {
        identityd_certs::verify_svid(svid.chain(), &only_new, clock.now()).unwrap();
    }
}
