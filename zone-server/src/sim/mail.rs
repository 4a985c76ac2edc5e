//! The engine's mail (`worldmesh_game::mail`) and what the zone's trades ask of the world:
//! where a party stands, which player plays it.

use super::*;
use worldmesh_game::mail::{Letter, Mail, Mailbox};

impl Sim {
    /// Mails `body` from `from` to `to`, wherever `to` is simulated (routed like an effect at
    /// the next tick: once, retried, across borders).
    pub fn send_mail(&mut self, from: EntityId, to: EntityId, body: Vec<u8>) {
        self.world
            .resource_mut::<worldmesh_game::Effects>()
            .send(from, to, &Mail(body));
    }

    /// The letters delivered to entities here since the last call.
    pub fn take_mail(&mut self) -> Vec<Letter> {
        std::mem::take(&mut self.world.resource_mut::<Mailbox>().0)
    }

    /// Where `id` stands, and whether it is simulated here (`true`) or a neighbour's ghost.
    pub fn locate(&self, id: EntityId) -> Option<([f32; 2], bool)> {
        let (entity, local) = match self.entity_of(id) {
            Some(e) => (e, true),
            None => (*self.world.resource::<GhostIndex>().0.get(&id)?, false),
        };
        let p = self.world.get::<Position>(entity)?;
        Some(([p.x, p.y], local))
    }

    /// The player playing `id` here, if one is attached.
    pub fn player_of(&self, id: EntityId) -> Option<(LinkId, PlayerId)> {
        let p = self.world.get::<Player>(self.entity_of(id)?)?;
        Some((p.link, p.player_id))
    }

    /// What the game recorded since the last call (`worldmesh_game::Chronicle`), and how many
    /// records it dropped.
    pub fn take_chronicle(&mut self) -> (Vec<worldmesh_game::Record>, u64) {
        self.world
            .resource_mut::<worldmesh_game::Chronicle>()
            .take()
    }

    /// The name of a character held here.
    pub fn name_of(&self, id: EntityId) -> Option<String> {
        let e = self.entity_of(id)?;
        Some(self.world.get::<CharacterRecord>(e)?.name.clone())
    }

    /// The character a player plays here.
    pub fn character_of(&self, player_id: PlayerId) -> Option<EntityId> {
        let &e = self.world.resource::<PlayerIndex>().0.get(&player_id)?;
        Some(self.world.get::<Id>(e)?.0)
    }
}
