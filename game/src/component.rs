//! Game components that travel with their entity: registered once, then replicated to the
//! clients that see the entity, persisted with the character, carried in handoffs and shown
//! on ghosts across zone borders — without the game writing any of that.
//!
//! A game marks a component type as one of its own ([`GameComponent`]: a wire kind and a
//! name) and registers it with [`GameRegistry::component`](crate::GameRegistry::component),
//! saying whether clients see it ([`Replicated`]) and whether it outlives a logout
//! ([`Persisted`]). Every registered component follows its entity through handoffs, persisted
//! or not: registering is what makes a component part of the entity rather than of one zone.
//!
//! The engine keeps, on every entity, the encoded values of its registered components
//! ([`Synced`]), refreshed by systems [`install`](crate::install) adds at two [`SyncPoint`]s
//! of every tick. A replicated value is stamped when its bytes change, so snapshots send it
//! only to clients whose view predates the change: a health bar costs bytes when it moves
//! and nothing while it stays. A persisted value marks its character for the next checkpoint,
//! where it is saved with the character's `(epoch, version)` stamp.

use std::collections::BTreeMap;

use bevy_ecs::component::Mutable;
use bevy_ecs::prelude::*;
use bevy_ecs::world::EntityWorldMut;
use worldmesh_protocol::codec::{self, DecodeError};
use worldmesh_protocol::snapshot::{FieldValue, MAX_FIELD_BYTES};

pub use worldmesh_protocol::ComponentKind;

/// Largest encoded value of a component that is persisted or carried but not replicated.
pub const MAX_COMPONENT_BYTES: usize = 1024;

/// Largest encoded [`ComponentValues`] of one entity (checkpoints, handoffs, ghosts).
pub const MAX_VALUES_BYTES: usize = 64 * 1024;

/// A component of the game's that the engine moves with its entity. Its value is encoded
/// with bincode (derive `bincode::Encode` and `bincode::Decode`); replicated values must
/// encode to at most [`MAX_FIELD_BYTES`], others to [`MAX_COMPONENT_BYTES`].
pub trait GameComponent:
    Component<Mutability = Mutable> + bincode::Encode + bincode::Decode<()>
{
    /// Its number on the wire and in storage: unique within the game, never reused for
    /// another meaning once stored.
    const KIND: ComponentKind;
    /// Its name, for logs and metrics.
    const NAME: &'static str;
}

/// Whether clients that see the entity are sent the component's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// Server-side only (cooldown timers, AI state).
    No,
    /// In the snapshots of every observer of the entity (health, level).
    Yes,
}

/// Whether the component is saved with a player's character and loaded on login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// Lives as long as the entity is in the world (it still follows handoffs).
    No,
    /// Saved in checkpoints and on logout, restored on login and after a zone fails.
    Yes,
}

