//! The circuits a client holds, the builds it has under way, and which of them a stream gets.
//!
//! [`Table`] makes every decision without I/O or clock reads (`now` is an argument); the
//! watch channels through which a finished build reaches its waiters are its only runtime
//! part. [`obtain`] is the whole request path: it holds the table lock for decisions only,
//! never across an await, so
//! - a request that can use an open circuit never waits for a build;
//! - every request of one isolation class that needs the same kind of circuit waits for one
//!   shared build;
//! - a build runs as its own task: it ends and its circuit is kept even when the request that
//!   started it goes away.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use allium_proto::ids::RelayId;
use tokio::sync::watch;

use super::{GetError, IsolationKey, MAX_CIRCUIT_DIRTINESS, MAX_CLEAN_AGE};
use crate::path::ExitNeed;

/// What the table needs to know of a circuit (a [`crate::circuit::CircHandle`]; a fake in
/// tests).
pub trait Circuit: Clone + Send + Sync + 'static {
    /// Whether the circuit's exit allows `need`.
    fn exit_allows(&self, need: &ExitNeed) -> bool;
    fn exit_id(&self) -> RelayId;
    /// Open, and has not given up on a stream ([`crate::recovery`]).
    fn takes_streams(&self) -> bool;
    fn built_at(&self) -> Instant;
}

/// A circuit a build produced.
#[derive(Clone)]
pub struct Built<C> {
    pub circ: C,
    /// Numbers circuits in debug logs.
    pub serial: u64,
    /// Short ids of the hops (for debug logs).
    pub hops: String,
}

struct Entry<C> {
    built: Built<C>,
    /// The isolation class that owns it (None: clean).
    class: Option<IsolationKey>,
    first_used: Option<Instant>,
}

impl<C: Circuit> Entry<C> {
    fn usable(&self, now: Instant) -> bool {
        self.built.circ.takes_streams()
            && match self.first_used {
                Some(t) => now.saturating_duration_since(t) < MAX_CIRCUIT_DIRTINESS,
                None => now.saturating_duration_since(self.built.circ.built_at()) < MAX_CLEAN_AGE,
            }
    }

    fn fits(&self, need: &ExitNeed, avoid: &[RelayId]) -> bool {
        self.built.circ.exit_allows(need) && !avoid.contains(&self.built.circ.exit_id())
    }
}

/// What a build leaves for the requests waiting on it: the circuit, or why none could be had
/// (`None` while it runs).
pub type Outcome<C> = Option<Result<Built<C>, Arc<GetError>>>;

/// A build under way for one isolation class.
struct Pending<C> {
    id: u64,
    class: IsolationKey,
    need: ExitNeed,
    avoid: Vec<RelayId>,
    done: watch::Receiver<Outcome<C>>,
}

/// The right to finish build `id`: whoever runs the build hands it to [`Table::finish`].
/// Dropped unfinished (the build's task ended abnormally), its waiters are told the build was
/// abandoned and the next request starts another.
pub struct Ticket<C> {
    id: u64,
    class: IsolationKey,
    done: watch::Sender<Outcome<C>>,
}

/// Which circuit a stream gets, or what it must wait for.
pub enum Pick<C> {
    /// An open circuit; the text says why it fits (for debug logs).
    Use(Built<C>, &'static str),
    /// A build of its class already under way.
    Wait(watch::Receiver<Outcome<C>>),
    /// No circuit and no build: the caller runs one and finishes it with the ticket.
    Build(Ticket<C>, watch::Receiver<Outcome<C>>),
}

/// Open circuits and builds under way.
pub struct Table<C> {
    open: Vec<Entry<C>>,
    pending: Vec<Pending<C>>,
    next_build: u64,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Table { open: Vec::new(), pending: Vec::new(), next_build: 0 }
    }
}

