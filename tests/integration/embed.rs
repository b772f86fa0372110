//! The embedding API (`allium_client::embed`): a program starts a client from a test network's
//! client config, follows its bootstrap as events, and opens streams through an exit and to the
//! onion service as `DataStream` values; errors come with their kind. The compiled example
//! `client/examples/fetch.rs` fetches a page the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use allium_client::embed::{Client, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{pseudo_random, FileServer};
use crate::support::testnet::Testnet;

/// The whole test may take this long (a fresh network's onion service publishes within it).
const DEADLINE: Duration = Duration::from_secs(240);

/// The test network client's config, with a data directory of its own under `dir`.
fn own_config(net: &Testnet, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(net.dir.join("client").join("config.toml")).expect("the test network's client config");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("data_dir = ") { format!("data_dir = {:?}", data_dir.display().to_string()) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("config.toml");
    std::fs::write(&path, text + "\n").unwrap();
    path
}

/// GET `path` over `stream`: the body after the HTTP head.
async fn get(mut stream: allium_client::embed::DataStream, host: &str, path: &str) -> Vec<u8> {
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    assert!(raw.starts_with(b"HTTP/1.0 200"), "{}", String::from_utf8_lossy(&raw[..at]));
    raw[at..].to_vec()
}

#[test]
fn a_program_bootstraps_a_client_and_opens_streams_through_an_exit_and_to_an_onion_service() {
    let page = pseudo_random(100_000, 81);
    let server = FileServer::start(vec![("/page", page.clone())]);
    let port = server.addr().port();
    let target = server.addr().to_string();
    let net = Testnet::start(&["--hs-target", &target]);
    let onion = net.wait_env("ONION_HOST", DEADLINE).unwrap_or_else(|| panic!("no ONION_HOST\n{}", net.node_log("hs")));
    let dir = net.dir.join("embedded");
    let cfg = allium_client::ClientConfig::load(&own_config(&net, &dir)).expect("the config loads");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let client = Client::start(cfg).await.expect("the client starts");
            // Bootstrap steps come as events, in order, up to 100%.
            let mut events = client.bootstrap_events();
            let mut seen = Vec::new();
            while let Some(e) = events.next().await {
                seen.push(e.percent);
                if e.percent == 100 {
                    break;
                }
            }
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "steps in order: {seen:?}");
            assert_eq!(seen.last(), Some(&100), "{seen:?}");
            client.ready().await.expect("ready");

            // Through an exit, and to the onion service (which serves the same file).
            let s = client.connect(("127.0.0.1", port)).await.expect("a stream through an exit");
            assert!(get(s, "127.0.0.1", "/page").await == page, "the page through an exit, byte-exact");
            let s = client.connect_isolated((&onion, 80), b"other").await.expect("a stream to the onion service");
            assert!(get(s, &onion, "/page").await == page, "the page through the onion service, byte-exact");

            // An onion service this program hosts: it takes the streams itself.
            let cfg = allium_client::embed::OnionServiceConfig { name: "embedded".into(), ..Default::default() };
            let mut service = client.launch_onion_service(cfg).expect("the service starts");
            let address = service.address().to_string();
            assert!(address.ends_with(".allium"), "{address}");
            service.published().await.expect("the descriptor is published");
            let server = tokio::spawn(async move {
                for _ in 0..2 {
                    let incoming = service.next_stream().await.expect("a stream");
                    if incoming.port != 80 {
                        incoming.refuse(allium_client::embed::EndReason::ConnectRefused);
                        continue;
                    }
                    let mut s = incoming.accept(None).await.expect("accepted");
                    let mut request = [0u8; 5];
                    s.read_exact(&mut request).await.unwrap();
                    s.write_all(b"hello from a program, to ").await.unwrap();
                    s.write_all(&request).await.unwrap();
                    s.shutdown().await.unwrap();
                }
            });
            let mut s = client.connect_isolated((&address, 80), b"visitor").await.expect("a stream to the hosted service");
            s.write_all(b"alice").await.unwrap();
            s.flush().await.unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"hello from a program, to alice");
            let e = client.connect_isolated((&address, 81), b"visitor").await.err().expect("port 81 is refused by the program");
            assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
            server.await.unwrap();

            // Errors say what kind they are.
            let e = client.connect(("127.0.0.1", 0)).await.err().expect("port 0 is refused");
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
            let e = client.connect(("not-an-address.allium", 80)).await.err().expect("a malformed onion address is refused");
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
        })
        .await
        .expect("within the deadline")
    });
}

/// The compiled example, next to the test binary's directory (`cargo test` builds examples).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    profile.join("examples").join(name)
}

#[test]
fn the_fetch_example_fetches_a_page_through_a_test_network() {
    let page = pseudo_random(10_000, 82);
    let server = FileServer::start(vec![("/page", page.clone())]);
    let net = Testnet::start(&[]);
    let dir = net.dir.join("example");
    let config = own_config(&net, &dir);
    let bin = example("fetch");
    assert!(bin.exists(), "{} is missing: build it with `cargo test` or `cargo build --examples`", bin.display());
    let out = std::process::Command::new(&bin)
        .args([config.to_str().unwrap(), "127.0.0.1", &server.addr().port().to_string(), "/page"])
        .output()
        .expect("the example runs");
    assert!(out.status.success(), "the example failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.ends_with(&page), "the page, byte-exact");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootstrap 100%"), "it printed its bootstrap steps:\n{err}");
}
