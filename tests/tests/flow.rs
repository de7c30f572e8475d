//! Done-when 4: a flood into a channel whose receiver never reads does not
//! delay a second channel on the same connection, and the receiver's memory
//! stays under the configured bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::{Config, Headers};
use duplex_tests::{TRANSPORTS, pair_with, random_bytes, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WINDOW: u32 = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_channel_does_not_stall_others() {
    for t in TRANSPORTS {
        let config = Config::default().channel_window(WINDOW).unwrap();
        let p = pair_with(t, config.clone(), config).await;

        // The server accepts the flood channel and never reads it; it echoes
        // the ping channel.
        let server = p.server.clone();
        let (flood_tx, flood_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let flood = server.accept().await.unwrap().accept().await;
            flood_tx.send(flood).unwrap();
            let mut ping = server.accept().await.unwrap().accept().await;
            let mut buf = [0u8; 64];
            loop {
                if ping.read_exact(&mut buf).await.is_err() {
                    break;
                }
                ping.write_all(&buf).await.unwrap();
            }
        });

        let mut flood = p
            .client
            .open("server", "flood", Headers::new())
            .await
            .unwrap();
        let flood_server = flood_rx.await.unwrap();
        let data = random_bytes(16 << 20);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            flood.write_all(&sent).await.unwrap();
            flood.close_write().await.unwrap();
            flood
        });

        // Wait until the flood has filled the receiver's window: from then
        // on the sender is blocked on credit.
        within(30, async {
            while flood_server.buffered_len() < WINDOW as usize {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;

        let mut ping = p
            .client
            .open("server", "ping", Headers::new())
            .await
            .unwrap();
        let mut rtts = Vec::new();
        let msg = [42u8; 64];
        let mut back = [0u8; 64];
        for _ in 0..200 {
            let t0 = Instant::now();
            ping.write_all(&msg).await.unwrap();
            within(5, ping.read_exact(&mut back)).await.unwrap();
            rtts.push(t0.elapsed());
            assert_eq!(back, msg);
        }
        rtts.sort();
        let p50 = rtts[rtts.len() / 2];
        let max = *rtts.last().unwrap();
        println!("{t:?}: ping during flood p50 {p50:?} max {max:?}");
        // The stall this guards against lasted seconds (BRIEF section 3).
        assert!(p50 < Duration::from_millis(50), "{t:?}: p50 {p50:?}");
        assert!(max < Duration::from_secs(1), "{t:?}: max {max:?}");

        // Memory: the unread channel holds at most its window, and the sender
        // is still stuck.
        let held = flood_server.buffered_len();
        assert!(held <= WINDOW as usize, "{t:?}: {held} bytes buffered");
        assert!(
            !writer.is_finished(),
            "the sender should be blocked on credit"
        );
        let (chans, total) = p.server.channel_stats("client");
        assert!(
            total <= WINDOW as usize + 64,
            "{t:?}: {total} bytes over {chans} channels"
        );

        // Reading resumes the flood; every byte arrives, in order.
        let mut flood_server = flood_server;
        let mut got = Vec::new();
        within(60, flood_server.read_to_end(&mut got))
            .await
            .unwrap();
        assert!(got == data, "{t:?}: flood data differs");
        drop(writer.await.unwrap());
        drop(ping);
        p.shutdown().await;
    }
}

/// Dropping the reader half discards incoming data but keeps granting
/// credit, so the sender finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_reader_does_not_block_sender() {
    let config = Config::default().channel_window(WINDOW).unwrap();
    let p = pair_with(duplex_tests::Transport::Tcp, config.clone(), config).await;
    let server = p.server.clone();
    tokio::spawn(async move {
        let ch = server.accept().await.unwrap().accept().await;
        let (r, mut w) = ch.split();
        drop(r);
        w.write_all(b"ok").await.unwrap();
        w.close_write().await.unwrap();
        // Keep the writer (and so the channel) open until the client is done.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut ch = p
        .client
        .open("server", "sink", Headers::new())
        .await
        .unwrap();
    within(30, ch.write_all(&random_bytes(8 << 20)))
        .await
        .unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ok");
    p.shutdown().await;
}

/// An error frame larger than the receiver's window still gets through (its
/// partial bytes are granted back as they arrive), and data flows after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frame_larger_than_the_window() {
    let config = Config::default().channel_window(64 << 10).unwrap();
    let p = pair_with(duplex_tests::Transport::Memory, config.clone(), config).await;
    let server = p.server.clone();
    let big = random_bytes(3 << 20);
    let expect = big.clone();
    let reader = tokio::spawn(async move {
        let mut ch = server.accept().await.unwrap().accept().await;
        let e = ch.read_error().await.unwrap().unwrap();
        assert!(e[..] == expect[..]);
        let mut rest = Vec::new();
        ch.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"after");
    });
    let mut ch = p
        .client
        .open("server", "err", Headers::new())
        .await
        .unwrap();
    within(30, ch.write_error(&big)).await.unwrap();
    ch.write_all(b"after").await.unwrap();
    ch.close_write().await.unwrap();
    within(30, reader).await.unwrap();
    p.shutdown().await;
}

