//! Border visibility: read-only ghosts of the characters a neighbouring zone simulates near
//! our border, and the characters we show it in return. A character handed off stays here as
//! a ghost of its new zone.

use super::*;

impl Sim {
    /// Characters and NPCs simulated here (frozen ones too) and the items on the ground
    /// held here, for border visibility.
    pub fn visible_characters(&mut self, out: &mut Vec<GhostState>) {
        out.clear();
        let mut q = self.world.query_filtered::<(&Id, &Position, &Motion, &Synced), (
            With<CharacterRecord>,
            Without<Ghost>,
        )>();
        out.extend(q.iter(&self.world).map(|(r, p, m, s)| GhostState {
            id: r.0,
            x: p.x,
            y: p.y,
            heading: m.heading,
            speed: m.speed,
            components: s.replicated_values(),
        }));
        // Items on the ground near a border show on the other side too.
        let mut items = self.world.query_filtered::<(&Id, &Position, &Synced), (
            With<worldmesh_game::ground::GroundItem>,
            Without<Ghost>,
        )>();
        out.extend(items.iter(&self.world).map(|(r, p, s)| GhostState {
            id: r.0,
            x: p.x,
            y: p.y,
            heading: 0.0,
            speed: 0.0,
            components: s.replicated_values(),
        }));
    }

    /// Replaces the ghosts shown from zone `from` with `ghosts` (border visibility). A ghost
    /// of a character simulated here is skipped: the real one wins.
    pub fn set_ghosts(&mut self, from: ZoneId, tick: u32, ghosts: &[GhostState]) {
        let fresh: std::collections::HashSet<EntityId> = ghosts.iter().map(|g| g.id).collect();
        let stale: Vec<EntityId> = {
            let mut q = self.world.query::<(&Id, &Ghost)>();
            q.iter(&self.world)
                .filter(|(r, g)| g.from_zone == from && !fresh.contains(&r.0))
                .map(|(r, _)| r.0)
                .collect()
        };
        for id in stale {
            self.remove_ghost(id);
        }
        for g in ghosts {
            let &GhostState {
                id,
                x,
                y,
                heading,
                speed,
                ..
            } = g;
            if self.entity_of(id).is_some() || self.holds_ground(id) {
                continue;
            }
            let existing = self.world.resource::<GhostIndex>().0.get(&id).copied();
            let entity = match existing {
                Some(e) => {
                    self.world.entity_mut(e).insert((
                        Position { x, y },
                        Motion { heading, speed },
                        Ghost {
                            from_zone: from,
                            tick,
                        },
                    ));
                    e
                }
                None => {
                    let e = self
                        .world
                        .spawn((
                            Id(id),
                            Position { x, y },
                            Motion { heading, speed },
                            Ghost {
                                from_zone: from,
                                tick,
                            },
                        ))
                        .id();
                    self.world.resource_mut::<GhostIndex>().0.insert(id, e);
                    e
                }
            };
            // Game systems see a ghost's replicated components as typed components, and its
            // observers get them in snapshots like any entity's.
            if !(g.components.is_empty() && existing.is_none()) {
                self.world
                    .resource_scope(|world, table: Mut<ComponentTable>| {
                        table.mirror_replicated(&mut world.entity_mut(entity), &g.components);
                    });
            }
        }
    }

    /// A character handed to zone `to` stays here as a ghost of it (refreshed by `to`'s
    /// border batches from the next tick), so observers here never see it blink out.
    pub fn ghostify(&mut self, id: EntityId, to: ZoneId) {
        let Some(entity) = self.world.resource_mut::<CharIndex>().0.remove(&id) else {
            return;
        };
        actions::answer_queued(&mut self.world, entity, ActionRefusal::Moving);
        if let Some(pid) = self.world.get::<Player>(entity).map(|p| p.player_id) {
            self.world.resource_mut::<PlayerIndex>().0.remove(&pid);
        }
        let tick = self.tick();
        self.world
            .entity_mut(entity)
            .remove::<(
                Player,
                snapshot::Observer,
                input::InputQueue,
                actions::ActionQueue,
                CharacterRecord,
                Intent,
                Dirty,
                Frozen,
                Detached,
                worldmesh_game::Character,
                worldmesh_game::Npc,
                npc::Wanderer,
            )>()
            .insert(Ghost {
                from_zone: to,
                tick,
            });
        self.world.resource_mut::<GhostIndex>().0.insert(id, entity);
    }

    pub(super) fn remove_ghost(&mut self, id: EntityId) {
        if let Some(e) = self.world.resource_mut::<GhostIndex>().0.remove(&id) {
            self.world.despawn(e);
        }
    }

    /// Drops ghosts not refreshed since `before_tick` (their zone stopped sending).
    pub fn expire_ghosts(&mut self, before_tick: u32) {
        let old: Vec<EntityId> = {
            let mut q = self.world.query::<(&Id, &Ghost)>();
            q.iter(&self.world)
                .filter(|(_, g)| g.tick < before_tick)
                .map(|(r, _)| r.0)
                .collect()
        };
        for id in old {
            self.remove_ghost(id);
        }
    }

    pub fn ghost_count(&self) -> usize {
        self.world.resource::<GhostIndex>().0.len()
    }
}
