//! Who is in the world: players joining (spawned or attached to a character already here),
//! leaving and waiting detached for their gateway; NPCs; inputs; the ids and checkpoints of
//! the characters simulated here.

use super::*;
use worldmesh_protocol::ids::Epoch;

impl Sim {
    pub fn has_character(&self, id: EntityId) -> bool {
        self.entity_of(id).is_some()
    }

    /// Detached characters waiting for a player of the given gateway: (character, player).
    pub fn detached_for(&mut self, gateway: &str) -> Vec<(EntityId, PlayerId)> {
        let mut q = self.world.query::<(&Id, &Detached)>();
        q.iter(&self.world)
            .filter_map(|(&Id(id), d)| {
                let owner = d.owner.as_ref().filter(|o| o.gateway == gateway)?;
                Some((id, owner.player_id))
            })
            .collect()
    }

    /// Attaches a player to a character simulated here (detached, or taken over). Returns
    /// where it stands and the (link, player) it was taken from, if another player had it.
    pub fn attach(
        &mut self,
        id: EntityId,
        link: LinkId,
        player_id: PlayerId,
    ) -> Option<(Spawned, Option<Player>)> {
        let entity = self.entity_of(id)?;
        let previous = self
            .world
            .get::<Player>(entity)
            .copied()
            .filter(|p| p.player_id != player_id);
        if let Some(old) = previous {
            self.world
                .resource_mut::<PlayerIndex>()
                .0
                .remove(&old.player_id);
        }
        let tick = self.tick();
        self.world.entity_mut(entity).remove::<Detached>().insert((
            Player { player_id, link },
            snapshot::Observer::after_handoff(tick),
            input::InputQueue::default(),
            actions::ActionQueue::default(),
        ));
        self.world
            .resource_mut::<PlayerIndex>()
            .0
            .insert(player_id, entity);
        let pos = *self.world.get::<Position>(entity)?;
        let heading = self.world.get::<Motion>(entity)?.heading;
        Some((
            Spawned {
                entity_id: id,
                x: pos.x,
                y: pos.y,
                heading,
            },
            previous,
        ))
    }

    /// Detaches every player of a gateway link that went away, keeping their characters in
    /// the world for a grace period (the gateway may come back, or re-route them).
    pub fn detach_link(&mut self, link: LinkId, gateway: &str) -> usize {
        let players: Vec<(Entity, PlayerId)> = {
            let mut q = self.world.query::<(Entity, &Player)>();
            q.iter(&self.world)
                .filter(|(_, p)| p.link == link)
                .map(|(e, p)| (e, p.player_id))
                .collect()
        };
        let tick = self.tick();
        for &(entity, pid) in &players {
            self.world.resource_mut::<PlayerIndex>().0.remove(&pid);
            self.world
                .entity_mut(entity)
                .remove::<(
                    Player,
                    snapshot::Observer,
                    input::InputQueue,
                    actions::ActionQueue,
                )>()
                .insert(Detached {
                    owner: Some(AbsentPlayer {
                        player_id: pid,
                        gateway: gateway.to_owned(),
                    }),
                    since: tick,
                });
        }
        players.len()
    }

    /// Detached characters whose grace period is over (detached before `before_tick`):
    /// despawned, their final states returned for saving.
    pub fn expire_detached(&mut self, before_tick: u32) -> Vec<Character> {
        let ids: Vec<EntityId> = {
            let mut q = self
                .world
                .query_filtered::<(&Id, &Detached), Without<Frozen>>();
            q.iter(&self.world)
                .filter(|(_, d)| d.since < before_tick)
                .map(|(r, _)| r.0)
                .collect()
        };
        ids.into_iter()
            .filter_map(|id| {
                let entity = self.entity_of(id)?;
                let c = self.bump_and_read(entity)?;
                self.remove_character(id);
                Some(c)
            })
            .collect()
    }

    pub fn player_count(&self) -> usize {
        self.world.resource::<PlayerIndex>().0.len()
    }

    pub fn entity_count(&self) -> usize {
        self.world.entities().len() as usize
    }

