//! Cells assigned to zones by load. No I/O, no clock: the caller decides when to rebalance.
//!
//! **Scheme: ranges of a Hilbert curve.** The world's cells are put in the order of a
//! Hilbert curve over the grid; each active zone owns one contiguous range of that order. A
//! Hilbert range is a compact region (consecutive cells are neighbours, and a range of k cells
//! has a border of about √k cells), so borders stay short and handoffs few, whatever the
//! ranges' lengths. Balancing moves the cut between two neighbouring ranges by a few cells:
//! load flows along the curve from a busy zone to the next, one boundary cell at a time, and
//! every cell that changes hands is a border moving past the characters in it — the zones'
//! existing rule ("a character 5 m inside a cell another zone owns is handed over") moves
//! them, with fencing, and nobody reconnects.
//!
//! Recursive bisection would balance in fewer steps but moves whole regions when the split
//! tree changes; a Hilbert range moves only the cells at its ends, which is what
//! "incremental" needs.
//!
//! **Rules** ([`BalanceConfig`]): nothing moves while the busiest zone carries less than
//! `threshold` × the mean (hysteresis: boundaries do not flap around a balanced state); a cut
//! moves only towards the lighter side and only while that narrows the pair's difference by
//! more than `margin` of their mean; at most `max_step` cells per cut per rebalance (rate
//! limit; the caller rebalances every few seconds). Every range keeps at least one cell.
//! **Pins**: an operator may pin a cell to a zone; a pinned cell is that zone's whatever its
//! range, and its load counts for that zone.
//!
//! Zones joining and leaving: a new zone takes the second half of the longest range; a zone
//! leaving (failed over, drained) leaves its range to its neighbour in curve order. Both move
//! as few cells as possible; balancing then evens the load.

use std::collections::BTreeMap;

use worldmesh_world::handoff::ZoneId;

/// When and how far cuts move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceConfig {
    /// Rebalance only while the busiest zone's load is above this × the mean.
    pub threshold: f32,
    /// A cut moves only when its pair's loads differ by more than this fraction of their mean.
    pub margin: f32,
    /// Cells a cut moves at most per rebalance.
    pub max_step: usize,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            threshold: 1.25,
            margin: 0.20,
            max_step: 4,
        }
    }
}

/// One cell that changed hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Row-major cell index.
    pub cell: u32,
    pub from: ZoneId,
    pub to: ZoneId,
}

/// The assignment of cells to zones (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Row-major cell indices in Hilbert order.
    order: Vec<u32>,
    /// The active zones, in the order of their ranges along the curve.
    zones: Vec<ZoneId>,
    /// `cuts[i]`: where zone `i + 1`'s range begins (positions in `order`); increasing.
    cuts: Vec<usize>,
    pins: BTreeMap<u32, ZoneId>,
}

impl Assignment {
    /// No zones yet, for a grid of `cells_x` × `cells_y`.
    pub fn new(cells_x: u32, cells_y: u32) -> Self {
        Self {
            order: hilbert_order(cells_x, cells_y),
            zones: Vec::new(),
            cuts: Vec::new(),
            pins: BTreeMap::new(),
        }
    }

    /// How many cells the grid has.
    pub fn cells(&self) -> usize {
        self.order.len()
    }

    /// The active zones in curve order, and the cuts between their ranges (for storing).
    pub fn ranges(&self) -> (&[ZoneId], &[usize]) {
        (&self.zones, &self.cuts)
    }

    /// Restores stored ranges; refused (`false`, nothing changed) if they do not fit the grid.
    pub fn restore(&mut self, zones: Vec<ZoneId>, cuts: Vec<usize>) -> bool {
        let fits = (zones.is_empty() && cuts.is_empty())
            || (cuts.len() + 1 == zones.len()
                && cuts.windows(2).all(|w| w[0] < w[1])
                && cuts.first().is_none_or(|&c| c > 0)
                && cuts.last().is_none_or(|&c| c < self.order.len()));
        if fits {
            self.zones = zones;
            self.cuts = cuts;
        }
        fits
    }

    /// The pinned cells.
    pub fn pins(&self) -> &BTreeMap<u32, ZoneId> {
        &self.pins
    }

