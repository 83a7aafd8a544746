//! SPIFFE IDs and trust domains: `SpiffeId::parse`, `TrustDomain::new`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = identityd_fuzz::certs::spiffe_id(data);
});
