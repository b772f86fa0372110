//! TEMPORARY stress test (issue 17 investigation): two StreamMux ends joined by a delayed
//! in-memory "circuit", multi-thread runtime.

use std::time::Duration;

use allium_net::stream::StreamMux;
use allium_proto::flow::FlowParams;
use allium_proto::relay_msg::RelayMsg;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

type Msg = (u16, RelayMsg);

/// A one-way link that delivers each message `delay` after it was sent, in order.
fn delayed(delay: Duration) -> (mpsc::UnboundedSender<Msg>, mpsc::UnboundedReceiver<Msg>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let (otx, orx) = mpsc::unbounded_channel::<Msg>();
    let (ttx, mut trx) = mpsc::unbounded_channel::<(Instant, Msg)>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if ttx.send((Instant::now() + delay, m)).is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((due, m)) = trx.recv().await {
            tokio::time::sleep_until(due).await;
            if otx.send(m).is_err() {
                return;
            }
        }
    });
    (tx, orx)
}

const SIZE: usize = 1 << 20;

async fn one(seed: u64, delay: Duration) -> Result<(), String> {
    let flow = FlowParams::default();
    let (to_client, mut at_client) = delayed(delay);
    let (to_exit, mut at_exit) = delayed(delay);
    // The exit: its stream reads a web server.
    let (exit_sock, mut server) = tokio::io::duplex(64 * 1024);
    let (client_sock, mut app) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data = vec![7u8; SIZE];
        let mut off = 0;
        while off < SIZE {
            let n = [1usize, 17, 498, 1448, 2896, 4344, 5000, 14480][rng.gen_range(0..8)].min(SIZE - off);
            if server.write_all(&data[off..off + n]).await.is_err() {
                return;
            }
            off += n;
            if rng.gen_bool(0.3) {
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..2000))).await;
            }
        }
        let _ = server.shutdown().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let exit = tokio::spawn(async move {
        let mut mux = StreamMux::new(flow);
        mux.open(1).unwrap();
        mux.attach(1, exit_sock, Vec::new());
        loop {
            let out = tokio::select! {
                ev = mux.next_event() => mux.handle_event(ev),
                m = at_exit.recv() => match m {
                    Some((id, m)) => match mux.handle_msg(id, m) {
                        Ok(o) => o,
                        Err(e) => return Err(format!("exit: {e}")),
                    },
                    None => return Ok(()),
                },
            };
            for m in out {
                if to_client.send(m).is_err() {
                    return Ok(());
                }
            }
        }
    });
    let client = tokio::spawn(async move {
        let mut mux = StreamMux::new(flow);
        mux.open(1).unwrap();
        mux.attach(1, client_sock, Vec::new());
        loop {
            let out = tokio::select! {
                ev = mux.next_event() => mux.handle_event(ev),
                m = at_client.recv() => match m {
                    Some((id, m)) => match mux.handle_msg(id, m) {
                        Ok(o) => o,
                        Err(e) => return Err(format!("client: {e}")),
                    },
                    None => return Ok(()),
                },
            };
            for m in out {
                if to_exit.send(m).is_err() {
                    return Ok(());
                }
            }
        }
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        while got < SIZE {
            match app.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    exit.abort();
    client.abort();
    if r.is_err() || got != SIZE {
        return Err(format!("seed {seed}: got {got} of {SIZE}"));
    }
    Ok(())
}

use rand::SeedableRng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_stress_many_circuits_with_latency() {
    let mut failures = Vec::new();
    for round in 0..3u64 {
        let hs: Vec<_> = (0..8u64).map(|i| tokio::spawn(one(round * 100 + i, Duration::from_millis(15)))).collect();
        for h in hs {
            if let Err(e) = h.await.unwrap() {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
