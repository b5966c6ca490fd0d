//! Instructions for `Tabletop-v0`: a grammar of five families with several phrasings each,
//! seeded sampling with held-out splits, a parser back to the goal, and the verifier that
//! decides success.
//!
//! ## Families and phrasings
//! The last phrasing of each family is held out (`split = "unseen_phrasings"`).
//!
//! | family | phrasings (`{o}` an object, `{z}` a zone colour) |
//! |---|---|
//! | `single` | push the {o} into the {z} zone · move the {o} to the {z} zone · put the {o} in the {z} zone · *get the {o} inside the {z} zone* |
//! | `relation` | put the {o} {rel} the {o2} · push the {o} so it is {rel} the {o2} · *place the {o} {rel} the {o2}* |
//! | `reference` | push the {ref} into the {z} zone · move the {ref} to the {z} zone · *put the {ref} in the {z} zone*, where {ref} is `object nearest the {z2} zone`, `leftmost object` or `rightmost object` |
//! | `sort` | sort every {shape} into the zone of its colour · put each {shape} in the zone that matches its colour · *move every {shape} to the zone of the same colour* |
//! | `number` | push the {o} {n} cm {dir} · move the {o} {n} cm {dir} · *slide the {o} {dir} by {n} cm*, where {dir} is `to the left`, `to the right`, `forward` or `back` |
//!
//! `{rel}` is `left of`, `right of`, `behind` or `in front of`. A reference is resolved once,
//! on the scene the instruction was given in.
//!
//! ## Held-out combinations
//! A goal's combination is its object's colour and shape with its zone's colour (`single`,
//! `reference`), the reference object's colour (`relation`) or its direction (`number`).
//! About one combination in five, fixed by [`held_out_combination`], appears only in the
//! `unseen_combinations` split.
//!
//! ## Success
//! - `single`, `reference`: the object's centre is inside the zone (a 16 cm square).
//! - `relation`: the object is 4 to 16 cm from the reference along the relation's direction
//!   and at most 6 cm off that line.
//! - `sort`: every object of the shape is inside the zone of its colour.
//! - `number`: the object's centre is within 3 cm of where it started plus the displacement.

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::command::{Colour, Direction, ObjectRef, Relation, Shape};

/// Half the side of a zone, cm.
pub const ZONE_HALF: f32 = 8.0;
/// Where a relation puts an object: this far from the reference, cm.
pub const RELATION_DISTANCE: f32 = 10.0;
/// How close a `number` goal must end, cm.
pub const NUMBER_TOLERANCE: f32 = 3.0;

/// What the table holds, in table coordinates (cm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneState {
    /// Objects and the positions of their centres.
    pub objects: Vec<(ObjectRef, [f32; 2])>,
    /// Zones and their centres.
    pub zones: Vec<(Colour, [f32; 2])>,
    /// The pusher's centre.
    pub pusher: [f32; 2],
}

impl SceneState {
    /// Where an object is.
    pub fn position(&self, object: ObjectRef) -> Option<[f32; 2]> {
        self.objects
            .iter()
            .find(|(o, _)| *o == object)
            .map(|(_, p)| *p)
    }

    /// Where a zone's centre is.
    pub fn zone(&self, colour: Colour) -> Option<[f32; 2]> {
        self.zones
            .iter()
            .find(|(c, _)| *c == colour)
            .map(|(_, p)| *p)
    }

    /// Whether a point lies in the zone of `colour`.
    pub fn in_zone(&self, point: [f32; 2], colour: Colour) -> bool {
        self.zone(colour).is_some_and(|z| {
            (point[0] - z[0]).abs() <= ZONE_HALF && (point[1] - z[1]).abs() <= ZONE_HALF
        })
    }
}

