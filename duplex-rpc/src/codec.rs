//! Codecs: how request and response values become message bytes.
//!
//! A [`Codec`] turns any `serde` value into bytes and back. The client names
//! its codec in the `rpc-codec` header of each call, so one server serves
//! clients using different codecs at once; a codec the server does not know
//! is answered with a clear error naming the ones it does.
//!
//! Built in: [`MsgPack`] (feature `msgpack`, the default codec) and
//! [`Json`] (feature `json`).

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::{Deserializer, Serialize};

/// An error from a codec implementation, with its own message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Encodes values to bytes and decodes them back.
///
/// Implement it to add a format (CBOR, bincode, protobuf via serde...), then
/// register it with [`Server::codec`](crate::Server::codec) and choose it
/// with [`Client::with_codec`](crate::Client::with_codec).
///
/// Decoders read bytes from the network: they must fail cleanly on any
/// input and must not allocate more than the input justifies (the message
/// itself is already bounded by the call's maximum message size).
///
/// ```
/// use duplex_rpc::codec::{BoxError, Codec};
/// use serde::de::DeserializeSeed;
///
/// /// JSON with a different name, to show the shape of a codec.
/// struct Loud;
/// impl Codec for Loud {
///     fn name(&self) -> &'static str { "loud-json" }
///     fn encode<T: serde::Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
///         serde_json::to_writer(out, value)?;
///         Ok(())
///     }
///     fn decode<'de, S: DeserializeSeed<'de>>(&self, bytes: &'de [u8], seed: S) -> Result<S::Value, BoxError> {
///         let mut de = serde_json::Deserializer::from_slice(bytes);
///         let value = seed.deserialize(&mut de)?;
///         de.end()?;
///         Ok(value)
///     }
/// }
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The name sent in the `rpc-codec` header: short, lower case, ASCII.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError>;

    /// Decodes one whole value from `bytes` through `seed` (use
    /// `seed.deserialize(&mut your_deserializer)`); trailing bytes are an
    /// error.
    fn decode<'de, S: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, BoxError>;
}

/// MessagePack (rmp-serde): compact and fast; structs are encoded as maps
/// with field names, so other languages' msgpack libraries read them and
/// fields can be added without breaking old peers. The default codec.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

/// Nesting depth msgpack decoding accepts (rmp-serde's own default is 1024,
/// deep enough to overflow a small task stack with recursive types).
#[cfg(feature = "msgpack")]
const MSGPACK_MAX_DEPTH: usize = 128;

#[cfg(feature = "msgpack")]
impl Codec for MsgPack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
        value.serialize(&mut ser)?;
        Ok(())
    }

    fn decode<'de, S: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, BoxError> {
        let mut rest = bytes;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        // rmp-serde refuses when its counter reaches zero: one more than
        // the depth we accept.
        de.set_max_depth(MSGPACK_MAX_DEPTH + 1);
        let value = seed.deserialize(&mut de)?;
        drop(de);
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes after the value", rest.len()).into());
        }
        Ok(value)
    }
}

/// JSON (serde_json): readable, and what `duplex call` and other languages'
/// tools speak most easily.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        serde_json::to_writer(out, value)?;
        Ok(())
    }

    fn decode<'de, S: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, BoxError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

/// A codec behind a pointer, chosen at run time.
pub(crate) type SharedCodec = Arc<dyn DynCodec>;

/// The object-safe form of [`Codec`], over `erased_serde`.
pub(crate) trait DynCodec: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn encode_erased(
        &self,
        value: &dyn erased_serde::Serialize,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError>;
    fn decode_erased<'de>(
        &self,
        bytes: &'de [u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'de>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), BoxError>;
}

impl fmt::Debug for dyn DynCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hands the codec's deserializer, erased, to a visitor closure.
struct ErasedSeed<'a, 'de> {
    visit: &'a mut dyn FnMut(
        &mut dyn erased_serde::Deserializer<'de>,
    ) -> Result<(), erased_serde::Error>,
}

impl<'de> DeserializeSeed<'de> for ErasedSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let mut erased = <dyn erased_serde::Deserializer>::erase(deserializer);
        (self.visit)(&mut erased).map_err(serde::de::Error::custom)
    }
}

impl<C: Codec> DynCodec for C {
    fn name(&self) -> &'static str {
        Codec::name(self)
    }

    fn encode_erased(
        &self,
        value: &dyn erased_serde::Serialize,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError> {
        self.encode(value, out)
    }

    fn decode_erased<'de>(
        &self,
        bytes: &'de [u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'de>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), BoxError> {
        self.decode(bytes, ErasedSeed { visit })
    }
}