impl<C: Circuit> Table<C> {
    /// A circuit for a stream of class `iso` whose exit allows `need` and is not in `avoid`:
    /// one the class already uses, else a clean one (which then belongs to the class), else the
    /// class's build for the same need, else a new build.
    pub fn pick(&mut self, need: ExitNeed, iso: &IsolationKey, avoid: &[RelayId], now: Instant) -> Pick<C> {
        self.open.retain(|e| e.usable(now));
        // A build whose task ended without finishing: forget it (its waiters were told).
        self.pending.retain(|p| p.done.has_changed().is_ok());
        let found = |e: &Entry<C>, how| Pick::Use(e.built.clone(), how);
        if let Some(e) = self.open.iter().find(|e| e.class.as_ref() == Some(iso) && e.fits(&need, avoid)) {
            return found(e, "reused");
        }
        if let Some(e) = self.open.iter_mut().find(|e| e.class.is_none() && e.fits(&need, avoid)) {
            e.class = Some(iso.clone());
            e.first_used = Some(now);
            return found(e, "prebuilt");
        }
        if let Some(p) = self.pending.iter().find(|p| &p.class == iso && p.need == need && p.avoid == avoid) {
            return Pick::Wait(p.done.clone());
        }
        self.next_build += 1;
        let id = self.next_build;
        let (tx, rx) = watch::channel(None);
        self.pending.push(Pending { id, class: iso.clone(), need, avoid: avoid.to_vec(), done: rx.clone() });
        Pick::Build(Ticket { id, class: iso.clone(), done: tx }, rx)
    }

    /// Ends build `ticket`: its circuit joins the table, owned by the class (first used now),
    /// and every request waiting on it gets the circuit or the error.
    pub fn finish(&mut self, ticket: Ticket<C>, result: Result<Built<C>, GetError>, now: Instant) {
        self.pending.retain(|p| p.id != ticket.id);
        let outcome = match result {
            Ok(built) => {
                self.open.push(Entry { built: built.clone(), class: Some(ticket.class), first_used: Some(now) });
                Ok(built)
            }
            Err(e) => Err(Arc::new(e)),
        };
        ticket.done.send_replace(Some(outcome));
    }

    /// Adds a clean circuit (built ahead of need).
    pub fn add_clean(&mut self, built: Built<C>) {
        self.open.push(Entry { built, class: None, first_used: None });
    }

    /// How many usable clean circuits allow `need`.
    pub fn clean_for(&mut self, need: &ExitNeed, now: Instant) -> usize {
        self.open.retain(|e| e.usable(now));
        self.open.iter().filter(|e| e.class.is_none() && e.fits(need, &[])).count()
    }
}

/// The table as the client shares it between requests and build tasks.
pub type SharedTable<C> = Arc<Mutex<Table<C>>>;

