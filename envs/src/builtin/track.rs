//! A closed race track generated from a seed, cut into tiles (after Gymnasium's CarRacing).
//!
//! Checkpoints are placed around a circle at jittered angles and random radii; a closed
//! Catmull-Rom spline through them is resampled at equal arc length, smoothed, and resampled
//! again into the tiles' centre points. Like CarRacing, which bounds its turn rate, a track
//! whose centre line turns more than [`MAX_TURN_PER_TILE`] between tiles is rejected and drawn
//! again. Coordinates are the ground plane's `(x, z)`, in metres, with `y` up.

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::EnvRng;

/// The sharpest turn allowed between consecutive tiles, rad (about an 11 m radius for 4 m
/// tiles).
pub const MAX_TURN_PER_TILE: f32 = 0.35;

/// A closed track: tile `i` runs from `center[i]` to `center[(i + 1) % n]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// Centre-line points, one per tile, in driving order.
    pub center: Vec<[f32; 2]>,
    /// Half the road's width, m.
    pub half_width: f32,
}

impl Track {
    /// Generates a track: `checkpoints` points at radii in `[radius / 3, radius]`, tiles about
    /// `tile_length` metres long. Draws again (up to 50 times) while a turn is sharper than
    /// [`MAX_TURN_PER_TILE`]; the result depends only on the generator's state.
    pub fn generate(
        rng: &mut EnvRng,
        checkpoints: usize,
        radius: f32,
        tile_length: f32,
        half_width: f32,
    ) -> Self {
        let mut track = Self::draw(rng, checkpoints, radius, tile_length, half_width);
        for _ in 0..50 {
            if track.max_turn() <= MAX_TURN_PER_TILE {
                break;
            }
            track = Self::draw(rng, checkpoints, radius, tile_length, half_width);
        }
        track
    }

    fn draw(
        rng: &mut EnvRng,
        checkpoints: usize,
        radius: f32,
        tile_length: f32,
        half_width: f32,
    ) -> Self {
        let n = checkpoints.max(3);
        let tau = std::f32::consts::TAU;
        let alphas: Vec<f32> = (0..n)
            .map(|i| tau * (i as f32 + rng.random_range(0.0..0.8f32)) / n as f32)
            .collect();
        let radii: Vec<f32> = (0..n)
            .map(|_| rng.random_range(radius / 3.0..=radius))
            .collect();
        // Neighbouring checkpoints at very different radii make hairpins: blend each radius
        // with its neighbours'.
        let points: Vec<[f32; 2]> = (0..n)
            .map(|i| {
                let r = 0.25 * radii[(i + n - 1) % n] + 0.5 * radii[i] + 0.25 * radii[(i + 1) % n];
                [r * alphas[i].cos(), r * alphas[i].sin()]
            })
            .collect();
        // Dense samples along the closed spline.
        const PER_SEGMENT: usize = 64;
        let mut dense = Vec::with_capacity(n * PER_SEGMENT);
        for i in 0..n {
            let p = |k: usize| points[(i + k + n - 1) % n];
            let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
            for s in 0..PER_SEGMENT {
                let t = s as f32 / PER_SEGMENT as f32;
                dense.push(catmull_rom(p0, p1, p2, p3, t));
            }
        }
        let mut center = resample_closed(&dense, tile_length);
        // Laplacian smoothing rounds off the spline's sharpest corners.
        for _ in 0..100 {
            let m = center.len();
            center = (0..m)
                .map(|i| {
                    let (a, b, c) = (center[(i + m - 1) % m], center[i], center[(i + 1) % m]);
                    [
                        0.25 * a[0] + 0.5 * b[0] + 0.25 * c[0],
                        0.25 * a[1] + 0.5 * b[1] + 0.25 * c[1],
                    ]
                })
                .collect();
        }
        let center = resample_closed(&center, tile_length);
        Self { center, half_width }
    }

    /// The largest change of direction between consecutive tiles, rad.
    pub fn max_turn(&self) -> f32 {
        (0..self.len())
            .map(|i| {
                let (a, b) = (self.direction(i), self.direction(i + 1));
                cross_up(a, b).atan2(a[0] * b[0] + a[1] * b[1]).abs()
            })
            .fold(0.0, f32::max)
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.center.len()
    }

    /// Whether the track has no tiles.
    pub fn is_empty(&self) -> bool {
        self.center.is_empty()
    }

    /// Start and end centre points of tile `i`.
    pub fn segment(&self, i: usize) -> ([f32; 2], [f32; 2]) {
        let n = self.len();
        (self.center[i % n], self.center[(i + 1) % n])
    }

    /// Unit direction of travel along tile `i`.
    pub fn direction(&self, i: usize) -> [f32; 2] {
        let (a, b) = self.segment(i);
        let d = dist(a, b).max(1e-6);
        [(b[0] - a[0]) / d, (b[1] - a[1]) / d]
    }

    /// The four corners of tile `i` (start-left, start-right, end-right, end-left).
    pub fn quad(&self, i: usize) -> [[f32; 2]; 4] {
        let n = self.len();
        let normal_at = |k: usize| {
            let prev = self.direction((k + n - 1) % n);
            let next = self.direction(k % n);
            let t = [prev[0] + next[0], prev[1] + next[1]];
            let l = t[0].hypot(t[1]).max(1e-6);
            [-t[1] / l, t[0] / l]
        };
        let (a, b) = self.segment(i);
        let (na, nb) = (normal_at(i), normal_at(i + 1));
        let w = self.half_width;
        [
            [a[0] + na[0] * w, a[1] + na[1] * w],
            [a[0] - na[0] * w, a[1] - na[1] * w],
            [b[0] - nb[0] * w, b[1] - nb[1] * w],
            [b[0] + nb[0] * w, b[1] + nb[1] * w],
        ]
    }