/// An instruction family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// One object into one zone.
    Single,
    /// One object next to another.
    Relation,
    /// An object named by a property, into a zone.
    Reference,
    /// Every object of a shape into the zone of its colour.
    Sort,
    /// One object a distance in a direction.
    Number,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 5] = [
        Family::Single,
        Family::Relation,
        Family::Reference,
        Family::Sort,
        Family::Number,
    ];

    /// The family's name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Single => "single",
            Family::Relation => "relation",
            Family::Reference => "reference",
            Family::Sort => "sort",
            Family::Number => "number",
        }
    }
}

/// Which instructions to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Seen combinations in seen phrasings (training).
    #[default]
    Train,
    /// Held-out combinations, seen phrasings.
    UnseenCombinations,
    /// Seen combinations, held-out phrasings.
    UnseenPhrasings,
    /// Anything.
    All,
}

/// How a `reference` instruction names its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reference {
    /// The object nearest this zone's centre.
    NearestZone(Colour),
    /// The object with the smallest x.
    Leftmost,
    /// The object with the largest x.
    Rightmost,
}

impl Reference {
    /// The object this names on `scene`.
    pub fn resolve(self, scene: &SceneState) -> Option<ObjectRef> {
        let key = |p: [f32; 2]| -> f32 {
            match self {
                Reference::NearestZone(c) => {
                    let z = scene.zone(c).unwrap_or([f32::NAN; 2]);
                    (p[0] - z[0]).hypot(p[1] - z[1])
                }
                Reference::Leftmost => p[0],
                Reference::Rightmost => -p[0],
            }
        };
        scene
            .objects
            .iter()
            .filter(|(_, p)| key(*p).is_finite())
            .min_by(|a, b| key(a.1).total_cmp(&key(b.1)))
            .map(|(o, _)| *o)
    }

    /// Its words, as instructions and the action language's selectors spell it.
    pub fn words(self) -> String {
        match self {
            Reference::NearestZone(c) => format!("object nearest the {} zone", c.name()),
            Reference::Leftmost => "leftmost object".into(),
            Reference::Rightmost => "rightmost object".into(),
        }
    }
}

/// What an instruction asks, as the verifier checks it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Goal {
    /// `object` inside the zone of colour `zone`.
    Place {
        /// The object.
        object: ObjectRef,
        /// The zone's colour.
        zone: Colour,
    },
    /// `object` placed `relation` `reference`.
    Relation {
        /// The object moved.
        object: ObjectRef,
        /// Where, relative to the reference.
        relation: Relation,
        /// The reference object.
        reference: ObjectRef,
    },
    /// Every object of `shape` inside the zone of its own colour.
    Sort {
        /// The shape sorted.
        shape: Shape,
    },
    /// `object` moved `cm` in `direction` from where it was when the instruction was given.
    Displace {
        /// The object.
        object: ObjectRef,
        /// Which way.
        direction: Direction,
        /// How far, cm.
        cm: f32,
    },
}

/// An instruction as spoken and as meant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    /// Its family.
    pub family: Family,
    /// Which phrasing of the family (the last is held out).
    pub phrasing: usize,
    /// The words.
    pub text: String,
    /// The goal, with any reference resolved on the starting scene.
    pub goal: Goal,
    /// For `reference`: how the object was named.
    pub reference: Option<Reference>,
    /// For `number`: where the object started.
    pub start: Option<[f32; 2]>,
}

/// Whether a goal's combination is held out (about one in five; see the module docs).
pub fn held_out_combination(goal: &Goal) -> bool {
    let key = match goal {
        Goal::Place { object, zone } => (
            object.colour as usize,
            object.shape as usize,
            *zone as usize,
        ),
        Goal::Relation {
            object, reference, ..
        } => (
            object.colour as usize,
            object.shape as usize,
            reference.colour as usize,
        ),
        Goal::Sort { shape } => return *shape == Shape::Cylinder,
        Goal::Displace {
            object, direction, ..
        } => (
            object.colour as usize,
            object.shape as usize,
            *direction as usize,
        ),
    };
    (key.0 * 7 + key.1 * 11 + key.2 * 13 + 3) % 5 == 0
}

