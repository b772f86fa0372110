//! Fetches one page through an Allium network with the embedding API
//! (`allium_client::embed`), no SOCKS involved:
//!
//! ```sh
//! cargo run --release -p allium-client --example fetch -- CLIENT.toml HOST PORT [PATH]
//! ```
//!
//! `CLIENT.toml` is a client config (`configs/client.toml`, or a test network's
//! `DIR/client/allium.toml` with another `node.data_dir`). Bootstrap steps go to stderr, the
//! response (head and body) to stdout.

use std::process::ExitCode;

use allium_client::embed::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(config), Some(host), Some(port)) = (args.first(), args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok())) else {
        eprintln!("usage: fetch CLIENT.toml HOST PORT [PATH]");
        return ExitCode::from(2);
    };
    let path = args.get(3).map(String::as_str).unwrap_or("/");
    match fetch(config, host, port, path).await {
        Ok(page) => {
            let mut out = tokio::io::stdout();
            if out.write_all(&page).await.is_err() || out.flush().await.is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fetch failed ({:?}): {e}", e.kind());
            ExitCode::FAILURE
        }
    }
}

async fn fetch(config: &str, host: &str, port: u16, path: &str) -> Result<Vec<u8>, allium_client::embed::Error> {
    let cfg = allium_client::ClientConfig::load(config.as_ref())?;
    let client = Client::start(cfg).await?;
    let mut progress = client.bootstrap_events();
    while let Some(step) = progress.next().await {
        eprintln!("bootstrap {}%: {}", step.percent, step.phase);
        if step.percent == 100 {
            break;
        }
    }
    client.ready().await?;
    let mut stream = client.connect((host, port)).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    stream.flush().await?;
    let mut page = Vec::new();
    stream.read_to_end(&mut page).await?;
    Ok(page)
}