    /// Spawns a player's character. If the character is already in this world (its player
    /// reconnected before the old session was cleaned up), the live entity is taken over:
    /// its in-memory state is newer than anything persisted.
    pub fn spawn_player(&mut self, link: LinkId, player_id: PlayerId, c: &Character) -> Spawned {
        self.remove_ghost(c.id);
        if let Some(entity) = self.entity_of(c.id) {
            self.world.entity_mut(entity).remove::<Detached>();
            if let Some(old) = self.world.get::<Player>(entity).map(|p| p.player_id) {
                self.world.resource_mut::<PlayerIndex>().0.remove(&old);
            }
            // A new client holds nothing yet: a fresh encoder starts it from a full update.
            self.world.entity_mut(entity).insert((
                Player { player_id, link },
                snapshot::Observer::default(),
                input::InputQueue::default(),
                actions::ActionQueue::default(),
            ));
            self.world
                .resource_mut::<PlayerIndex>()
                .0
                .insert(player_id, entity);
            let pos = *self
                .world
                .get::<Position>(entity)
                .expect("character has a position");
            let motion = *self
                .world
                .get::<Motion>(entity)
                .expect("character has motion");
            return Spawned {
                entity_id: c.id,
                x: pos.x,
                y: pos.y,
                heading: motion.heading,
            };
        }
        let b = self.world.resource::<SimSettings>().bounds;
        let (x, y) = (c.x.clamp(b.min_x, b.max_x), c.y.clamp(b.min_y, b.max_y));
        let entity = self
            .world
            .spawn((
                Player { player_id, link },
                worldmesh_game::Character,
                character_components(c, x, y, 0.0),
                Intent {
                    heading: c.heading,
                    ..Intent::default()
                },
                Dirty(false),
                snapshot::Observer::default(),
                input::InputQueue::default(),
                actions::ActionQueue::default(),
            ))
            .id();
        self.insert_components(entity, &c.game);
        self.world
            .resource_mut::<PlayerIndex>()
            .0
            .insert(player_id, entity);
        self.world
            .resource_mut::<CharIndex>()
            .0
            .insert(c.id, entity);
        Spawned {
            entity_id: c.id,
            x,
            y,
            heading: c.heading,
        }
    }

    /// Spawns an NPC with the given entity id, of the kind the game gives that id (NPC ids
    /// must not collide with character ids: `EntityId::npc(i)`); `(x, y)` is also where it
    /// comes back when defeated. Held at `epoch` (0 outside a cluster: benches, tests).
    pub fn spawn_npc(&mut self, id: EntityId, x: f32, y: f32) {
        self.spawn_npc_at(id, x, y, Epoch(0), 0);
    }

    /// [`Sim::spawn_npc`] at an authority epoch (a restore), with its checkpoint version.
    pub fn spawn_npc_at(&mut self, id: EntityId, x: f32, y: f32, epoch: Epoch, version: u64) {
        self.remove_ghost(id);
        self.remove_character(id);
        npc::spawn(&mut self.world, id, Position { x, y }, epoch, version);
    }

    /// Restores a persisted NPC from its checkpoint: where it stood, its persisted components
    /// (the rest fresh from its kind), coming back to `home` when defeated.
    pub fn restore_npc(&mut self, c: &Character, home: (f32, f32)) {
        self.remove_ghost(c.id);
        self.remove_character(c.id);
        let b = self.world.resource::<SimSettings>().bounds;
        let at = Position {
            x: c.x.clamp(b.min_x, b.max_x),
            y: c.y.clamp(b.min_y, b.max_y),
        };
        let entity = npc::spawn(&mut self.world, c.id, at, c.epoch, c.version);
        if let Some(mut w) = self.world.get_mut::<npc::Wanderer>(entity) {
            w.home = Position {
                x: home.0,
                y: home.1,
            };
        }
        if let Some(mut m) = self.world.get_mut::<Motion>(entity) {
            m.heading = c.heading;
        }
        self.insert_components(entity, &c.game);
    }

