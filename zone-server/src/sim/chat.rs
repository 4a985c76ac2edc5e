//! Local chat: a line reaches every player within chat range of the speaker.

use super::*;

impl Sim {
    /// Delivers a chat line to every player within chat range of the speaker (speaker included).
    pub fn chat(&mut self, player_id: PlayerId, text: String) {
        let Some(&speaker) = self.world.resource::<PlayerIndex>().0.get(&player_id) else {
            return;
        };
        let (Some(&at), Some(from)) = (
            self.world.get::<Position>(speaker),
            self.world
                .get::<CharacterRecord>(speaker)
                .map(|r| r.name.clone()),
        ) else {
            return;
        };
        let Ok(frame) = codec::encode_to_vec(&ServerMessage::Chat(ChatHeard { from, text })) else {
            return;
        };
        let r2 = self.chat_radius * self.chat_radius;
        let listeners: Vec<Player> = {
            let mut q = self.world.query::<(&Player, &Position)>();
            q.iter(&self.world)
                .filter(|(_, p)| (p.x - at.x).powi(2) + (p.y - at.y).powi(2) <= r2)
                .map(|(pl, _)| *pl)
                .collect()
        };
        let mut outbox = self.world.resource_mut::<Outbox>();
        for p in listeners {
            outbox.push(p.link, p.player_id, frame.clone(), true);
        }
    }
}
