//! SVIDs issued per second from CSRs, side by side with raw ECDSA P-256 signatures per second
//! with the same crypto library (ring). Run on one core:
//! `taskset -c 0 cargo bench -p identityd-certs --bench issue`.

use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use identityd_certs::svid::csr_for;
use identityd_certs::{Ca, CaOptions, PrivateKey, SpiffeId, TrustDomain};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("idd-bench-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let now = SystemTime::now();
    let ca = Ca::init(
        &dir,
        TrustDomain::new("cluster.local").expect("td"),
        CaOptions::default(),
        now,
    )
    .expect("ca");
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").expect("id");
    let csr = csr_for(&id, &PrivateKey::generate().expect("key")).expect("csr");
    let ttl = Duration::from_secs(3600);

    let mut g = c.benchmark_group("p256");
    g.throughput(Throughput::Elements(1));
    g.bench_function("svid_from_csr", |b| {
        b.iter(|| {
            ca.sign_csr(std::hint::black_box(&csr), &id, ttl, now)
                .expect("sign")
        });
    });

    // The raw signature over a message the size of an SVID's TBSCertificate.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("pkcs8");
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("kp");
    let tbs = vec![0x5au8; 420];
    g.bench_function("raw_ecdsa_sign", |b| {
        b.iter(|| kp.sign(&rng, std::hint::black_box(&tbs)).expect("sign"));
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