const PHRASINGS: [&[&str]; 5] = [
    &[
        "push the {o} into the {z} zone",
        "move the {o} to the {z} zone",
        "put the {o} in the {z} zone",
        "get the {o} inside the {z} zone",
    ],
    &[
        "put the {o} {rel} the {o2}",
        "push the {o} so it is {rel} the {o2}",
        "place the {o} {rel} the {o2}",
    ],
    &[
        "push the {ref} into the {z} zone",
        "move the {ref} to the {z} zone",
        "put the {ref} in the {z} zone",
    ],
    &[
        "sort every {shape} into the zone of its colour",
        "put each {shape} in the zone that matches its colour",
        "move every {shape} to the zone of the same colour",
    ],
    &[
        "push the {o} {n} cm {dir}",
        "move the {o} {n} cm {dir}",
        "slide the {o} {dir} by {n} cm",
    ],
];

/// The phrasings of a family; the last one is held out.
pub fn phrasings(family: Family) -> &'static [&'static str] {
    PHRASINGS[family as usize]
}

fn direction_words(d: Direction) -> &'static str {
    match d {
        Direction::Left => "to the left",
        Direction::Right => "to the right",
        Direction::Forward => "forward",
        Direction::Back => "back",
    }
}

/// The words of `goal` in phrasing `phrasing` of `family`.
pub fn render(
    family: Family,
    phrasing: usize,
    goal: &Goal,
    reference: Option<Reference>,
) -> String {
    let template = phrasings(family)[phrasing.min(phrasings(family).len() - 1)];
    let mut text = template.to_string();
    match goal {
        Goal::Place { object, zone } => {
            let named = match reference {
                Some(r) => r.words(),
                None => object.to_string(),
            };
            text = text.replace("{o}", &named).replace("{ref}", &named);
            text = text.replace("{z}", zone.name());
        }
        Goal::Relation {
            object,
            relation,
            reference,
        } => {
            text = text
                .replace("{o2}", &reference.to_string())
                .replace("{o}", &object.to_string())
                .replace("{rel}", relation.words());
        }
        Goal::Sort { shape } => text = text.replace("{shape}", shape.name()),
        Goal::Displace {
            object,
            direction,
            cm,
        } => {
            text = text
                .replace("{o}", &object.to_string())
                .replace("{n}", &format!("{}", *cm as i64))
                .replace("{dir}", direction_words(*direction));
        }
    }
    text
}

/// Reads an instruction's words back into its family, phrasing and goal, resolving a
/// reference and a displacement's start on `scene`. `None` for words outside the grammar.
pub fn parse_instruction(text: &str, scene: &SceneState) -> Option<Instruction> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    for family in Family::ALL {
        for (phrasing, template) in phrasings(family).iter().enumerate() {
            let slots: Vec<&str> = template.split(' ').collect();
            let mut found = Slots::default();
            if match_slots(&slots, &words, &mut found) {
                return found.into_instruction(family, phrasing, text, scene);
            }
        }
    }
    None
}

#[derive(Debug, Clone, Default)]
struct Slots {
    o: Option<ObjectRef>,
    o2: Option<ObjectRef>,
    z: Option<Colour>,
    rel: Option<Relation>,
    reference: Option<Reference>,
    shape: Option<Shape>,
    n: Option<f32>,
    dir: Option<Direction>,
}

