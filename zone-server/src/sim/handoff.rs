//! The zone's side of a handoff in the world: characters frozen while the coordinator decides,
//! unfrozen on abort, removed when they are gone, and arrivals (by handoff or restore) with
//! what their source carried. The saga itself is `worldmesh_world::handoff`.

use super::*;
use worldmesh_protocol::ids::Epoch;

impl Sim {
    /// Characters and NPCs being simulated, not frozen: (id, x, y). For border checks.
    pub fn character_positions(&mut self, out: &mut Vec<(EntityId, f32, f32)>) {
        out.clear();
        let mut q = self
            .world
            .query_filtered::<(&Id, &Position), (With<CharacterRecord>, Without<Frozen>, Without<Ghost>)>();
        out.extend(q.iter(&self.world).map(|(r, p)| (r.0, p.x, p.y)));
    }

    /// Per cell (`cell_of` a position, row-major), the players and the entities (characters
    /// and NPCs, players included) simulated here: `(cell, players, entities)`, by cell. What
    /// the coordinator's balancer moves cells by.
    pub fn cell_loads(
        &mut self,
        cell_of: impl Fn(f32, f32) -> Option<u32>,
    ) -> Vec<(u32, u32, u32)> {
        let mut q = self
            .world
            .query_filtered::<(&Position, Option<&Player>), (With<CharacterRecord>, Without<Ghost>)>();
        let mut by_cell: std::collections::BTreeMap<u32, (u32, u32)> = Default::default();
        for (p, player) in q.iter(&self.world) {
            if let Some(cell) = cell_of(p.x, p.y) {
                let e = by_cell.entry(cell).or_default();
                e.0 += u32::from(player.is_some());
                e.1 += 1;
            }
        }
        by_cell.into_iter().map(|(c, (p, e))| (c, p, e)).collect()
    }

    /// Player characters (not NPCs) being simulated, not frozen: (id, epoch, player if
    /// attached). For the inventory claims (`crate::inventory`).
    pub fn player_characters(&mut self, out: &mut Vec<crate::inventory::Present>) {
        out.clear();
        let mut q = self.world.query_filtered::<(&Id, &CharacterRecord, Option<&Player>), (
            Without<Frozen>,
            Without<Ghost>,
            Without<npc::Wanderer>,
        )>();
        out.extend(
            q.iter(&self.world)
                .filter(|(id, _, _)| !id.0.is_npc())
                .map(|(id, r, p)| (id.0, r.epoch, p.map(|p| (p.link, p.player_id)))),
        );
    }

    /// The grants the game asked for since the last call (`worldmesh_game::Loot`), and how
    /// many it dropped.
    pub fn take_loot(&mut self) -> (Vec<worldmesh_game::Gift>, u64) {
        self.world.resource_mut::<worldmesh_game::Loot>().take()
    }

    /// Queues a frame for a player's control stream (sent with the next tick's frames).
    pub fn send_reliable(&mut self, link: LinkId, player_id: PlayerId, frame: Vec<u8>) {
        self.world
            .resource_mut::<Outbox>()
            .push(link, player_id, frame, true);
    }

    /// Stops simulating a character for a handoff and returns its state (with a new
    /// version) and what travels with it.
    pub fn freeze(&mut self, id: EntityId) -> Option<(Character, Carried)> {
        let entity = self.entity_of(id)?;
        let character = self.bump_and_read(entity)?;
        let tick = self.tick();
        let mut e = self.world.entity_mut(entity);
        // Its state has left with the handoff: game systems must not change it meanwhile.
        e.insert(Frozen)
            .remove::<(worldmesh_game::Character, worldmesh_game::Npc)>();
        let intent = e.get::<Intent>().copied().unwrap_or_default();
        let components = e.get::<Synced>().map(Synced::all).unwrap_or_default();
        let carried = Carried {
            player: e.get::<Player>().copied(),
            detached: e.get::<Detached>().and_then(|d| d.owner.clone()),
            speed: e.get::<Motion>().map_or(0.0, |m| m.speed),
            intent_heading: intent.heading,
            intent_speed: intent.speed,
            last_input_seq: intent.last_seq,
            last_tick_sent: tick,
            components,
            npc: e.get::<npc::Wanderer>().copied(),
        };
        Some((character, carried))
    }

