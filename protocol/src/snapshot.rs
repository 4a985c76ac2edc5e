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
//! The bit layout is documented in `PROTOCOL.md` § Snapshots.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::{EntityId, EntityKind, EntityState, Snapshot, WorldBounds};

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

    pub fn write_wide(&mut self, v: u64, bits: u32) {
        if bits > 32 {
            self.write(v >> 32, bits - 32);
            self.write(v & 0xffff_ffff, 32);
        } else {
            self.write(v, bits);
        }
    }

    pub fn bit(&mut self, b: bool) {
        self.write(b as u64, 1);
    }

    /// Order-0 exponential-Golomb: 0 → `1`, 1–2 → `01x`, 3–6 → `001xx`, …
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

fn id_bits(id: u64) -> u32 {
    64 - id.leading_zeros()
}

fn write_new(w: &mut BitWriter, e: &QEntity) {
    let n = id_bits(e.id);
    w.write(n as u64, ID_LEN_BITS);
    w.write_wide(e.id, n);
    w.bit(e.kind == EntityKind::Npc);
    w.write(e.x as u64, POS_BITS);
    w.write(e.y as u64, POS_BITS);
    w.write(e.heading as u64, 8);
    w.write(e.speed as u64, 8);
}

fn new_bits(e: &QEntity) -> u32 {
    ID_LEN_BITS + id_bits(e.id) + 1 + 2 * POS_BITS + 16
}

fn small(d: i64) -> bool {
    let lim = 1i64 << (SMALL_DELTA_BITS - 1);
    (-lim..lim).contains(&d)
}

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

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

// ---------------------------------------------------------------------------------------------
// Views

/// One observer's view at one tick: `(slot, state)`, sorted by slot.
pub type View = Vec<(u16, QEntity)>;

/// Views of the last [`HISTORY`] ticks, by tick; reuses its allocations.
#[derive(Debug)]
pub struct ViewHistory {
    ring: Vec<(u32, View)>,
}

impl Default for ViewHistory {
    fn default() -> Self {
        Self {
            ring: (0..HISTORY).map(|_| (0, Vec::new())).collect(),
        }
    }
}

impl ViewHistory {
    pub fn get(&self, tick: u32) -> Option<&View> {
        let (t, v) = &self.ring[tick as usize % HISTORY];
        (tick != 0 && *t == tick).then_some(v)
    }

    /// The entry to overwrite with the view of `tick`, cleared.
    fn slot_for(&mut self, tick: u32) -> &mut View {
        let e = &mut self.ring[tick as usize % HISTORY];
        e.0 = tick;
        e.1.clear();
        &mut e.1
    }

    /// Takes the buffer for `tick` out (to build it while reading another entry).
    fn take(&mut self, tick: u32) -> View {
        let mut v = std::mem::take(self.slot_for(tick));
        v.clear();
        v
    }

