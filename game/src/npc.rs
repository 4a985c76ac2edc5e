//! NPC kinds: what a game's non-player entities are.
//!
//! The engine keeps the NPC population (`--npcs N`, N in the whole world): it gives each NPC
//! a kind, chosen from the registered kinds by weight and deterministically from the NPC's id
//! (so every run and every zone agrees), spawns it with its kind's components at its spawn
//! point, moves it (it wanders, and walks towards players it notices), hands it to the next
//! zone when it walks across a border (with every registered component, like a character),
//! and brings it back a while after the game defeats it. A kind that is
//! [`PERSISTED`](NpcKind::PERSISTED) is also checkpointed like a character, so its persisted
//! components survive a zone's failure; any other NPC comes back fresh at its spawn point
//! when its zone fails. A game
//! registers kinds ([`GameRegistry::npc`](crate::GameRegistry::npc)) and adds behaviour with
//! systems over the [`Npc`] component; it never spawns or despawns NPCs itself, so the
//! population the engine reports is always the one it keeps.
//!
//! Without a registered kind (no game), NPCs are plain wanderers.

use bevy_ecs::prelude::*;
use bevy_ecs::world::EntityWorldMut;

/// A kind of NPC, numbered by the game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NpcKindId(pub u16);

/// A kind of NPC: its components at spawn, its share of the population, how long it stays
/// away once defeated.
pub trait NpcKind: Send + Sync + 'static {
    const KIND: NpcKindId;
    const NAME: &'static str;
    /// Relative share of the population (≥ 1).
    const WEIGHT: u32 = 1;
    /// Seconds between its defeat and its return at its spawn point.
    const RESPAWN_SECONDS: f32 = 10.0;
    /// Whether NPCs of this kind are checkpointed (a boss whose wounds outlive a crash);
    /// otherwise a zone failure brings them back fresh. Costs a database row per NPC.
    const PERSISTED: bool = false;

    /// Gives a fresh NPC of this kind its game components (health, what it drops, …). The
    /// engine has already given it [`Id`](crate::Id), [`Position`](crate::Position),
    /// [`Motion`](crate::Motion) and [`Npc`].
    fn spawn(npc: &mut EntityWorldMut<'_>);
}

/// On every NPC: its kind. What a game's NPC systems query.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npc {
    pub kind: NpcKindId,
}

/// Inserted by a game on an NPC it defeated: the engine takes the NPC out of the world at the
/// end of the tick (after the tick's events, so observers hear about it) and brings a fresh
/// one of the same kind and id back at its spawn point after the kind's respawn time.
/// Ignored on characters: a game handles a player's death itself.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Defeated;

/// One registered kind, as the engine handles it without knowing its type.
#[derive(Debug, Clone, Copy)]
pub struct NpcKindEntry {
    pub kind: NpcKindId,
    pub name: &'static str,
    pub weight: u32,
    pub respawn_seconds: f32,
    pub persisted: bool,
    spawn: fn(&mut EntityWorldMut<'_>),
}

impl NpcKindEntry {
    pub(crate) fn of<K: NpcKind>() -> Self {
        Self {
            kind: K::KIND,
            name: K::NAME,
            weight: K::WEIGHT.max(1),
            respawn_seconds: K::RESPAWN_SECONDS.max(0.0),
            persisted: K::PERSISTED,
            spawn: K::spawn,
        }
    }

    /// Gives `npc` this kind's components.
    pub fn spawn(&self, npc: &mut EntityWorldMut<'_>) {
        (self.spawn)(npc);
    }
}

/// The NPC kinds a world's game registered (a resource in every zone's world).
#[derive(Resource, Debug, Default, Clone)]
pub struct NpcKinds {
    kinds: Vec<NpcKindEntry>,
    total_weight: u64,
}

impl NpcKinds {
    pub(crate) fn new(mut kinds: Vec<NpcKindEntry>) -> Self {
        kinds.sort_by_key(|k| k.kind);
        let total_weight = kinds.iter().map(|k| k.weight as u64).sum();
        Self {
            kinds,
            total_weight,
        }
    }

    /// The kind of the NPC with id `id`: by weight, from a hash of the id, so it is the same
    /// in every zone and every run. `None` when the game registers no kinds.
    #[must_use]
    pub fn kind_of(&self, id: u64) -> Option<&NpcKindEntry> {
        if self.total_weight == 0 {
            return None;
        }
        let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let mut pick = (z ^ (z >> 31)) % self.total_weight;
        self.kinds.iter().find(|k| {
            let hit = pick < k.weight as u64;
            pick = pick.saturating_sub(k.weight as u64);
            hit
        })
    }

    #[must_use]
    pub fn get(&self, kind: NpcKindId) -> Option<&NpcKindEntry> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &NpcKindEntry> {
        self.kinds.iter()
    }
}
