//! Message and error frames reassembled from arbitrary chunks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| duplex::fuzzing::frames(data));
