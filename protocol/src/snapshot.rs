//! Delta-compressed snapshots: the server's per-observer encoder and the client's decoder.
//!
//! No I/O and no clock. Both sides keep the observer's *view* — what the client shows — for
//! recent ticks. The server encodes each tick's view as a delta against the newest view the
//! client has acknowledged (`Input::ack_tick`), so a lost datagram never corrupts the client:
//! a delta is only ever applied to a view the client is known to hold.
//!
//! Entities are addressed by *slots*, small per-observer indices assigned when an entity
//! becomes visible, so an update costs a few bits of slot gap instead of a 64-bit id. States
//! are quantised ([`QEntity`]): positions to 1/32 m, heading to 1/256 turn, speed to 0.1 m/s.
//! Entities whose quantised state did not change since the baseline cost nothing.
//!
//! Under a byte budget (one datagram by default) the encoder writes removals first, then the
//! changed and new entities with the highest *accumulated priority*: every tick an entity is
//! left out its priority grows by its gain (near and fast entities gain more), and it resets
//! when written, so near entities refresh first and none starves. An entity left out simply
//! keeps its baseline state in the client's view; the server records the view exactly as the
//! client will rebuild it, so the next delta is again exact.
//!
//! A game's replicated components (health, level, …) travel in a *fields* section after the
//! updates: an entity's changed fields ride with its update, under the same budget and
//! priority, and unchanged fields cost nothing. The server stamps every field value with a
//! zone-wide counter when it changes and keeps, per entity, the stamp of its newest change
//! ([`QEntity::rev`]); the delta against a baseline carries the fields stamped after the
//! baseline's `rev`. Clients keep the values ([`EntityFields`]) beside each view.
//!
//! The bit layout is documented in `PROTOCOL.md` § Snapshots.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::{ComponentKind, EntityId, EntityKind, EntityState, Snapshot, WorldBounds, codec};

/// Position quanta per metre.
pub const POS_SCALE: f32 = 32.0;
/// Bits of a quantised coordinate: 2^20 / 32 = 32 km of world per axis.
pub const POS_BITS: u32 = 20;
/// Bits of each coordinate of a *small* position delta (two's complement): ±63 quanta ≈ ±2 m,
/// which covers 10 m/s for 3–4 ticks of acknowledgement delay.
pub const SMALL_DELTA_BITS: u32 = 7;
/// Views kept per observer, on both sides. 32 ticks is 1.6 s at 20 Hz: an ack older than
/// that means the link is in trouble, and the encoder falls back to a full update.
pub const HISTORY: usize = 32;
/// Bits used to say how many bits an id has (ids are up to 64 bits).
const ID_LEN_BITS: u32 = 7;
/// Largest encoded value of one replicated component, bytes: a health bar or a level, not a
/// inventory (those travel as events).
pub const MAX_FIELD_BYTES: usize = 64;
/// Most replicated components one entity update may carry.
pub const MAX_FIELDS: usize = 32;

/// A quantised entity state: what snapshots carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QEntity {
    pub id: u64,
    pub kind: EntityKind,
    /// Quanta of 1/32 m from the world's `min_x`.
    pub x: u32,
    pub y: u32,
    /// 1/256 of a turn, counter-clockwise from +x.
    pub heading: u8,
    /// Tenths of a m/s.
    pub speed: u8,
    /// The server's stamp of the newest change to the entity's replicated fields (0: it has
    /// none). Server side only: decoders leave it 0, clients hold the values themselves.
    pub rev: u32,
}

/// Whether field stamp `stamp` is newer than `rev`. Stamps come from one wrapping counter
/// per zone, compared in serial-number order: a baseline is at most [`HISTORY`] ticks old, so
/// the newer of two stamps that matter is never 2³¹ changes ahead.
#[must_use]
pub fn stamp_after(stamp: u32, rev: u32) -> bool {
    (stamp.wrapping_sub(rev) as i32) > 0
}

/// One replicated component of an entity, as the server holds it for encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValue {
    pub kind: ComponentKind,
    /// When it last changed (see [`stamp_after`]).
    pub stamp: u32,
    /// Its encoded value (at most [`MAX_FIELD_BYTES`]), `None` once the component is removed.
    pub value: Option<Box<[u8]>>,
}

/// An entity's replicated components as a client holds them: encoded values by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityFields(Vec<(ComponentKind, Box<[u8]>)>);