impl Slots {
    fn into_instruction(
        self,
        family: Family,
        phrasing: usize,
        text: &str,
        scene: &SceneState,
    ) -> Option<Instruction> {
        let mut start = None;
        let goal = match family {
            Family::Single => Goal::Place {
                object: self.o?,
                zone: self.z?,
            },
            Family::Reference => Goal::Place {
                object: self.reference?.resolve(scene)?,
                zone: self.z?,
            },
            Family::Relation => Goal::Relation {
                object: self.o?,
                relation: self.rel?,
                reference: self.o2?,
            },
            Family::Sort => Goal::Sort { shape: self.shape? },
            Family::Number => {
                let object = self.o?;
                start = Some(scene.position(object)?);
                Goal::Displace {
                    object,
                    direction: self.dir?,
                    cm: self.n?,
                }
            }
        };
        Some(Instruction {
            family,
            phrasing,
            text: text.to_string(),
            goal,
            reference: self.reference,
            start,
        })
    }
}

fn object_at(words: &[&str]) -> Option<ObjectRef> {
    Some(ObjectRef {
        colour: Colour::from_word(words.first()?)?,
        shape: Shape::from_word(words.get(1)?)?,
    })
}

/// Matches template slots against words, filling `found`; slots take a fixed number of
/// words each but `{rel}`, `{ref}` and `{dir}`, which try each spelling.
fn match_slots(slots: &[&str], words: &[&str], found: &mut Slots) -> bool {
    let Some((&slot, rest)) = slots.split_first() else {
        return words.is_empty();
    };
    let mut attempt = |taken: usize, fill: &dyn Fn(&mut Slots)| -> bool {
        if taken > words.len() {
            return false;
        }
        let mut next = found.clone();
        fill(&mut next);
        if match_slots(rest, &words[taken..], &mut next) {
            *found = next;
            true
        } else {
            false
        }
    };
    match slot {
        "{o}" | "{o2}" => match object_at(words) {
            Some(o) => attempt(2, &|s: &mut Slots| {
                if slot == "{o}" {
                    s.o = Some(o)
                } else {
                    s.o2 = Some(o)
                }
            }),
            None => false,
        },
        "{z}" => match words.first().and_then(|w| Colour::from_word(w)) {
            Some(c) => attempt(1, &|s: &mut Slots| s.z = Some(c)),
            None => false,
        },
        "{shape}" => match words.first().and_then(|w| Shape::from_word(w)) {
            Some(shape) => attempt(1, &|s: &mut Slots| s.shape = Some(shape)),
            None => false,
        },
        "{n}" => match words.first().and_then(|w| w.parse::<f32>().ok()) {
            Some(n) if n.is_finite() => attempt(1, &|s: &mut Slots| s.n = Some(n)),
            _ => false,
        },
        "{rel}" => Relation::ALL.into_iter().any(|r| {
            let spelled: Vec<&str> = r.words().split(' ').collect();
            words.starts_with(&spelled) && attempt(spelled.len(), &|s: &mut Slots| s.rel = Some(r))
        }),
        "{dir}" => Direction::ALL.into_iter().any(|d| {
            let spelled: Vec<&str> = direction_words(d).split(' ').collect();
            words.starts_with(&spelled) && attempt(spelled.len(), &|s: &mut Slots| s.dir = Some(d))
        }),
        "{ref}" => {
            let mut options = vec![Reference::Leftmost, Reference::Rightmost];
            options.extend(Colour::ALL.map(Reference::NearestZone));
            options.into_iter().any(|r| {
                let spelled = r.words();
                let spelled: Vec<&str> = spelled.split(' ').collect();
                words.starts_with(&spelled)
                    && attempt(spelled.len(), &|s: &mut Slots| s.reference = Some(r))
            })
        }
        literal => words.first() == Some(&literal) && attempt(1, &|_: &mut Slots| {}),
    }
}

/// Where a relation goal wants its object: `RELATION_DISTANCE` from the reference.
pub fn relation_target(reference: [f32; 2], relation: Relation) -> [f32; 2] {
    let u = relation.unit();
    [
        reference[0] + RELATION_DISTANCE * u[0],
        reference[1] + RELATION_DISTANCE * u[1],
    ]
}