/// Encodes `value` with a run-time codec.
pub(crate) fn encode<T: Serialize + ?Sized>(
    codec: &dyn DynCodec,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    codec.encode_erased(&value, out)
}

/// Decodes a `T` with a run-time codec.
pub(crate) fn decode<T: DeserializeOwned>(
    codec: &dyn DynCodec,
    bytes: &[u8],
) -> Result<T, BoxError> {
    let mut out = None;
    codec.decode_erased(bytes, &mut |d| {
        out = Some(erased_serde::deserialize::<T>(d)?);
        Ok(())
    })?;
    out.ok_or_else(|| "the codec produced no value".into())
}

/// The codec clients use unless told otherwise: msgpack when built in,
/// else JSON.
pub(crate) fn default_codec() -> Option<SharedCodec> {
    #[cfg(feature = "msgpack")]
    {
        Some(Arc::new(MsgPack))
    }
    #[cfg(all(not(feature = "msgpack"), feature = "json"))]
    {
        Some(Arc::new(Json))
    }
    #[cfg(all(not(feature = "msgpack"), not(feature = "json")))]
    {
        None
    }
}

/// The built-in codecs a server speaks from the start.
pub(crate) fn builtin_codecs() -> Vec<SharedCodec> {
    let all: [Option<SharedCodec>; 2] = [
        #[cfg(feature = "msgpack")]
        Some(Arc::new(MsgPack)),
        #[cfg(not(feature = "msgpack"))]
        None,
        #[cfg(feature = "json")]
        Some(Arc::new(Json)),
        #[cfg(not(feature = "json"))]
        None,
    ];
    all.into_iter().flatten().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Req {
        a: i64,
        name: String,
        tags: Vec<String>,
    }

    fn codecs() -> Vec<SharedCodec> {
        builtin_codecs()
    }

    #[test]
    fn round_trips_through_every_codec() {
        let req = Req {
            a: -7,
            name: "x y".into(),
            tags: vec!["p".into(), "q".into()],
        };
        for c in codecs() {
            let mut buf = Vec::new();
            encode(&*c, &req, &mut buf).unwrap();
            let back: Req = decode(&*c, &buf).unwrap();
            assert_eq!(back, req, "{}", c.name());
        }
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors() {
        for c in codecs() {
            let mut buf = Vec::new();
            encode(&*c, &5u32, &mut buf).unwrap();
            buf.extend_from_slice(b"  x");
            assert!(decode::<u32>(&*c, &buf).is_err(), "{}", c.name());
            assert!(decode::<Req>(&*c, b"\xc1\xff{").is_err(), "{}", c.name());
            assert!(decode::<Req>(&*c, b"").is_err(), "{}", c.name());
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_structs_are_maps_with_names() {
        let mut buf = Vec::new();
        encode(
            &MsgPack,
            &Req {
                a: 1,
                name: String::new(),
                tags: vec![],
            },
            &mut buf,
        )
        .unwrap();
        // fixmap of 3 entries, first key "a".
        assert_eq!(buf.first(), Some(&0x83));
        assert_eq!(buf.get(1..3), Some(&[0xa1, b'a'][..]));
    }

    #[cfg(all(feature = "msgpack", feature = "json"))]
    #[test]
    fn msgpack_huge_claimed_lengths_fail_without_allocating() {
        // array32 claiming 2^32-1 elements, then nothing.
        let bomb = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Vec<u64>>(&MsgPack, &bomb).is_err());
        // bin32 claiming 4 GiB.
        let bomb = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(decode::<Vec<u8>>(&MsgPack, &bomb).is_err());
        // Deeply nested arrays stop at the depth limit, not the stack.
        let deep = vec![0x91u8; 100_000];
        assert!(decode::<serde_json::Value>(&MsgPack, &deep).is_err());
    }

    #[test]
    fn msgpack_nesting_limit_is_exactly_128() {
        let nested = |levels: usize| {
            let mut v = vec![0x91u8; levels];
            v.push(0x00);
            v
        };
        assert!(decode::<serde_json::Value>(&MsgPack, &nested(MSGPACK_MAX_DEPTH)).is_ok());
        assert!(decode::<serde_json::Value>(&MsgPack, &nested(MSGPACK_MAX_DEPTH + 1)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            for c in codecs() {
                let _ = decode::<Req>(&*c, &bytes);
                let _ = decode::<(i64, i64)>(&*c, &bytes);
                let _ = decode::<Vec<String>>(&*c, &bytes);
            }
        }
    }
}
