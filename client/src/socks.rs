//! The SOCKS5 front end: parse with the sans-IO parser, get a circuit, open a stream, answer
//! the application with the right reply code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allium_proto::relay_msg::EndReason;
use allium_proto::socks::{encode_reply, Outcome, ReplyCode, SocksAuth, SocksConfig, SocksServer, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::circmgr::GetError;
use crate::circuit::BeginRequest;
use crate::path::{ExitNeed, PathError};
use crate::ClientState;

/// How long a SOCKS request waits for the client to have a usable consensus.
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(30);
/// How long an application may take to send its SOCKS request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Maps an exit's END reason to a SOCKS5 reply code.
pub fn reply_for_end(r: EndReason) -> ReplyCode {
    match r {
        EndReason::ExitPolicy => ReplyCode::NotAllowed,
        EndReason::ResolveFailed => ReplyCode::HostUnreachable,
        EndReason::ConnectRefused => ReplyCode::ConnectionRefused,
        EndReason::Timeout => ReplyCode::TtlExpired,
        EndReason::NoRoute => ReplyCode::NetworkUnreachable,
        _ => ReplyCode::GeneralFailure,
    }
}

/// Accepts application connections forever.
pub async fn serve(listener: TcpListener, state: Arc<ClientState>) -> Result<(), crate::ClientError> {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("SOCKS accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, state).await {
                tracing::debug!("SOCKS connection ended: {e}");
            }
        });
    }
}

async fn handle(mut sock: TcpStream, state: Arc<ClientState>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let Some((req, early)) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut sock)).await.unwrap_or(Ok(None))? else {
        return Ok(());
    };
    let (host, port, need) = match &req.target {
        TargetAddr::Ip(sa) => (sa.ip().to_string(), sa.port(), ExitNeed::Addr(sa.ip(), sa.port())),
        TargetAddr::Domain(h, p) => (h.clone(), *p, ExitNeed::Port(*p)),
    };
    if port == 0 {
        return fail(sock, ReplyCode::NotAllowed).await;
    }
    if host.to_ascii_lowercase().ends_with(".allium") || host.to_ascii_lowercase().ends_with(".onion") {
        // Onion services come with their own issue; never leak such a name to an exit.
        return fail(sock, ReplyCode::HostUnreachable).await;
    }
    let iso = match &req.auth {
        SocksAuth::NoAuth => Vec::new(),
        SocksAuth::UserPass(u, p) => [&[1u8][..], &(u.len() as u16).to_be_bytes(), u, p].concat(),
    };
    let Some(dir) = state.wait_netdir(BOOTSTRAP_WAIT).await else {
        tracing::warn!("SOCKS request refused: no usable consensus yet");
        return fail(sock, ReplyCode::GeneralFailure).await;
    };
    let circ = match state.circuits.get(&dir, need, &iso).await {
        Ok(c) => c,
        Err(GetError::Path(PathError::NoExit)) => return fail(sock, ReplyCode::NotAllowed).await,
        Err(e) => {
            tracing::info!("no circuit for a SOCKS request: {e}");
            return fail(sock, ReplyCode::GeneralFailure).await;
        }
    };
    let (done, rx) = oneshot::channel();
    let success_reply = encode_reply(ReplyCode::Succeeded, Some(SocketAddr::from(([0, 0, 0, 0], 0))));
    let begin = BeginRequest { host, port, sock, early_data: early, success_reply, done };
    if let Err(req) = circ.begin(begin).await {
        return fail(req.sock, ReplyCode::GeneralFailure).await;
    }
    match rx.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((reason, sock))) => {
            tracing::debug!("stream refused by the exit: {reason:?}");
            fail(sock, reply_for_end(reason)).await
        }
        Err(_) => Ok(()),
    }
}

async fn fail(mut sock: TcpStream, code: ReplyCode) -> std::io::Result<()> {
    sock.write_all(&encode_reply(code, None)).await?;
    sock.shutdown().await
}

/// Runs the SOCKS handshake; returns the request and any bytes the application sent after it.
async fn read_request(sock: &mut TcpStream) -> std::io::Result<Option<(allium_proto::socks::SocksRequest, Vec<u8>)>> {
    let mut parser = SocksServer::new(SocksConfig::default());
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        // One step handles every complete message in the buffer; NeedMore means read more.
        match parser.step(&buf) {
            Ok(step) => {
                if !step.reply.is_empty() {
                    sock.write_all(&step.reply).await?;
                }
                buf.drain(..step.consumed);
                if let Outcome::Done(req) = step.outcome {
                    return Ok(Some((req, buf)));
                }
            }
            Err(e) => {
                tracing::debug!("malformed SOCKS request: {e}");
                if let Some(r) = e.reply() {
                    sock.write_all(&r).await?;
                }
                return Ok(None);
            }
        }
    }
}