impl EntityFields {
    /// The encoded value of component `kind`, if the entity has it.
    #[must_use]
    pub fn raw(&self, kind: ComponentKind) -> Option<&[u8]> {
        self.0
            .binary_search_by_key(&kind, |(k, _)| *k)
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Component `kind` decoded as `T` (the game's type for that kind): `None` when the
    /// entity does not have it, an error when the bytes are not a `T`.
    pub fn get<T: bincode::Decode<()>>(
        &self,
        kind: ComponentKind,
    ) -> Option<Result<T, codec::DecodeError>> {
        self.raw(kind)
            .map(|b| codec::decode_value(b, MAX_FIELD_BYTES))
    }

    pub fn iter(&self) -> impl Iterator<Item = (ComponentKind, &[u8])> {
        self.0.iter().map(|(k, v)| (*k, &**v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn set(&mut self, kind: ComponentKind, value: Option<Box<[u8]>>) {
        match (self.0.binary_search_by_key(&kind, |(k, _)| *k), value) {
            (Ok(i), Some(v)) => self.0[i].1 = v,
            (Ok(i), None) => {
                self.0.remove(i);
            }
            (Err(i), Some(v)) => self.0.insert(i, (kind, v)),
            (Err(_), None) => {}
        }
    }
}

/// Converts between world units and quanta for one world.
#[derive(Debug, Clone, Copy)]
pub struct Quantizer {
    min_x: f32,
    min_y: f32,
}

impl Quantizer {
    pub fn new(bounds: WorldBounds) -> Self {
        Self {
            min_x: bounds.min_x,
            min_y: bounds.min_y,
        }
    }

    fn pos(v: f32, min: f32) -> u32 {
        let q = ((v - min) * POS_SCALE).round();
        if q.is_nan() {
            0
        } else {
            q.clamp(0.0, ((1u32 << POS_BITS) - 1) as f32) as u32
        }
    }

    pub fn quantize(
        &self,
        id: u64,
        kind: EntityKind,
        x: f32,
        y: f32,
        heading: f32,
        speed: f32,
    ) -> QEntity {
        let turns = heading / std::f32::consts::TAU;
        let h = ((turns - turns.floor()) * 256.0).round() as u32 % 256;
        QEntity {
            id,
            kind,
            x: Self::pos(x, self.min_x),
            y: Self::pos(y, self.min_y),
            heading: h as u8,
            speed: (speed * 10.0).round().clamp(0.0, 255.0) as u8,
            rev: 0,
        }
    }

    pub fn dequantize(&self, q: &QEntity) -> EntityState {
        EntityState {
            id: EntityId(q.id),
            kind: q.kind,
            x: self.min_x + q.x as f32 / POS_SCALE,
            y: self.min_y + q.y as f32 / POS_SCALE,
            heading: q.heading as f32 / 256.0 * std::f32::consts::TAU,
            speed: q.speed as f32 / 10.0,
        }
    }
}

/// Why a snapshot body could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot body ends early")]
    Truncated,
    #[error("baseline tick {0} is not held (too old or never received)")]
    MissingBaseline(u32),
    #[error("slot {0} out of range")]
    BadSlot(u64),
    #[error("delta for slot {0}, which the baseline does not hold")]
    DeltaWithoutBase(u16),
    #[error("fields for slot {0}, which this snapshot does not update")]
    FieldsWithoutUpdate(u64),
    #[error("field kind, count or length {0} out of range")]
    BadField(u64),
}

// ---------------------------------------------------------------------------------------------
// Bits

/// Appends bits, most significant first within each value, packed from the high bit of each
/// byte.
#[derive(Debug, Default)]
pub struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.acc = 0;
        self.n = 0;
    }

    pub fn bits(&self) -> usize {
        self.buf.len() * 8 + self.n as usize
    }

    /// Writes the low `bits` bits of `v` (bits ≤ 32).
    #[inline]
    pub fn write(&mut self, v: u64, bits: u32) {
        debug_assert!(bits <= 32);
        if bits == 0 {
            return;
        }
        self.acc = (self.acc << bits) | (v & ((1u64 << bits) - 1));
        self.n += bits;
        while self.n >= 8 {
            self.n -= 8;
            self.buf.push((self.acc >> self.n) as u8);
        }
    }

    #[inline]
    pub fn write_wide(&mut self, v: u64, bits: u32) {
        if bits > 32 {
            self.write(v >> 32, bits - 32);
            self.write(v & 0xffff_ffff, 32);
        } else {
            self.write(v, bits);
        }
    }

    #[inline]
    pub fn bit(&mut self, b: bool) {
        self.write(b as u64, 1);
    }

    /// Order-0 exponential-Golomb: 0 → `1`, 1–2 → `01x`, 3–6 → `001xx`, …
    #[inline]
    pub fn golomb(&mut self, v: u64) {
        let v1 = v + 1;
        let n = 63 - v1.leading_zeros();
        self.write_wide(0, n);
        self.write_wide(v1, n + 1);
    }

    /// Pads to a whole byte and returns the bytes.
    pub fn finish(&mut self) -> &[u8] {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.write(0, pad);
        }
        &self.buf
    }
}

/// Bits needed by [`BitWriter::golomb`] for `v`.
#[inline]
pub fn golomb_bits(v: u64) -> u32 {
    2 * (63 - (v + 1).leading_zeros()) + 1
}

pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn read(&mut self, bits: u32) -> Result<u64, SnapshotError> {
        let mut v = 0u64;
        for _ in 0..bits {
            let byte = *self
                .data
                .get(self.pos / 8)
                .ok_or(SnapshotError::Truncated)?;
            v = (v << 1) | ((byte >> (7 - self.pos % 8)) & 1) as u64;
            self.pos += 1;
        }
        Ok(v)
    }

    pub fn bit(&mut self) -> Result<bool, SnapshotError> {
        Ok(self.read(1)? == 1)
    }

    pub fn golomb(&mut self) -> Result<u64, SnapshotError> {
        let mut n = 0;
        while !self.bit()? {
            n += 1;
            if n > 63 {
                return Err(SnapshotError::Truncated);
            }
        }
        let rest = self.read(n)?;
        Ok(((1u64 << n) | rest) - 1)
    }
}

#[inline]
fn id_bits(id: u64) -> u32 {
    64 - id.leading_zeros()
}

#[inline]
fn write_new(w: &mut BitWriter, e: &QEntity) {
    let n = id_bits(e.id);
    w.write(n as u64, ID_LEN_BITS);
    w.write_wide(e.id, n);
    // One bit: a player or not. An item on the ground is told from an NPC by its id (the
    // item range), so version-1 decoders read it as an NPC with a field they may skip.
    w.bit(e.kind != EntityKind::Player);
    w.write(e.x as u64, POS_BITS);
    w.write(e.y as u64, POS_BITS);
    w.write(e.heading as u64, 8);
    w.write(e.speed as u64, 8);
}

#[inline]
fn new_bits(e: &QEntity) -> u32 {
    ID_LEN_BITS + id_bits(e.id) + 1 + 2 * POS_BITS + 16
}

#[inline]
fn small(d: i64) -> bool {
    let lim = 1i64 << (SMALL_DELTA_BITS - 1);
    (-lim..lim).contains(&d)
}

#[inline]
fn write_delta(w: &mut BitWriter, base: &QEntity, e: &QEntity) {
    let moved = base.x != e.x || base.y != e.y;
    w.bit(moved);
    if moved {
        let (dx, dy) = (e.x as i64 - base.x as i64, e.y as i64 - base.y as i64);
        let is_small = small(dx) && small(dy);
        w.bit(is_small);
        if is_small {
            w.write(dx as u64, SMALL_DELTA_BITS);
            w.write(dy as u64, SMALL_DELTA_BITS);
        } else {
            w.write(e.x as u64, POS_BITS);
            w.write(e.y as u64, POS_BITS);
        }
    }
    w.bit(base.heading != e.heading);
    if base.heading != e.heading {
        w.write(e.heading as u64, 8);
    }
    w.bit(base.speed != e.speed);
    if base.speed != e.speed {
        w.write(e.speed as u64, 8);
    }
}

#[inline]
fn delta_bits(base: &QEntity, e: &QEntity) -> u32 {
    let mut bits = 3;
    if base.x != e.x || base.y != e.y {
        let (dx, dy) = (e.x as i64 - base.x as i64, e.y as i64 - base.y as i64);
        bits += 1 + if small(dx) && small(dy) {
            2 * SMALL_DELTA_BITS
        } else {
            2 * POS_BITS
        };
    }
    if base.heading != e.heading {
        bits += 8;
    }
    if base.speed != e.speed {
        bits += 8;
    }
    bits
}

/// Whether `f` is among the fields a client holding `base` lacks: every present one for a new
/// entity, those stamped after the baseline's `rev` for a delta.
fn field_due(f: &FieldValue, base: Option<&QEntity>) -> bool {
    match base {
        None => f.value.is_some(),
        Some(b) => stamp_after(f.stamp, b.rev),
    }
}

fn field_bits(f: &FieldValue) -> u32 {
    golomb_bits(f.kind.0 as u64)
        + match &f.value {
            None => golomb_bits(0),
            Some(v) => golomb_bits(v.len() as u64 + 1) + 8 * v.len() as u32,
        }
}