    fn put(&mut self, tick: u32, view: View) {
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

struct Candidate {
    slot: u16,
    entity: QEntity,
    base: Option<QEntity>,
    bits: u32,
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
    current: Vec<(u16, QEntity, f32)>,
    by_slot: Vec<Option<(QEntity, f32)>>,
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
    pub fn is_visible(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

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
    /// `visible` is every entity the observer sees now with its priority gain (how fast its
    /// accumulated priority grows while it is left out). At most `budget_bytes` of body are
    /// written; removals always fit first.
    pub fn encode(
        &mut self,
        tick: u32,
        visible: &[(QEntity, f32)],
        budget_bytes: usize,
        out: &mut Vec<u8>,
    ) -> EncodeStats {
        // 1. Slots: keep the slots of entities still visible, free the others. Entities are
        //    laid out by slot in a dense table, which orders them without sorting.
        self.by_slot.clear();
        for &(e, gain) in visible {
            let slot = self.slot(e.id, tick) as usize;
            if self.by_slot.len() <= slot {
                self.by_slot.resize(slot + 1, None);
            }
            self.by_slot[slot] = Some((e, gain));
        }
        self.current.clear();
        self.current.extend(
            self.by_slot
                .iter()
                .enumerate()
                .filter_map(|(s, v)| v.map(|(e, g)| (s as u16, e, g))),
        );
        if self.slot_of.len() > self.current.len() {
            let (seen, free) = (&self.slot_seen, &mut self.free);
            self.slot_of.retain(|_, s| {
                let keep = seen[*s as usize] == tick;
                if !keep {
                    free.push(*s);
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
        for &(slot, e, gain) in &self.current {
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
                    self.candidates.push(Candidate {
                        slot,
                        entity: e,
                        base: Some(b),
                        bits: delta_bits(&b, &e),
                    });
                }
                other => {
                    if other.is_some() {
                        // The slot now holds another entity: the old one goes in any case.
                        self.removed.push(slot);
                    }
                    self.priority[slot as usize] += gain;
                    self.candidates.push(Candidate {
                        slot,
                        entity: e,
                        base: None,
                        bits: new_bits(&e),
                    });
                }
            }
        }
        self.removed.extend(base[bi..].iter().map(|(s, _)| *s));
        debug_assert!(self.removed.is_sorted());

        // 3. Choose updates by accumulated priority within the budget.
        let max_slot = self.slot_seen.len() as u64;
        let gap_bits = golomb_bits(max_slot) + 1;
        let mut used =
            golomb_bits(self.removed.len() as u64) + golomb_bits(self.candidates.len() as u64);
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

        // 4. Write: removals, then updates in slot order.
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

    /// Encodes a whole [`Snapshot`] message for `tick`.
    pub fn snapshot(
        &mut self,
        tick: u32,
        last_input_seq: u32,
        visible: &[(QEntity, f32)],
        budget_bytes: usize,
    ) -> (Snapshot, EncodeStats) {
        let mut data = Vec::with_capacity(64);
        let stats = self.encode(tick, visible, budget_bytes, &mut data);
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
            let e = if r.bit()? {
                let n = r.read(ID_LEN_BITS)? as u32;
                if n > 64 {
                    return Err(SnapshotError::Truncated);
                }
                let id = if n > 32 {
                    (r.read(n - 32)? << 32) | r.read(32)?
                } else {
                    r.read(n)?
                };
                let kind = if r.bit()? {
                    EntityKind::Npc
                } else {
                    EntityKind::Player
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
        self.history.put(s.tick, view);
        if s.tick > self.latest {
            self.latest = s.tick;
            return Ok(true);
        }
        Ok(false)
    }
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
    /// some probability, and some go in and out of view.
    struct World {
        rng: rand::rngs::StdRng,
        entities: Vec<QEntity>,
        present: Vec<bool>,
    }

    impl World {
        fn new(n: usize, seed: u64) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let entities = (0..n)
                .map(|i| QEntity {
                    id: 1000 + i as u64 * 37,
                    kind: if i % 3 == 0 {
                        EntityKind::Npc
                    } else {
                        EntityKind::Player
                    },
                    x: rng.random_range(0..60_000),
                    y: rng.random_range(0..60_000),
                    heading: rng.random(),
                    speed: rng.random_range(0..60),
                })
                .collect();
            Self {
                rng,
                entities,
                present: vec![true; n],
            }
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
        }

        fn visible(&self) -> Vec<(QEntity, f32)> {
            self.entities
                .iter()
                .zip(&self.present)
                .filter(|(_, p)| **p)
                .map(|(e, _)| (*e, 1.0))
                .collect()
        }
    }

    fn sorted_states(v: &[(u16, QEntity)]) -> Vec<QEntity> {
        let mut s: Vec<QEntity> = v.iter().map(|(_, e)| *e).collect();
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
            let (snap, _) = enc.snapshot(tick, 0, &world.visible(), budget);
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
                    let truth: Vec<QEntity> = {
                        let mut t: Vec<QEntity> =
                            world.visible().into_iter().map(|(e, _)| e).collect();
                        t.sort_unstable_by_key(|e| e.id);
                        t
                    };
                    assert_eq!(sorted_states(dec.view()), truth, "seed {seed} tick {tick}");
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
                    dec.view(),
                    enc.history.get(tick).unwrap().as_slice(),
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
            let (snap, _) = enc.snapshot(tick, 0, &world.visible(), 200);
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
            .map(|(e, _)| 400 - last_written.get(&e.id).copied().unwrap_or(0))
            .max()
            .unwrap();
        assert!(
            stalest < 40,
            "an entity went {stalest} ticks without an update"
        );
    }

    #[test]
    fn unchanged_entities_cost_nothing() {
        let world = World::new(100, 3);
        let mut enc = ObserverEncoder::default();
        let mut dec = SnapshotDecoder::default();
        let (first, s1) = enc.snapshot(1, 0, &world.visible(), 1 << 20);
        dec.apply(&first).unwrap();
        enc.ack(1);
        let (second, s2) = enc.snapshot(2, 0, &world.visible(), 1 << 20);
        assert!(!s1.delta && s2.delta);
        assert_eq!(s2.written, 0);
        assert_eq!(second.data.len(), 1, "two empty counts pad to one byte");
        dec.apply(&second).unwrap();
        assert_eq!(dec.view(), dec.view_at(1).unwrap().as_slice());
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..2000 {
            let mut dec = SnapshotDecoder::default();
            let len = rng.random_range(0..64);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = dec.apply(&Snapshot {
                tick: 1,
                baseline: 0,
                last_input_seq: 0,
                data,
            });
        }
    }
}
