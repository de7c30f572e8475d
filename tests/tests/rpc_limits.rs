//! duplex-rpc message-size limits: an oversized message is refused, with a
//! typed error, before anything is allocated for it; the server keeps
//! serving. Its own test binary: it measures the heap of the whole process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use duplex::Headers;
use duplex_rpc::{CallContext, Client, Code, Router, RpcError, Server, Side, Status};
use duplex_tests::{Transport, pair, within};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const LIMIT: usize = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_without_allocating_them() {
    within(60, async {
        let p = pair(Transport::Tcp).await;
        let router = Router::new()
            .unary("Blob.Len", |_ctx: CallContext, b: Vec<u8>| async move {
                Ok::<_, Status>(b.len())
            })
            .unary("Blob.Make", |_ctx: CallContext, n: usize| async move {
                Ok::<_, Status>(vec![7u8; n])
            });
        let _s = Server::new(router)
            .max_message_len(LIMIT)
            .serve(&p.server)
            .unwrap();
        let client = Client::new(p.client.clone()).to("server");
        let works = || async {
            let n: usize = client.call("Blob.Len", &vec![1u8; 1000]).await.unwrap();
            assert_eq!(n, 1000);
        };
        works().await;

        // A frame whose length prefix claims 6 MiB (under the connection's
        // frame limit, over the server's message limit), then nothing: the
        // server answers at once, from the prefix alone.
        for claim in [6u32 << 20, u32::MAX] {
            // Heap blocks allocated from here on are counted.
            let profiler = dhat::Profiler::builder().testing().build();
            let mut ch = p
                .client
                .open(
                    "server",
                    "Blob.Len",
                    Headers::new()
                        .with("rpc-codec", "msgpack")
                        .with("rpc-kind", "unary"),
                )
                .await
                .unwrap();
            ch.write_all_frame_prefix(claim).await;
            let frame = ch.read_error().await.unwrap().expect("a status");
            let peak = dhat::HeapStats::get().max_bytes;
            drop(profiler);
            let err = RpcError::from_status_frame("Blob.Len", "server", &frame);
            if claim == 6 << 20 {
                let RpcError::TooLarge { side, len, max, .. } = &err else {
                    panic!("{err:?}")
                };
                assert_eq!((*side, *len, *max), (Side::Remote, 6 << 20, LIMIT));
                assert_eq!(err.code(), Code::RESOURCE_EXHAUSTED);
            } else {
                // Over the connection's own frame limit: the channel
                // refuses it before the RPC layer sees it.
                assert!(
                    matches!(
                        err,
                        RpcError::TooLarge {
                            side: Side::Remote,
                            ..
                        }
                    ),
                    "{err:?}"
                );
            }
            // Nothing near the claimed size was allocated: the heap grew by
            // less than a MiB at its peak, in the whole process.
            assert!(
                peak < 1 << 20,
                "heap grew by {peak} bytes for a {claim}-byte claim"
            );
            eprintln!("claim of {claim} bytes: heap peak growth {peak} bytes");
            drop(ch);
            works().await;
        }

        // Through the client: a request over the server's limit (our own
        // limit raised), a request over our limit, a response over it.
        let big = vec![0u8; LIMIT + 1];
        let err = client
            .with_max_message_len(8 << 20)
            .call::<_, usize>("Blob.Len", &big)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Remote,
                    max: LIMIT,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("remote limit"), "{err}");
        let err = client
            .with_max_message_len(1000)
            .call::<_, usize>("Blob.Len", &vec![0u8; 2000])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Local,
                    max: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = client
            .with_max_message_len(1000)
            .call::<_, Vec<u8>>("Blob.Make", &5000usize)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Local,
                    max: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        // A response over the server's own limit is its handler's failure.
        let err = client
            .call::<_, Vec<u8>>("Blob.Make", &(LIMIT + 10))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::RESOURCE_EXHAUSTED, "{err}");
        works().await;
        p.shutdown().await;
    })
    .await;
}

trait WritePrefix {
    async fn write_all_frame_prefix(&mut self, claim: u32);
}

impl WritePrefix for duplex::Channel {
    async fn write_all_frame_prefix(&mut self, claim: u32) {
        use tokio::io::AsyncWriteExt;
        self.write_all(&claim.to_be_bytes()).await.unwrap();
        self.flush().await.unwrap();
    }
}
