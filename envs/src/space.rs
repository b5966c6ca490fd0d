//! Spaces (Box, Discrete, MultiDiscrete, Dict, Text) and the values that live in them.
//!
//! Semantics follow Gymnasium 1.x: `contains` is exact (a NaN is never inside a Box), `sample`
//! is reproducible from the random generator it is given, and a Dict keeps its keys sorted.

use std::collections::BTreeMap;
use std::fmt;

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// A malformed space, or an action that does not belong to its space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpaceError(pub String);

impl From<String> for SpaceError {
    fn from(message: String) -> Self {
        SpaceError(message)
    }
}

impl From<&str> for SpaceError {
    fn from(message: &str) -> Self {
        SpaceError(message.to_string())
    }
}

/// An observation or an action. The shape of a `F32`/`U8` array is given by its [`BoxSpace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Flat float32 array, row-major, for a `Box` of dtype f32.
    F32(Vec<f32>),
    /// Flat uint8 array, row-major, for a `Box` of dtype u8 (pixels).
    U8(Vec<u8>),
    /// One integer, for `Discrete`.
    Int(i64),
    /// Integers, for `MultiDiscrete`.
    Ints(Vec<i64>),
    /// Named values, for `Dict`.
    Dict(BTreeMap<String, Value>),
    /// A string, for `Text`.
    Text(String),
}

impl Value {
    /// The float array, if this is one.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Value::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// A short description of the value's kind and size, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::F32(v) => format!("f32 array of length {}", v.len()),
            Value::U8(v) => format!("u8 array of length {}", v.len()),
            Value::Int(i) => format!("integer {i}"),
            Value::Ints(v) => format!("{} integers", v.len()),
            Value::Dict(d) => format!("dict with keys {:?}", d.keys().collect::<Vec<_>>()),
            Value::Text(t) => format!("text of {} characters", t.chars().count()),
        }
    }

    /// Whether every number in the value is finite.
    pub fn is_finite(&self) -> bool {
        match self {
            Value::F32(v) => v.iter().all(|x| x.is_finite()),
            Value::Dict(d) => d.values().all(Value::is_finite),
            _ => true,
        }
    }
}

/// Element type of a [`BoxSpace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 8-bit unsigned integer (images).
    U8,
}

/// A box in R^n (or in {0..255}^n for images): element-wise `low <= x <= high`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxSpace {
    /// Shape of the array, row-major.
    pub shape: Vec<usize>,
    /// Lower bound per element (may be `-inf`; JSON writes infinities as `"-inf"`/`"inf"`).
    #[serde(with = "bounds")]
    pub low: Vec<f32>,
    /// Upper bound per element (may be `inf`).
    #[serde(with = "bounds")]
    pub high: Vec<f32>,
    /// Element type.
    pub dtype: Dtype,
}

impl BoxSpace {
    /// A float box with per-element bounds; `low` and `high` must have the same length.
    pub fn new(low: Vec<f32>, high: Vec<f32>) -> Self {
        let shape = vec![low.len()];
        Self {
            shape,
            low,
            high,
            dtype: Dtype::F32,
        }
    }

    /// A float box of the given shape with the same bounds everywhere.
    pub fn uniform(shape: Vec<usize>, low: f32, high: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            low: vec![low; n],
            high: vec![high; n],
            dtype: Dtype::F32,
        }
    }

    /// An image box: `u8` values in `0..=255` of shape `[height, width, channels]`.
    pub fn image(height: usize, width: usize, channels: usize) -> Self {
        let mut b = Self::uniform(vec![height, width, channels], 0.0, 255.0);
        b.dtype = Dtype::U8;
        b
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the box has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether both bounds are finite everywhere.
    pub fn is_bounded(&self) -> bool {
        self.low.iter().chain(&self.high).all(|x| x.is_finite())
    }

    /// Clips a float action into the box, writing it to `out`. Returns whether anything had to
    /// be clipped, or an error for a wrong length or a non-finite value.
    pub fn clip_into(&self, action: &Value, out: &mut [f32]) -> Result<bool, SpaceError> {
        let Value::F32(v) = action else {
            return Err(format!(
                "expected an f32 array of length {}, got {}",
                self.len(),
                action.describe()
            )
            .into());
        };
        if v.len() != self.len() || out.len() != self.len() {
            return Err(format!(
                "expected an f32 array of length {}, got length {}",
                self.len(),
                v.len()
            )
            .into());
        }
        let mut clipped = false;
        for (i, &x) in v.iter().enumerate() {
            if !x.is_finite() {
                return Err(format!("action element {i} is {x}, not a finite number").into());
            }
            let y = x.clamp(self.low[i], self.high[i]);
            clipped |= y != x;
            out[i] = y;
        }
        Ok(clipped)
    }
}

