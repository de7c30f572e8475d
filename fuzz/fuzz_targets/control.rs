//! Duplex control records (ACCEPT, WINDOW, REJECT, HELLO, TRAILERS,
//! PARENT_CLOSED), as a chunked stream and one by one.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| duplex::fuzzing::control(data));
