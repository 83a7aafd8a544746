//! xDS `DiscoveryRequest` (and `DeltaDiscoveryRequest`) bytes as Envoy sends them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = identityd_fuzz::envoy::xds_request(data);
});