/// Integers `start, start + 1, ..., start + n - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrete {
    /// Number of choices.
    pub n: u64,
    /// Smallest value.
    pub start: i64,
}

impl Discrete {
    /// `n` choices starting at 0.
    pub fn new(n: u64) -> Self {
        Self { n, start: 0 }
    }
}

/// A vector of independent discrete choices, element `i` in `0..nvec[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiDiscrete {
    /// Number of choices per element.
    pub nvec: Vec<u64>,
}

/// A space of named sub-spaces, keys sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictSpace {
    /// The sub-spaces by name.
    pub spaces: BTreeMap<String, Space>,
}

/// Strings of `min_length..=max_length` characters (Unicode scalar values), each drawn from
/// `charset` when one is given, as Gymnasium's `spaces.Text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextSpace {
    /// Fewest characters.
    pub min_length: usize,
    /// Most characters.
    pub max_length: usize,
    /// The characters allowed; `None` allows any character but control characters other than
    /// newline and tab.
    pub charset: Option<String>,
}

impl TextSpace {
    /// Any text of at most `max_length` characters (no control characters but `\n` and `\t`).
    pub fn new(max_length: usize) -> Self {
        Self {
            min_length: 0,
            max_length,
            charset: None,
        }
    }

    /// Whether `c` may appear in a member of the space.
    pub fn allows(&self, c: char) -> bool {
        match &self.charset {
            Some(set) => set.contains(c),
            None => !c.is_control() || c == '\n' || c == '\t',
        }
    }

    /// Why `text` is not a member of the space, or `None` if it is.
    pub fn why_not(&self, text: &str) -> Option<String> {
        let n = text.chars().count();
        if n < self.min_length || n > self.max_length {
            return Some(format!(
                "text of {n} characters; the space takes {}..={}",
                self.min_length, self.max_length
            ));
        }
        text.chars()
            .enumerate()
            .find(|(_, c)| !self.allows(*c))
            .map(|(i, c)| format!("character {i} ({c:?}) is not in the space's charset"))
    }
}

/// An observation or action space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Space {
    /// A box of reals or of bytes.
    Box(BoxSpace),
    /// One of `n` choices.
    Discrete(Discrete),
    /// Several independent choices.
    MultiDiscrete(MultiDiscrete),
    /// Named sub-spaces.
    Dict(DictSpace),
    /// A string.
    Text(TextSpace),
}