/// Where a displacement goal wants its object.
pub fn displace_target(start: [f32; 2], direction: Direction, cm: f32) -> [f32; 2] {
    let u = direction.unit();
    [start[0] + cm * u[0], start[1] + cm * u[1]]
}

impl Instruction {
    /// Whether every object and zone the goal names is on `scene` (a sort needs a zone for
    /// each object of its shape).
    pub fn fits(&self, scene: &SceneState) -> bool {
        match self.goal {
            Goal::Place { object, zone } => {
                scene.position(object).is_some() && scene.zone(zone).is_some()
            }
            Goal::Relation {
                object, reference, ..
            } => scene.position(object).is_some() && scene.position(reference).is_some(),
            Goal::Sort { shape } => {
                let mut of_shape = scene.objects.iter().filter(|(o, _)| o.shape == shape);
                of_shape.clone().count() > 0
                    && of_shape.all(|(o, _)| scene.zone(o.colour).is_some())
            }
            Goal::Displace { object, .. } => scene.position(object).is_some(),
        }
    }

    /// Whether the goal holds on `scene`.
    pub fn succeeded(&self, scene: &SceneState) -> bool {
        match self.goal {
            Goal::Place { object, zone } => scene
                .position(object)
                .is_some_and(|p| scene.in_zone(p, zone)),
            Goal::Relation {
                object,
                relation,
                reference,
            } => match (scene.position(object), scene.position(reference)) {
                (Some(p), Some(r)) => {
                    let u = relation.unit();
                    let d = [p[0] - r[0], p[1] - r[1]];
                    let along = d[0] * u[0] + d[1] * u[1];
                    let off = (d[0] * u[1] - d[1] * u[0]).abs();
                    (4.0..=16.0).contains(&along) && off <= 6.0
                }
                _ => false,
            },
            Goal::Sort { shape } => scene
                .objects
                .iter()
                .filter(|(o, _)| o.shape == shape)
                .all(|(o, p)| scene.in_zone(*p, o.colour)),
            Goal::Displace {
                object,
                direction,
                cm,
            } => match (scene.position(object), self.start) {
                (Some(p), Some(s)) => {
                    let t = displace_target(s, direction, cm);
                    (p[0] - t[0]).hypot(p[1] - t[1]) <= NUMBER_TOLERANCE
                }
                _ => false,
            },
        }
    }

    /// Progress toward the goal in [0, 1]: 1 on success, else how much of the starting
    /// distance to the goal (`initial`, the scene the instruction was given in) is covered,
    /// scaled to at most 0.9.
    pub fn progress(&self, scene: &SceneState, initial: &SceneState) -> f64 {
        if self.succeeded(scene) {
            return 1.0;
        }
        let remaining = |s: &SceneState| -> Vec<f32> { self.distances(s) };
        let now = remaining(scene);
        let then = remaining(initial);
        if now.is_empty() {
            return 0.0;
        }
        let covered: f64 = now
            .iter()
            .zip(&then)
            .map(|(n, t)| {
                if *t <= 1.0e-3 {
                    1.0
                } else {
                    (1.0 - (*n / *t) as f64).clamp(0.0, 1.0)
                }
            })
            .sum::<f64>()
            / now.len() as f64;
        0.9 * covered
    }

    /// Distance (cm) from each moved object to where the goal wants it.
    fn distances(&self, scene: &SceneState) -> Vec<f32> {
        let dist = |p: Option<[f32; 2]>, t: Option<[f32; 2]>| match (p, t) {
            (Some(p), Some(t)) => (p[0] - t[0]).hypot(p[1] - t[1]),
            _ => f32::INFINITY,
        };
        match self.goal {
            Goal::Place { object, zone } => vec![dist(scene.position(object), scene.zone(zone))],
            Goal::Relation {
                object,
                relation,
                reference,
            } => vec![dist(
                scene.position(object),
                scene
                    .position(reference)
                    .map(|r| relation_target(r, relation)),
            )],
            Goal::Sort { shape } => scene
                .objects
                .iter()
                .filter(|(o, _)| o.shape == shape)
                .map(|(o, p)| dist(Some(*p), scene.zone(o.colour)))
                .collect(),
            Goal::Displace {
                object,
                direction,
                cm,
            } => vec![dist(
                scene.position(object),
                self.start.map(|s| displace_target(s, direction, cm)),
            )],
        }
    }
}

