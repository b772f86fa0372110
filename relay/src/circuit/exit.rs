//! The exit's side of a circuit that ends at this relay: BEGIN to a destination (within the
//! exit policy, the circuit's BEGIN rate and the exit's connection cap), BEGIN_DIR to this
//! relay's directory cache, RESOLVE, and the stream messages of open streams.

use super::*;

/// Opens stream `id` on `mux`: false (counted) if the circuit already carries
/// `limits.max_streams_per_circuit` streams, which is answered END RESOURCELIMIT; a stream id
/// in use is the peer's protocol violation.
fn open_stream(mux: &mut StreamMux, id: u16) -> Result<bool, Close> {
    match mux.open(id) {
        Ok(()) => Ok(true),
        Err(allium_net::stream::StreamError::TooManyStreams) => {
            LimitCounters::hit(&LIMITS.streams_per_circuit);
            METRICS.streams_failed.inc(stream_failure(EndReason::ResourceLimit));
            Ok(false)
        }
        Err(_) => Err(Close(DestroyReason::Protocol, Side::Local)),
    }
}


pub(super) type ResolveResult = (u16, Result<Vec<std::net::IpAddr>, EndReason>);

/// RESOLVEs being answered: their stream ids (in use until RESOLVED is sent) and where the
/// resolver tasks report.
pub(super) struct Resolves {
    pub(super) tx: mpsc::Sender<ResolveResult>,
    pub(super) in_flight: std::collections::HashSet<u16>,
}

impl RelayCircuit {
    pub(super) async fn handle_msg(&mut self, stream_id: u16, msg: RelayMsg, streams: &mut Streams) -> Result<(), Close> {
        let Streams { mux, incoming } = streams;
        let resolves = &mut self.resolves;
        // The machine refused streams on stream 0 or at a hop that is not the last.
        match msg {
            RelayMsg::Begin { host, port, .. } => {
                if resolves.in_flight.contains(&stream_id) {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                if !self.ctx.exit.policy.is_exit() {
                    METRICS.streams_failed.inc(stream_failure(EndReason::ExitPolicy));
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ExitPolicy)).await;
                }
                // THREATS A26: a rate per circuit, and a cap on the exit's open connections.
                let limits = &self.ctx.limits;
                let bucket = self.begins.get_or_insert_with(|| TokenBucket::new(limits.begin_rate_per_circuit, limits.begin_burst_per_circuit, Instant::now()));
                if !bucket.take(Instant::now()) {
                    LimitCounters::hit(&LIMITS.begin_rate);
                    METRICS.streams_failed.inc(stream_failure(EndReason::ResourceLimit));
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                }
                let Ok(slot) = self.ctx.exit_conns.clone().try_acquire_owned() else {
                    LimitCounters::hit(&LIMITS.exit_connections);
                    METRICS.streams_failed.inc(stream_failure(EndReason::ResourceLimit));
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                };
                if !open_stream(mux, stream_id)? {
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                }
                let rules = self.ctx.exit.clone();
                let s = incoming.offer(stream_id, port, host);
                // The connection holds its place under `max_exit_connections` and in the
                // open-streams gauge for as long as the stream lives.
                tokio::spawn(async move {
                    match rules.open(&s.host, s.port).await {
                        Ok((sock, ip)) => {
                            if let Some(stream) = s.accept(Some(ip)).await {
                                stream.splice(Holding { sock, guard: (slot, METRICS.streams_open.open()) }, Vec::new());
                            }
                        }
                        Err(reason) => s.refuse(reason),
                    }
                });
                Ok(())
            }
            RelayMsg::BeginDir { .. } => {
                // Any relay is a directory cache: the stream ends here, at this hop.
                if resolves.in_flight.contains(&stream_id) {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                if !open_stream(mux, stream_id)? {
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                }
                let (ours, theirs) = tokio::io::duplex(crate::dir_cache::PIPE_BUFFER);
                tokio::spawn(crate::dir_cache::serve(theirs, self.ctx.dir.clone()));
                let step = self.send_back(stream_id, &RelayMsg::Connected { addr: None, ext: Default::default() }).await;
                mux.attach(stream_id, ours);
                step
            }
            RelayMsg::Resolve { host, .. } => {
                // A fresh stream id, answered by RESOLVED on it; no CONNECTED, no END.
                if !resolves.in_flight.insert(stream_id) {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                let over = resolves.in_flight.len() > self.ctx.limits.max_resolves_per_circuit;
                if !self.ctx.exit.policy.is_exit() || over {
                    let reason = if self.ctx.exit.policy.is_exit() { EndReason::ResourceLimit } else { EndReason::ExitPolicy };
                    if self.ctx.exit.policy.is_exit() {
                        LimitCounters::hit(&LIMITS.resolves_per_circuit);
                    }
                    resolves.in_flight.remove(&stream_id);
                    return self.send_back(stream_id, &RelayMsg::Resolved { result: Err(reason), ext: Default::default() }).await;
                }
                let rules = self.ctx.exit.clone();
                let tx = resolves.tx.clone();
                let me = self.ctx.id;
                tokio::spawn(async move {
                    crate::test_hooks::resolve_allowed(&me).await;
                    let r = rules.resolve_for_client(&host).await;
                    let _ = tx.send((stream_id, r)).await;
                });
                Ok(())
            }
            RelayMsg::Drop => Ok(()),
            m @ (RelayMsg::Data(_) | RelayMsg::DataToken { .. } | RelayMsg::Sendme { .. } | RelayMsg::Xoff | RelayMsg::Xon | RelayMsg::End(_)) => {
                if matches!(m, RelayMsg::End(_)) {
                    incoming.forget(stream_id);
                }
                let out = mux.handle_msg(stream_id, m).map_err(|e| {
                    tracing::debug!("stream protocol violation: {e}");
                    Close(DestroyReason::Protocol, Side::Local)
                })?;
                self.send_all(out).await
            }
            _ => Err(Close(DestroyReason::Protocol, Side::Local)),
        }
    }
}
