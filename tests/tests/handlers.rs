//! Issue 18, point 7: handlers without boilerplate. `?` works on
//! `std::io::Error` and `anyhow::Error` (their kind picks the status code),
//! `OptionExt` turns a `None` into a status, and a handler that cannot fail
//! ends with a plain `Ok(value)`: none of the closures below names the
//! error type, and they are served over a real connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::Context as _;
use duplex_rpc::{CallContext, Client, Code, OptionExt, Router, Server};
use duplex_tests::{TempDir, Transport, pair, within};

fn parse_count(text: &str) -> anyhow::Result<u32> {
    let n: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a count"))?;
    Ok(n)
}

fn router(dir: std::path::PathBuf) -> Router {
    let users = ["ann", "bob"];
    Router::new()
        // Cannot fail: no `Ok::<_, Status>`.
        .unary(
            "Calc.Double",
            |_: CallContext, x: i64| async move { Ok(x * 2) },
        )
        // `?` on std::io::Error.
        .unary("Files.Read", move |_: CallContext, name: String| {
            let path = dir.join(name);
            async move {
                let text = std::fs::read_to_string(path)?;
                Ok(text)
            }
        })
        // `?` on anyhow::Error, whose chain keeps an io::Error's code.
        .unary("Files.Count", |_: CallContext, path: String| async move {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            Ok(parse_count(&text)?)
        })
        // `?` on an Option.
        .unary(
            "Users.Find",
            move |_: CallContext, name: String| async move {
                let i = users
                    .iter()
                    .position(|u| *u == name)
                    .or_not_found(format!("no user {name:?}"))?;
                Ok(i)
            },
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_marks_in_handlers_become_statuses_with_fitting_codes() {
    let dir = TempDir::new("handlers");
    std::fs::write(dir.0.join("hello.txt"), "hello").unwrap();
    std::fs::write(dir.0.join("count.txt"), "x7").unwrap();
    let p = pair(Transport::Tcp).await;
    let _server = Server::new(router(dir.0.clone())).serve(&p.server).unwrap();
    let c = Client::new(p.client.clone()).to("server");
    within(30, async {
        assert_eq!(c.call::<_, i64>("Calc.Double", &21).await.unwrap(), 42);
        assert_eq!(
            c.call::<_, String>("Files.Read", &"hello.txt")
                .await
                .unwrap(),
            "hello"
        );
        // io::ErrorKind::NotFound → NOT_FOUND, with the OS's text.
        let e = c
            .call::<_, String>("Files.Read", &"missing.txt")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND, "{e}");
        // anyhow: the io::Error in the chain keeps its code; the message
        // is the whole chain.
        let missing = dir.0.join("missing.txt").display().to_string();
        let e = c.call::<_, u32>("Files.Count", &missing).await.unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND, "{e}");
        assert!(e.to_string().contains(&format!("reading {missing}")), "{e}");
        // anyhow with no known cause → UNKNOWN, the context in the text.
        let count = dir.0.join("count.txt").display().to_string();
        let e = c.call::<_, u32>("Files.Count", &count).await.unwrap_err();
        assert_eq!(e.code(), Code::UNKNOWN, "{e}");
        assert!(e.to_string().contains("\"x7\" is not a count"), "{e}");
        // None → NOT_FOUND with the message given.
        assert_eq!(c.call::<_, usize>("Users.Find", &"bob").await.unwrap(), 1);
        let e = c.call::<_, usize>("Users.Find", &"eve").await.unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert!(e.to_string().contains("no user \"eve\""), "{e}");
    })
    .await;
    p.shutdown().await;
}

#[test]
fn io_error_kinds_map_to_codes() {
    use duplex_rpc::Status;
    use std::io::{Error, ErrorKind as K};
    for (kind, code) in [
        (K::NotFound, Code::NOT_FOUND),
        (K::PermissionDenied, Code::PERMISSION_DENIED),
        (K::AlreadyExists, Code::ALREADY_EXISTS),
        (K::InvalidInput, Code::INVALID_ARGUMENT),
        (K::InvalidData, Code::INVALID_ARGUMENT),
        (K::TimedOut, Code::DEADLINE_EXCEEDED),
        (K::Interrupted, Code::CANCELLED),
        (K::Unsupported, Code::UNIMPLEMENTED),
        (K::OutOfMemory, Code::RESOURCE_EXHAUSTED),
        (K::ConnectionRefused, Code::UNAVAILABLE),
        (K::BrokenPipe, Code::UNAVAILABLE),
        (K::Other, Code::UNKNOWN),
    ] {
        let st = Status::from(Error::new(kind, "why"));
        assert_eq!(st.code(), code, "{kind:?}");
        assert_eq!(st.message(), "why");
    }
    // A Status inside anyhow keeps its code and details.
    let inner = Status::new(Code::ABORTED, "conflict").with_details(&b"d"[..]);
    let st = Status::from(anyhow::Error::from(inner).context("saving"));
    assert_eq!(st.code(), Code::ABORTED);
    assert_eq!(&st.details()[..], b"d");
    assert_eq!(st.message(), "saving: conflict");
}