    pub fn unfreeze(&mut self, id: EntityId) {
        if let Some(entity) = self.entity_of(id) {
            let mut e = self.world.entity_mut(entity);
            e.remove::<Frozen>();
            match e.get::<npc::Wanderer>().map(|w| w.kind) {
                Some(kind) => e.insert(worldmesh_game::Npc { kind }),
                None => e.insert(worldmesh_game::Character),
            };
        }
    }

    /// Removes a character or NPC without saving (handed off, fenced, revoked); `None` if it
    /// is not here. An NPC waiting to come back is forgotten too.
    pub fn remove_character(&mut self, id: EntityId) -> Option<Removed> {
        if self.world.resource_mut::<npc::Graveyard>().remove(id) {
            return Some(Removed { player: None });
        }
        let entity = self.world.resource_mut::<CharIndex>().0.remove(&id)?;
        actions::answer_queued(&mut self.world, entity, ActionRefusal::Moving);
        let player = self.world.get::<Player>(entity).copied();
        if let Some(p) = player {
            self.world
                .resource_mut::<PlayerIndex>()
                .0
                .remove(&p.player_id);
        }
        self.world.despawn(entity);
        Some(Removed { player })
    }

    /// Sets the authority epoch a character's checkpoints carry.
    pub fn set_epoch(&mut self, id: EntityId, epoch: Epoch) {
        if let Some(entity) = self.entity_of(id)
            && let Some(mut r) = self.world.get_mut::<CharacterRecord>(entity)
        {
            r.epoch = epoch;
        }
    }

    /// Spawns a character that arrives by handoff or restore, with a player if one is
    /// attached (its snapshots continue after `carried.last_tick_sent`), detached otherwise;
    /// or an NPC handed in, walking on as it walked there.
    pub fn spawn_arrival(&mut self, c: &Character, carried: &Carried) -> Spawned {
        self.remove_ghost(c.id);
        self.remove_character(c.id);
        let b = self.world.resource::<SimSettings>().bounds;
        let (x, y) = (c.x.clamp(b.min_x, b.max_x), c.y.clamp(b.min_y, b.max_y));
        let spawned = Spawned {
            entity_id: c.id,
            x,
            y,
            heading: c.heading,
        };
        if let Some(walk) = carried.npc {
            let motion = Motion {
                heading: c.heading,
                speed: carried.speed,
            };
            let entity = npc::spawn_with(
                &mut self.world,
                c.id,
                Position { x, y },
                motion,
                walk,
                c.epoch,
                c.version,
            );
            if let Some(mut i) = self.world.get_mut::<Intent>(entity) {
                (i.heading, i.speed) = (carried.intent_heading, carried.intent_speed);
            }
            self.insert_components(entity, &carried.components);
            return spawned;
        }
        let tick = self.tick();
        let mut e = self.world.spawn((
            worldmesh_game::Character,
            character_components(c, x, y, carried.speed),
            Intent {
                heading: carried.intent_heading,
                speed: carried.intent_speed,
                last_seq: carried.last_input_seq,
                any: carried.last_input_seq != 0,
            },
            Dirty(false),
        ));
        match carried.player {
            Some(player) => {
                e.insert((
                    player,
                    snapshot::Observer::after_handoff(carried.last_tick_sent),
                    input::InputQueue::default(),
                    actions::ActionQueue::default(),
                ));
            }
            None => {
                e.insert(Detached {
                    owner: carried.detached.clone(),
                    since: tick,
                });
            }
        }
        let entity = e.id();
        // What the source carried is newest; a restore carries nothing but the checkpoint.
        let components = if carried.components.is_empty() {
            &c.game
        } else {
            &carried.components
        };
        self.insert_components(entity, components);
        self.world
            .resource_mut::<CharIndex>()
            .0
            .insert(c.id, entity);
        if let Some(p) = carried.player {
            self.world
                .resource_mut::<PlayerIndex>()
                .0
                .insert(p.player_id, entity);
        }
        spawned
    }
}