fn write_field(w: &mut BitWriter, f: &FieldValue) {
    w.golomb(f.kind.0 as u64);
    match &f.value {
        None => w.golomb(0),
        Some(v) => {
            w.golomb(v.len() as u64 + 1);
            for &b in v.iter() {
                w.write(b as u64, 8);
            }
        }
    }
}

/// No replicated fields: for encoders of worlds without a game, and tests.
pub fn no_fields(_: usize) -> &'static [FieldValue] {
    &[]
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

// ---------------------------------------------------------------------------------------------
// Views

/// One observer's view at one tick: `(slot, state)`, sorted by slot.
pub type View = Vec<(u16, QEntity)>;

/// Views of the last [`HISTORY`] ticks, by tick; reuses its allocations.
pub type ViewHistory = History<(u16, QEntity)>;

/// One client view's fields: `(slot, fields)` for the slots whose entity has any, by slot.
pub type FieldView = Vec<(u16, Arc<EntityFields>)>;

/// Per-tick lists of the last [`HISTORY`] ticks, by tick; reuses its allocations.
#[derive(Debug)]
pub struct History<E> {
    ring: Vec<(u32, Vec<E>)>,
}

impl<E> Default for History<E> {
    fn default() -> Self {
        Self {
            ring: (0..HISTORY).map(|_| (0, Vec::new())).collect(),
        }
    }
}

impl<E> History<E> {
    pub fn get(&self, tick: u32) -> Option<&Vec<E>> {
        let (t, v) = &self.ring[tick as usize % HISTORY];
        (tick != 0 && *t == tick).then_some(v)
    }

    /// The entry to overwrite with the view of `tick`, cleared.
    fn slot_for(&mut self, tick: u32) -> &mut Vec<E> {
        let e = &mut self.ring[tick as usize % HISTORY];
        e.0 = tick;
        e.1.clear();
        &mut e.1
    }

    /// Takes the buffer for `tick` out (to build it while reading another entry).
    fn take(&mut self, tick: u32) -> Vec<E> {
        let mut v = std::mem::take(self.slot_for(tick));
        v.clear();
        v
    }

    fn put(&mut self, tick: u32, view: Vec<E>) {
        self.ring[tick as usize % HISTORY] = (tick, view);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder

/// Hashes entity ids by one multiplication: ids are not attacker-chosen on the server, and
/// SipHash was the encoder's largest single cost in the zone benchmark.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// What one encoded snapshot contained, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct EncodeStats {
    /// Entities visible to the observer this tick.
    pub visible: usize,
    /// Of those, how many changed since the baseline (new, moved, turned…).
    pub changed: usize,
    /// Updates written (≤ `changed`; fewer when the budget ran out).
    pub written: usize,
    pub removed: usize,
    /// Bytes of the snapshot body.
    pub body_bytes: usize,
    /// Whether a baseline was used (false: full update).
    pub delta: bool,
    /// The tick of that baseline (0: none).
    pub baseline: u32,
}

/// One entity an observer sees this tick, as the encoder takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Visible {
    pub entity: QEntity,
    /// How fast its accumulated priority grows while it is left out (near and fast entities
    /// gain more).
    pub gain: f32,
    /// Whether it is due an update this tick. One that is not (level of detail: a far entity
    /// refreshes every few ticks) is encoded with the position, heading and speed it had at
    /// its last due tick (its replicated fields stay current), so it costs nothing once the
    /// client has acknowledged that state; an entity new to the view is always current.
    pub due: bool,
}

impl Visible {
    /// An entity due an update this tick.
    #[must_use]
    pub fn new(entity: QEntity, gain: f32) -> Self {
        Self {
            entity,
            gain,
            due: true,
        }
    }
}

struct Candidate {
    slot: u16,
    entity: QEntity,
    base: Option<QEntity>,
    bits: u32,
    /// Its index in the encode call's `visible`, where its fields are found.
    src: u32,
    /// How many of its fields go with its update (0: none).
    fields: u32,
}

/// One observer's snapshot encoder: slot assignment, the history of what the client holds,
/// priority accumulators.
#[derive(Default)]
pub struct ObserverEncoder {
    history: ViewHistory,
    acked: u32,
    /// Acks below this are ignored: they name ticks another encoder sent (a handoff).
    min_ack: u32,
    slot_of: IdMap<u16>,
    /// Tick each slot's entity was last seen visible (0: free).
    slot_seen: Vec<u32>,
    free: Vec<u16>,
    priority: Vec<f32>,
    /// Per slot: the entity's state at its last due tick (level of detail).
    due_state: Vec<Option<QEntity>>,
    /// `(slot, index in visible)` of the entities visible now, by slot.
    current: Vec<(u16, u32)>,
    by_slot: Vec<Option<u32>>,
    candidates: Vec<Candidate>,
    removed: Vec<u16>,
    bits: BitWriter,
}

impl ObserverEncoder {
    /// Records the client's acknowledgement of a snapshot tick (newest wins).
    pub fn ack(&mut self, tick: u32) {
        if tick >= self.min_ack {
            self.acked = self.acked.max(tick);
        }
    }

