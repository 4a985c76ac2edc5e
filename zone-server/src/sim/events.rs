//! Game events out: at the end of each tick ([`TickSet::Events`](worldmesh_game::TickSet)),
//! every event the game raised goes to its audience as a frame, reliable or not as its kind
//! says (see `worldmesh_game::event`).
//!
//! Observers across a border: an event for the observers of an entity this zone simulates is
//! also kept as a [`BorderEvent`]; the zone sends it in its next border batch to the
//! neighbours that show the entity as a ghost, and each tells its own players near the ghost
//! ([`deliver_border_events`]). So a player sees the flash of a blow on a monster across the
//! border as well as its health bar, a tick later than players on the monster's side.

use bevy_ecs::prelude::*;
use worldmesh_game::event::{Audience, Delivery, Events};
use worldmesh_protocol::ids::{EntityId, EventKind};
use worldmesh_protocol::{GameEvent, ServerMessage, codec};

use super::components::{Ghost, Id, Player, Position, SimSettings};
use super::interest::Grid;
use super::{GhostIndex, Outbox};

/// An event for the observers of an entity this zone simulates, for neighbours that show it.
#[derive(Debug, Clone, PartialEq)]
pub struct BorderEvent {
    pub entity: EntityId,
    /// Where the entity stood (which neighbours show it).
    pub x: f32,
    pub y: f32,
    pub kind: EventKind,
    pub payload: Vec<u8>,
    pub reliable: bool,
}

/// The last tick's [`BorderEvent`]s, until the zone takes them (each tick starts it over, so
/// a world nobody takes them from holds one tick's worth).
#[derive(Resource, Debug, Default)]
pub struct BorderEvents(pub Vec<BorderEvent>);

pub fn send_events(
    mut events: ResMut<Events>,
    settings: Res<SimSettings>,
    grid: Res<Grid>,
    about: Query<(&Id, &Position, Has<Ghost>)>,
    players: Query<&Player>,
    mut outbox: ResMut<Outbox>,
    mut border: ResMut<BorderEvents>,
) {
    border.0.clear();
    if events.is_empty() {
        return;
    }
    for raised in events.take() {
        // Despawned in the same tick: nobody can be shown what it was about.
        let Ok((&Id(entity), &at, is_ghost)) = about.get(raised.about) else {
            metrics::counter!("worldmesh_zone_events_dropped_total", "reason" => "despawned")
                .increment(1);
            continue;
        };
        let reliable = raised.delivery == Delivery::Reliable;
        if !is_ghost && matches!(raised.audience, Audience::Observers) {
            border.0.push(BorderEvent {
                entity,
                x: at.x,
                y: at.y,
                kind: raised.kind,
                payload: raised.payload.clone(),
                reliable,
            });
        }
        let Ok(frame) = codec::encode_to_vec(&ServerMessage::Event(GameEvent {
            kind: raised.kind,
            entity,
            payload: raised.payload,
        })) else {
            continue;
        };
        match raised.audience {
            Audience::Player(to) => {
                if let Ok(p) = players.get(to) {
                    outbox.push(p.link, p.player_id, frame, reliable);
                }
            }
            Audience::Observers => {
                grid.for_each_near(at, settings.view_radius, |seen, _| {
                    if let Ok(p) = players.get(seen.entity) {
                        outbox.push(p.link, p.player_id, frame.clone(), reliable);
                    }
                });
            }
        }
        metrics::counter!("worldmesh_zone_events_total").increment(1);
    }
}

/// Events a neighbour raised about entities it simulates and this zone shows as ghosts: told
/// to the players here within view radius of the ghost (as the last tick placed them), with
/// that tick's frames. An event about an entity not shown here is dropped: nobody here sees it.
pub fn deliver_border_events(world: &mut World, events: Vec<BorderEvent>) {
    let radius = world.resource::<SimSettings>().view_radius;
    for e in events {
        let Some(&ghost) = world.resource::<GhostIndex>().0.get(&e.entity) else {
            continue;
        };
        let Some(&at) = world.get::<Position>(ghost) else {
            continue;
        };
        let Ok(frame) = codec::encode_to_vec(&ServerMessage::Event(GameEvent {
            kind: e.kind,
            entity: e.entity,
            payload: e.payload,
        })) else {
            continue;
        };
        let mut to = Vec::new();
        world
            .resource::<Grid>()
            .for_each_near(at, radius, |seen, _| {
                if let Some(p) = world.get::<Player>(seen.entity) {
                    to.push((p.link, p.player_id));
                }
            });
        let mut outbox = world.resource_mut::<Outbox>();
        for (link, player) in to {
            outbox.push(link, player, frame.clone(), e.reliable);
        }
        metrics::counter!("worldmesh_zone_border_events_total").increment(1);
    }
}