    /// Pins `cell` to `zone` (`None`: unpins it).
    pub fn pin(&mut self, cell: u32, zone: Option<ZoneId>) {
        match zone {
            Some(z) => self.pins.insert(cell, z),
            None => self.pins.remove(&cell),
        };
    }

    /// A zone registered again under a new id (it restarted, or lost its lease): it keeps
    /// its range and its pins, so nothing moves.
    pub fn rename(&mut self, old: ZoneId, new: ZoneId) {
        for z in self.zones.iter_mut().filter(|z| **z == old) {
            *z = new;
        }
        for z in self.pins.values_mut().filter(|z| **z == old) {
            *z = new;
        }
    }

    /// Brings the ranges in line with the active zones: a zone gone leaves its range to a
    /// neighbour, a new zone takes half of the longest range.
    pub fn set_zones(&mut self, active: &[ZoneId]) {
        let mut i = 0;
        while i < self.zones.len() {
            if active.contains(&self.zones[i]) {
                i += 1;
                continue;
            }
            self.zones.remove(i);
            if !self.cuts.is_empty() {
                // Zone i's range [cut i-1, cut i) goes to its predecessor (or, for the first,
                // to its successor): drop the cut at its start (or end).
                self.cuts
                    .remove(i.saturating_sub(1).min(self.cuts.len() - 1));
            }
        }
        for &z in active {
            if self.zones.contains(&z) {
                continue;
            }
            if self.zones.is_empty() {
                self.zones.push(z);
                continue;
            }
            // Split the longest range in two; the newcomer takes its second half.
            let (longest, (start, end)) = (0..self.zones.len())
                .map(|k| (k, self.span(k)))
                .max_by_key(|&(k, (s, e))| (e - s, std::cmp::Reverse(k)))
                .expect("at least one zone");
            if end - start < 2 {
                // Fewer cells than zones: the newcomer waits for a range.
                continue;
            }
            let mid = start + (end - start) / 2;
            self.cuts.insert(longest, mid);
            self.zones.insert(longest + 1, z);
        }
    }

    /// Positions `[start, end)` of zone `k`'s range.
    fn span(&self, k: usize) -> (usize, usize) {
        let start = if k == 0 { 0 } else { self.cuts[k - 1] };
        let end = self.cuts.get(k).copied().unwrap_or(self.order.len());
        (start, end)
    }

    /// The zone owning row-major `cell` (`None` before any zone is active).
    pub fn owner(&self, cell: u32) -> Option<ZoneId> {
        if let Some(&z) = self.pins.get(&cell)
            && self.zones.contains(&z)
        {
            return Some(z);
        }
        self.owners().get(cell as usize).copied().flatten()
    }

    /// Every cell's owner, row-major.
    pub fn owners(&self) -> Vec<Option<ZoneId>> {
        let mut out = vec![None; self.order.len()];
        for k in 0..self.zones.len() {
            let (s, e) = self.span(k);
            for &cell in &self.order[s..e] {
                out[cell as usize] = Some(self.zones[k]);
            }
        }
        // A pin to a zone that is not active (draining, gone) waits for it.
        for (&cell, &z) in &self.pins {
            if let Some(o) = out.get_mut(cell as usize)
                && self.zones.contains(&z)
            {
                *o = Some(z);
            }
        }
        out
    }

    /// Each active zone's load under this assignment, from per-cell loads (row-major).
    pub fn zone_loads(&self, load: &[f32]) -> BTreeMap<ZoneId, f32> {
        let mut out: BTreeMap<ZoneId, f32> = self.zones.iter().map(|&z| (z, 0.0)).collect();
        for (cell, owner) in self.owners().into_iter().enumerate() {
            if let Some(z) = owner {
                *out.entry(z).or_default() += load.get(cell).copied().unwrap_or(0.0);
            }
        }
        out
    }

    /// max / mean of the zones' loads (1 when balanced or idle).
    pub fn imbalance(&self, load: &[f32]) -> f32 {
        let loads = self.zone_loads(load);
        let n = loads.len().max(1) as f32;
        let total: f32 = loads.values().sum();
        if total <= 0.0 {
            return 1.0;
        }
        loads.values().copied().fold(0.0, f32::max) / (total / n)
    }