/// Writes of every size, data and error frames mixed, against a reader
/// that pauses: sends start in the writer's task and, when they must wait
/// for window, carry on in the connection's outbox. Every byte and frame
/// arrives, in order, and the writer's `close` sees everything flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_keep_order_between_the_writer_and_the_outbox() {
    for t in TRANSPORTS {
        let config = Config::default().channel_window(64 << 10).unwrap();
        let p = pair_with(t, config.clone(), config).await;
        let server = p.server.clone();
        let reader = tokio::spawn(async move {
            let mut ch = server.accept().await.unwrap().accept().await;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 7919];
            let mut reads = 0u32;
            loop {
                let n = ch.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                reads += 1;
                if reads.is_multiple_of(64) {
                    // Let the window run dry now and then.
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let mut frames = Vec::new();
            while let Some(f) = ch.read_error().await.unwrap() {
                frames.push(f);
            }
            (got, frames)
        });

        let mut ch = p
            .client
            .open("server", "mixed", Headers::new())
            .await
            .unwrap();
        let data = random_bytes(6 << 20);
        let mut sent_frames = Vec::new();
        let (mut pos, mut i) = (0usize, 0usize);
        while pos < data.len() {
            // 1 byte up to 200 KiB, by a fixed pattern.
            let size = [1, 17, 64, 1500, 16 << 10, 16 << 10 | 1, 200 << 10][i % 7];
            let end = (pos + size).min(data.len());
            ch.write_all(&data[pos..end]).await.unwrap();
            if i % 5 == 0 {
                let frame = format!("frame {i}").into_bytes();
                ch.write_error(&frame).await.unwrap();
                sent_frames.push(frame);
            }
            pos = end;
            i += 1;
        }
        within(60, ch.close()).await.unwrap();
        let (got, frames) = within(60, reader).await.unwrap();
        assert!(
            got == data,
            "{t:?}: data differs ({} of {} bytes)",
            got.len(),
            data.len()
        );
        let frames: Vec<Vec<u8>> = frames.into_iter().map(|f| f.to_vec()).collect();
        assert_eq!(frames, sent_frames, "{t:?}: error frames differ");
        p.shutdown().await;
    }
}

