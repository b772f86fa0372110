//! One reactor for every circuit end: the loop that drives a circuit's state machine and its
//! streams over the circuit's link, for the client (`allium-client`'s circuit task) and for a
//! relay hop (`allium-relay`'s) alike.
//!
//! The reactor owns the waiting: for a cell on the circuit's link queue, an event from a stream
//! task, a service's or exit's answer to a stream the other end asked for, the end's own event
//! sources (a client's requests, a relay's next hop), and the end's next deadline. What each
//! of them means is the end's ([`CircuitEnd`]), which feeds its sans-IO machine
//! (`allium_proto::circuit`) and sends what the machine says. The streams' side is common:
//! stream-task events go through the [`StreamMux`], and answers to incoming streams (CONNECTED
//! then the stream handed over, or END) are sent the same way at an exit and at an onion
//! service.

use std::future::Future;
use std::time::Instant;

use allium_proto::cell::Cell;
use allium_proto::relay_msg::{EndReason, RelayMsg};

use crate::cell_queue::CellReceiver;
use crate::stream::{Incoming, Reply, StreamMux};

/// The streams of a circuit end: its data streams and the streams the other end asked for that
/// wait for an answer.
pub struct Streams {
    pub mux: StreamMux,
    pub incoming: Incoming,
}

/// The circuit's link queue closed.
#[derive(Debug, Clone, Copy)]
pub struct LinkGone {
    /// The memory budget reclaimed the queue (this node's resource limit), rather than the
    /// link closing.
    pub reclaimed: bool,
}

/// One end of a circuit, as the reactor drives it.
pub trait CircuitEnd: Send {
    /// Why the circuit ends (the loop stops at the first).
    type Error: Send;
    /// The end's own events, beside cells and streams.
    type Extra: Send;

    /// A cell from the circuit's link, or the link's queue closed.
    fn on_cell(&mut self, cell: Result<Cell, LinkGone>, streams: &mut Streams) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Sends stream-layer messages to the other end of this end's streams, in order.
    fn send_stream(&mut self, msgs: Vec<(u16, RelayMsg)>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The end's next own event; never ready if it has none to wait for.
    fn next_extra(&mut self) -> impl Future<Output = Self::Extra> + Send;

    fn on_extra(&mut self, ev: Self::Extra, streams: &mut Streams) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// When [`CircuitEnd::on_deadline`] is due, if ever.
    fn next_deadline(&self, streams: &Streams) -> Option<Instant>;

    fn on_deadline(&mut self, now: Instant, streams: &mut Streams) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether the circuit is done (the loop ends without an error).
    fn finished(&self, _streams: &Streams) -> bool {
        false
    }

    /// Something other than the deadline happened (an end that expires idle circuits notes it).
    fn touched(&mut self) {}

    /// A stream the other end asked for was answered: accepted (`None`) or refused.
    fn answered(&mut self, _refused: Option<EndReason>) {}
}

/// Drives `end` until it finishes or fails.
pub async fn run<E: CircuitEnd>(end: &mut E, rx: &mut CellReceiver, streams: &mut Streams) -> Result<(), E::Error> {
    // One timer, moved only when the deadline changes (not re-armed for every cell).
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        if end.finished(streams) {
            return Ok(());
        }
        let deadline = end.next_deadline(streams);
        if deadline != armed {
            if let Some(at) = deadline {
                timer.as_mut().reset(tokio::time::Instant::from_std(at));
            }
            armed = deadline;
        }
        let mut ticked = false;
        let mut cells = false;
        let step = tokio::select! {
            c = rx.recv() => {
                cells = true;
                let c = c.ok_or(LinkGone { reclaimed: rx.reclaimed() });
                end.on_cell(c, streams).await
            }
            ev = streams.mux.next_event() => {
                let out = streams.mux.handle_event(ev);
                end.send_stream(out).await
            }
            (id, answer) = streams.incoming.next_answer() => match streams.incoming.answered(id, answer, &mut streams.mux) {
                // CONNECTED goes out before the stream is handed over: no DATA can precede it.
                Reply::Connected(msg, handover) => {
                    end.answered(None);
                    let r = end.send_stream(vec![(id, msg)]).await;
                    handover.give();
                    r
                }
                Reply::End(reason, out) => {
                    end.answered(Some(reason));
                    end.send_stream(out).await
                }
                Reply::Nothing => Ok(()),
            },
            ev = end.next_extra() => end.on_extra(ev, streams).await,
            _ = &mut timer, if armed.is_some() => {
                ticked = true;
                // Re-armed at the next turn, even for the same instant (an end that did not
                // move its deadline is asked again, as it asks).
                armed = None;
                end.on_deadline(Instant::now(), streams).await
            }
        };
        if !ticked {
            end.touched();
        }
        step?;
        if cells {
            // Cells already waiting are handled in the same turn: one wake-up and one look at
            // the other sources per batch, not per cell.
            for _ in 1..CELL_BATCH {
                let Some(c) = rx.try_recv() else { break };
                end.on_cell(Ok(c), streams).await?;
            }
        }
    }
}

/// Cells from the link handled in one turn of the loop, at most (the other sources are looked
/// at between batches).
pub const CELL_BATCH: usize = 32;
