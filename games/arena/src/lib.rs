//! Arena: the example game of worldmesh, built on `worldmesh-game` alone.
//!
//! Players and monsters have health; players strike in melee or shoot (range, cooldown and a
//! line of sight over the walls checked by the server); the downed get up again after a few
//! seconds where they fell; defeating earns XP, XP makes levels, levels hit harder; XP and
//! levels are persisted. Monsters (goblins and ogres, the engine's NPCs) wander, notice
//! players, walk up to them (the engine's NPC steering) and strike them.
//!
//! # Layout
//!
//! - this file: [`Arena`] (the one registration), [`Rules`] (every number of the game).
//! - [`components`]: [`Health`], [`Level`], [`Xp`] and the server-side state.
//! - [`actions`]: [`Strike`] and [`Shoot`], the refusals they add, and the [`Hit`] they land
//!   (an effect: applied where the target is simulated, across a zone border too).
//! - [`events`]: what players are told: [`Struck`], [`WentDown`], [`LevelUp`].
//! - [`monsters`]: the NPC kinds ([`Goblin`], [`Ogre`]) and what they do.
//! - [`potions`]: [`Potions`] carried, [`Drink`] to heal, [`potions::Drank`] told, refilled
//!   over time: a whole feature in one file (built step by step in `docs/game-api.md`).
//! - [`rules`]: the systems every tick: falling, getting up; XP and levels ([`rules::Reward`],
//!   an effect on the winner wherever it is).

// A system's signature is its queries: spelled out where it is declared, they say what it
// touches; type aliases would hide exactly that.
#![allow(clippy::type_complexity)]

pub mod actions;
pub mod components;
pub mod events;
pub mod monsters;
pub mod potions;
pub mod rules;

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

pub use actions::{Hit, Shoot, Strike};
pub use components::{Health, Level, Xp};
pub use events::{LevelUp, Struck, WentDown};
pub use monsters::{Goblin, Ogre};
pub use potions::{Drink, Potions};

/// The arena game: register it with `GameRef::new(Arena)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arena;

impl Game for Arena {
    fn name(&self) -> &'static str {
        "arena"
    }

    fn register(&self, game: &mut GameRegistry) {
        game.component::<Health>(Replicated::Yes, Persisted::Yes)
            .component::<Level>(Replicated::Yes, Persisted::Yes)
            .component::<Xp>(Replicated::No, Persisted::Yes)
            .component::<components::Down>(Replicated::Yes, Persisted::No)
            .component::<components::Cooldowns>(Replicated::No, Persisted::No)
            .component::<components::LastHitBy>(Replicated::No, Persisted::No)
            .component::<monsters::Monster>(Replicated::No, Persisted::No)
            .action::<Strike>()
            .action::<Shoot>()
            .effect::<actions::Hit>()
            .effect::<rules::Reward>()
            .component::<Potions>(Replicated::Yes, Persisted::Yes)
            .action::<Drink>()
            .event::<potions::Drank>()
            .event::<Struck>()
            .event::<WentDown>()
            .event::<LevelUp>()
            .npc::<Goblin>()
            .npc::<Ogre>()
            .resource(Rules::default())
            .system(
                TickSet::Simulate,
                (
                    rules::newcomers,
                    monsters::strike_players,
                    rules::fall,
                    rules::get_up,
                )
                    .chain(),
            )
            .system(TickSet::Simulate, potions::refill);
    }
}

/// Every number of the game, in one place (a resource: tests and servers may change it).
#[derive(Resource, Debug, Clone)]
pub struct Rules {
    /// A new player's health.
    pub player_health: u16,
    /// Seconds a downed player lies before getting up (at full health, where it fell).
    pub down_seconds: f32,
    /// Melee (reach: [`actions::STRIKE_REACH`]): damage at level 1, extra damage per level,
    /// cooldown (s).
    pub strike_damage: u16,
    pub strike_per_level: u16,
    pub strike_cooldown: f32,
    /// Ranged (reach: [`actions::SHOOT_REACH`]): damage at level 1, extra per level,
    /// cooldown (s).
    pub shoot_damage: u16,
    pub shoot_per_level: u16,
    pub shoot_cooldown: f32,
    /// XP for downing a player, per level of the downed.
    pub xp_per_player_level: u32,
    /// XP needed for level n + 1 is `xp_per_level × n²`.
    pub xp_per_level: u32,
    /// Monsters strike players this close (m), this often (s).
    pub monster_reach: f32,
    pub monster_cooldown: f32,
    /// Potions: at most this many carried, each heals this much, one comes back this often (s).
    pub potions_max: u8,
    pub potion_heal: u16,
    pub potion_refill_seconds: f32,
    /// Gold for downing anyone (players and monsters alike), recorded with the ledger
    /// (`worldmesh_game::Loot`); and one trophy (item kind [`TROPHY`]) per downed player.
    pub gold_per_kill: u64,
    /// A new character's starter kit: this much gold and this many gems (item kind [`GEM`],
    /// one per stack), given once ([`STARTER_KIT`]).
    pub starter_gold: u64,
    pub starter_gems: u32,
}

/// The arena's item kind for a trophy: taken from a downed player.
pub const TROPHY: u16 = 1;
/// The arena's item kind for a gem: what starter kits hold, to trade.
pub const GEM: u16 = 2;
/// The `Loot::once` key of the starter kit.
pub const STARTER_KIT: u32 = 1;

impl Default for Rules {
    fn default() -> Self {
        Self {
            player_health: 100,
            down_seconds: 5.0,
            strike_damage: 10,
            strike_per_level: 2,
            strike_cooldown: 0.8,
            shoot_damage: 6,
            shoot_per_level: 1,
            shoot_cooldown: 1.5,
            xp_per_player_level: 30,
            xp_per_level: 50,
            monster_reach: 2.0,
            monster_cooldown: 1.2,
            potions_max: 3,
            potion_heal: 40,
            potion_refill_seconds: 30.0,
            gold_per_kill: 5,
            starter_gold: 100,
            starter_gems: 3,
        }
    }
}

impl Rules {
    /// The level `xp` earns: 1, then n + 1 once `xp ≥ xp_per_level × n²`.
    #[must_use]
    pub fn level_for(&self, xp: u32) -> u16 {
        let per = self.xp_per_level.max(1) as f64;
        (1.0 + (xp as f64 / per).sqrt().floor()).min(u16::MAX as f64) as u16
    }

    /// Seconds as ticks, given the tick length.
    #[must_use]
    pub fn ticks(seconds: f32, tick_hz: f32) -> u32 {
        (seconds * tick_hz).round().max(1.0) as u32
    }
}

/// The tick rate the arena assumes for cooldowns (the engine's default).
pub const TICK_HZ: f32 = 20.0;
