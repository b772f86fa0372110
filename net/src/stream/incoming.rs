//! Streams the other end asked this end to open (BEGIN at an exit, or at an onion service on
//! its rendezvous circuit): one piece of code for both. The circuit task hands each to whoever
//! connects its target ([`IncomingStream`]) without waiting; the answer comes back through
//! [`Incoming::next_answer`], and [`Incoming::answered`] turns it into CONNECTED (then the
//! stream is handed over, so no DATA can precede CONNECTED) or END.

use std::collections::HashSet;
use std::net::IpAddr;

use allium_proto::ext::Extensions;
use allium_proto::relay_msg::{EndReason, RelayMsg};
use tokio::sync::{mpsc, oneshot};

use super::{DataStream, StreamMux};

/// A stream to accept or refuse: its target's port and the host the other end named.
/// Dropped unanswered, the answer is END MISC.
pub struct IncomingStream {
    pub port: u16,
    /// The host named in the BEGIN (at an onion service: the onion address, or empty).
    pub host: String,
    id: u16,
    /// Where the answer goes (taken when it is given).
    answers: Option<mpsc::UnboundedSender<(u16, Answer)>>,
}

/// The answer to an [`IncomingStream`].
pub enum Answer {
    /// CONNECTED (with the address connected to, at an exit); the stream goes back through the
    /// sender once CONNECTED is sent.
    Accept(Option<IpAddr>, oneshot::Sender<DataStream>),
    Refuse(EndReason),
}

impl IncomingStream {
    /// Accepts the stream: CONNECTED goes out (reporting `addr`, if any), then the stream is
    /// handed over (`None` if the other end ended it or the circuit closed meanwhile).
    pub async fn accept(mut self, addr: Option<IpAddr>) -> Option<DataStream> {
        let (tx, rx) = oneshot::channel();
        self.answer(Answer::Accept(addr, tx));
        rx.await.ok()
    }

    /// Refuses the stream with END `reason`.
    pub fn refuse(mut self, reason: EndReason) {
        self.answer(Answer::Refuse(reason));
    }

    fn answer(&mut self, a: Answer) {
        if let Some(to) = self.answers.take() {
            let _ = to.send((self.id, a));
        }
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        self.answer(Answer::Refuse(EndReason::Misc));
    }
}

/// What to send for an answer: CONNECTED, then hand the stream over.
pub enum Reply {
    Connected(RelayMsg, Handover),
    /// END with this reason (and whatever the mux had queued before it).
    End(EndReason, Vec<(u16, RelayMsg)>),
    /// The stream ended before the answer: nothing to send.
    Nothing,
}

/// The streams of one circuit waiting for their answers. Each stream offered sends exactly
/// one answer, so the answer channel holds at most as many as were offered and not yet read.
pub struct Incoming {
    waiting: HashSet<u16>,
    tx: mpsc::UnboundedSender<(u16, Answer)>,
    rx: mpsc::UnboundedReceiver<(u16, Answer)>,
    max: usize,
}

impl Incoming {
    /// At most `max` streams wait for an answer at once ([`Incoming::has_room`]).
    pub fn new(max: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Incoming { waiting: HashSet::new(), tx, rx, max }
    }

    /// Whether another stream may wait.
    pub fn has_room(&self) -> bool {
        self.waiting.len() < self.max
    }

    /// Stream `id` (opened on the mux) waits for an answer; dropped unanswered, the answer is
    /// END MISC.
    pub fn offer(&mut self, id: u16, port: u16, host: String) -> IncomingStream {
        self.waiting.insert(id);
        IncomingStream { port, host, id, answers: Some(self.tx.clone()) }
    }

    /// The other end ended stream `id`: a later answer is ignored.
    pub fn forget(&mut self, id: u16) {
        self.waiting.remove(&id);
    }

    /// The next answer.
    pub async fn next_answer(&mut self) -> (u16, Answer) {
        self.rx.recv().await.expect("Incoming holds a sender")
    }

    /// What to send for `answer` to stream `id`.
    pub fn answered(&mut self, id: u16, answer: Answer, mux: &mut StreamMux) -> Reply {
        if !self.waiting.remove(&id) {
            return Reply::Nothing;
        }
        match (answer, mux.take_stream(id)) {
            (Answer::Accept(addr, to), Some(stream)) => Reply::Connected(RelayMsg::Connected { addr, ext: Extensions::none() }, Handover { to, stream: Box::new(stream) }),
            (Answer::Accept(..), None) => Reply::Nothing,
            (Answer::Refuse(reason), _) => Reply::End(reason, mux.close(id, reason)),
        }
    }
}

/// An accepted stream, to be handed over once CONNECTED is sent.
pub struct Handover {
    to: oneshot::Sender<DataStream>,
    stream: Box<DataStream>,
}

impl Handover {
    /// Hands the stream over; a holder gone by now drops it, which ends it.
    pub fn give(self) {
        let _ = self.to.send(*self.stream);
    }
}
