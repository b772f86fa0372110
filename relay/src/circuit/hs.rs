//! A circuit's onion-service role at this relay: an introduction point's (ESTABLISH_INTRO,
//! INTRODUCE1) and a rendezvous point's (ESTABLISH_RENDEZVOUS, RENDEZVOUS1), through the shared
//! tables of `crate::hs_points`, and what other circuits hand this one.

use super::*;

/// What this circuit is to the onion-service tables (docs/PROTOCOL.md, "Onion services").
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum HsRole {
    /// A service's introduction circuit (sent ESTABLISH_INTRO).
    Intro,
    /// A client's circuit to an introduction point (sent INTRODUCE1).
    Introducing,
    /// A rendezvous circuit (sent ESTABLISH_RENDEZVOUS or RENDEZVOUS1).
    Rend,
}

/// This circuit's name in [`crate::hs_points::HsPoints`] and where other circuits reach it.
pub(super) struct Hs {
    pub(super) key: CircKey,
    pub(super) tx: mpsc::Sender<HsEvent>,
    pub(super) role: Option<HsRole>,
}

/// The onion-service messages a relay takes (commands 20, 22, 25, 27).
pub(super) fn is_hs_msg(m: &RelayMsg) -> bool {
    matches!(m, RelayMsg::EstablishIntro { .. } | RelayMsg::Introduce1(_) | RelayMsg::EstablishRendezvous { .. } | RelayMsg::Rendezvous1 { .. })
}

impl RelayCircuit {
    /// ESTABLISH_INTRO, INTRODUCE1, ESTABLISH_RENDEZVOUS or RENDEZVOUS1 at the last hop.
    pub(super) async fn handle_hs_msg(&mut self, msg: RelayMsg) -> Result<(), Close> {
        let (key, tx) = (self.hs.key, self.hs.tx.clone());
        let protocol = || Close(DestroyReason::Protocol, Side::Local);
        let role = match msg {
            RelayMsg::EstablishIntro { .. } => HsRole::Intro,
            RelayMsg::Introduce1(_) => HsRole::Introducing,
            _ => HsRole::Rend,
        };
        // One role per circuit; the tables refuse a second message of the same role.
        if self.hs.role.is_some_and(|r| r != role) {
            return Err(protocol());
        }
        self.hs.role = Some(role);
        let points = self.ctx.hs.clone();
        let now = allium_net::keys::unix_now();
        match msg {
            m @ RelayMsg::EstablishIntro { .. } => {
                let r = points.intro.lock().unwrap_or_else(|e| e.into_inner()).establish(key, &m, &self.hop_keys, crate::hs_points::mono_ms());
                let (reply, _old) = r.map_err(|e| {
                    tracing::debug!("ESTABLISH_INTRO refused: {e}");
                    match e {
                        allium_proto::hs::intro_point::IntroPointError::Full => {
                            LimitCounters::hit(&LIMITS.intro_circuits_full);
                            Close(DestroyReason::ResourceLimit, Side::Local)
                        }
                        _ => protocol(),
                    }
                })?;
                points.register(key, &tx);
                self.send_back(0, &reply).await
            }
            RelayMsg::Introduce1(body) => {
                let r = points.intro.lock().unwrap_or_else(|e| e.into_inner()).introduce1(key, &body, crate::hs_points::mono_ms());
                let action = r.map_err(|e| {
                    tracing::debug!("INTRODUCE1 refused: {e}");
                    protocol()
                })?;
                if matches!(action.ack, RelayMsg::IntroduceAck { status: introduce_status::RATE_LIMITED, .. }) {
                    LimitCounters::hit(&LIMITS.intro_rate_limited);
                }
                let mut ack = action.ack;
                if let Some((svc, intro2)) = action.forward {
                    if self.ctx.duplicate_introduce2 {
                        tracing::info!("test hook: forwarding an INTRODUCE2 twice");
                        points.deliver(svc, HsEvent::Originate(intro2.clone()));
                    }
                    if points.deliver(svc, HsEvent::Originate(intro2)) {
                        METRICS.onion_introductions.inc();
                    } else {
                        ack = RelayMsg::IntroduceAck { status: introduce_status::CANNOT_RELAY, ext: Default::default() };
                    }
                }
                self.send_back(0, &ack).await
            }
            RelayMsg::EstablishRendezvous { cookie, .. } => {
                // Reachable before it is filed, so that an expiry can destroy it.
                points.register(key, &tx);
                let r = points.rend.lock().unwrap_or_else(|e| e.into_inner()).establish(key, &cookie, now);
                let reply = r.map_err(|e| {
                    tracing::debug!("ESTABLISH_RENDEZVOUS refused: {e}");
                    match e {
                        allium_proto::hs::rend_point::RendPointError::Full => {
                            LimitCounters::hit(&LIMITS.rendezvous_cookies_full);
                            Close(DestroyReason::ResourceLimit, Side::Local)
                        }
                        _ => protocol(),
                    }
                })?;
                self.send_back(0, &reply).await
            }
            RelayMsg::Rendezvous1 { cookie, hdata, .. } => {
                // Reachable before the join, so that the client's cells and DESTROY find it.
                points.register(key, &tx);
                let r = points.rend.lock().unwrap_or_else(|e| e.into_inner()).rendezvous1(key, &cookie, &hdata, now);
                let (client, rend2) = r.map_err(|e| {
                    tracing::debug!("RENDEZVOUS1 refused: {e}");
                    protocol()
                })?;
                if points.deliver(client, HsEvent::Originate(rend2)) {
                    METRICS.onion_rendezvous.inc();
                    Ok(())
                } else {
                    Err(Close(DestroyReason::ResourceLimit, Side::Local))
                }
            }
            _ => Err(protocol()),
        }
    }

    /// Something another circuit task handed to this one.
    pub(super) async fn on_hs_event(&mut self, ev: HsEvent) -> Result<(), Close> {
        match ev {
            HsEvent::Originate(msg) => self.send_back(0, &msg).await,
            HsEvent::Cell(mut body) => {
                self.hop.forward_back(&mut body).map_err(|f| Close::of(f, Side::Local))?;
                self.prev.send(Cell { circ_id: self.prev_id, cmd: CellCmd::Relay, payload: *body }).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))
            }
            // Told to both sides of this circuit, as a local decision.
            HsEvent::Destroy(reason) => Err(Close(reason, Side::Local)),
        }
    }
}
