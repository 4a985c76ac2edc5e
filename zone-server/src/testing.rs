//! For a game's tests: play it in a real zone world ([`Sim`], as a zone server steps it) and
//! watch it through one player's client — the snapshots it decodes, the answers to its
//! actions, the events it is told. No network, no cluster; the same bytes a client gets.
//!
//! ```ignore
//! let mut sim = Sim::new(&config)?;                     // config.game = GameRef::new(MyGame)
//! sim.spawn_player(LinkId(1), PlayerId(10), &me);
//! let mut client = Watcher::new(PlayerId(10));
//! client.run(&mut sim, 2);                               // two ticks
//! let seq = client.act(&mut sim, Some(EntityId(101)), &Strike);
//! client.run(&mut sim, 1);
//! assert_eq!(client.answer(seq), Some(None));            // applied
//! assert_eq!(client.field::<Health>(EntityId(101)).map(|h| h.hp), Some(90));
//! ```

use worldmesh_game::action::request;
use worldmesh_game::{Action, GameComponent, ServerEvent};
use worldmesh_protocol::ids::{EntityId, LinkId, PlayerId};
use worldmesh_protocol::snapshot::SnapshotDecoder;
use worldmesh_protocol::{ActionRefusal, GameEvent, ServerMessage, codec};

use crate::sim::Sim;

/// One player's client on a [`Sim`]. Every frame the world sends is taken from its outbox as
/// the world runs; this player's are decoded and kept, the others' are dropped (one watcher
/// per world).
pub struct Watcher {
    player: PlayerId,
    decoder: SnapshotDecoder,
    answers: Vec<(u32, Option<ActionRefusal>)>,
    events: Vec<GameEvent>,
    seq: u32,
}

impl Watcher {
    #[must_use]
    pub fn new(player: PlayerId) -> Self {
        Self {
            player,
            decoder: SnapshotDecoder::default(),
            answers: Vec::new(),
            events: Vec::new(),
            seq: 0,
        }
    }

    /// Runs `ticks` ticks, reading this player's frames after each.
    ///
    /// # Panics
    /// If a snapshot does not decode against the views already held: the engine's bug.
    pub fn run(&mut self, sim: &mut Sim, ticks: u32) {
        for _ in 0..ticks {
            sim.step();
            for f in sim.take_outbox() {
                if f.player_id != self.player {
                    continue;
                }
                match codec::decode_frame::<ServerMessage>(&f.frame) {
                    Ok(ServerMessage::Snapshot(s)) => {
                        self.decoder.apply(&s).expect("snapshots decode");
                    }
                    Ok(ServerMessage::ActionDone(a)) => self.answers.push((a.seq, a.refused)),
                    Ok(ServerMessage::Event(e)) => self.events.push(e),
                    _ => {}
                }
            }
        }
    }

    /// Asks for `action` on `target` as this player (on link 1), for the next tick: its
    /// sequence number, to look up its [`answer`](Self::answer).
    ///
    /// # Panics
    /// If the action does not encode within the protocol's payload limit: the test's bug.
    pub fn act<A: Action + bincode::Encode>(
        &mut self,
        sim: &mut Sim,
        target: Option<EntityId>,
        action: &A,
    ) -> u32 {
        self.seq += 1;
        let r = request(self.seq, target, action).expect("the action encodes");
        sim.push_action(LinkId(1), self.player, r);
        self.seq
    }

    /// The answer to action `seq`: `None` while unanswered, `Some(None)` applied,
    /// `Some(Some(why))` refused.
    #[must_use]
    pub fn answer(&self, seq: u32) -> Option<Option<ActionRefusal>> {
        self.answers
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, r)| *r)
    }

    /// Component `T` of entity `id` as this client sees it (`None`: not in view, or not
    /// replicated to it).
    #[must_use]
    pub fn field<T: GameComponent>(&self, id: EntityId) -> Option<T> {
        let slot = self.decoder.view().iter().find(|(_, e)| e.id == id.0)?.0;
        self.decoder.fields_of(slot)?.get(T::KIND)?.ok()
    }

    /// The client's decoder: its view (quantized positions), its acknowledged tick (what an
    /// input sent from this client would carry).
    #[must_use]
    pub fn decoder(&self) -> &SnapshotDecoder {
        &self.decoder
    }

    /// Whether entity `id` is in this client's view.
    #[must_use]
    pub fn sees(&self, id: EntityId) -> bool {
        self.decoder.view().iter().any(|(_, e)| e.id == id.0)
    }

    /// The events of kind `E` this client was told about entity `about`, oldest first.
    ///
    /// # Panics
    /// If one does not decode as `E`: the game's bug.
    #[must_use]
    pub fn events<E: ServerEvent + bincode::Decode<()>>(&self, about: EntityId) -> Vec<E> {
        self.events
            .iter()
            .filter(|e| e.kind == E::KIND && e.entity == about)
            .map(|e| codec::decode_value(&e.payload, 1024).expect("the event decodes"))
            .collect()
    }
}