/// Table half-extent along x (cm): the table is 100 cm wide.
pub const TABLE_HALF_X: f32 = 50.0;
/// Table half-extent along y (cm): the table is 60 cm deep.
pub const TABLE_HALF_Y: f32 = 30.0;
/// Where the pusher starts, cm.
pub const PUSHER_START: [f32; 2] = [0.0, -25.0];

/// Draws a scene and an instruction of one of `families` for `split`, reproducibly from
/// `rng`. Objects start outside every zone and at least 9 cm apart.
pub fn sample<R: rand::Rng + ?Sized>(
    rng: &mut R,
    families: &[Family],
    split: Split,
) -> (SceneState, Instruction) {
    let families = if families.is_empty() {
        &Family::ALL[..]
    } else {
        families
    };
    // Each try succeeds with high probability; the fallback below is never reached in
    // practice.
    for _ in 0..1000 {
        let family = families[rng.random_range(0..families.len())];
        let Some(scene) = sample_scene(rng, family) else {
            continue;
        };
        let Some(instruction) = sample_instruction(rng, family, &scene) else {
            continue;
        };
        let combo = held_out_combination(&instruction.goal);
        let held_phrasing = instruction.phrasing == phrasings(family).len() - 1;
        let fits = match split {
            Split::Train => !combo && !held_phrasing,
            Split::UnseenCombinations => combo && !held_phrasing,
            Split::UnseenPhrasings => !combo && held_phrasing,
            Split::All => true,
        };
        if fits && !instruction.succeeded(&scene) {
            return (scene, instruction);
        }
    }
    fallback()
}

/// A fixed, valid scene and instruction (never reached in practice: `sample` finds one in a
/// few tries for every family and split).
fn fallback() -> (SceneState, Instruction) {
    let object = ObjectRef {
        colour: Colour::Red,
        shape: Shape::Cube,
    };
    let scene = SceneState {
        objects: vec![(object, [0.0, 0.0])],
        zones: vec![(Colour::Blue, [30.0, 10.0])],
        pusher: PUSHER_START,
    };
    let goal = Goal::Place {
        object,
        zone: Colour::Blue,
    };
    let text = render(Family::Single, 0, &goal, None);
    let instruction = Instruction {
        family: Family::Single,
        phrasing: 0,
        text,
        goal,
        reference: None,
        start: None,
    };
    (scene, instruction)
}

fn far_enough(p: [f32; 2], others: &[[f32; 2]], d: f32) -> bool {
    others
        .iter()
        .all(|q| (p[0] - q[0]).abs() > d || (p[1] - q[1]).abs() > d)
}

