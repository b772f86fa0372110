//! The SOCKS4/4a/5 front end: parse with the sans-IO parser, get a circuit, open a stream (or
//! resolve a name through the exit), answer the application in its protocol with the right
//! reply code. [`serve_request`] is shared with the HTTP CONNECT front end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::hs::OnionAddress;
use allium_proto::http_connect;
use allium_proto::relay_msg::EndReason;
use allium_proto::socks::{Outcome, ReplyCode, SocksAuth, SocksCommand, SocksConfig, SocksRequest, SocksServer, SocksVersion, TargetAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::circmgr::Successor;
use crate::circuit::{Connected, ResolveRequest};
use crate::connect::{self, ConnectError, BOOTSTRAP_WAIT};
use crate::path::ExitNeed;
use crate::ClientState;
/// How long a RESOLVE may wait for the exit's answer.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);
/// A RESOLVE uses a circuit whose exit allows this port.
const RESOLVE_PORT: u16 = 80;

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
    // The permit covers the request; once a stream carries the socket, the circuit's stream
    // cap bounds it.
    let limiter = state.app_conns.clone();
    allium_net::accept::accept_forever(listener, "SOCKS", limiter, |sock, permit| {
        let state = state.clone();
        async move {
            let r = handle(sock, state).await;
            drop(permit);
            r
        }
    })
    .await;
    Err("the SOCKS listener stopped accepting".into())
}

/// An application's request, read within `limit` (`limits.request_timeout_secs`); None,
/// counted, if it took longer: the connection is closed unanswered.
pub(crate) async fn within_request_timeout<T>(limit: Duration, read: impl std::future::Future<Output = std::io::Result<Option<T>>>) -> std::io::Result<Option<T>> {
    let r = tokio::time::timeout(limit, read).await;
    if r.is_err() {
        LimitCounters::hit(&LIMITS.request_timeouts);
    }
    r.unwrap_or(Ok(None))
}

async fn handle(mut sock: TcpStream, state: Arc<ClientState>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let Some((req, early)) = within_request_timeout(state.limits.request_timeout(), read_request(&mut sock)).await? else {
        return Ok(());
    };
    let credentials = match &req.auth {
        SocksAuth::NoAuth => Vec::new(),
        SocksAuth::UserPass(u, p) => [&[1u8][..], &(u.len() as u16).to_be_bytes(), u, p].concat(),
        SocksAuth::UserId(u) => [&[2u8][..], u].concat(),
    };
    let app = AppRequest { resolve: req.command == SocksCommand::Resolve, target: req.target.clone(), credentials, early, front: Front::Socks(req) };
    serve_request(sock, state, app).await
}

/// Which front end a request came through, so the answer is in its protocol.
pub(crate) enum Front {
    /// SOCKS4/4a or SOCKS5: [`SocksRequest::reply`] picks the version.
    Socks(SocksRequest),
    /// HTTP CONNECT: the status of [`http_connect::status_for`].
    Http,
}

impl Front {
    /// The answer for `code` (the SOCKS5 reply code is the internal code of every front end).
    pub(crate) fn reply(&self, code: ReplyCode, bound: Option<SocketAddr>) -> Vec<u8> {
        match self {
            Front::Socks(r) => r.reply(code, bound),
            Front::Http => http_connect::encode_response(http_connect::status_for(code)),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Front::Socks(r) if r.version == SocksVersion::V4 => "SOCKS4",
            Front::Socks(_) => "SOCKS5",
            Front::Http => "HTTP CONNECT",
        }
    }
}

/// An application's request, whichever front end it came through.
pub(crate) struct AppRequest {
    pub target: TargetAddr,
    /// Resolve the name through the exit instead of opening a stream.
    pub resolve: bool,
    /// Isolation credentials as the front end encodes them (empty: none).
    pub credentials: Vec<u8>,
    /// Bytes the application sent after its request.
    pub early: Vec<u8>,
    pub front: Front,
}

