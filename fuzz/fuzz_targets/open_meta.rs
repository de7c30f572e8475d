//! Channel-open metadata: parent reference, service name, header block.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| duplex::fuzzing::open_meta(data));
