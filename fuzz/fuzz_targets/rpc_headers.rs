//! RPC call headers: the timeout and the call kind.
#![no_main]
use duplex_rpc::wire::{self, Kind};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(t) = wire::parse_timeout(s) {
        assert!(t <= wire::MAX_TIMEOUT);
        let again = wire::format_timeout(t);
        assert!(wire::parse_timeout(&again).is_some());
    }
    if let Some(k) = Kind::parse(s) {
        assert_eq!(k.as_str(), s);
    }
});
