//! WireGuard UAPI `set=1` request bodies: `identityd_wg::uapi::parse_set`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = identityd_fuzz::wg::wg_uapi(data);
});