    /// One rebalance from per-cell loads (row-major): moves cuts towards even load within
    /// the rules of the module doc; returns the cells that changed hands.
    pub fn rebalance(&mut self, load: &[f32], config: &BalanceConfig) -> Vec<Moved> {
        if self.zones.len() < 2 || self.imbalance(load) <= config.threshold {
            return Vec::new();
        }
        let before = self.owners();
        // The load a position carries for its range (a pinned cell's is its pin's).
        let at = |pos: usize| -> f32 {
            let cell = self.order[pos];
            if self.pins.get(&cell).is_some_and(|z| self.zones.contains(z)) {
                0.0
            } else {
                load.get(cell as usize).copied().unwrap_or(0.0)
            }
        };
        let mut range_load: Vec<f32> = (0..self.zones.len())
            .map(|k| {
                let (s, e) = self.span(k);
                (s..e).map(at).sum()
            })
            .collect();
        for (&cell, z) in &self.pins {
            if let Some(k) = self.zones.iter().position(|x| x == z) {
                range_load[k] += load.get(cell as usize).copied().unwrap_or(0.0);
            }
        }
        for c in 0..self.cuts.len() {
            let (left, right) = (c, c + 1);
            let (ll, rl) = (range_load[left], range_load[right]);
            // Hysteresis: a pair this close is left alone.
            if (ll - rl).abs() <= config.margin * (ll + rl) / 2.0 {
                continue;
            }
            for _ in 0..config.max_step {
                let diff = range_load[left] - range_load[right];
                // The cell at the cut on the heavier side, and whether moving it narrows the
                // difference (a cell carrying more than the difference would overshoot).
                let (pos, from_left) = if diff > 0.0 {
                    (self.cuts[c] - 1, true)
                } else {
                    (self.cuts[c], false)
                };
                let (start, _) = self.span(left);
                let (_, end) = self.span(right);
                let keeps_a_cell = if from_left {
                    pos > start
                } else {
                    pos + 1 < end
                };
                let moved = at(pos);
                if !keeps_a_cell || moved >= diff.abs() {
                    break;
                }
                if from_left {
                    self.cuts[c] = pos;
                    range_load[left] -= moved;
                    range_load[right] += moved;
                } else {
                    self.cuts[c] = pos + 1;
                    range_load[right] -= moved;
                    range_load[left] += moved;
                }
            }
        }
        self.owners()
            .into_iter()
            .zip(before)
            .enumerate()
            .filter_map(|(cell, (now, was))| match (was, now) {
                (Some(from), Some(to)) if from != to => Some(Moved {
                    cell: cell as u32,
                    from,
                    to,
                }),
                _ => None,
            })
            .collect()
    }
}

/// The cells of a `w` × `h` grid (row-major indices) in the order of a Hilbert curve over
/// the smallest power-of-two square holding it (cells outside the grid skipped).
pub fn hilbert_order(w: u32, h: u32) -> Vec<u32> {
    let side = w.max(h).max(1).next_power_of_two();
    let mut out = Vec::with_capacity((w * h) as usize);
    for d in 0..u64::from(side) * u64::from(side) {
        let (x, y) = hilbert_point(side, d);
        if x < w && y < h {
            out.push(y * w + x);
        }
    }
    out
}