/// Opens the stream (or resolves the name) for a parsed request and answers the application.
pub(crate) async fn serve_request(sock: TcpStream, state: Arc<ClientState>, app: AppRequest) -> std::io::Result<()> {
    let AppRequest { target, resolve, credentials, early, front } = app;
    let (host, port) = match &target {
        TargetAddr::Ip(sa) => (sa.ip().to_string(), sa.port()),
        TargetAddr::Domain(h, p) => (h.clone(), *p),
    };
    if resolve {
        if OnionAddress::is_reserved_name(&host) {
            // Never leak such a name to an exit.
            return match OnionAddress::parse(&host) {
                Err(e) => {
                    tracing::info!("RESOLVE refused: {e}");
                    fail(sock, &front, ReplyCode::OnionInvalidAddress).await
                }
                Ok(_) => {
                    tracing::info!("RESOLVE refused: an onion address has no IP address");
                    fail(sock, &front, ReplyCode::HostUnreachable).await
                }
            };
        }
        return serve_resolve(sock, state, target, &credentials, front).await;
    }
    let iso = state.isolation(&credentials, sock.local_addr().ok(), &host);
    match connect::open(&state, &host, port, &iso).await {
        Ok((c, successor)) => connected(sock, c, successor, &front, early).await,
        Err(e) => {
            tracing::info!("{} request failed: {e}", front.name());
            fail(sock, &front, reply_for(&e)).await
        }
    }
}

/// The reply code for a stream that could not be opened.
fn reply_for(e: &ConnectError) -> ReplyCode {
    match e {
        ConnectError::PortZero | ConnectError::NoExit => ReplyCode::NotAllowed,
        ConnectError::OnionAddress(_) => ReplyCode::OnionInvalidAddress,
        ConnectError::NotBootstrapped | ConnectError::NoCircuit(_) => ReplyCode::GeneralFailure,
        ConnectError::Refused { reason, .. } | ConnectError::OnionRefused(reason) => reply_for_end(*reason),
        ConnectError::Onion(e) => e.reply_code(),
        ConnectError::RendezvousClosed => ReplyCode::OnionRendezvousFailed,
    }
}

/// The stream is open: tells the application (the front end's success reply) and carries its
/// bytes, `early` first (what it sent after its request). The circuit's `successor` is owed
/// once the stream closes.
async fn connected(mut sock: TcpStream, c: Connected, successor: Successor, front: &Front, early: Vec<u8>) -> std::io::Result<()> {
    sock.write_all(&front.reply(ReplyCode::Succeeded, Some(SocketAddr::from(([0, 0, 0, 0], 0))))).await?;
    let guard = (allium_net::metrics::METRICS.streams_open.open(), successor);
    c.stream.splice(allium_net::stream::Holding { sock, guard }, early);
    Ok(())
}

/// RESOLVE: an IP literal is its own answer; a name is resolved by the exit of a circuit of the
/// request's isolation class. The reply carries the first address (port 0).
async fn serve_resolve(mut sock: TcpStream, state: Arc<ClientState>, target: TargetAddr, credentials: &[u8], front: Front) -> std::io::Result<()> {
    let host = match target {
        TargetAddr::Ip(sa) => {
            sock.write_all(&front.reply(ReplyCode::Succeeded, Some(SocketAddr::new(sa.ip(), 0)))).await?;
            return sock.shutdown().await;
        }
        TargetAddr::Domain(h, _) => h,
    };
    let iso = state.isolation(credentials, sock.local_addr().ok(), &host);
    let Some(dir) = state.wait_netdir(BOOTSTRAP_WAIT).await else {
        tracing::warn!("RESOLVE refused: no usable consensus yet");
        return fail(sock, &front, ReplyCode::GeneralFailure).await;
    };
    // Any exit can resolve; ask for one that allows a common port.
    // Its successor (if it was built ahead of need) is built once the RESOLVE is answered.
    let (circ, _successor) = match state.circuits.get(&dir, ExitNeed::Port(RESOLVE_PORT), &iso).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!("no circuit for a RESOLVE: {e}");
            return fail(sock, &front, ReplyCode::GeneralFailure).await;
        }
    };
    let (done, rx) = oneshot::channel();
    if circ.resolve(ResolveRequest { host, done }).await.is_err() {
        return fail(sock, &front, ReplyCode::GeneralFailure).await;
    }
    let answer = match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
        Err(_) => Err(EndReason::Timeout),
        Ok(Err(_)) => Err(EndReason::Destroy),
        Ok(Ok(r)) => r,
    };
    match answer.map(|addrs| addrs.first().copied()) {
        Ok(Some(ip)) => {
            sock.write_all(&front.reply(ReplyCode::Succeeded, Some(SocketAddr::new(ip, 0)))).await?;
            sock.shutdown().await
        }
        Ok(None) => fail(sock, &front, ReplyCode::HostUnreachable).await,
        Err(reason) => {
            tracing::debug!("RESOLVE failed at the exit: {reason:?}");
            fail(sock, &front, reply_for_resolve(reason)).await
        }
    }
}