/// One registered component, as the engine handles it without knowing its type.
#[derive(Debug, Clone, Copy)]
pub struct ComponentEntry {
    pub kind: ComponentKind,
    pub name: &'static str,
    pub replicated: bool,
    pub persisted: bool,
    insert: fn(&mut EntityWorldMut<'_>, &[u8]) -> Result<(), DecodeError>,
    remove: fn(&mut EntityWorldMut<'_>),
}

impl ComponentEntry {
    pub(crate) fn of<T: GameComponent>(replicated: Replicated, persisted: Persisted) -> Self {
        Self {
            kind: T::KIND,
            name: T::NAME,
            replicated: replicated == Replicated::Yes,
            persisted: persisted == Persisted::Yes,
            insert: |e, bytes| {
                let value: T = codec::decode_value(bytes, MAX_COMPONENT_BYTES)?;
                e.insert(value);
                Ok(())
            },
            remove: |e| {
                e.remove::<T>();
            },
        }
    }

    /// The largest encoded value the engine accepts for it.
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        if self.replicated {
            MAX_FIELD_BYTES
        } else {
            MAX_COMPONENT_BYTES
        }
    }
}

/// The components a world's game registered, by kind (a resource in every zone's world).
#[derive(Resource, Debug, Default, Clone)]
pub struct ComponentTable(pub(crate) BTreeMap<ComponentKind, ComponentEntry>);

impl ComponentTable {
    #[must_use]
    pub fn get(&self, kind: ComponentKind) -> Option<&ComponentEntry> {
        self.0.get(&kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ComponentEntry> {
        self.0.values()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Inserts each value into `entity` as its typed component. A value of a kind the game
    /// does not register, or whose bytes are not its type (the game changed it since it was
    /// stored), is skipped, logged and counted: the entity comes without it, the rest loads.
    pub fn insert_values(&self, entity: &mut EntityWorldMut<'_>, values: &ComponentValues) {
        for (kind, bytes) in &values.0 {
            let result = match self.0.get(kind) {
                Some(entry) => (entry.insert)(entity, bytes)
                    .map(|()| {
                        // Loaded, not changed: the sync stamps it for snapshots but marks no
                        // checkpoint.
                        if let Some(mut s) = entity.get_mut::<Synced>() {
                            s.preload(entry, bytes);
                        }
                    })
                    .map_err(|e| e.to_string()),
                None => Err("the game registers no such component".to_owned()),
            };
            if let Err(why) = result {
                tracing::warn!(kind = kind.0, %why, "component value skipped");
                metrics::counter!("worldmesh_game_component_errors_total", "reason" => "decode")
                    .increment(1);
            }
        }
    }

    /// Makes `entity`'s replicated components those of `values` (a ghost refreshed from its
    /// owner): inserts what changed, removes what its owner no longer has.
    pub fn mirror_replicated(&self, entity: &mut EntityWorldMut<'_>, values: &ComponentValues) {
        let held: Vec<(ComponentKind, Option<Box<[u8]>>)> = entity
            .get::<Synced>()
            .map(|s| {
                s.replicated
                    .iter()
                    .map(|f| (f.kind, f.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let same = |kind: ComponentKind, bytes: &[u8]| {
            held.iter()
                .any(|(k, v)| *k == kind && v.as_deref() == Some(bytes))
        };
        let changed = ComponentValues(
            values
                .0
                .iter()
                .filter(|(k, b)| !same(*k, b))
                .cloned()
                .collect(),
        );
        self.insert_values(entity, &changed);
        for (kind, value) in held {
            if value.is_some()
                && !values.0.iter().any(|(k, _)| *k == kind)
                && let Some(entry) = self.0.get(&kind)
            {
                (entry.remove)(entity);
            }
        }
    }
}

/// Encoded values of an entity's game components, by kind: what checkpoints, handoff states
/// and ghost batches carry. The engine treats the bytes as opaque; only the game's types
/// read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentValues(pub Vec<(ComponentKind, Vec<u8>)>);

impl ComponentValues {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stored form (empty when there are none, so a game without components stores
    /// nothing).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let pairs: Vec<(u16, &[u8])> = self.0.iter().map(|(k, v)| (k.0, v.as_slice())).collect();
        // Every value is bounded by its entry's limit when it is synced, so the whole fits.
        codec::encode_value(&pairs, usize::MAX).unwrap_or_default()
    }

    /// Reads the stored form; empty bytes are no values.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let pairs: Vec<(u16, Vec<u8>)> = codec::decode_value(bytes, MAX_VALUES_BYTES)?;
        Ok(Self(
            pairs
                .into_iter()
                .map(|(k, v)| (ComponentKind(k), v))
                .collect(),
        ))
    }

    /// Decodes stored bytes that should be valid, logging and counting (not failing) when
    /// they are not: the entity then loads without its game components.
    #[must_use]
    pub fn decode_or_log(bytes: &[u8], what: &str) -> Self {
        Self::decode(bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, what, "stored component values unreadable");
            metrics::counter!("worldmesh_game_component_errors_total", "reason" => "container")
                .increment(1);
            Self::default()
        })
    }
}

/// The encoded values of an entity's registered components, kept by the engine (every entity
/// with an [`Id`](crate::Id) has one). Games never touch it.
#[derive(Component, Debug, Default, Clone)]
pub struct Synced {
    /// The stamp of the newest change to a replicated value (0: none yet); what snapshot
    /// deltas compare.
    pub rev: u32,
    /// Replicated values, by kind, stamped (removed ones stay as `None` so deltas remove them).
    pub replicated: Vec<FieldValue>,
    /// The other registered values, by kind.
    pub local: Vec<(ComponentKind, Box<[u8]>)>,
    /// A persisted value changed since the last checkpoint took them.
    pub persisted_changed: bool,
}

impl Synced {
    /// Every registered value the entity has (a handoff carries them all).
    #[must_use]
    pub fn all(&self) -> ComponentValues {
        let mut out: Vec<(ComponentKind, Vec<u8>)> = self
            .replicated
            .iter()
            .filter_map(|f| Some((f.kind, f.value.as_deref()?.to_vec())))
            .chain(self.local.iter().map(|(k, v)| (*k, v.to_vec())))
            .collect();
        out.sort_by_key(|(k, _)| *k);
        ComponentValues(out)
    }

    /// The values `table` says are persisted.
    #[must_use]
    pub fn persisted(&self, table: &ComponentTable) -> ComponentValues {
        let mut all = self.all();
        all.0
            .retain(|(k, _)| table.get(*k).is_some_and(|e| e.persisted));
        all
    }

    /// The replicated values it has (ghost batches carry them).
    #[must_use]
    pub fn replicated_values(&self) -> ComponentValues {
        ComponentValues(
            self.replicated
                .iter()
                .filter_map(|f| Some((f.kind, f.value.as_deref()?.to_vec())))
                .collect(),
        )
    }

    /// Records a value loaded from storage or a handoff (not a change): unstamped, so the
    /// next sync stamps it without marking a checkpoint.
    fn preload(&mut self, entry: &ComponentEntry, bytes: &[u8]) {
        let value = Some(Box::<[u8]>::from(bytes));
        if entry.replicated {
            match self
                .replicated
                .binary_search_by_key(&entry.kind, |f| f.kind)
            {
                Ok(i) if self.replicated[i].value == value => {}
                Ok(i) => {
                    self.replicated[i].value = value;
                    self.replicated[i].stamp = 0;
                }
                Err(i) => self.replicated.insert(
                    i,
                    FieldValue {
                        kind: entry.kind,
                        stamp: 0,
                        value,
                    },
                ),
            }
        } else if let Some(v) = value {
            match self.local.binary_search_by_key(&entry.kind, |(k, _)| *k) {
                Ok(i) => self.local[i].1 = v,
                Err(i) => self.local.insert(i, (entry.kind, v)),
            }
        }
    }

    fn set(&mut self, entry: &ComponentEntry, value: Option<Vec<u8>>, clock: &mut SyncClock) {
        let value = value.map(Vec::into_boxed_slice);
        if entry.replicated {
            let i = match self
                .replicated
                .binary_search_by_key(&entry.kind, |f| f.kind)
            {
                // A preloaded value (stamp 0) is stamped once for snapshots, unchanged.
                Ok(i) if self.replicated[i].value == value && self.replicated[i].stamp == 0 => {
                    let stamp = clock.next();
                    self.replicated[i].stamp = stamp;
                    self.rev = stamp;
                    return;
                }
                Ok(i) if self.replicated[i].value == value => return,
                Ok(i) => i,
                Err(_) if value.is_none() => return,
                Err(i) => {
                    self.replicated.insert(
                        i,
                        FieldValue {
                            kind: entry.kind,
                            stamp: 0,
                            value: None,
                        },
                    );
                    i
                }
            };
            let stamp = clock.next();
            self.replicated[i].value = value;
            self.replicated[i].stamp = stamp;
            self.rev = stamp;
        } else {
            match (
                self.local.binary_search_by_key(&entry.kind, |(k, _)| *k),
                value,
            ) {
                (Ok(i), Some(v)) if self.local[i].1 == v => return,
                (Ok(i), Some(v)) => self.local[i].1 = v,
                (Ok(i), None) => {
                    self.local.remove(i);
                }
                (Err(i), Some(v)) => self.local.insert(i, (entry.kind, v)),
                (Err(_), None) => return,
            }
        }
        if entry.persisted {
            self.persisted_changed = true;
        }
    }
}

/// The zone-wide counter replicated values are stamped from (wrapping; see
/// [`stamp_after`](worldmesh_protocol::snapshot::stamp_after)).
#[derive(Resource, Debug, Default)]
pub struct SyncClock(u32);

impl SyncClock {
    fn next(&mut self) -> u32 {
        // 0 means "no fields" in a snapshot's view: skip it when the counter wraps.
        self.0 = self.0.wrapping_add(1).max(1);
        self.0
    }
}

/// Where in a tick the engine refreshes [`Synced`] from the typed components: before the
/// interest grid and the snapshots are built (at the start of [`TickSet::Interest`], so
/// snapshots show changes made up to [`TickSet::Movement`] in the same tick), and at the very
/// end of the tick (so checkpoints, handoffs and ghost batches taken between ticks see every
/// change; a change made later in a tick reaches clients with the next one).
///
/// [`TickSet::Interest`]: crate::TickSet::Interest
/// [`TickSet::Movement`]: crate::TickSet::Movement
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncPoint {
    BeforeSnapshot,
    EndOfTick,
}

/// Refreshes the [`Synced`] values of `T` where it changed or went away.
pub(crate) fn sync<T: GameComponent>(
    table: Res<ComponentTable>,
    mut clock: ResMut<SyncClock>,
    changed: Query<(Entity, &T), Changed<T>>,
    mut removed: RemovedComponents<T>,
    mut synced: Query<&mut Synced>,
) {
    let Some(&entry) = table.get(T::KIND) else {
        return;
    };
    // Removals first: a component removed and inserted again this tick has a value.
    for entity in removed.read() {
        if let Ok(mut s) = synced.get_mut(entity) {
            s.set(&entry, None, &mut clock);
        }
    }
    for (entity, value) in &changed {
        let Ok(mut s) = synced.get_mut(entity) else {
            continue;
        };
        match codec::encode_value(value, entry.max_bytes()) {
            Ok(bytes) => s.set(&entry, Some(bytes), &mut clock),
            Err(e) => {
                tracing::error!(component = entry.name, error = %e, "component value not synced");
                metrics::counter!("worldmesh_game_component_errors_total", "reason" => "too_large")
                    .increment(1);
            }
        }
    }
}