impl Space {
    /// Draws a value from the space, reproducibly for a given generator state.
    ///
    /// Box: uniform where both bounds are finite, a standard normal where none is, an
    /// exponential from the finite side where one is (as Gymnasium does).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Value {
        match self {
            Space::Box(b) => {
                let draw = |rng: &mut R, lo: f32, hi: f32| -> f64 {
                    let (lo, hi) = (lo as f64, hi as f64);
                    match (lo.is_finite(), hi.is_finite()) {
                        (true, true) => lo + (hi - lo) * rng.random::<f64>(),
                        (false, false) => standard_normal(rng),
                        (true, false) => lo + exponential(rng),
                        (false, true) => hi - exponential(rng),
                    }
                };
                match b.dtype {
                    Dtype::F32 => Value::F32(
                        (0..b.len())
                            .map(|i| {
                                (draw(rng, b.low[i], b.high[i]) as f32).clamp(b.low[i], b.high[i])
                            })
                            .collect(),
                    ),
                    Dtype::U8 => Value::U8(
                        (0..b.len())
                            .map(|i| {
                                let lo = b.low[i].clamp(0.0, 255.0) as u32;
                                let hi = b.high[i].clamp(0.0, 255.0) as u32;
                                rng.random_range(lo..=hi.max(lo)) as u8
                            })
                            .collect(),
                    ),
                }
            }
            Space::Discrete(d) => Value::Int(d.start + rng.random_range(0..d.n.max(1)) as i64),
            Space::MultiDiscrete(m) => Value::Ints(
                m.nvec
                    .iter()
                    .map(|&n| rng.random_range(0..n.max(1)) as i64)
                    .collect(),
            ),
            Space::Dict(d) => Value::Dict(
                d.spaces
                    .iter()
                    .map(|(k, s)| (k.clone(), s.sample(rng)))
                    .collect(),
            ),
            Space::Text(t) => {
                // Printable ASCII stands in for "any character" when no charset is given.
                let chars: Vec<char> = match &t.charset {
                    Some(set) => set.chars().collect(),
                    None => (' '..='~').collect(),
                };
                let hi = t.max_length.max(t.min_length);
                let n = if chars.is_empty() {
                    0
                } else {
                    rng.random_range(t.min_length..=hi)
                };
                Value::Text(
                    (0..n)
                        .map(|_| chars[rng.random_range(0..chars.len())])
                        .collect(),
                )
            }
        }
    }

    /// Whether `value` is a member of the space (kind, length and bounds all match).
    pub fn contains(&self, value: &Value) -> bool {
        match (self, value) {
            (Space::Box(b), Value::F32(v)) => {
                b.dtype == Dtype::F32
                    && v.len() == b.len()
                    && v.iter()
                        .zip(b.low.iter().zip(&b.high))
                        .all(|(x, (lo, hi))| *x >= *lo && *x <= *hi)
            }
            (Space::Box(b), Value::U8(v)) => {
                b.dtype == Dtype::U8
                    && v.len() == b.len()
                    && v.iter()
                        .zip(b.low.iter().zip(&b.high))
                        .all(|(x, (lo, hi))| *x as f32 >= *lo && *x as f32 <= *hi)
            }
            (Space::Discrete(d), Value::Int(i)) => *i >= d.start && *i < d.start + d.n as i64,
            (Space::MultiDiscrete(m), Value::Ints(v)) => {
                v.len() == m.nvec.len()
                    && v.iter()
                        .zip(&m.nvec)
                        .all(|(x, n)| *x >= 0 && (*x as u64) < *n)
            }
            (Space::Dict(d), Value::Dict(v)) => {
                d.spaces.len() == v.len()
                    && d.spaces
                        .iter()
                        .all(|(k, s)| v.get(k).is_some_and(|x| s.contains(x)))
            }
            (Space::Text(t), Value::Text(x)) => t.why_not(x).is_none(),
            _ => false,
        }
    }

    /// Checks that the space is well formed, describing the first problem found.
    pub fn validate(&self) -> Result<(), SpaceError> {
        match self {
            Space::Box(b) => {
                let n = b.len();
                if b.low.len() != n || b.high.len() != n {
                    return Err(format!(
                        "Box of shape {:?} has {} lows and {} highs",
                        b.shape,
                        b.low.len(),
                        b.high.len()
                    )
                    .into());
                }
                for i in 0..n {
                    let (lo, hi) = (b.low[i], b.high[i]);
                    if lo.is_nan() || hi.is_nan() || lo > hi {
                        return Err(format!("Box element {i} has bounds [{lo}, {hi}]").into());
                    }
                }
                if b.dtype == Dtype::U8
                    && b.low
                        .iter()
                        .chain(&b.high)
                        .any(|x| !(0.0..=255.0).contains(x))
                {
                    return Err("u8 Box bounds must lie in [0, 255]".into());
                }
                Ok(())
            }
            Space::Discrete(d) if d.n == 0 => Err("Discrete(0) has no elements".into()),
            Space::Discrete(_) => Ok(()),
            Space::MultiDiscrete(m) if m.nvec.contains(&0) => {
                Err("MultiDiscrete with a zero in nvec has no elements".into())
            }
            Space::MultiDiscrete(_) => Ok(()),
            Space::Dict(d) => {
                for (k, s) in &d.spaces {
                    s.validate().map_err(|e| format!("Dict key `{k}`: {e}"))?;
                }
                Ok(())
            }
            Space::Text(t) if t.min_length > t.max_length => Err(format!(
                "Text with min_length {} above max_length {}",
                t.min_length, t.max_length
            )
            .into()),
            Space::Text(t) if t.min_length > 0 && t.charset.as_deref() == Some("") => {
                Err("Text with an empty charset has no elements but the empty string".into())
            }
            Space::Text(_) => Ok(()),
        }
    }

    /// Checks that `action` could be passed to `step` for this action space: the right kind
    /// and shape, finite, and (for discrete spaces) in range. Out-of-range Box values pass:
    /// envs clip them and flag it in `info`. Any string passes for a Text space: what a text
    /// action means (and whether it is too long) is the env's to say, in its observation.
    pub fn check_action(&self, action: &Value) -> Result<(), SpaceError> {
        match (self, action) {
            (Space::Box(b), Value::F32(v)) if b.dtype == Dtype::F32 => {
                if v.len() != b.len() {
                    return Err(format!("expected {} elements, got {}", b.len(), v.len()).into());
                }
                match v.iter().position(|x| !x.is_finite()) {
                    Some(i) => Err(format!("element {i} is {}, not a finite number", v[i]).into()),
                    None => Ok(()),
                }
            }
            (Space::Box(b), Value::U8(v)) if b.dtype == Dtype::U8 && v.len() == b.len() => Ok(()),
            (Space::Discrete(_) | Space::MultiDiscrete(_), _) if self.contains(action) => Ok(()),
            (Space::Text(_), Value::Text(_)) => Ok(()),
            (Space::Dict(d), Value::Dict(v)) if d.spaces.len() == v.len() => {
                for (k, s) in &d.spaces {
                    let x = v.get(k).ok_or_else(|| format!("missing key `{k}`"))?;
                    s.check_action(x).map_err(|e| format!("key `{k}`: {e}"))?;
                }
                Ok(())
            }
            _ => Err(format!("{} is not an action of {self}", action.describe()).into()),
        }
    }

    /// The box, if this is one.
    pub fn as_box(&self) -> Option<&BoxSpace> {
        match self {
            Space::Box(b) => Some(b),
            _ => None,
        }
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Space::Box(b) => {
                let dtype = match b.dtype {
                    Dtype::F32 => "f32",
                    Dtype::U8 => "u8",
                };
                let uniform = |v: &[f32]| v.iter().all(|x| *x == v[0]);
                if !b.low.is_empty() && uniform(&b.low) && uniform(&b.high) {
                    write!(
                        f,
                        "Box({}, {}, {:?}, {dtype})",
                        fmt_bound(b.low[0]),
                        fmt_bound(b.high[0]),
                        b.shape
                    )
                } else {
                    write!(f, "Box({:?}, {dtype})", b.shape)
                }
            }
            Space::Discrete(d) if d.start == 0 => write!(f, "Discrete({})", d.n),
            Space::Discrete(d) => write!(f, "Discrete({}, start={})", d.n, d.start),
            Space::MultiDiscrete(m) => write!(f, "MultiDiscrete({:?})", m.nvec),
            Space::Dict(d) => {
                write!(f, "Dict(")?;
                for (i, (k, s)) in d.spaces.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {s}")?;
                }
                write!(f, ")")
            }
            Space::Text(t) => match &t.charset {
                None => write!(f, "Text({}..={})", t.min_length, t.max_length),
                Some(set) => write!(
                    f,
                    "Text({}..={}, {} characters)",
                    t.min_length,
                    t.max_length,
                    set.chars().count()
                ),
            },
        }
    }
}

