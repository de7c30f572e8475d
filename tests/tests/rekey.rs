//! Key re-exchange under load: channels keep their bytes and their order
//! through re-exchanges started by either side while both directions are
//! busy (`Config::rekey_limit`). Alone in its test binary: it counts the
//! re-exchanges through a tracing layer installed as the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use duplex::{Config, Headers};
use duplex_tests::{Transport, echo_once, echo_server, pair_with, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Key exchanges the client peers finished (the first one included).
static EXCHANGES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Key exchanges the client peers finished on this thread: a test on a
    /// current-thread runtime counts its own, not the other test's.
    static HERE: Cell<usize> = const { Cell::new(0) };
}

struct CountExchanges;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountExchanges {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" && format!("{v:?}") == "keys exchanged" {
                    self.0 = true;
                }
            }
        }
        let mut m = Message(false);
        event.record(&mut m);
        if m.0 {
            EXCHANGES.fetch_add(1, Ordering::Relaxed);
            HERE.set(HERE.get() + 1);
        }
    }
}

fn install() {
    let _ = tracing_subscriber::registry()
        .with(CountExchanges.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG))
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .try_init();
}

/// The byte at `offset` of channel `seed`'s stream: every channel sends a
/// different sequence, checked as it comes back without keeping a copy.
fn byte_at(seed: u64, offset: u64) -> u8 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (offset / 8);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x >> ((offset % 8) * 8)) as u8
}

/// A hundred channels echo 8 MiB each at once (800 MiB each way, windows
/// and send buffers full), with keys re-exchanged every 4 MiB either side
/// sends or receives: about two hundred re-exchanges, started by both
/// sides while the other had megabytes of channel data in flight (more than
/// russh's own bound of twice its window, 4 MiB, which ended the connection
/// with "Pending buffer limit reached" in 4 runs of 4 before the bound was
/// raised to what the channels' windows allow). Every byte comes back in
/// order, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_keep_their_bytes_through_rekeys_under_two_way_load() {
    install();
    const CHANNELS: u64 = 100;
    const BYTES: u64 = 8 << 20;
    const CHUNK: usize = 64 << 10;
    let config = || {
        Config::default()
            .rekey_limit(4 << 20, Duration::from_secs(3600))
            .unwrap()
    };
    let p = pair_with(Transport::Tcp, config(), config()).await;
    echo_server(&p.server);
    let before = EXCHANGES.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for seed in 0..CHANNELS {
        let ch = p
            .client
            .open("server", "echo", Headers::new())
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = ch.split();
            let send = async {
                let mut chunk = vec![0u8; CHUNK];
                let mut at = 0;
                while at < BYTES {
                    for (i, b) in chunk.iter_mut().enumerate() {
                        *b = byte_at(seed, at + i as u64);
                    }
                    w.write_all(&chunk).await.unwrap();
                    at += CHUNK as u64;
                }
                w.shutdown().await.unwrap();
            };
            let check = async {
                let mut buf = vec![0u8; CHUNK];
                let mut at = 0;
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    for (i, b) in buf[..n].iter().enumerate() {
                        assert_eq!(
                            *b,
                            byte_at(seed, at + i as u64),
                            "channel {seed}, byte {}",
                            at + i as u64
                        );
                    }
                    at += n as u64;
                }
                at
            };
            let ((), got) = tokio::join!(send, check);
            assert_eq!(got, BYTES, "channel {seed} came back short");
        }));
    }
    within(120, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let rekeys = EXCHANGES.load(Ordering::Relaxed) - before;
    // 1,600 MiB crossed the connection: at one re-exchange per 4 MiB sent
    // or received by either side, and both sides' counts running together,
    // about 200 of them.
    assert!(rekeys >= 50, "only {rekeys} key re-exchanges happened");
    assert_eq!(p.client.peers().len(), 1, "the connection ended");
    p.shutdown().await;
}

/// With tokio's clock paused, three and a half hours pass in an instant
/// with keys due for re-exchange every hour: three re-exchanges happen (the
/// client's handler counts them), and no more (russh's timer used the system
/// clock, so a paused clock never reached it; a timer that did not move
/// after firing would start one exchange after another).
#[tokio::test(start_paused = true)]
async fn keys_are_exchanged_again_each_time_the_interval_passes() {
    install();
    let config = || {
        Config::default()
            .rekey_limit(1 << 30, Duration::from_secs(3600))
            .unwrap()
    };
    let p = pair_with(Transport::Memory, config(), config()).await;
    echo_server(&p.server);
    let before = HERE.get();
    tokio::time::sleep(Duration::from_secs(3 * 3600 + 1800)).await;
    let finished = HERE.get() - before;
    assert_eq!(finished, 3, "{finished} re-exchanges finished, not 3");
    echo_once(&p.client, 4096).await;
    p.shutdown().await;
}

#[test]
fn rekey_limit_is_checked() {
    let e = Config::default()
        .rekey_limit(1024, Duration::from_secs(60))
        .unwrap_err();
    assert!(e.to_string().contains("rekey_limit"), "{e}");
    let e = Config::default()
        .rekey_limit(1 << 20, Duration::from_millis(10))
        .unwrap_err();
    assert!(e.to_string().contains("less than 1 s"), "{e}");
}