    /// Takes over a client from another encoder (another zone, after a handoff): the client's
    /// acks of ticks before `tick` refer to views this encoder never produced, so they must
    /// never select a baseline here.
    pub fn ignore_acks_before(&mut self, tick: u32) {
        self.min_ack = tick;
    }

    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// Whether an entity was visible to this observer at the last encode (for hysteresis).
    #[inline]
    pub fn is_visible(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    #[inline]
    fn slot(&mut self, id: u64, tick: u32) -> u16 {
        let slot = match self.slot_of.get(&id) {
            Some(&s) => s,
            None => {
                let s = self.free.pop().unwrap_or_else(|| {
                    self.slot_seen.push(0);
                    self.priority.push(0.0);
                    (self.slot_seen.len() - 1) as u16
                });
                self.slot_of.insert(id, s);
                s
            }
        };
        self.slot_seen[slot as usize] = tick;
        slot
    }

    /// Encodes the snapshot of `tick` into `out` (the body only; see [`Self::snapshot`]).
    ///
    /// `visible` is every entity the observer sees now, with its priority gain and whether it
    /// is due an update; `fields(i)` gives the replicated fields of `visible[i]` (asked only of entities whose [`QEntity::rev`] is not 0; pass
    /// [`no_fields`] when there are none). At most `budget_bytes` of body are written;
    /// removals always fit first.
    pub fn encode<'f>(
        &mut self,
        tick: u32,
        visible: &[Visible],
        fields: impl Fn(usize) -> &'f [FieldValue],
        budget_bytes: usize,
        out: &mut Vec<u8>,
    ) -> EncodeStats {
        // 1. Slots: keep the slots of entities still visible, free the others. Entities are
        //    laid out by slot in a dense table, which orders them without sorting.
        self.by_slot.clear();
        for (i, v) in visible.iter().enumerate() {
            let slot = self.slot(v.entity.id, tick) as usize;
            if self.by_slot.len() <= slot {
                self.by_slot.resize(slot + 1, None);
            }
            self.by_slot[slot] = Some(i as u32);
        }
        self.current.clear();
        self.current.extend(
            self.by_slot
                .iter()
                .enumerate()
                .filter_map(|(s, v)| v.map(|i| (s as u16, i))),
        );
        if self.slot_of.len() > self.current.len() {
            let (seen, free) = (&self.slot_seen, &mut self.free);
            let due_state = &mut self.due_state;
            self.slot_of.retain(|_, s| {
                let keep = seen[*s as usize] == tick;
                if !keep {
                    free.push(*s);
                    // An entity coming back into view is sent as it is now.
                    if let Some(d) = due_state.get_mut(*s as usize) {
                        *d = None;
                    }
                }
                keep
            });
        }

        // 2. Diff against the acknowledged view (or nothing: a full update).
        // The baseline must be younger than the history ring, or its entry is the one this
        // tick's view is about to be written into.
        let usable = self.acked != 0 && self.acked < tick && tick - self.acked < HISTORY as u32;
        let baseline_tick = if usable && self.history.get(self.acked).is_some() {
            self.acked
        } else {
            0
        };
        let mut view = self.history.take(tick);
        let empty = Vec::new();
        let base = if baseline_tick != 0 {
            self.history.get(baseline_tick).unwrap_or(&empty)
        } else {
            &empty
        };
        self.candidates.clear();
        self.removed.clear();
        let mut bi = 0;
        // An entity's due fields and their bits (the per-entity header is counted in step 3).
        let due = |e: &QEntity, base: Option<&QEntity>, src: u32| -> (u32, u32) {
            let changed = match base {
                None => e.rev != 0,
                Some(b) => b.rev != e.rev,
            };
            if !changed {
                return (0, 0);
            }
            fields(src as usize)
                .iter()
                .filter(|f| field_due(f, base))
                .take(MAX_FIELDS)
                .fold((0, 0), |(n, bits), f| (n + 1, bits + field_bits(f)))
        };
        for &(slot, src) in &self.current {
            let Visible {
                entity: current,
                gain,
                due: is_due,
            } = visible[src as usize];
            // Level of detail: a not-due entity keeps its last due movement state. (Leaving
            // it out instead would show the client the baseline's older state: the delta is
            // against the acknowledged view, not the last one sent.)
            let s = slot as usize;
            if self.due_state.len() <= s {
                self.due_state.resize(s + 1, None);
            }
            let e = match self.due_state[s] {
                Some(held) if !is_due && held.id == current.id => QEntity {
                    rev: current.rev,
                    ..held
                },
                _ => {
                    self.due_state[s] = Some(current);
                    current
                }
            };
            while bi < base.len() && base[bi].0 < slot {
                self.removed.push(base[bi].0);
                bi += 1;
            }
            let b = (bi < base.len() && base[bi].0 == slot).then(|| {
                bi += 1;
                base[bi - 1].1
            });
            match b {
                Some(b) if b == e => {}
                Some(b) if b.id == e.id => {
                    self.priority[slot as usize] += gain;
                    let (n, field_bits) = due(&e, Some(&b), src);
                    self.candidates.push(Candidate {
                        slot,
                        entity: e,
                        base: Some(b),
                        bits: delta_bits(&b, &e) + field_bits,
                        src,
                        fields: n,
                    });
                }
                other => {
                    if other.is_some() {
                        // The slot now holds another entity: the old one goes in any case.
                        self.removed.push(slot);
                    }
                    self.priority[slot as usize] += gain;
                    let (n, field_bits) = due(&e, None, src);
                    self.candidates.push(Candidate {
                        slot,
                        entity: e,
                        base: None,
                        bits: new_bits(&e) + field_bits,
                        src,
                        fields: n,
                    });
                }
            }
        }
        self.removed.extend(base[bi..].iter().map(|(s, _)| *s));
        debug_assert!(self.removed.is_sorted());

        // 3. Choose updates by accumulated priority within the budget.
        let max_slot = self.slot_seen.len() as u64;
        let gap_bits = golomb_bits(max_slot) + 1;
        // An entity with fields also pays its entry's header in the fields section.
        for c in &mut self.candidates {
            if c.fields > 0 {
                c.bits += gap_bits + golomb_bits(c.fields as u64);
            }
        }
        let with_fields = self.candidates.iter().filter(|c| c.fields > 0).count();
        let mut used = golomb_bits(self.removed.len() as u64)
            + golomb_bits(self.candidates.len() as u64)
            + golomb_bits(with_fields as u64);
        let mut prev: i64 = -1;
        for &s in &self.removed {
            used += golomb_bits((s as i64 - prev - 1) as u64);
            prev = s as i64;
        }
        let budget_bits = (budget_bytes * 8) as u32;
        let changed = self.candidates.len();
        let all: u32 = self.candidates.iter().map(|c| c.bits + gap_bits).sum();
        // Usually everything fits and the candidates, already in slot order, are all written;
        // only an over-full tick pays for ranking by priority.
        if used + all > budget_bits {
            let priority = &self.priority;
            self.candidates.sort_unstable_by(|a, b| {
                priority[b.slot as usize].total_cmp(&priority[a.slot as usize])
            });
            let mut chosen = 0;
            for c in &self.candidates {
                let cost = c.bits + gap_bits;
                if used + cost > budget_bits {
                    break;
                }
                used += cost;
                chosen += 1;
            }
            self.candidates.truncate(chosen);
            self.candidates.sort_unstable_by_key(|c| c.slot);
        }

        // 4. Write: removals, then updates in slot order, then their fields.
        let w = &mut self.bits;
        w.clear();
        w.golomb(self.removed.len() as u64);
        let mut prev: i64 = -1;
        for &s in &self.removed {
            w.golomb((s as i64 - prev - 1) as u64);
            prev = s as i64;
        }
        w.golomb(self.candidates.len() as u64);
        let mut prev: i64 = -1;
        for c in &self.candidates {
            w.golomb((c.slot as i64 - prev - 1) as u64);
            prev = c.slot as i64;
            match &c.base {
                Some(b) => {
                    w.bit(false);
                    write_delta(w, b, &c.entity);
                }
                None => {
                    w.bit(true);
                    write_new(w, &c.entity);
                }
            }
            self.priority[c.slot as usize] = 0.0;
        }
        w.golomb(self.candidates.iter().filter(|c| c.fields > 0).count() as u64);
        let mut prev: i64 = -1;
        for c in self.candidates.iter().filter(|c| c.fields > 0) {
            w.golomb((c.slot as i64 - prev - 1) as u64);
            prev = c.slot as i64;
            w.golomb(c.fields as u64);
            let base = c.base.as_ref();
            for f in fields(c.src as usize)
                .iter()
                .filter(|f| field_due(f, base))
                .take(MAX_FIELDS)
            {
                write_field(w, f);
            }
        }
        let body = w.finish();
        out.extend_from_slice(body);

        // 5. Record the view exactly as the client will rebuild it.
        let (mut bi, mut ci, mut ri) = (0, 0, 0);
        let removed = &self.removed;
        let chosen_updates = &self.candidates;
        loop {
            let bs = base.get(bi).map(|b| b.0);
            let cs = chosen_updates.get(ci).map(|c| c.slot);
            let slot = match (bs, cs) {
                (None, None) => break,
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
            };
            while ri < removed.len() && removed[ri] < slot {
                ri += 1;
            }
            let is_removed = ri < removed.len() && removed[ri] == slot;
            if cs == Some(slot) {
                view.push((slot, chosen_updates[ci].entity));
                ci += 1;
                if bs == Some(slot) {
                    bi += 1;
                }
            } else {
                if !is_removed {
                    view.push(base[bi]);
                }
                bi += 1;
            }
        }
        let stats = EncodeStats {
            visible: self.current.len(),
            changed,
            written: chosen_updates.len(),
            removed: removed.len(),
            body_bytes: body.len(),
            delta: baseline_tick != 0,
            baseline: baseline_tick,
        };
        self.history.put(tick, view);
        stats
    }