/// The `d`th point of the Hilbert curve filling a `side` × `side` square (`side` a power of
/// two).
fn hilbert_point(side: u32, d: u64) -> (u32, u32) {
    let (mut x, mut y) = (0u32, 0u32);
    let mut t = d;
    let mut s = 1u32;
    while s < side {
        let rx = (1 & (t / 2)) as u32;
        let ry = (1 & (t ^ u64::from(rx))) as u32;
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        x += s * rx;
        y += s * ry;
        t /= 4;
        s *= 2;
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(n: u64) -> ZoneId {
        ZoneId(n)
    }

    #[test]
    fn the_curve_visits_every_cell_once_and_steps_to_a_neighbour() {
        for (w, h) in [(8, 8), (16, 16), (12, 5), (1, 1)] {
            let order = hilbert_order(w, h);
            let mut seen = order.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..w * h).collect::<Vec<_>>(), "{w}×{h}");
            if w == h {
                for pair in order.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    let d = (a % w).abs_diff(b % w) + (a / w).abs_diff(b / w);
                    assert_eq!(d, 1, "{w}×{h}: {a} → {b}");
                }
            }
        }
    }

    #[test]
    fn zones_joining_split_the_longest_range_and_leaving_hands_it_to_a_neighbour() {
        let mut a = Assignment::new(16, 16);
        a.set_zones(&[z(1)]);
        assert!(a.owners().iter().all(|o| *o == Some(z(1))));
        a.set_zones(&[z(1), z(2)]);
        let count = |a: &Assignment, id| a.owners().iter().filter(|o| **o == Some(z(id))).count();
        assert_eq!((count(&a, 1), count(&a, 2)), (128, 128));
        a.set_zones(&[z(1), z(2), z(3), z(4)]);
        assert_eq!(
            [1, 2, 3, 4].map(|id| count(&a, id)),
            [64, 64, 64, 64],
            "{:?}",
            a.ranges()
        );
        // Zone 2 leaves: only its cells change hands, all to one neighbour.
        let before = a.owners();
        a.set_zones(&[z(1), z(3), z(4)]);
        let after = a.owners();
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert_eq!(moved.len(), 64);
        assert!(moved.iter().all(|(b, _)| **b == Some(z(2))));
        assert!(after.iter().all(|o| o.is_some() && *o != Some(z(2))));
        // The first zone leaves too.
        a.set_zones(&[z(3), z(4)]);
        assert!(
            a.owners()
                .iter()
                .all(|o| *o == Some(z(3)) || *o == Some(z(4)))
        );
        assert_eq!(a.ranges().1.len(), 1);
    }

    /// Load piled on a few cells: rebalancing, a few cells at a time, brings the busiest
    /// zone within the threshold, then stops (no flapping).
    #[test]
    fn a_crowd_spreads_over_zones_a_few_cells_at_a_time_then_boundaries_stay() {
        let (w, h) = (16u32, 16u32);
        let mut a = Assignment::new(w, h);
        a.set_zones(&[z(1), z(2), z(3), z(4)]);
        // 400 players in a 4×4 block of cells inside one zone's quarter, 1 per cell elsewhere.
        let mut load = vec![1.0f32; (w * h) as usize];
        for y in 2..6 {
            for x in 2..6 {
                load[(y * w + x) as usize] = 25.0;
            }
        }
        let config = BalanceConfig::default();
        let start = a.imbalance(&load);
        assert!(start > 1.5, "{start}");
        let mut rounds = 0;
        loop {
            let moved = a.rebalance(&load, &config);
            assert!(
                moved.len() <= config.max_step * 3,
                "rate-limited: {}",
                moved.len()
            );
            if moved.is_empty() {
                break;
            }
            rounds += 1;
            assert!(rounds < 500, "converges");
        }
        let end = a.imbalance(&load);
        assert!(
            end <= config.threshold + 0.05,
            "balanced: {start} → {end} in {rounds}"
        );
        // Stable: the same load moves nothing again.
        assert!(a.rebalance(&load, &config).is_empty());
        // Every range is still one piece of the curve: each zone's cells form one region
        // (all cells owned, none by a zone that left).
        assert!(a.owners().iter().all(Option::is_some));
    }

    #[test]
    fn pinned_cells_stay_with_their_zone() {
        let mut a = Assignment::new(8, 8);
        a.set_zones(&[z(1), z(2)]);
        let cell = 0u32;
        let other = if a.owner(cell) == Some(z(1)) {
            z(2)
        } else {
            z(1)
        };
        a.pin(cell, Some(other));
        assert_eq!(a.owner(cell), Some(other));
        let mut load = vec![0.0f32; 64];
        load[cell as usize] = 100.0;
        for _ in 0..50 {
            a.rebalance(&load, &BalanceConfig::default());
        }
        assert_eq!(a.owner(cell), Some(other), "the balancer respects the pin");
        a.pin(cell, None);
        assert_ne!(a.owner(cell), None);
    }

    #[test]
    fn stored_ranges_are_restored_only_when_they_fit() {
        let mut a = Assignment::new(8, 8);
        a.set_zones(&[z(1), z(2), z(3)]);
        let (zones, cuts) = (a.ranges().0.to_vec(), a.ranges().1.to_vec());
        let mut b = Assignment::new(8, 8);
        assert!(b.restore(zones.clone(), cuts.clone()));
        assert_eq!(a.owners(), b.owners());
        assert!(!b.restore(zones, vec![40, 10]));
        assert!(!Assignment::new(8, 8).restore(vec![z(1), z(2)], vec![64]));
    }
}