/// A circuit for a stream (see [`Table::pick`]), with how it was found. `build` runs a new
/// build if one is needed: it is spawned as its own task.
pub async fn obtain<C, F, Fut>(table: &SharedTable<C>, need: ExitNeed, iso: &IsolationKey, avoid: &[RelayId], build: F) -> Result<(C, &'static str), GetError>
where
    C: Circuit,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Built<C>, GetError>> + Send + 'static,
{
    let picked = table.lock().expect("circuit table").pick(need, iso, avoid, Instant::now());
    let (built, how) = match picked {
        Pick::Use(built, how) => (built, how),
        Pick::Wait(rx) => (wait(rx).await?, "shared build"),
        Pick::Build(ticket, rx) => {
            let run = build();
            let table = table.clone();
            tokio::spawn(async move {
                let result = run.await;
                table.lock().expect("circuit table").finish(ticket, result, Instant::now());
            });
            (wait(rx).await?, "new")
        }
    };
    tracing::debug!(target: "allium_client::circuit", "stream on circuit #{} ({how}) through {}", built.serial, built.hops);
    Ok((built.circ, how))
}

/// The outcome of a build, once it has one.
async fn wait<C: Circuit>(mut rx: watch::Receiver<Outcome<C>>) -> Result<Built<C>, GetError> {
    let outcome = match rx.wait_for(Option::is_some).await {
        Ok(o) => o.clone(),
        Err(_) => None,
    };
    match outcome {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(GetError::Shared(e)),
        None => Err(GetError::Abandoned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use crate::path::PathError;

    #[derive(Clone)]
    struct Fake {
        exit: u8,
        /// The only port its exit allows.
        port: u16,
        built_at: Instant,
        open: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Circuit for Fake {
        fn exit_allows(&self, need: &ExitNeed) -> bool {
            let (ExitNeed::Port(p) | ExitNeed::Addr(_, p)) = *need;
            p == self.port
        }
        fn exit_id(&self) -> RelayId {
            RelayId([self.exit; 32])
        }
        fn takes_streams(&self) -> bool {
            self.open.load(Ordering::Relaxed)
        }
        fn built_at(&self) -> Instant {
            self.built_at
        }
    }

    fn fake(exit: u8, port: u16) -> Built<Fake> {
        Built { circ: Fake { exit, port, built_at: Instant::now(), open: Arc::new(true.into()) }, serial: exit as u64, hops: String::new() }
    }

    fn class(name: &str) -> IsolationKey {
        name.as_bytes().to_vec()
    }

    /// Polls `f` once: its value if it is ready without waiting for anything.
    fn ready_now<F: Future>(f: F) -> Option<F::Output> {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    type BuildFuture = std::pin::Pin<Box<dyn Future<Output = Result<Built<Fake>, GetError>> + Send>>;

    /// A build the test finishes: the circuit to return arrives through the sender. Counts how
    /// many builds were started.
    fn held_build(count: &Arc<AtomicUsize>) -> (oneshot::Sender<Result<Built<Fake>, GetError>>, impl FnOnce() -> BuildFuture) {
        let (tx, rx) = oneshot::channel();
        let count = count.clone();
        (tx, move || {
            count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { rx.await.unwrap_or(Err(GetError::Abandoned)) }) as BuildFuture
        })
    }

    /// A request of class `name` for `port`, in its own task: the exit it got and how.
    fn request(table: &SharedTable<Fake>, port: u16, name: &'static str, build: impl FnOnce() -> BuildFuture + Send + 'static) -> tokio::task::JoinHandle<Result<(u8, &'static str), GetError>> {
        let t = table.clone();
        tokio::spawn(async move { obtain(&t, ExitNeed::Port(port), &class(name), &[], build).await.map(|(c, how)| (c.exit, how)) })
    }

    /// Lets the other tasks run until `n` builds have started.
    async fn started(builds: &AtomicUsize, n: usize) {
        while builds.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    fn never_builds() -> BuildFuture {
        panic!("this request must not start a build")
    }

    #[tokio::test]
    async fn a_request_that_can_use_an_open_circuit_never_waits_for_a_build() {
        let table: SharedTable<Fake> = Arc::default();
        let builds = Arc::new(AtomicUsize::new(0));
        // Class a owns a circuit to port 80; one clean circuit allows port 443.
        let (a_built, a_build) = held_build(&builds);
        let a = request(&table, 80, "a", a_build);
        a_built.send(Ok(fake(1, 80))).ok().unwrap();
        assert_eq!(a.await.unwrap().unwrap(), (1, "new"));
        table.lock().unwrap().add_clean(fake(2, 443));

        // Class b's build hangs (a black-holed path).
        let (_b_never, b_build) = held_build(&builds);
        let b = request(&table, 80, "b", b_build);
        started(&builds, 2).await;
        // Meanwhile class a gets its circuit and class c the clean one, at the first poll.
        let got = ready_now(obtain(&table, ExitNeed::Port(80), &class("a"), &[], never_builds)).expect("class a waited");
        assert_eq!(got.map(|(c, how)| (c.exit, how)).unwrap(), (1, "reused"));
        let got = ready_now(obtain(&table, ExitNeed::Port(443), &class("c"), &[], never_builds)).expect("class c waited");
        assert_eq!(got.map(|(c, how)| (c.exit, how)).unwrap(), (2, "prebuilt"));
        assert!(!b.is_finished(), "class b's build is still under way");
        b.abort();
    }

    #[tokio::test]
    async fn concurrent_requests_of_one_class_share_one_build() {
        let table: SharedTable<Fake> = Arc::default();
        let builds = Arc::new(AtomicUsize::new(0));
        let (built, build) = held_build(&builds);
        let first = request(&table, 80, "a", build);
        started(&builds, 1).await;
        let others: Vec<_> = (0..3).map(|_| request(&table, 80, "a", never_builds)).collect();
        // Another need of the same class, and the same need of another class, build their own.
        let (_, other_port) = held_build(&builds);
        let _p = request(&table, 443, "a", other_port);
        let (_, other_class) = held_build(&builds);
        let _c = request(&table, 80, "b", other_class);
        started(&builds, 3).await;
        built.send(Ok(fake(7, 80))).ok().unwrap();
        assert_eq!(first.await.unwrap().unwrap(), (7, "new"));
        for o in others {
            assert_eq!(o.await.unwrap().unwrap(), (7, "shared build"));
        }
        assert_eq!(builds.load(Ordering::SeqCst), 3, "one build for class a's port 80, one each for the others");
    }

    #[tokio::test]
    async fn a_failed_build_fails_its_waiters_and_the_next_request_builds_again() {
        let table: SharedTable<Fake> = Arc::default();
        let builds = Arc::new(AtomicUsize::new(0));
        let (built, build) = held_build(&builds);
        let first = request(&table, 80, "a", build);
        started(&builds, 1).await;
        let waiter = request(&table, 80, "a", never_builds);
        tokio::task::yield_now().await;
        built.send(Err(GetError::Path(PathError::NoExit))).ok().unwrap();
        for r in [first.await.unwrap(), waiter.await.unwrap()] {
            assert!(matches!(r.unwrap_err().root(), GetError::Path(PathError::NoExit)));
        }
        let (built, build) = held_build(&builds);
        built.send(Ok(fake(3, 80))).ok().unwrap();
        assert_eq!(obtain(&table, ExitNeed::Port(80), &class("a"), &[], build).await.unwrap().0.exit, 3);
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_build_whose_task_dies_is_abandoned_not_waited_for_forever() {
        let table: SharedTable<Fake> = Arc::default();
        let Pick::Build(ticket, rx) = table.lock().unwrap().pick(ExitNeed::Port(80), &class("a"), &[], Instant::now()) else { panic!("expected a build") };
        let Pick::Wait(rx2) = table.lock().unwrap().pick(ExitNeed::Port(80), &class("a"), &[], Instant::now()) else { panic!("expected to wait") };
        drop(ticket);
        assert!(matches!(wait(rx).await, Err(GetError::Abandoned)));
        assert!(matches!(wait(rx2).await, Err(GetError::Abandoned)));
        assert!(matches!(table.lock().unwrap().pick(ExitNeed::Port(80), &class("a"), &[], Instant::now()), Pick::Build(..)));
    }

    #[test]
    fn circuits_leave_the_table_when_closed_too_dirty_or_too_old_and_avoided_exits_are_skipped() {
        let mut t: Table<Fake> = Table::default();
        let t0 = Instant::now();
        t.add_clean(fake(1, 80));
        t.add_clean(fake(2, 80));
        assert_eq!(t.clean_for(&ExitNeed::Port(80), t0), 2);
        assert_eq!(t.clean_for(&ExitNeed::Port(443), t0), 0);
        // An avoided exit is not picked.
        let Pick::Use(Built { circ, .. }, how) = t.pick(ExitNeed::Port(80), &class("a"), &[RelayId([1; 32])], t0) else { panic!("expected a circuit") };
        assert_eq!((circ.exit, how), (2, "prebuilt"));
        assert_eq!(t.clean_for(&ExitNeed::Port(80), t0), 1);
        // Dirty for MAX_CIRCUIT_DIRTINESS, then gone.
        assert!(matches!(t.pick(ExitNeed::Port(80), &class("a"), &[], t0 + MAX_CIRCUIT_DIRTINESS - Duration::from_secs(1)), Pick::Use(_, "reused")));
        let later = t0 + MAX_CIRCUIT_DIRTINESS;
        // Class a's circuit is too dirty: it takes the other clean one.
        let Pick::Use(Built { circ: c1, .. }, how) = t.pick(ExitNeed::Port(80), &class("a"), &[], later) else { panic!() };
        assert_eq!((c1.exit, how), (1, "prebuilt"));
        // A closed circuit leaves the table.
        c1.open.store(false, Ordering::Relaxed);
        assert!(matches!(t.pick(ExitNeed::Port(80), &class("a"), &[], later), Pick::Build(..)));
        // A clean circuit is kept MAX_CLEAN_AGE.
        let mut t: Table<Fake> = Table::default();
        t.add_clean(fake(4, 80));
        assert_eq!(t.clean_for(&ExitNeed::Port(80), t0 + MAX_CLEAN_AGE + Duration::from_secs(1)), 0);
    }
}