    /// Whether the game checkpoints NPCs of `id`'s kind.
    pub fn npc_kind_persisted(&self, id: EntityId) -> bool {
        self.world
            .resource::<worldmesh_game::NpcKinds>()
            .kind_of(id.0)
            .is_some_and(|k| k.persisted)
    }

    /// The world's rectangle.
    pub fn bounds(&self) -> WorldBounds {
        self.world.resource::<SimSettings>().bounds
    }

    /// NPCs in the world, and defeated ones waiting to come back.
    pub fn npc_count(&mut self) -> (usize, usize) {
        let mut q = self.world.query_filtered::<(), With<npc::Wanderer>>();
        (
            q.iter(&self.world).count(),
            self.world.resource::<npc::Graveyard>().0.len(),
        )
    }

    /// Sets the epoch a waiting (defeated) NPC comes back at, a restore having found it waiting
    /// here; `false` if it is not waiting here.
    pub fn set_waiting_epoch(&mut self, id: EntityId, epoch: Epoch) -> bool {
        let mut found = false;
        for w in &mut self.world.resource_mut::<npc::Graveyard>().0 {
            if w.id == id {
                w.epoch = epoch;
                found = true;
            }
        }
        found
    }

    /// The NPCs held here: simulated, frozen for a handoff, and waiting to come back.
    pub fn npc_ids_by_state(&mut self) -> (CharacterIds, Vec<EntityId>) {
        let mut q = self
            .world
            .query_filtered::<(&Id, Has<Frozen>), (With<npc::Wanderer>, Without<Ghost>)>();
        let mut ids = CharacterIds::default();
        for (&Id(id), is_frozen) in q.iter(&self.world) {
            if is_frozen {
                ids.frozen.push(id);
            } else {
                ids.active.push(id);
            }
        }
        let waiting = self
            .world
            .resource::<npc::Graveyard>()
            .0
            .iter()
            .map(|w| w.id)
            .collect();
        (ids, waiting)
    }