    /// Along-track fraction `t` and signed lateral offset (m, positive to the left of the
    /// direction of travel, seen from above) of point `p` relative to tile `i`'s centre
    /// segment.
    pub fn project(&self, i: usize, p: [f32; 2]) -> (f32, f32) {
        let (a, b) = self.segment(i);
        let d = [b[0] - a[0], b[1] - a[1]];
        let len2 = (d[0] * d[0] + d[1] * d[1]).max(1e-12);
        let rel = [p[0] - a[0], p[1] - a[1]];
        let t = (rel[0] * d[0] + rel[1] * d[1]) / len2;
        let lateral = cross_up(d, rel) / len2.sqrt();
        (t, lateral)
    }

    /// Whether `p` lies on tile `i`.
    pub fn on_tile(&self, i: usize, p: [f32; 2]) -> bool {
        let (t, lateral) = self.project(i, p);
        (0.0..=1.0).contains(&t) && lateral.abs() <= self.half_width
    }

    /// The tile whose midpoint is nearest to `p`, searching near `hint` first and the whole
    /// track when `p` is far from there.
    pub fn nearest_tile(&self, p: [f32; 2], hint: usize) -> usize {
        let n = self.len();
        let mid = |i: usize| {
            let (a, b) = self.segment(i);
            dist(p, lerp(a, b, 0.5))
        };
        let mut best = (hint % n, mid(hint % n));
        for k in 0..12 {
            let i = (hint + n - 3 + k) % n;
            let d = mid(i);
            if d < best.1 {
                best = (i, d);
            }
        }
        if best.1 > 2.0 * self.half_width {
            for i in 0..n {
                let d = mid(i);
                if d < best.1 {
                    best = (i, d);
                }
            }
        }
        best.0
    }
}

/// The up (+y) component of `a × b` for ground-plane vectors `(x, z)`: positive when `b`
/// points to the left of `a`, seen from above.
pub fn cross_up(a: [f32; 2], b: [f32; 2]) -> f32 {
    a[1] * b[0] - a[0] * b[1]
}

/// Points every `spacing` metres (adjusted to divide the length evenly) along a closed polyline.
fn resample_closed(points: &[[f32; 2]], spacing: f32) -> Vec<[f32; 2]> {
    let mut ring = points.to_vec();
    ring.push(points[0]);
    let mut cumulative = vec![0.0f32; ring.len()];
    for i in 1..ring.len() {
        cumulative[i] = cumulative[i - 1] + dist(ring[i - 1], ring[i]);
    }
    let length = cumulative[ring.len() - 1];
    let count = ((length / spacing).round() as usize).max(8);
    let step = length / count as f32;
    let mut out = Vec::with_capacity(count);
    let mut j = 0;
    for k in 0..count {
        let s = k as f32 * step;
        while j + 2 < ring.len() && cumulative[j + 1] < s {
            j += 1;
        }
        let seg = (cumulative[j + 1] - cumulative[j]).max(1e-6);
        let t = ((s - cumulative[j]) / seg).clamp(0.0, 1.0);
        out.push(lerp(ring[j], ring[j + 1], t));
    }
    out
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

fn lerp(a: [f32; 2], b: [f32; 2], t: f32) -> [f32; 2] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t]
}

fn catmull_rom(p0: [f32; 2], p1: [f32; 2], p2: [f32; 2], p3: [f32; 2], t: f32) -> [f32; 2] {
    let (t2, t3) = (t * t, t * t * t);
    let f = |a: f32, b: f32, c: f32, d: f32| {
        0.5 * (2.0 * b
            + (-a + c) * t
            + (2.0 * a - 5.0 * b + 4.0 * c - d) * t2
            + (-a + 3.0 * b - 3.0 * c + d) * t3)
    };
    [f(p0[0], p1[0], p2[0], p3[0]), f(p0[1], p1[1], p2[1], p3[1])]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn tracks_are_closed_evenly_tiled_and_seeded() {
        let make = |seed| Track::generate(&mut EnvRng::seed_from_u64(seed), 12, 60.0, 4.0, 6.0);
        let t = make(1);
        assert_eq!(t, make(1));
        for seed in 0..50 {
            let turn = make(seed).max_turn();
            assert!(
                turn <= MAX_TURN_PER_TILE,
                "seed {seed}: a turn of {turn} rad per tile"
            );
        }
        assert_ne!(t, make(2));
        assert!(t.len() > 40, "{} tiles", t.len());
        let lengths: Vec<f32> = (0..t.len())
            .map(|i| {
                let (a, b) = t.segment(i);
                dist(a, b)
            })
            .collect();
        let mean = lengths.iter().sum::<f32>() / lengths.len() as f32;
        assert!((mean - 4.0).abs() < 0.5, "mean tile length {mean}");
        assert!(
            lengths.iter().all(|l| (l - mean).abs() < 0.3 * mean),
            "{lengths:?}"
        );
        // Every tile's midpoint is on that tile and is found as the nearest.
        for i in 0..t.len() {
            let (a, b) = t.segment(i);
            let m = lerp(a, b, 0.5);
            assert!(t.on_tile(i, m));
            assert_eq!(t.nearest_tile(m, (i + t.len() / 2) % t.len()), i);
        }
        assert!(!t.on_tile(0, [1000.0, 1000.0]));
    }
}
