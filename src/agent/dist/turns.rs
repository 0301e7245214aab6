//! One run at a time per distribution ID on a node ([`Running`]): a second
//! announce of a running distribution waits its turn and tells its pusher
//! why, unless the running one's pusher is gone (crashed, its connection
//! closed), in which case the new announce takes over at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Connection;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::Control;
use crate::content::hash::Hash;
use crate::wire::{self, read_frame, write_frame, Message, Progress};

/// How long a live pusher takes to answer the check that it is still there
/// ([`pusher_answers`]): a round trip and a task's wake-up, so 3 s is
/// generous even across a loaded link; a crashed one never answers.
const PUSHER_CHECK: Duration = Duration::from_secs(3);
/// How often an announce waiting for its turn checks again that the run
/// holding it still has a pusher: a pusher that crashes meanwhile is
/// noticed within this.
const CHECK_AGAIN: Duration = Duration::from_secs(5);

/// What an announce waiting for its turn tells its pusher.
const WAITING_FOR_OTHER_PUSH: &str = "waiting for another push of the same images to finish on this node";

/// The distributions planning, fetching or loading on this node: one turn
/// at a time per distribution ID.
#[derive(Debug, Default)]
pub(crate) struct Running(Mutex<HashMap<Hash, Arc<Slot>>>);

/// One distribution ID's turn, and who holds it.
#[derive(Debug, Default)]
struct Slot {
    turn: Arc<tokio::sync::Mutex<()>>,
    holder: Mutex<Option<Holder>>,
}

/// The run holding a turn: its pusher's connection, and how to end it if a
/// new announce finds that pusher gone.
#[derive(Clone, Debug)]
struct Holder {
    pusher: Connection,
    supersede: CancellationToken,
}

/// A distribution's turn; the next announce of the same ID goes on when it
/// is dropped.
pub(super) struct Turn<'a> {
    running: &'a Running,
    id: Hash,
    slot: Arc<Slot>,
    /// Cancelled when a new announce of the same ID takes over.
    pub(super) superseded: CancellationToken,
    _held: OwnedMutexGuard<()>,
}

impl Running {
    /// Waits until no other run of distribution `id` plans, fetches or
    /// loads. While it waits, the pusher (on `control`) is told why; a run
    /// holding the turn whose pusher is gone is ended at once.
    pub(super) async fn turn(&self, id: Hash, pusher: &Connection, control: &mut Control) -> Turn<'_> {
        let slot = self.slot(id);
        let held = slot.wait(id, control).await;
        let superseded = CancellationToken::new();
        *slot.holder.lock().expect("holder lock") = Some(Holder {
            pusher: pusher.clone(),
            supersede: superseded.clone(),
        });
        Turn {
            running: self,
            id,
            slot,
            superseded,
            _held: held,
        }
    }

    /// Distribution `id`'s slot, made if no run has it.
    fn slot(&self, id: Hash) -> Arc<Slot> {
        let mut map = self.0.lock().expect("running lock");
        map.entry(id).or_default().clone()
    }
}

impl Slot {
    /// Waits for the turn, telling the pusher on `control` once why it
    /// waits, and takes it over from a holder whose pusher is gone.
    async fn wait(&self, id: Hash, control: &mut Control) -> OwnedMutexGuard<()> {
        let mut told = false;
        loop {
            if let Ok(held) = self.turn.clone().try_lock_owned() {
                return held;
            }
            let holder = self.holder.lock().expect("holder lock").clone();
            if let Some(h) = holder.as_ref() {
                if !pusher_answers(&h.pusher).await {
                    tracing::info!(dist = %id.short(), "the running push's pusher is gone; this one takes over");
                    h.supersede.cancel();
                    // It ends at once and releases the turn.
                    return self.turn.clone().lock_owned().await;
                }
            }
            if !told {
                told = true;
                tell_waiting(control).await;
            }
            tokio::select! {
                held = self.turn.clone().lock_owned() => return held,
                _ = holder_closed(holder.as_ref()) => {}
                _ = tokio::time::sleep(CHECK_AGAIN) => {}
            }
        }
    }
}

/// Tells the pusher on `control` that its announce waits for another push.
async fn tell_waiting(control: &mut Control) {
    let reason = Some(WAITING_FOR_OTHER_PUSH.to_string());
    control
        .send(&Message::Progress(Progress {
            reason,
            ..Progress::default()
        }))
        .await;
}

/// Resolves when the holder's pusher connection closes; never without one.
async fn holder_closed(holder: Option<&Holder>) {
    match holder {
        Some(h) => drop(h.pusher.closed().await),
        None => std::future::pending().await,
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.slot.holder.lock().expect("holder lock") = None;
        let mut map = self.running.0.lock().expect("running lock");
        // Two references: the map's and this turn's. More: someone waits.
        if map.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 2) {
            map.remove(&self.id);
        }
    }
}

/// Whether the pusher on `conn` is still there: its connection is open and
/// it answers a stream within [`PUSHER_CHECK`]. A pusher answers any first
/// frame but `Hello` and `Request` with an `Error` at once; `Query` with no
/// references is the one the protocol names for this.
async fn pusher_answers(conn: &Connection) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let check = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        write_frame(&mut send, &Message::Query { refs: Vec::new() })
            .await
            .ok()?;
        let _ = send.finish();
        read_frame(&mut recv, wire::MAX_LINK_FRAME).await.ok()
    };
    matches!(tokio::time::timeout(PUSHER_CHECK, check).await, Ok(Some(_)))
}