    /// Encodes a whole [`Snapshot`] message for `tick` (arguments as [`Self::encode`]).
    pub fn snapshot<'f>(
        &mut self,
        tick: u32,
        last_input_seq: u32,
        visible: &[Visible],
        fields: impl Fn(usize) -> &'f [FieldValue],
        budget_bytes: usize,
    ) -> (Snapshot, EncodeStats) {
        let mut data = Vec::with_capacity(64);
        let stats = self.encode(tick, visible, fields, budget_bytes, &mut data);
        (
            Snapshot {
                tick,
                baseline: stats.baseline,
                last_input_seq,
                data,
            },
            stats,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder

/// The client side: rebuilds the observer's view from snapshots, whatever their order and
/// losses, and says which tick to acknowledge.
#[derive(Default)]
pub struct SnapshotDecoder {
    history: ViewHistory,
    /// The replicated fields of each held view.
    fields: History<(u16, Arc<EntityFields>)>,
    latest: u32,
}

impl SnapshotDecoder {
    /// The newest tick decoded: send it as `Input::ack_tick`.
    pub fn ack_tick(&self) -> u32 {
        self.latest
    }

    /// The newest view (slot order).
    pub fn view(&self) -> &[(u16, QEntity)] {
        self.history.get(self.latest).map_or(&[], |v| v.as_slice())
    }

    /// The view of a given tick, while it is held.
    pub fn view_at(&self, tick: u32) -> Option<&View> {
        self.history.get(tick)
    }

    /// The replicated fields of the newest view's entities that have any, by slot.
    pub fn view_fields(&self) -> &[(u16, Arc<EntityFields>)] {
        self.fields.get(self.latest).map_or(&[], |v| v.as_slice())
    }

    /// The replicated fields of the entity in `slot` of the newest view.
    pub fn fields_of(&self, slot: u16) -> Option<&EntityFields> {
        let v = self.view_fields();
        v.binary_search_by_key(&slot, |(s, _)| *s)
            .ok()
            .map(|i| &*v[i].1)
    }

    /// Applies a snapshot. Returns true if it is now the newest view; an older snapshot (it
    /// arrived late) is still decoded and kept as a possible baseline. A snapshot whose
    /// baseline is not held is refused.
    pub fn apply(&mut self, s: &Snapshot) -> Result<bool, SnapshotError> {
        // Already held, or so old that storing it would evict a newer view.
        if s.tick == 0
            || self.history.get(s.tick).is_some()
            || s.tick as u64 + HISTORY as u64 <= self.latest as u64
        {
            return Ok(false);
        }
        let empty = Vec::new();
        let base = if s.baseline == 0 {
            &empty
        } else {
            self.history
                .get(s.baseline)
                .ok_or(SnapshotError::MissingBaseline(s.baseline))?
        };
        let mut r = BitReader::new(&s.data);
        let n_removed = r.golomb()?;
        let mut removed = Vec::with_capacity(n_removed.min(1024) as usize);
        let mut prev: i64 = -1;
        for _ in 0..n_removed {
            let slot = prev + 1 + r.golomb()? as i64;
            if slot > u16::MAX as i64 {
                return Err(SnapshotError::BadSlot(slot as u64));
            }
            removed.push(slot as u16);
            prev = slot;
        }
        let n_updates = r.golomb()?;
        let mut updates: Vec<(u16, QEntity)> = Vec::with_capacity(n_updates.min(1024) as usize);
        // Slots given a new entity by a full update: they inherit no fields from the baseline.
        let mut full_slots: Vec<u16> = Vec::new();
        let mut prev: i64 = -1;
        // Updates come in increasing slot order, as do the baseline and the removals: a delta
        // finds its base by walking forward, not by searching (this was the bots' hottest loop).
        let (mut bc, mut rc) = (0, 0);
        for _ in 0..n_updates {
            let slot = prev + 1 + r.golomb()? as i64;
            if slot > u16::MAX as i64 {
                return Err(SnapshotError::BadSlot(slot as u64));
            }
            let slot = slot as u16;
            prev = slot as i64;
            let full = r.bit()?;
            if full {
                full_slots.push(slot);
            }
            let e = if full {
                let n = r.read(ID_LEN_BITS)? as u32;
                if n > 64 {
                    return Err(SnapshotError::Truncated);
                }
                let id = if n > 32 {
                    (r.read(n - 32)? << 32) | r.read(32)?
                } else {
                    r.read(n)?
                };
                let kind = if !r.bit()? {
                    EntityKind::Player
                } else if EntityId(id).is_item() {
                    EntityKind::Item
                } else {
                    EntityKind::Npc
                };
                let x = r.read(POS_BITS)? as u32;
                let y = r.read(POS_BITS)? as u32;
                let heading = r.read(8)? as u8;
                let speed = r.read(8)? as u8;
                QEntity {
                    id,
                    kind,
                    x,
                    y,
                    heading,
                    speed,
                    rev: 0,
                }
            } else {
                while bc < base.len() && base[bc].0 < slot {
                    bc += 1;
                }
                while rc < removed.len() && removed[rc] < slot {
                    rc += 1;
                }
                let b = (bc < base.len() && base[bc].0 == slot)
                    .then(|| base[bc].1)
                    .filter(|_| removed.get(rc) != Some(&slot))
                    .ok_or(SnapshotError::DeltaWithoutBase(slot))?;
                let mut e = b;
                if r.bit()? {
                    if r.bit()? {
                        let dx = sign_extend(r.read(SMALL_DELTA_BITS)?, SMALL_DELTA_BITS);
                        let dy = sign_extend(r.read(SMALL_DELTA_BITS)?, SMALL_DELTA_BITS);
                        e.x = (e.x as i64 + dx).clamp(0, (1 << POS_BITS) - 1) as u32;
                        e.y = (e.y as i64 + dy).clamp(0, (1 << POS_BITS) - 1) as u32;
                    } else {
                        e.x = r.read(POS_BITS)? as u32;
                        e.y = r.read(POS_BITS)? as u32;
                    }
                }
                if r.bit()? {
                    e.heading = r.read(8)? as u8;
                }
                if r.bit()? {
                    e.speed = r.read(8)? as u8;
                }
                e
            };
            updates.push((slot, e));
        }
        let field_updates = read_fields(&mut r, &updates)?;
        // Merge: baseline minus removals, with updates applied (all sorted by slot).
        let mut view = Vec::with_capacity(base.len() + updates.len());
        let (mut bi, mut ui, mut ri) = (0, 0, 0);
        while bi < base.len() || ui < updates.len() {
            let bs = base.get(bi).map(|b| b.0);
            let us = updates.get(ui).map(|u| u.0);
            match (bs, us) {
                (Some(b), Some(u)) if u <= b => {
                    view.push(updates[ui]);
                    ui += 1;
                    if u == b {
                        bi += 1;
                    }
                }
                (Some(b), _) => {
                    while ri < removed.len() && removed[ri] < b {
                        ri += 1;
                    }
                    if removed.get(ri) != Some(&b) {
                        view.push(base[bi]);
                    }
                    bi += 1;
                }
                (None, Some(_)) => {
                    view.push(updates[ui]);
                    ui += 1;
                }
                (None, None) => break,
            }
        }
        let base_fields: &[(u16, Arc<EntityFields>)] = if s.baseline == 0 {
            &[]
        } else {
            self.fields.get(s.baseline).map_or(&[], |v| v.as_slice())
        };
        let mut fields = Vec::new();
        if !(base_fields.is_empty() && field_updates.is_empty()) {
            let mut fu = 0;
            for &(slot, _) in &view {
                let changes = (field_updates.get(fu).map(|u| u.0) == Some(slot)).then(|| {
                    fu += 1;
                    &field_updates[fu - 1].1
                });
                let inherited = if full_slots.binary_search(&slot).is_ok() {
                    None
                } else {
                    base_fields
                        .binary_search_by_key(&slot, |(s, _)| *s)
                        .ok()
                        .map(|i| &base_fields[i].1)
                };
                match changes {
                    None => {
                        if let Some(f) = inherited {
                            fields.push((slot, Arc::clone(f)));
                        }
                    }
                    Some(changes) => {
                        let mut f = inherited.map(|f| (**f).clone()).unwrap_or_default();
                        for (kind, value) in changes {
                            f.set(*kind, value.clone());
                        }
                        if !f.is_empty() {
                            fields.push((slot, Arc::new(f)));
                        }
                    }
                }
            }
        }
        self.fields.put(s.tick, fields);
        self.history.put(s.tick, view);
        if s.tick > self.latest {
            self.latest = s.tick;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Changes to one entity's fields: `(kind, value)`, `None` for a removed component.
type FieldChanges = Vec<(ComponentKind, Option<Box<[u8]>>)>;

/// Reads the fields section: for updated slots (`updates`, by slot), their changed fields.
fn read_fields(
    r: &mut BitReader<'_>,
    updates: &[(u16, QEntity)],
) -> Result<Vec<(u16, FieldChanges)>, SnapshotError> {
    let n = r.golomb()?;
    if n > updates.len() as u64 {
        return Err(SnapshotError::BadField(n));
    }
    let mut out = Vec::with_capacity(n as usize);
    let (mut prev, mut ui): (i64, usize) = (-1, 0);
    for _ in 0..n {
        let slot = prev + 1 + r.golomb()?.min(u32::MAX as u64) as i64;
        while ui < updates.len() && (updates[ui].0 as i64) < slot {
            ui += 1;
        }
        if updates.get(ui).map(|u| u.0 as i64) != Some(slot) {
            return Err(SnapshotError::FieldsWithoutUpdate(slot as u64));
        }
        prev = slot;
        let count = r.golomb()?;
        if count > MAX_FIELDS as u64 {
            return Err(SnapshotError::BadField(count));
        }
        let mut changes = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let kind = r.golomb()?;
            let kind = u16::try_from(kind).map_err(|_| SnapshotError::BadField(kind))?;
            let len = r.golomb()?;
            let value = match len {
                0 => None,
                n if n - 1 > MAX_FIELD_BYTES as u64 => return Err(SnapshotError::BadField(n - 1)),
                n => Some(
                    (0..n - 1)
                        .map(|_| r.read(8).map(|b| b as u8))
                        .collect::<Result<Box<[u8]>, _>>()?,
                ),
            };
            changes.push((ComponentKind(kind), value));
        }
        out.push((slot as u16, changes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn bits_round_trip() {
        let mut w = BitWriter::default();
        let values: Vec<u64> = vec![0, 1, 2, 3, 6, 7, 100, 65535, 1 << 31, u32::MAX as u64];
        for &v in &values {
            w.golomb(v);
            w.write(v & 0x1f, 5);
            w.bit(v % 2 == 0);
        }
        for &v in &values {
            assert_eq!(golomb_bits(v) as usize, {
                let mut t = BitWriter::default();
                t.golomb(v);
                t.bits()
            });
        }
        let bytes = w.finish().to_vec();
        let mut r = BitReader::new(&bytes);
        for &v in &values {
            assert_eq!(r.golomb().unwrap(), v);
            assert_eq!(r.read(5).unwrap(), v & 0x1f);
            assert_eq!(r.bit().unwrap(), v % 2 == 0);
        }
    }

    #[test]
    fn quantize_round_trip_within_a_quantum() {
        let q = Quantizer::new(WorldBounds {
            min_x: -100.0,
            min_y: 0.0,
            max_x: 100.0,
            max_y: 100.0,
        });
        let e = q.quantize(7, EntityKind::Npc, 12.34, 56.78, -1.0, 3.12);
        let d = q.dequantize(&e);
        assert!((d.x - 12.34).abs() <= 0.5 / POS_SCALE && (d.y - 56.78).abs() <= 0.5 / POS_SCALE);
        assert!((d.speed - 3.1).abs() < 1e-5);
        let back = q.quantize(7, EntityKind::Npc, d.x, d.y, d.heading, d.speed);
        assert_eq!(back, e, "dequantised states quantise to themselves");
    }

    /// A little world of `n` entities wandering; each tick every entity moves or turns with
    /// some probability, and some go in and out of view. Every other entity has replicated
    /// fields (a "health" and a "level"), changed, removed and added now and then.
    struct World {
        rng: rand::rngs::StdRng,
        entities: Vec<QEntity>,
        present: Vec<bool>,
        fields: Vec<Vec<FieldValue>>,
        clock: u32,
    }

    impl World {
        fn new(n: usize, seed: u64) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let entities = (0..n)
                .map(|i| QEntity {
                    // Every fifth an item on the ground: its kind rides on its id.
                    id: if i % 5 == 1 {
                        EntityId::ITEM_BASE.0 + i as u64
                    } else {
                        1000 + i as u64 * 37
                    },
                    kind: if i % 5 == 1 {
                        EntityKind::Item
                    } else if i % 3 == 0 {
                        EntityKind::Npc
                    } else {
                        EntityKind::Player
                    },
                    x: rng.random_range(0..60_000),
                    y: rng.random_range(0..60_000),
                    heading: rng.random(),
                    speed: rng.random_range(0..60),
                    rev: 0,
                })
                .collect();
            Self {
                rng,
                entities,
                present: vec![true; n],
                fields: vec![Vec::new(); n],
                clock: 0,
            }
        }

        /// Sets (or with `None` removes) field `kind` of entity `i`, stamping it.
        fn set_field(&mut self, i: usize, kind: u16, value: Option<Vec<u8>>) {
            self.clock += 1;
            let f = FieldValue {
                kind: ComponentKind(kind),
                stamp: self.clock,
                value: value.map(Vec::into_boxed_slice),
            };
            let fields = &mut self.fields[i];
            match fields.iter_mut().find(|x| x.kind == f.kind) {
                Some(x) => *x = f,
                None => {
                    fields.push(f);
                    fields.sort_by_key(|x| x.kind);
                }
            }
            self.entities[i].rev = self.clock;
        }

        /// The present fields of the visible entities, in `visible()` order.
        fn visible_fields(&self) -> Vec<Vec<FieldValue>> {
            self.fields
                .iter()
                .zip(&self.present)
                .filter(|(_, p)| **p)
                .map(|(f, _)| f.clone())
                .collect()
        }

        /// What a client should hold of entity `id`'s fields.
        fn truth_fields(&self, id: u64) -> EntityFields {
            let i = self.entities.iter().position(|e| e.id == id).unwrap();
            let mut f = EntityFields::default();
            for v in &self.fields[i] {
                f.set(v.kind, v.value.clone());
            }
            f
        }

        fn step(&mut self) {
            for (e, p) in self.entities.iter_mut().zip(self.present.iter_mut()) {
                let r: f32 = self.rng.random();
                if r < 0.6 {
                    e.x = (e.x as i64 + self.rng.random_range(-20..=20)).clamp(0, 1 << 19) as u32;
                    e.y = (e.y as i64 + self.rng.random_range(-20..=20)).clamp(0, 1 << 19) as u32;
                } else if r < 0.62 {
                    e.x = self.rng.random_range(0..60_000); // teleport: a large delta
                }
                if self.rng.random::<f32>() < 0.2 {
                    e.heading = self.rng.random();
                }
                if self.rng.random::<f32>() < 0.1 {
                    e.speed = self.rng.random_range(0..60);
                }
                if self.rng.random::<f32>() < 0.02 {
                    *p = !*p;
                }
            }
            for i in (0..self.entities.len()).step_by(2) {
                let r: f32 = self.rng.random();
                if r < 0.05 {
                    let hp: u8 = self.rng.random();
                    self.set_field(i, 1, Some(vec![hp]));
                } else if r < 0.06 {
                    let n = self.rng.random_range(0..=MAX_FIELD_BYTES);
                    let level = (0..n).map(|_| self.rng.random()).collect();
                    self.set_field(i, 7, Some(level));
                } else if r < 0.065 {
                    self.set_field(i, 7, None);
                }
            }
        }

        fn visible(&self) -> Vec<Visible> {
            self.entities
                .iter()
                .zip(&self.present)
                .filter(|(_, p)| **p)
                .map(|(e, _)| Visible::new(*e, 1.0))
                .collect()
        }
    }

    /// States as a client holds them (no `rev`), by id.
    fn sorted_states(v: &[(u16, QEntity)]) -> Vec<QEntity> {
        let mut s: Vec<QEntity> = v.iter().map(|(_, e)| QEntity { rev: 0, ..*e }).collect();
        s.sort_unstable_by_key(|e| e.id);
        s
    }

    /// Runs the encoder and decoder over a lossy, reordering link; returns (snapshots
    /// delivered, ticks at which the decoder's newest view matched the truth).
    fn lossy_run(
        seed: u64,
        budget: usize,
        ticks: u32,
        mut check: impl FnMut(u32, &SnapshotDecoder, &ObserverEncoder, &World),
    ) {
        let mut world = World::new(150, seed);
        let mut enc = ObserverEncoder::default();
        let mut dec = SnapshotDecoder::default();
        let mut net = rand::rngs::StdRng::seed_from_u64(seed ^ 0xdead_beef);
        let mut held_back: Option<Snapshot> = None;
        for tick in 1..=ticks {
            world.step();
            let fields = world.visible_fields();
            let (snap, _) = enc.snapshot(tick, 0, &world.visible(), |i| &fields[i], budget);
            // 20% lost; 20% held back one tick (arrives after the next one: reordering).
            let mut deliver = Vec::new();
            let roll: f32 = net.random();
            if roll < 0.2 {
            } else if roll < 0.4 {
                deliver.extend(held_back.take());
                held_back = Some(snap);
            } else {
                deliver.push(snap);
                deliver.extend(held_back.take());
            }
            for s in deliver {
                dec.apply(&s).expect("every delivered snapshot decodes");
            }
            // Acks are datagrams too: 20% lost.
            if net.random::<f32>() >= 0.2 {
                enc.ack(dec.ack_tick());
            }
            check(tick, &dec, &enc, &world);
        }
    }

    #[test]
    fn decoder_rebuilds_the_exact_quantised_world_under_loss_and_reordering() {
        for seed in 0..5 {
            let mut exact = 0;
            lossy_run(seed, 1 << 20, 1000, |tick, dec, _, world| {
                if dec.ack_tick() == tick {
                    let truth: Vec<(u16, QEntity)> =
                        world.visible().into_iter().map(|v| (0, v.entity)).collect();
                    assert_eq!(
                        sorted_states(dec.view()),
                        sorted_states(&truth),
                        "seed {seed} tick {tick}"
                    );
                    for &(slot, e) in dec.view() {
                        let held = dec.fields_of(slot).cloned().unwrap_or_default();
                        assert_eq!(held, world.truth_fields(e.id), "seed {seed} tick {tick}");
                    }
                    exact += 1;
                }
            });
            assert!(
                exact > 500,
                "seed {seed}: only {exact} ticks delivered on time"
            );
        }
    }

    #[test]
    fn under_a_tight_budget_the_client_view_is_exactly_what_the_server_recorded() {
        lossy_run(42, 120, 1000, |tick, dec, enc, _| {
            if dec.ack_tick() == tick {
                assert_eq!(
                    sorted_states(dec.view()),
                    sorted_states(enc.history.get(tick).unwrap()),
                    "tick {tick}"
                );
            }
        });
    }

    #[test]
    fn starved_entities_are_eventually_refreshed() {
        // 150 entities, a budget of ~30 updates: accumulated priority must rotate through all.
        let mut world = World::new(150, 7);
        let mut enc = ObserverEncoder::default();
        let mut dec = SnapshotDecoder::default();
        let mut last_written: HashMap<u64, u32> = HashMap::new();
        for tick in 1..=400 {
            world.step();
            let before: HashMap<u64, QEntity> =
                dec.view().iter().map(|(_, e)| (e.id, *e)).collect();
            let (snap, _) = enc.snapshot(tick, 0, &world.visible(), no_fields, 200);
            dec.apply(&snap).unwrap();
            enc.ack(dec.ack_tick());
            for (_, e) in dec.view() {
                if before.get(&e.id) != Some(e) {
                    last_written.insert(e.id, tick);
                }
            }
        }
        let stalest = world
            .visible()
            .iter()
            .map(|v| 400 - last_written.get(&v.entity.id).copied().unwrap_or(0))
            .max()
            .unwrap();
        assert!(
            stalest < 40,
            "an entity went {stalest} ticks without an update"
        );
    }

    #[test]
    fn entities_not_due_keep_their_last_due_state_and_new_ones_arrive_anyway() {
        // Level of detail: each tick a random half of the entities is not due. The client's
        // view must stay exactly what the encoder recorded, entities new to the view must
        // arrive whether due or not, and a not-due entity must show the state of its last
        // due tick (never an older one: what the client showed must not go back).
        let mut world = World::new(150, 11);
        let mut enc = ObserverEncoder::default();
        let mut dec = SnapshotDecoder::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut last_due: HashMap<u64, QEntity> = HashMap::new();
        for tick in 1..=300 {
            world.step();
            let mut visible = world.visible();
            for v in &mut visible {
                v.due = rng.random::<bool>();
            }
            let (snap, _) = enc.snapshot(tick, 0, &visible, no_fields, 1 << 20);
            dec.apply(&snap).unwrap();
            // Acks lag two ticks, like a client 50 ms away.
            enc.ack(tick.saturating_sub(2));
            let now: HashMap<u64, QEntity> = dec.view().iter().map(|(_, e)| (e.id, *e)).collect();
            let shown: std::collections::HashSet<u64> =
                visible.iter().map(|v| v.entity.id).collect();
            last_due.retain(|id, _| shown.contains(id));
            for v in &visible {
                let got = now
                    .get(&v.entity.id)
                    .expect("every visible entity is in the view");
                let want = match last_due.get(&v.entity.id) {
                    Some(held) if !v.due => *held,
                    _ => v.entity,
                };
                assert_eq!((got.x, got.y), (want.x, want.y), "tick {tick}");
                last_due.insert(v.entity.id, want);
            }
            assert_eq!(
                sorted_states(dec.view()),
                sorted_states(enc.history.get(tick).unwrap()),
                "tick {tick}"
            );
        }
    }

    #[test]
    fn unchanged_entities_cost_nothing() {
        let world = World::new(100, 3);
        let mut enc = ObserverEncoder::default();
        let mut dec = SnapshotDecoder::default();
        let (first, s1) = enc.snapshot(1, 0, &world.visible(), no_fields, 1 << 20);
        dec.apply(&first).unwrap();
        enc.ack(1);
        let (second, s2) = enc.snapshot(2, 0, &world.visible(), no_fields, 1 << 20);
        assert!(!s1.delta && s2.delta);
        assert_eq!(s2.written, 0);
        assert_eq!(second.data.len(), 1, "three empty counts pad to one byte");
        dec.apply(&second).unwrap();
        assert_eq!(dec.view(), dec.view_at(1).unwrap().as_slice());
    }

    #[test]
    fn a_changed_field_costs_its_bytes_and_unchanged_fields_nothing() {
        // 100 still entities, each with a 1-byte health and a 16-byte name tag.
        let mut world = World::new(100, 4);
        for i in 0..100 {
            world.set_field(i, 1, Some(vec![100]));
            world.set_field(i, 2, Some(vec![b'x'; 16]));
        }
        let mut enc = ObserverEncoder::default();
        let mut dec = SnapshotDecoder::default();
        fn send(
            enc: &mut ObserverEncoder,
            dec: &mut SnapshotDecoder,
            tick: u32,
            world: &World,
        ) -> (usize, usize) {
            let fields = world.visible_fields();
            let (snap, stats) = enc.snapshot(tick, 0, &world.visible(), |i| &fields[i], 1 << 20);
            dec.apply(&snap).unwrap();
            enc.ack(tick);
            (snap.data.len(), stats.written)
        }
        let (full, _) = send(&mut enc, &mut dec, 1, &world);
        assert!(
            full > 100 * 17,
            "a full update carries every field: {full} bytes"
        );
        assert_eq!(
            send(&mut enc, &mut dec, 2, &world),
            (1, 0),
            "nothing changed: nothing sent"
        );
        // One entity's health drops: its update carries the health byte, not the name tag.
        world.set_field(5, 1, Some(vec![42]));
        let (bytes, written) = send(&mut enc, &mut dec, 3, &world);
        assert_eq!(written, 1);
        assert!(bytes <= 5, "one changed health costs a few bytes: {bytes}");
        let slot = dec
            .view()
            .iter()
            .find(|(_, e)| e.id == world.entities[5].id)
            .unwrap()
            .0;
        let held = dec.fields_of(slot).unwrap();
        assert_eq!(held.get::<u8>(ComponentKind(1)).unwrap().unwrap(), 42);
        assert_eq!(held.raw(ComponentKind(2)), Some(&[b'x'; 16][..]));
        // A removed component is removed on the client too.
        world.set_field(5, 2, None);
        send(&mut enc, &mut dec, 4, &world);
        assert_eq!(dec.fields_of(slot).unwrap().raw(ComponentKind(2)), None);
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..2000 {
            let mut dec = SnapshotDecoder::default();
            let len = rng.random_range(0..64);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Mostly-zero bodies reach the fields section with plausible counts.
            let data = if rng.random::<bool>() {
                data.into_iter()
                    .map(|b| b & rng.random::<u8>() & rng.random::<u8>())
                    .collect()
            } else {
                data
            };
            let _ = dec.apply(&Snapshot {
                tick: 1,
                baseline: 0,
                last_input_seq: 0,
                data,
            });
        }
    }
}