fn sample_scene<R: rand::Rng + ?Sized>(rng: &mut R, family: Family) -> Option<SceneState> {
    let n_zones = rng.random_range(2..=3usize);
    let mut colours = Colour::ALL.to_vec();
    let mut zones: Vec<(Colour, [f32; 2])> = Vec::new();
    for _ in 0..n_zones {
        let colour = colours.remove(rng.random_range(0..colours.len()));
        let mut placed = None;
        for _ in 0..50 {
            let p = [
                rng.random_range(-38.0..=38.0f32).round(),
                rng.random_range(-12.0..=18.0f32).round(),
            ];
            if far_enough(
                p,
                &zones.iter().map(|z| z.1).collect::<Vec<_>>(),
                2.0 * ZONE_HALF + 6.0,
            ) {
                placed = Some(p);
                break;
            }
        }
        zones.push((colour, placed?));
    }
    let mut kinds: Vec<ObjectRef> = Vec::new();
    if family == Family::Sort {
        // Two or three objects of one shape, one per zone colour.
        let shape = Shape::ALL[rng.random_range(0..3)];
        for (c, _) in &zones {
            if kinds.len() < 3 {
                kinds.push(ObjectRef { colour: *c, shape });
            }
        }
    }
    let n_objects = rng.random_range(3..=5usize).max(kinds.len() + 1);
    while kinds.len() < n_objects {
        let o = ObjectRef {
            colour: Colour::ALL[rng.random_range(0..6)],
            shape: Shape::ALL[rng.random_range(0..3)],
        };
        if family == Family::Sort && kinds.first().is_some_and(|k| k.shape == o.shape) {
            continue;
        }
        if !kinds.contains(&o) {
            kinds.push(o);
        }
    }
    let mut objects: Vec<(ObjectRef, [f32; 2])> = Vec::new();
    for o in kinds {
        let mut placed = None;
        for _ in 0..100 {
            let p = [
                rng.random_range(-40.0..=40.0f32).round(),
                rng.random_range(-14.0..=20.0f32).round(),
            ];
            let clear_of_zones = zones.iter().all(|(_, z)| {
                (p[0] - z[0]).abs() > ZONE_HALF + 4.0 || (p[1] - z[1]).abs() > ZONE_HALF + 4.0
            });
            if clear_of_zones
                && far_enough(p, &objects.iter().map(|x| x.1).collect::<Vec<_>>(), 9.0)
            {
                placed = Some(p);
                break;
            }
        }
        objects.push((o, placed?));
    }
    Some(SceneState {
        objects,
        zones,
        pusher: PUSHER_START,
    })
}

