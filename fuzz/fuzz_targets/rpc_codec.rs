//! Decoding a representative request with each built-in codec: any value
//! that decodes re-encodes and decodes to itself.
#![no_main]
use std::collections::BTreeMap;
use std::marker::PhantomData;

use duplex_rpc::codec::{Codec, Json, MsgPack};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Op {
    Add(i64, i64),
    Put { key: String, value: Vec<u8> },
    Batch(Vec<Op>),
    Nothing,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Request {
    id: u64,
    name: String,
    tags: BTreeMap<String, String>,
    ops: Vec<Op>,
    ratio: Option<u32>,
}

fn check<C: Codec>(codec: &C, data: &[u8]) {
    if let Ok(req) = codec.decode(data, PhantomData::<Request>) {
        let mut again = Vec::new();
        codec
            .encode(&req, &mut again)
            .expect("a decoded value encodes");
        let back = codec
            .decode(&again, PhantomData::<Request>)
            .expect("re-encoded value decodes");
        assert_eq!(back, req);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(&MsgPack, data);
    check(&Json, data);
});
