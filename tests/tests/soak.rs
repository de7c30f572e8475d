//! Soak: many peers and channels with mixed traffic, random abandons and
//! connection cuts (so peers re-dial), checking that every frame sent is
//! received exactly once or reported as failed, and that memory and file
//! descriptors stay flat. Alone in its test binary, so the process-wide
//! measurements see no other test.
//!
//! CI runs a small scale. A long run:
//! `DUPLEX_SOAK_SECS=600 cargo test -p duplex-tests --test soak -- --nocapture`
//! (also `DUPLEX_SOAK_PEERS`, default 6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex::fault::FaultProxy;
use duplex::{Backoff, Config, Headers, Identity, Peer, ReadEvent};
use duplex_tests::{init_tracing, open_fds, peer_trusting, rss_kib, within};
use rand::{RngExt, SeedableRng};

mod jemalloc;
use jemalloc::heap_kib;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One message: stream id, sequence number, and a payload whose bytes are
/// derived from both, so corruption, loss, reordering and duplication are
/// all visible to the receiver.
fn message(stream: u64, seq: u32, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + len);
    m.extend_from_slice(&stream.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((0..len).map(|i| (stream as usize ^ seq as usize ^ i) as u8));
    m
}

fn check(frame: &[u8]) -> (u64, u32) {
    let stream = u64::from_be_bytes(frame[..8].try_into().unwrap());
    let seq = u32::from_be_bytes(frame[8..12].try_into().unwrap());
    for (i, b) in frame[12..].iter().enumerate() {
        assert_eq!(
            *b,
            (stream as usize ^ seq as usize ^ i) as u8,
            "corrupt payload"
        );
    }
    (stream, seq)
}

/// What the hub received, per stream: the sequence numbers in order.
type Received = Arc<Mutex<HashMap<u64, Vec<u32>>>>;

/// The hub: records every frame (and error frame) of every channel, and
/// answers a finished stream with the number of frames it got.
fn hub(peer: &Peer, received: Received) {
    let p = peer.clone();
    tokio::spawn(async move {
        while let Some(inc) = p.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let ch = inc.accept().await;
                let (mut r, mut w) = ch.split();
                let mut n = 0u32;
                let mut buf = vec![0u8; 64 << 10];
                let mut pending = Vec::new();
                // Frames on the data stream, via read_event so error frames
                // (which count too) are read alongside.
                loop {
                    match r.read_event(&mut buf).await {
                        Ok(Some(ReadEvent::Data(k))) => pending.extend_from_slice(&buf[..k]),
                        Ok(Some(ReadEvent::Error(f))) => {
                            let (s, seq) = check(&f);
                            received.lock().unwrap().entry(s).or_default().push(seq);
                            n += 1;
                        }
                        Ok(None) => break,
                        Err(_) => return, // cut or abandoned: the sender knows
                    }
                    while pending.len() >= 4 {
                        let len = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                        if pending.len() < 4 + len {
                            break;
                        }
                        let f: Vec<u8> = pending.drain(..4 + len).skip(4).collect();
                        let (s, seq) = check(&f);
                        received.lock().unwrap().entry(s).or_default().push(seq);
                        n += 1;
                    }
                }
                assert!(pending.is_empty(), "stream ended inside a frame");
                let _ = w.write_frame(&n.to_be_bytes()).await;
                let _ = w.close_write().await;
            });
        }
    });
}

/// What a client reports for each stream: frames sent, and whether the
/// hub confirmed them all.
#[derive(Default)]
struct Ledger {
    streams: HashMap<u64, (u32, bool)>,
}