    /// Ids of everything held here — characters, NPCs, waiting NPCs — in id order.
    pub fn held_ids(&self) -> Vec<EntityId> {
        let mut ids: Vec<EntityId> = self
            .world
            .resource::<CharIndex>()
            .0
            .keys()
            .copied()
            .chain(
                self.world
                    .resource::<npc::Graveyard>()
                    .0
                    .iter()
                    .map(|w| w.id),
            )
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Removes a player's character and returns its final state, with a new version, to be
    /// saved. `None` if the player is not here.
    pub fn despawn_player(&mut self, player_id: PlayerId) -> Option<Character> {
        let entity = self
            .world
            .resource_mut::<PlayerIndex>()
            .0
            .remove(&player_id)?;
        let state = self.bump_and_read(entity);
        if let Some(&Id(id)) = self.world.get::<Id>(entity) {
            self.world.resource_mut::<CharIndex>().0.remove(&id);
        }
        self.world.despawn(entity);
        state
    }

    /// Removes every player of a gateway link that went away; returns their final states.
    pub fn despawn_link(&mut self, link: LinkId) -> Vec<(PlayerId, Character)> {
        let players: Vec<PlayerId> = {
            let mut q = self.world.query::<&Player>();
            q.iter(&self.world)
                .filter(|p| p.link == link)
                .map(|p| p.player_id)
                .collect()
        };
        players
            .into_iter()
            .filter_map(|p| self.despawn_player(p).map(|c| (p, c)))
            .collect()
    }

    /// Removes every player; returns their final states (shutdown).
    pub fn despawn_all(&mut self) -> Vec<Character> {
        let mut ids: Vec<EntityId> = self
            .world
            .resource::<CharIndex>()
            .0
            .keys()
            .copied()
            .filter(|id| !id.is_npc())
            .collect();
        // In id order: the caller releases them one message each, and the same world must
        // give the same messages in the same order (seeded simulations replay).
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let entity = self.entity_of(id)?;
                let c = self.bump_and_read(entity);
                self.remove_character(id);
                c
            })
            .collect()
    }

    /// How many characters (not NPCs) are here: per tick, so no list and no sort.
    pub fn player_character_count(&self) -> usize {
        self.world
            .resource::<CharIndex>()
            .0
            .keys()
            .filter(|id| !id.is_npc())
            .count()
    }

    /// Character ids, simulated and frozen for a handoff (in no particular order).
    pub fn character_ids_by_state(&mut self) -> CharacterIds {
        let mut q = self.world.query_filtered::<(&Id, Has<Frozen>), (
            With<CharacterRecord>,
            Without<Ghost>,
            Without<npc::Wanderer>,
        )>();
        let mut ids = CharacterIds::default();
        for (&Id(id), is_frozen) in q.iter(&self.world) {
            if is_frozen {
                ids.frozen.push(id);
            } else {
                ids.active.push(id);
            }
        }
        ids
    }

    /// Queues a player's input for the next tick (bounded; see [`input`]).
    pub fn push_input(&mut self, player_id: PlayerId, input: Input) {
        let Some(&entity) = self.world.resource::<PlayerIndex>().0.get(&player_id) else {
            return;
        };
        if let Some(mut q) = self.world.get_mut::<input::InputQueue>(entity) {
            q.push(input);
        }
    }

    /// Queues a player's game action for the next tick (see [`actions`]). Refused at once,
    /// answered on `link`, when the player is not here or has too many waiting.
    pub fn push_action(&mut self, link: LinkId, player_id: PlayerId, request: ActionRequest) {
        let entity = self
            .world
            .resource::<PlayerIndex>()
            .0
            .get(&player_id)
            .copied();
        let queued = match entity.and_then(|e| self.world.get_mut::<actions::ActionQueue>(e)) {
            Some(mut q) => q.push(request).map_err(|r| (r, ActionRefusal::Flood)),
            None => Err((request, ActionRefusal::NotInPlay)),
        };
        if let Err((request, why)) = queued {
            let kind = self
                .world
                .resource::<worldmesh_game::ActionTable>()
                .get(request.kind)
                .map_or("unknown", |e| e.name);
            let mut outbox = self.world.resource_mut::<Outbox>();
            actions::answer(&mut outbox, link, player_id, kind, request.seq, Some(why));
        }
    }

    /// How many of a player's inputs were refused, by reason.
    pub fn input_rejections(&self, player_id: PlayerId) -> Option<input::Rejections> {
        let &entity = self.world.resource::<PlayerIndex>().0.get(&player_id)?;
        self.world
            .get::<input::InputQueue>(entity)
            .map(|q| q.rejected)
    }

    /// States of every character changed since the last checkpoint (moved, or a persisted
    /// game component changed), each with a new version.
    pub fn checkpoint(&mut self) -> Vec<Character> {
        let dirty: Vec<Entity> = {
            let mut q = self.world.query::<(Entity, &Dirty, &Synced)>();
            q.iter(&self.world)
                .filter(|(_, d, s)| d.0 || s.persisted_changed)
                .map(|(e, _, _)| e)
                .collect()
        };
        dirty
            .into_iter()
            .filter_map(|e| self.bump_and_read(e))
            .collect()
    }

    pub(super) fn bump_and_read(&mut self, entity: Entity) -> Option<Character> {
        let game = {
            let table = self.world.resource::<ComponentTable>();
            let synced = self.world.get::<Synced>(entity)?;
            synced.persisted(table)
        };
        let mut e = self.world.get_entity_mut(entity).ok()?;
        let pos = *e.get::<Position>()?;
        let heading = e.get::<Motion>()?.heading;
        if let Some(mut d) = e.get_mut::<Dirty>() {
            d.0 = false;
        }
        if let Some(mut s) = e.get_mut::<Synced>() {
            s.persisted_changed = false;
        }
        let Id(id) = *e.get::<Id>()?;
        let mut rec = e.get_mut::<CharacterRecord>()?;
        rec.version += 1;
        Some(Character {
            id,
            name: rec.name.clone(),
            x: pos.x,
            y: pos.y,
            heading,
            epoch: rec.epoch,
            version: rec.version,
            game,
        })
    }
}
