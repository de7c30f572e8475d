//! RPC status frames, and the caller's error made from them.
#![no_main]
use bytes::Bytes;
use duplex_rpc::RpcError;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(st) = duplex_rpc::status::decode_status(&frame) {
        let _ = st.to_string();
        assert!(
            st.message().len() <= data.len() * 3,
            "message grew beyond its bytes"
        );
    }
    let err = RpcError::from_status_frame("Fuzz.Method", "peer", &frame);
    let _ = (err.to_string(), err.code());
});