async fn client_worker(peer: Peer, id: u64, deadline: Instant, ledger: Arc<Mutex<Ledger>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(id);
    let mut stream = id << 32;
    while Instant::now() < deadline {
        stream += 1;
        let frames: u32 = rng.random_range(1..40);
        ledger.lock().unwrap().streams.insert(stream, (0, false));
        let Ok(mut ch) = peer.open("hub", "sink", Headers::new()).await else {
            continue; // reconnecting: nothing was sent
        };
        let abandon_at = if rng.random_bool(0.15) {
            Some(rng.random_range(0..frames))
        } else {
            None
        };
        let mut sent = 0u32;
        let mut failed = false;
        for seq in 0..frames {
            if abandon_at == Some(seq) {
                break;
            }
            let len = match rng.random_range(0..10) {
                0 => rng.random_range(32 << 10..256 << 10),
                1..=3 => 0,
                _ => rng.random_range(1..2048),
            };
            let m = message(stream, seq, len);
            let r = if rng.random_bool(0.1) && len < 4096 {
                ch.write_error(&m).await
            } else {
                ch.write_frame(&m).await
            };
            if r.is_err() {
                failed = true;
                break;
            }
            sent = seq + 1;
        }
        ledger.lock().unwrap().streams.insert(stream, (sent, false));
        if failed || abandon_at.is_some() {
            drop(ch); // reported as failed: the hub may hold a prefix
            continue;
        }
        // Both streams must be flushed before EOF; then the hub's count.
        if ch.close_write().await.is_err() {
            continue;
        }
        if let Ok(Ok(Some(count))) =
            tokio::time::timeout(Duration::from_secs(20), ch.read_frame()).await
        {
            let got = u32::from_be_bytes(count[..4].try_into().unwrap());
            assert_eq!(
                got, sent,
                "stream {stream}: hub counted {got} of {sent} frames"
            );
            ledger.lock().unwrap().streams.insert(stream, (sent, true));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_exactly_once_or_reported_with_flat_resources() {
    init_tracing();
    let secs = env_or("DUPLEX_SOAK_SECS", 9);
    let peers = env_or("DUPLEX_SOAK_PEERS", 6) as usize;
    let hub_id = Identity::generate();
    let ids: Vec<Identity> = (0..peers).map(|_| Identity::generate()).collect();
    let trusted: Vec<&Identity> = ids.iter().collect();
    let hub_peer = peer_trusting(
        "hub",
        &hub_id,
        &trusted,
        Config::default().channel_window(256 << 10).unwrap(),
    );
    let ep = hub_peer.bind("tcp://127.0.0.1:0").await.unwrap();
    let received: Received = Default::default();
    hub(&hub_peer, received.clone());
    let upstream = match &ep {
        duplex::Endpoint::Tcp { port, .. } => std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
        _ => unreachable!(),
    };
    let backoff = Backoff::default()
        .initial(Duration::from_millis(5))
        .max_interval(Duration::from_millis(50));
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let config = Config::default()
            .connect_backoff(backoff.clone())
            .unwrap()
            .peer_wait_timeout(Duration::from_secs(5));
        let c = peer_trusting(&format!("c{i}"), id, &[&hub_id], config);
        c.connect(proxy.endpoint().as_str()).await.unwrap();
        proxies.push(proxy);
        clients.push(c);
    }
    let ledger: Arc<Mutex<Ledger>> = Default::default();

    // Rounds: traffic on every client, and a cut of one client's
    // connection mid-round. After each round its streams are checked and
    // forgotten, so the test's own bookkeeping stays small; resources are
    // measured after every round.
    let rounds = secs.max(6);
    let round_len = Duration::from_secs(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut samples = Vec::new();
    let (mut confirmed, mut failed, mut frames) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for round in 0..rounds {
        let deadline = Instant::now() + round_len;
        let mut workers = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            workers.push(tokio::spawn(client_worker(
                c.clone(),
                (round << 16) | i as u64,
                deadline,
                ledger.clone(),
            )));
        }
        let victim = rng.random_range(0..proxies.len());
        tokio::time::sleep(round_len / 2).await;
        proxies[victim].cut();
        for w in workers {
            within(60, w).await.unwrap();
        }
        // Exactly once, or reported as failed.
        let streams = std::mem::take(&mut ledger.lock().unwrap().streams);
        let mut received = received.lock().unwrap();
        for (stream, (sent, ok)) in &streams {
            let got = received.remove(stream).unwrap_or_default();
            // Data frames arrive in order; error frames travel apart, so
            // compare as sets with no duplicates.
            let mut sorted = got.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                got.len(),
                "stream {stream}: duplicated frames"
            );
            if *ok {
                assert_eq!(
                    sorted,
                    (0..*sent).collect::<Vec<_>>(),
                    "stream {stream}: confirmed but incomplete"
                );
                confirmed += 1;
                frames += u64::from(*sent);
            } else {
                assert!(
                    sorted.iter().all(|s| s < sent),
                    "stream {stream}: a frame never sent arrived"
                );
                failed += 1;
            }
        }
        // Frames of cut streams may still trickle in after their check.
        received.retain(|stream, _| stream >> 48 >= round);
        received.shrink_to_fit();
        drop(received);
        let chans: usize = (0..peers)
            .map(|i| hub_peer.channel_stats(&format!("c{i}")).0)
            .sum();
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        samples.push((heap_kib(), open_fds(), chans, tasks, rss_kib()));
    }
    let elapsed = started.elapsed();
    // Re-dials settle before the last descriptor count.
    within(30, async {
        for c in &clients {
            let mut ev = c.events();
            while c.peers().is_empty() {
                ev.recv().await;
            }
        }
    })
    .await;
    let fds_end = open_fds();
    // Buffers and tables grow to their working size in the first rounds
    // (the first third); after that the heap must not trend upwards: the
    // last third peaks no higher than the middle third (plus slack for
    // what is in flight when a sample is taken). A leak of even a hundred
    // bytes per stream shows in a long run.
    let (_, fds0, _, _, _) = samples[0];
    let third = samples.len() / 3;
    let peak = |r: &[(u64, usize, usize, usize, u64)]| r.iter().map(|s| s.0).max().unwrap_or(0);
    let middle = peak(&samples[third..2 * third]);
    let last = peak(&samples[2 * third..]);
    let trace: Vec<String> = samples
        .iter()
        .map(|(h, f, c, t, r)| format!("{}K/{}M/{f}/{c}/{t}", h, r / 1024))
        .collect();
    eprintln!(
        "soak: {peers} peers, {rounds} rounds in {elapsed:.1?}: {confirmed} streams confirmed ({frames} frames), {failed} abandoned or cut; per round heap/RSS/fds/hub channels/tasks: {}",
        trace.join(" ")
    );
    assert!(confirmed > 0 && failed > 0, "the soak exercised too little");
    assert!(
        fds_end <= fds0 + 8,
        "file descriptors grew: {fds0} -> {fds_end}"
    );
    assert!(
        last <= middle + 16 * 1024,
        "heap grew: peak {middle} KiB in the middle third of the rounds, {last} KiB in the last"
    );
    for c in clients {
        c.shutdown().await;
    }
    hub_peer.shutdown().await;
}
