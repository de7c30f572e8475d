//! Two connections' channel tables back to back under an arbitrary script
//! of operations over several channels and raw records (see
//! `duplex::fuzzing::mux_pair`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duplex::fuzzing::mux_pair(data);
});