/// Box bounds in JSON: numbers, with infinities as the strings `"inf"` and `"-inf"` (JSON has
/// no infinity; Python's `float()` reads these strings).
mod bounds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Number(f32),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let out: Vec<Bound> = v
            .iter()
            .map(|&x| {
                if x.is_finite() {
                    Bound::Number(x)
                } else {
                    Bound::Text(super::fmt_bound(x))
                }
            })
            .collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Vec::<Bound>::deserialize(d)?
            .into_iter()
            .map(|b| match b {
                Bound::Number(x) => Ok(x),
                Bound::Text(t) => match t.as_str() {
                    "inf" | "+inf" | "Infinity" => Ok(f32::INFINITY),
                    "-inf" | "-Infinity" => Ok(f32::NEG_INFINITY),
                    other => Err(serde::de::Error::custom(format!(
                        "bad bound `{other}`: expected a number, \"inf\" or \"-inf\""
                    ))),
                },
            })
            .collect()
    }
}

fn fmt_bound(x: f32) -> String {
    if x == f32::INFINITY {
        "inf".into()
    } else if x == f32::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{x}")
    }
}

fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn exponential<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    -(1.0 - rng.random::<f64>()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn samples_are_members_and_reproducible() {
        let mut spaces = BTreeMap::new();
        spaces.insert(
            "a".to_string(),
            Space::Box(BoxSpace::new(vec![-1.0, 0.0], vec![1.0, 5.0])),
        );
        spaces.insert(
            "b".to_string(),
            Space::Discrete(Discrete { n: 3, start: -1 }),
        );
        spaces.insert(
            "c".to_string(),
            Space::MultiDiscrete(MultiDiscrete { nvec: vec![2, 7] }),
        );
        spaces.insert("d".to_string(), Space::Box(BoxSpace::image(2, 2, 3)));
        spaces.insert(
            "e".to_string(),
            Space::Box(BoxSpace::uniform(vec![3], f32::NEG_INFINITY, f32::INFINITY)),
        );
        let space = Space::Dict(DictSpace { spaces });
        space.validate().unwrap();
        let mut r1 = ChaCha8Rng::seed_from_u64(7);
        let mut r2 = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let v = space.sample(&mut r1);
            assert!(space.contains(&v), "{v:?}");
            assert_eq!(v, space.sample(&mut r2));
        }
    }

    #[test]
    fn text_spaces_sample_members_and_check_length_and_charset() {
        let space = Space::Text(TextSpace {
            min_length: 2,
            max_length: 5,
            charset: Some("abc é".into()),
        });
        space.validate().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let v = space.sample(&mut rng);
            assert!(space.contains(&v), "{v:?}");
            lengths.insert(v.as_text().unwrap().chars().count());
        }
        assert_eq!(lengths, (2..=5).collect());
        // Lengths count characters, not bytes: "éé" is 2 characters, 4 bytes.
        assert!(space.contains(&Value::Text("éé".into())));
        assert!(!space.contains(&Value::Text("a".into())));
        assert!(!space.contains(&Value::Text("abcabc".into())));
        assert!(!space.contains(&Value::Text("abz".into())));
        assert!(!space.contains(&Value::U8(b"abc".to_vec())));
        // Any string is an acceptable action: the env says what it means.
        assert!(space.check_action(&Value::Text("zzzzzzzz".into())).is_ok());
        assert!(space.check_action(&Value::Int(0)).is_err());
        let any = Space::Text(TextSpace::new(20));
        assert!(any.contains(&Value::Text("push red\ndone".into())));
        assert!(!any.contains(&Value::Text("a\u{7}b".into())));
        let bad = Space::Text(TextSpace {
            min_length: 3,
            max_length: 2,
            charset: None,
        });
        assert!(bad.validate().is_err());
        let json = serde_json::to_string(&space).unwrap();
        assert_eq!(serde_json::from_str::<Space>(&json).unwrap(), space);
        assert_eq!(space.to_string(), "Text(2..=5, 5 characters)");
    }

    #[test]
    fn contains_rejects_nan_wrong_kind_and_out_of_bounds() {
        let b = Space::Box(BoxSpace::new(vec![-1.0], vec![1.0]));
        assert!(b.contains(&Value::F32(vec![0.5])));
        assert!(!b.contains(&Value::F32(vec![f32::NAN])));
        assert!(!b.contains(&Value::F32(vec![1.5])));
        assert!(!b.contains(&Value::F32(vec![0.0, 0.0])));
        assert!(!b.contains(&Value::Int(0)));
        let d = Space::Discrete(Discrete::new(2));
        assert!(d.contains(&Value::Int(1)));
        assert!(!d.contains(&Value::Int(2)));
        assert!(!d.contains(&Value::Int(-1)));
    }

    #[test]
    fn spaces_with_infinite_bounds_round_trip_through_json() {
        let s = Space::Box(BoxSpace::new(
            vec![f32::NEG_INFINITY, -1.5],
            vec![f32::INFINITY, f32::MAX],
        ));
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"-inf\""), "{json}");
        assert_eq!(serde_json::from_str::<Space>(&json).unwrap(), s);
    }

    #[test]
    fn validate_rejects_malformed_spaces() {
        assert!(
            Space::Box(BoxSpace::new(vec![1.0], vec![0.0]))
                .validate()
                .is_err()
        );
        assert!(
            Space::Box(BoxSpace::new(vec![f32::NAN], vec![0.0]))
                .validate()
                .is_err()
        );
        assert!(Space::Discrete(Discrete::new(0)).validate().is_err());
        let mut b = BoxSpace::new(vec![0.0, 0.0], vec![1.0, 1.0]);
        b.shape = vec![3];
        assert!(Space::Box(b).validate().is_err());
    }

    #[test]
    fn clip_into_clips_and_flags_but_rejects_nan() {
        let b = BoxSpace::new(vec![-1.0, -1.0], vec![1.0, 1.0]);
        let mut out = [0.0; 2];
        assert!(!b.clip_into(&Value::F32(vec![0.5, -0.5]), &mut out).unwrap());
        assert!(b.clip_into(&Value::F32(vec![3.0, -0.5]), &mut out).unwrap());
        assert_eq!(out, [1.0, -0.5]);
        assert!(
            b.clip_into(&Value::F32(vec![f32::NAN, 0.0]), &mut out)
                .is_err()
        );
        assert!(b.clip_into(&Value::F32(vec![0.0]), &mut out).is_err());
    }
}
