//! Cluster objects from multi-document YAML: `identityd::source::decode::decode_all`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = identityd_fuzz::cluster::cluster_yaml(data);
});
