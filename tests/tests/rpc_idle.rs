//! Issue 18, point 8: a streaming call can be bounded per message. With
//! `Client::with_idle_timeout`, a stream that keeps moving may run longer
//! than the idle timeout in all, and one that falls silent fails with
//! `RpcError::IdleTimeout` (and its handler is cancelled), while a
//! whole-call timeout still applies when set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex_rpc::{CallContext, Client, Code, Router, RpcError, Sender, Server};
use duplex_tests::{Transport, pair, within};
use tokio::sync::mpsc;

struct OnDrop(mpsc::Sender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_stream_outlives_its_idle_timeout_and_a_silent_one_fails() {
    let p = pair(Transport::Tcp).await;
    let (cancelled_tx, mut cancelled) = mpsc::channel::<()>(1);
    let router = Router::new()
        // `n` ticks, 50 ms apart.
        .server_stream(
            "Clock.Ticks",
            |_: CallContext, n: u32, mut out: Sender<u32>| async move {
                for i in 0..n {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    out.send(&i).await?;
                }
                Ok(())
            },
        )
        // Three ticks, then silence until cancelled.
        .server_stream(
            "Clock.Stalls",
            move |ctx: CallContext, (): (), mut out: Sender<u32>| {
                // Reports when the server stops the handler (its future is
                // dropped when the caller goes away).
                let stopped = OnDrop(cancelled_tx.clone());
                async move {
                    let _stopped = stopped;
                    for i in 0..3 {
                        out.send(&i).await?;
                    }
                    ctx.cancelled().await;
                    Ok(())
                }
            },
        );
    let _server = Server::new(router).serve(&p.server).unwrap();
    let idle = Duration::from_secs(2);
    let client = Client::new(p.client.clone())
        .to("server")
        .with_idle_timeout(idle);

    // 60 ticks take at least 3 s, longer than the idle timeout: fine.
    let started = Instant::now();
    let mut ticks = client
        .server_stream::<_, u32>("Clock.Ticks", &60)
        .await
        .unwrap();
    let mut got = 0;
    while let Some(i) = within(30, ticks.recv()).await.unwrap() {
        assert_eq!(i, got);
        got += 1;
    }
    assert_eq!(got, 60);
    assert!(
        started.elapsed() > idle,
        "the stream outlived the idle timeout"
    );

    // Silence after three messages: the idle timeout, not a hang.
    let mut stalls = client
        .server_stream::<_, u32>("Clock.Stalls", &())
        .await
        .unwrap();
    for want in 0..3 {
        assert_eq!(within(30, stalls.recv()).await.unwrap(), Some(want));
    }
    let e = within(30, stalls.recv()).await.unwrap_err();
    assert!(matches!(e, RpcError::IdleTimeout { .. }), "{e:?}");
    assert_eq!(e.code(), Code::DEADLINE_EXCEEDED);
    assert_eq!(
        e.to_string(),
        "Clock.Stalls: no message for 2s (the idle timeout)"
    );
    // It keeps failing the same way, and dropping it cancels the handler.
    assert!(matches!(
        stalls.recv().await,
        Err(RpcError::IdleTimeout { .. })
    ));
    drop(stalls);
    within(30, cancelled.recv()).await.unwrap();

    // The whole-call timeout still applies with an idle timeout set.
    let both = client.with_timeout(Duration::from_millis(500));
    let mut ticks = both
        .server_stream::<_, u32>("Clock.Ticks", &1000)
        .await
        .unwrap();
    let e = loop {
        match within(30, ticks.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("1,000 ticks of 50 ms within 500 ms"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, RpcError::DeadlineExceeded { .. }), "{e:?}");
    p.shutdown().await;
}