/// The reply code for a failed RESOLVE: the name did not resolve (or only to a private
/// address) → 4; the exit refuses to resolve → 2; no answer in time → 6; anything else → 1.
pub fn reply_for_resolve(r: EndReason) -> ReplyCode {
    match r {
        EndReason::ResolveFailed => ReplyCode::HostUnreachable,
        EndReason::ExitPolicy => ReplyCode::NotAllowed,
        EndReason::Timeout => ReplyCode::TtlExpired,
        _ => ReplyCode::GeneralFailure,
    }
}

pub(crate) async fn fail(mut sock: TcpStream, front: &Front, code: ReplyCode) -> std::io::Result<()> {
    sock.write_all(&front.reply(code, None)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{refusal_text, retry_elsewhere};

    /// `limits.request_timeout_secs`: an application that sends only part of its request is
    /// closed unanswered once the limit passes (counted); one that sends it all is served.
    #[tokio::test]
    async fn a_request_not_sent_in_time_is_dropped_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut sock, _) = listener.accept().await.unwrap();
        app.write_all(&[5, 1]).await.unwrap();
        let before = LIMITS.request_timeouts.load(std::sync::atomic::Ordering::Relaxed);
        let r = within_request_timeout(Duration::from_millis(200), read_request(&mut sock)).await.unwrap();
        assert!(r.is_none(), "half a greeting is not a request");
        assert!(LIMITS.request_timeouts.load(std::sync::atomic::Ordering::Relaxed) > before, "counted");
        let fast = within_request_timeout(Duration::from_secs(60), async { Ok(Some(7)) }).await.unwrap();
        assert_eq!(fast, Some(7));
    }

    fn socks(version: SocksVersion) -> Front {
        Front::Socks(SocksRequest { version, command: SocksCommand::Connect, target: TargetAddr::Domain("a".into(), 1), auth: SocksAuth::NoAuth })
    }

    /// An exit's failed name lookup (END RESOLVEFAILED) is told as such: SOCKS5 reply 4 (host
    /// unreachable), and a log line saying the exit could not resolve the name, not that no exit
    /// allows the destination (what the client logged when no further exit was left to try).
    #[test]
    fn a_failed_lookup_is_reported_as_one() {
        assert_eq!(reply_for_end(EndReason::ResolveFailed), ReplyCode::HostUnreachable);
        assert_eq!(socks(SocksVersion::V5).reply(reply_for_end(EndReason::ResolveFailed), None)[1], 4);
        let text = refusal_text(EndReason::ResolveFailed);
        assert!(text.contains("could not resolve"), "{text}");
        assert!(!text.contains("allows") && !text.contains("policy"), "{text}");
        assert!(refusal_text(EndReason::ExitPolicy).contains("policy"));
        // Each reason has its own words.
        let all = [EndReason::ResolveFailed, EndReason::ExitPolicy, EndReason::ConnectRefused, EndReason::Timeout, EndReason::NoRoute, EndReason::ResourceLimit, EndReason::Destroy];
        let texts: std::collections::BTreeSet<_> = all.iter().map(|r| refusal_text(*r)).collect();
        assert_eq!(texts.len(), all.len());
    }

    /// Every END reason gets an answer in each front end's protocol (docs/PROTOCOL.md table).
    #[test]
    fn failures_map_to_each_protocol() {
        let cases = [
            (EndReason::ExitPolicy, 2, 403),
            (EndReason::ResolveFailed, 4, 502),
            (EndReason::ConnectRefused, 5, 502),
            (EndReason::Timeout, 6, 504),
            (EndReason::NoRoute, 3, 502),
            (EndReason::Destroy, 1, 502),
            (EndReason::Misc, 1, 502),
        ];
        for (reason, socks5, http) in cases {
            let code = reply_for_end(reason);
            assert_eq!(socks(SocksVersion::V5).reply(code, None)[1], socks5, "{reason:?}");
            assert_eq!(socks(SocksVersion::V4).reply(code, None), [0, 0x5b, 0, 0, 0, 0, 0, 0], "{reason:?}");
            let h = String::from_utf8(Front::Http.reply(code, None)).unwrap();
            assert!(h.starts_with(&format!("HTTP/1.1 {http} ")), "{reason:?}: {h}");
        }
        assert_eq!(socks(SocksVersion::V4).reply(ReplyCode::Succeeded, None)[1], 0x5a);
        assert!(String::from_utf8(Front::Http.reply(ReplyCode::Succeeded, None)).unwrap().starts_with("HTTP/1.1 200 "));
        assert_eq!(reply_for_resolve(EndReason::ResolveFailed), ReplyCode::HostUnreachable);
        assert_eq!(reply_for_resolve(EndReason::ExitPolicy), ReplyCode::NotAllowed);
        assert_eq!(reply_for_resolve(EndReason::Timeout), ReplyCode::TtlExpired);
        assert_eq!(reply_for_resolve(EndReason::Destroy), ReplyCode::GeneralFailure);
    }

    /// Onion-service failures: Tor's extended code in SOCKS5, the one failure code in SOCKS4,
    /// 502 (504 for a timeout) in HTTP CONNECT.
    #[test]
    fn onion_failures_map_to_each_protocol() {
        use crate::hs_connect::OnionError as E;
        let s = || "x".to_string();
        let cases = [
            (E::NotFound, 0xF0, 502),
            (E::InvalidDescriptor(s()), 0xF1, 502),
            (E::IntroFailed(s()), 0xF2, 502),
            (E::RendezvousFailed(s()), 0xF3, 502),
            (E::AuthMissing, 0xF4, 502),
            (E::AuthRejected, 0xF5, 502),
            (E::Timeout(s()), 0xF7, 504),
            (E::NoCircuit(s()), 0x01, 502),
        ];
        for (e, socks5, http) in cases {
            let code = e.reply_code();
            assert_eq!(socks(SocksVersion::V5).reply(code, None)[1], socks5, "{e}");
            assert_eq!(socks(SocksVersion::V4).reply(code, None), [0, 0x5b, 0, 0, 0, 0, 0, 0], "{e}");
            let h = String::from_utf8(Front::Http.reply(code, None)).unwrap();
            assert!(h.starts_with(&format!("HTTP/1.1 {http} ")), "{e}: {h}");
        }
        let h = String::from_utf8(Front::Http.reply(ReplyCode::OnionInvalidAddress, None)).unwrap();
        assert!(h.starts_with("HTTP/1.1 400 "), "{h}");
    }

    /// A refusal another exit may not give is tried on at most STREAM_RETRIES more exits; one
    /// every exit would give (the destination answered) is not retried.
    #[test]
    fn refused_streams_try_at_most_two_more_exits() {
        assert!(retry_elsewhere(EndReason::ExitPolicy, 1));
        assert!(retry_elsewhere(EndReason::ExitPolicy, 2));
        assert!(!retry_elsewhere(EndReason::ExitPolicy, 3), "three exits in all");
        assert!(retry_elsewhere(EndReason::ResolveFailed, 1));
        assert!(retry_elsewhere(EndReason::Destroy, 1));
        for r in [EndReason::ConnectRefused, EndReason::NoRoute, EndReason::ConnReset, EndReason::Done, EndReason::Protocol] {
            assert!(!retry_elsewhere(r, 1), "{r:?}");
        }
    }
}