fn sample_instruction<R: rand::Rng + ?Sized>(
    rng: &mut R,
    family: Family,
    scene: &SceneState,
) -> Option<Instruction> {
    let phrasing = rng.random_range(0..phrasings(family).len());
    let object = scene.objects[rng.random_range(0..scene.objects.len())].0;
    let zone = scene.zones[rng.random_range(0..scene.zones.len())].0;
    let mut reference = None;
    let mut start = None;
    let goal = match family {
        Family::Single => Goal::Place { object, zone },
        Family::Relation => {
            let other = scene.objects[rng.random_range(0..scene.objects.len())].0;
            if other == object {
                return None;
            }
            let relation = Relation::ALL[rng.random_range(0..4)];
            let target = relation_target(scene.position(other)?, relation);
            // The target must be on the table, clear of its edges.
            if target[0].abs() > TABLE_HALF_X - 8.0 || target[1].abs() > TABLE_HALF_Y - 8.0 {
                return None;
            }
            Goal::Relation {
                object,
                relation,
                reference: other,
            }
        }
        Family::Reference => {
            let r = match rng.random_range(0..3) {
                0 => Reference::Leftmost,
                1 => Reference::Rightmost,
                _ => Reference::NearestZone(scene.zones[rng.random_range(0..scene.zones.len())].0),
            };
            reference = Some(r);
            Goal::Place {
                object: r.resolve(scene)?,
                zone,
            }
        }
        Family::Sort => Goal::Sort {
            shape: scene.objects.first()?.0.shape,
        },
        Family::Number => {
            let direction = Direction::ALL[rng.random_range(0..4)];
            let cm = [5.0, 8.0, 10.0, 12.0, 15.0, 20.0][rng.random_range(0..6)];
            let p = scene.position(object)?;
            let t = displace_target(p, direction, cm);
            if t[0].abs() > TABLE_HALF_X - 6.0 || t[1].abs() > TABLE_HALF_Y - 6.0 {
                return None;
            }
            start = Some(p);
            Goal::Displace {
                object,
                direction,
                cm,
            }
        }
    };
    let text = render(family, phrasing, &goal, reference);
    Some(Instruction {
        family,
        phrasing,
        text,
        goal,
        reference,
        start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_sampled_instruction_parses_back_to_its_goal() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for split in [
            Split::Train,
            Split::UnseenCombinations,
            Split::UnseenPhrasings,
            Split::All,
        ] {
            for family in Family::ALL {
                for _ in 0..40 {
                    let (scene, instruction) = sample(&mut rng, &[family], split);
                    assert_eq!(instruction.family, family, "{split:?}");
                    let parsed = parse_instruction(&instruction.text, &scene)
                        .unwrap_or_else(|| panic!("{:?} does not parse", instruction.text));
                    assert_eq!(parsed.goal, instruction.goal, "{}", instruction.text);
                    assert_eq!(parsed.phrasing, instruction.phrasing);
                    assert_eq!(parsed.start, instruction.start);
                    assert!(!instruction.succeeded(&scene), "{}", instruction.text);
                    let combo = held_out_combination(&instruction.goal);
                    let last = instruction.phrasing == phrasings(family).len() - 1;
                    match split {
                        Split::Train => assert!(!combo && !last),
                        Split::UnseenCombinations => assert!(combo && !last),
                        Split::UnseenPhrasings => assert!(!combo && last),
                        Split::All => {}
                    }
                }
            }
        }
        assert!(parse_instruction("fly to the moon", &fallback().0).is_none());
        assert!(parse_instruction("", &fallback().0).is_none());
    }

    #[test]
    fn the_verifier_decides_each_family() {
        let red_cube = ObjectRef {
            colour: Colour::Red,
            shape: Shape::Cube,
        };
        let blue_ball = ObjectRef {
            colour: Colour::Blue,
            shape: Shape::Ball,
        };
        let scene = |red: [f32; 2], blue: [f32; 2]| SceneState {
            objects: vec![(red_cube, red), (blue_ball, blue)],
            zones: vec![(Colour::Red, [30.0, 10.0]), (Colour::Blue, [-30.0, 10.0])],
            pusher: PUSHER_START,
        };
        let start = scene([0.0, 0.0], [10.0, 0.0]);
        let text = "push the red cube into the red zone";
        let single = parse_instruction(text, &start).unwrap();
        assert!(!single.succeeded(&start));
        assert!(single.succeeded(&scene([37.0, 3.0], [10.0, 0.0])));
        assert!(!single.succeeded(&scene([39.0, 3.0], [10.0, 0.0])));
        let halfway = single.progress(&scene([15.0, 5.0], [10.0, 0.0]), &start);
        assert!((halfway - 0.45).abs() < 1e-3, "{halfway}");
        assert_eq!(single.progress(&scene([30.0, 10.0], [0.0; 2]), &start), 1.0);

        let rel = parse_instruction("put the red cube left of the blue ball", &start).unwrap();
        assert!(rel.succeeded(&scene([0.0, 2.0], [10.0, 0.0])));
        assert!(!rel.succeeded(&scene([20.0, 0.0], [10.0, 0.0])));
        assert!(!rel.succeeded(&scene([0.0, 9.0], [10.0, 0.0])));

        let reference =
            parse_instruction("move the rightmost object to the blue zone", &start).unwrap();
        assert_eq!(
            reference.goal,
            Goal::Place {
                object: blue_ball,
                zone: Colour::Blue
            }
        );

        let sort =
            parse_instruction("sort every cube into the zone of its colour", &start).unwrap();
        assert!(sort.succeeded(&scene([28.0, 12.0], [0.0, 0.0])));
        assert!(!sort.succeeded(&start));

        let number = parse_instruction("slide the red cube to the left by 10 cm", &start).unwrap();
        assert_eq!(number.start, Some([0.0, 0.0]));
        assert!(number.succeeded(&scene([-9.0, 1.0], [10.0, 0.0])));
        assert!(!number.succeeded(&scene([-5.0, 0.0], [10.0, 0.0])));
    }
}