/// Many channels streaming in both directions at once, with far more
/// credit in flight than the connection's send buffer holds: the
/// connection keeps moving (channel data waits for the buffer to drain;
/// the sessions never stop reading), and every byte comes back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_beyond_the_send_buffer_does_not_stall_the_connection() {
    const CHANNELS: usize = 16;
    const EACH: usize = 8 << 20;
    for t in TRANSPORTS {
        let config = Config::default()
            .channel_window(1 << 20)
            .unwrap()
            .max_send_buffer(1 << 20)
            .unwrap();
        let p = pair_with(t, config.clone(), config).await;
        let server = p.server.clone();
        let echo = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CHANNELS {
                let ch = server.accept().await.unwrap().accept().await;
                tasks.spawn(async move {
                    let (mut r, mut w) = ch.split();
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.close_write().await.unwrap();
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CHANNELS {
            let ch = p
                .client
                .open("server", "echo", Headers::new())
                .await
                .unwrap();
            tasks.spawn(async move {
                let data = random_bytes(EACH);
                let (mut r, mut w) = ch.split();
                let sent = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&sent).await.unwrap();
                    w.close_write().await.unwrap();
                    w
                });
                let mut got = Vec::with_capacity(EACH);
                r.read_to_end(&mut got).await.unwrap();
                drop(writer.await.unwrap());
                assert!(got == data, "channel {i}: echo differs");
            });
        }
        within(120, async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        })
        .await;
        within(30, echo).await.unwrap();
        p.shutdown().await;
    }
}

/// Sends on one channel whose reader keeps up with the first 16 MiB and
/// then stops; returns how much the reader's side holds unread once the
/// sender is out of credit (at most the window the channel grew to).
async fn unread_after_keeping_up(p: &duplex_tests::Pair) -> usize {
    let server = p.server.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut ch = server.accept().await.unwrap().accept().await;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0usize;
        while got < 16 << 20 {
            let n = ch.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
        tx.send(()).unwrap();
        ch
    });
    let mut ch = p
        .client
        .open("server", "grow", Headers::new())
        .await
        .unwrap();
    let data = random_bytes(64 << 10);
    let writer = tokio::spawn(async move { while ch.write_all(&data).await.is_ok() {} });
    within(60, rx).await.unwrap();
    let ch = within(10, reader).await.unwrap();
    // The writer fills whatever credit it has; wait until it stops.
    let mut last = usize::MAX;
    within(30, async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = ch.buffered_len();
            if now == last {
                break;
            }
            last = now;
        }
    })
    .await;
    writer.abort();
    ch.buffered_len()
}

/// A channel whose application keeps up grows its receive window (up to
/// `max_channel_window`): once grown, the remote can have more unread bytes
/// in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_grows_while_the_reader_keeps_up() {
    const START: u32 = 256 << 10;
    const MAX: u32 = 1 << 20;
    let config = Config::default()
        .channel_window(START)
        .unwrap()
        .max_channel_window(MAX)
        .unwrap();
    let p = pair_with(duplex_tests::Transport::Tcp, config.clone(), config).await;
    let held = unread_after_keeping_up(&p).await;
    assert!(
        held > START as usize && held <= MAX as usize,
        "{held} bytes buffered: the window should have grown past {START}, up to {MAX}"
    );
    p.shutdown().await;
}

/// Growth stops at half the connection's buffer budget, so channels yet
/// to open still find room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_leaves_half_the_budget_for_new_channels() {
    const START: u32 = 256 << 10;
    let config = Config::default()
        .channel_window(START)
        .unwrap()
        .max_channel_window(4 << 20)
        .unwrap()
        .max_connection_buffer(1 << 20)
        .unwrap();
    let p = pair_with(duplex_tests::Transport::Tcp, config.clone(), config).await;
    let held = unread_after_keeping_up(&p).await;
    // 256 KiB grew once, to 512 KiB: half the 1 MiB budget.
    assert!(
        held > START as usize && held <= 512 << 10,
        "{held} bytes buffered: the window should have grown to 512 KiB, no more"
    );
    // The other half: two more channels of 256 KiB.
    let server = p.server.clone();
    let accepted = tokio::spawn(async move {
        let mut chans = Vec::new();
        for _ in 0..2 {
            chans.push(server.accept().await.unwrap().accept().await);
        }
        chans
    });
    let mut more = Vec::new();
    for _ in 0..2 {
        more.push(
            p.client
                .open("server", "more", Headers::new())
                .await
                .expect("half the budget is kept for new channels"),
        );
    }
    assert_eq!(within(10, accepted).await.unwrap().len(), 2);
    p.shutdown().await;
}
