//! Two channel state machines back to back under an arbitrary script of
//! operations and raw records (see `duplex::fuzzing::chan_pair`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duplex::fuzzing::chan_pair(data);
});
