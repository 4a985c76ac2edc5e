//! Game events out: at the end of each tick ([`TickSet::Events`](worldmesh_game::TickSet)),
//! every event the game raised goes to its audience as a frame, reliable or not as its kind
//! says (see `worldmesh_game::event`).

use bevy_ecs::prelude::*;
use worldmesh_game::event::{Audience, Delivery, Events};
use worldmesh_protocol::{GameEvent, ServerMessage, codec};

use super::Outbox;
use super::components::{Id, Player, Position, SimSettings};
use super::interest::Grid;

pub fn send_events(
    mut events: ResMut<Events>,
    settings: Res<SimSettings>,
    grid: Res<Grid>,
    about: Query<(&Id, &Position)>,
    players: Query<&Player>,
    mut outbox: ResMut<Outbox>,
) {
    if events.is_empty() {
        return;
    }
    for raised in events.take() {
        // Despawned in the same tick: nobody can be shown what it was about.
        let Ok((&Id(entity), &at)) = about.get(raised.about) else {
            metrics::counter!("worldmesh_zone_events_dropped_total", "reason" => "despawned")
                .increment(1);
            continue;
        };
        let Ok(frame) = codec::encode_to_vec(&ServerMessage::Event(GameEvent {
            kind: raised.kind,
            entity,
            payload: raised.payload,
        })) else {
            continue;
        };
        let reliable = raised.delivery == Delivery::Reliable;
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
