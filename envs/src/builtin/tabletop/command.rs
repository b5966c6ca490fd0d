//! The action language of `Tabletop-v0`: what a language controller writes, and its total
//! parser.
//!
//! ## Grammar
//! ```text
//! program   = [ command { sep command } ]      sep = ";" or a line break; empty commands skipped
//! command   = "push" subject ("to" | "into") place
//!           | "push" subject direction number "cm"
//!           | "move" "to" point                  (the pusher alone)
//!           | "done"
//! subject   = object | ["the"] selector
//! selector  = "leftmost" "object" | "rightmost" "object"
//!           | "object" "nearest" ["the"] colour "zone"
//! object    = ["the"] colour shape               e.g. "the red cube"
//! place     = ["the"] colour "zone" | point | relation object
//! relation  = "left of" | "right of" | "behind" | "in front of"
//! point     = "(" number "," number ")"          table coordinates, cm
//! direction = "left" | "right" | "forward" | "back"
//! colour    = "red" | "green" | "blue" | "yellow" | "purple" | "orange"
//! shape     = "cube" | "ball" | "cylinder"
//! number    = ["-"] digits ["." digits]
//! ```
//! Words are case-insensitive and spaces are free. Table coordinates: x to the right, y away
//! from the viewer ("forward"), in centimetres, origin at the table's centre. "behind" an
//! object is further forward (+y), "in front of" it is nearer the viewer (−y).
//!
//! A selector names the pushed object by a property, as Code-as-Policies' perception calls
//! do: the skill resolves it on the table as it is when the command runs (the object with the
//! smallest or largest x, or the one whose centre is nearest the zone's centre), with the same
//! rule as the instruction verifier's [`Reference`].
//!
//! The parser is total: any string, empty, huge or adversarial, gives commands or a
//! [`ParseError`] with the character position, what was expected there and what was found.
//! It never panics (property-tested, and fuzzed by `fuzz/fuzz_targets/action_language.rs`).
//!
//! ```
//! use dreamgym_envs::builtin::tabletop::{Command, parse_program};
//!
//! let program = parse_program("push the red cube into the blue zone; done").unwrap();
//! assert_eq!(program.len(), 2);
//! assert_eq!(program[0].to_string(), "push red cube to blue zone");
//! let err = parse_program("push the red cube into").unwrap_err();
//! assert_eq!(err.position, 22);
//! assert!(err.to_string().contains("expected a place"));
//! assert!(matches!(program[1], Command::Done));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

pub use super::instruction::Reference;

/// Most characters a program may have; longer text is refused before tokenising.
pub const MAX_PROGRAM_CHARS: usize = 4096;
/// Most commands in one program.
pub const MAX_COMMANDS: usize = 16;

/// An object colour (objects and zones share the palette).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
}

impl Colour {
    /// Every colour, in order.
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
    ];

    /// The colour's word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
        }
    }

    /// The colour for a word, if it names one.
    pub fn from_word(word: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.name() == word)
    }

    /// RGB for drawing.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [230, 200, 30],
            Colour::Purple => [140, 60, 180],
            Colour::Orange => [240, 130, 20],
        }
    }
}

/// An object shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A 4 cm cube.
    Cube,
    /// A ball of 2 cm radius.
    Ball,
    /// An upright cylinder, 2 cm radius, 4 cm tall.
    Cylinder,
}

impl Shape {
    /// Every shape, in order.
    pub const ALL: [Shape; 3] = [Shape::Cube, Shape::Ball, Shape::Cylinder];

    /// The shape's word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Cube => "cube",
            Shape::Ball => "ball",
            Shape::Cylinder => "cylinder",
        }
    }

    /// The shape for a word, if it names one.
    pub fn from_word(word: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == word)
    }
}

/// An object named by colour and shape (a scene never has two alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Its colour.
    pub colour: Colour,
    /// Its shape.
    pub shape: Shape,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.colour.name(), self.shape.name())
    }
}

/// The object a push moves: named, or picked by a property when the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subject {
    /// By colour and shape.
    Named(ObjectRef),
    /// By a property of the table as it is when the command runs.
    Selected(Reference),
}

impl From<ObjectRef> for Subject {
    fn from(o: ObjectRef) -> Self {
        Subject::Named(o)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Named(o) => write!(f, "{o}"),
            Subject::Selected(r) => write!(f, "{}", r.words()),
        }
    }
}

/// A direction on the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// −x.
    Left,
    /// +x.
    Right,
    /// +y, away from the viewer.
    Forward,
    /// −y, toward the viewer.
    Back,
}

impl Direction {
    /// Every direction.
    pub const ALL: [Direction; 4] = [
        Direction::Left,
        Direction::Right,
        Direction::Forward,
        Direction::Back,
    ];

    /// The direction's word.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Forward => "forward",
            Direction::Back => "back",
        }
    }

    /// The unit vector in table coordinates.
    pub fn unit(self) -> [f32; 2] {
        match self {
            Direction::Left => [-1.0, 0.0],
            Direction::Right => [1.0, 0.0],
            Direction::Forward => [0.0, 1.0],
            Direction::Back => [0.0, -1.0],
        }
    }
}

/// Where an object goes relative to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// To its left (−x).
    LeftOf,
    /// To its right (+x).
    RightOf,
    /// Beyond it (+y).
    Behind,
    /// Nearer the viewer (−y).
    InFrontOf,
}

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Behind,
        Relation::InFrontOf,
    ];

    /// The relation's words.
    pub fn words(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Behind => "behind",
            Relation::InFrontOf => "in front of",
        }
    }

    /// The unit vector from the reference object toward where the object should go.
    pub fn unit(self) -> [f32; 2] {
        match self {
            Relation::LeftOf => [-1.0, 0.0],
            Relation::RightOf => [1.0, 0.0],
            Relation::Behind => [0.0, 1.0],
            Relation::InFrontOf => [0.0, -1.0],
        }
    }
}

/// Where a push ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Place {
    /// The centre of the zone of this colour.
    Zone(Colour),
    /// A point, table coordinates in cm.
    Point([f32; 2]),
    /// Next to another object.
    Relation(Relation, ObjectRef),
}

/// One command of the action language.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Push an object until it reaches a place.
    Push {
        /// The object pushed.
        object: Subject,
        /// Where it goes.
        to: Place,
    },
    /// Push an object a distance in a direction.
    PushBy {
        /// The object pushed.
        object: Subject,
        /// Which way.
        direction: Direction,
        /// How far, cm.
        cm: f32,
    },
    /// Move the pusher alone to a point.
    MoveTo {
        /// Table coordinates, cm.
        point: [f32; 2],
    },
    /// The controller says the instruction is carried out.
    Done,
}

fn fmt_number(x: f32) -> String {
    if x == x.trunc() && x.abs() < 1.0e6 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn fmt_point(p: [f32; 2]) -> String {
    format!("({}, {})", fmt_number(p[0]), fmt_number(p[1]))
}

impl fmt::Display for Command {
    /// The canonical spelling, which parses back to the same command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Push { object, to } => {
                write!(f, "push {object} to ")?;
                match to {
                    Place::Zone(c) => write!(f, "{} zone", c.name()),
                    Place::Point(p) => write!(f, "{}", fmt_point(*p)),
                    Place::Relation(r, o) => write!(f, "{} {o}", r.words()),
                }
            }
            Command::PushBy {
                object,
                direction,
                cm,
            } => write!(
                f,
                "push {object} {} {} cm",
                direction.name(),
                fmt_number(*cm)
            ),
            Command::MoveTo { point } => write!(f, "move to {}", fmt_point(*point)),
            Command::Done => write!(f, "done"),
        }
    }
}

/// Commands joined in their canonical spelling with `"; "`.
pub fn format_program(commands: &[Command]) -> String {
    commands
        .iter()
        .map(Command::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a program does not parse: where, what the parser expected, and what it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {position}: expected {expected}, found {found}")]
pub struct ParseError {
    /// Character (not byte) offset into the program.
    pub position: usize,
    /// What would have been accepted there.
    pub expected: String,
    /// What was there instead.
    pub found: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Number(f32),
    Open,
    Close,
    Comma,
    Sep,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Number(x) => format!("the number {}", fmt_number(*x)),
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Sep => "the end of the command".into(),
        }
    }
}

/// Longest word or number token, in characters.
const MAX_TOKEN: usize = 24;

fn tokenize(text: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let tok = match c {
            '\n' | ';' => {
                i += 1;
                Tok::Sep
            }
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => {
                i += 1;
                Tok::Open
            }
            ')' => {
                i += 1;
                Tok::Close
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            c if c.is_ascii_alphabetic() => {
                while i < chars.len() && chars[i].is_ascii_alphabetic() {
                    i += 1;
                }
                if i - start > MAX_TOKEN {
                    return Err(ParseError {
                        position: start,
                        expected: "a word of the action language".into(),
                        found: format!("a word of {} letters", i - start),
                    });
                }
                Tok::Word(
                    chars[start..i]
                        .iter()
                        .collect::<String>()
                        .to_ascii_lowercase(),
                )
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                match s.parse::<f32>() {
                    Ok(x) if x.is_finite() && i - start <= MAX_TOKEN => Tok::Number(x),
                    _ => {
                        return Err(ParseError {
                            position: start,
                            expected: "a number such as 12, -3 or 4.5".into(),
                            found: format!("`{}`", truncate(&s)),
                        });
                    }
                }
            }
            other => {
                return Err(ParseError {
                    position: start,
                    expected: "a word, a number, `(`, `)`, `,`, `;` or a line break".into(),
                    found: format!("the character {other:?}"),
                });
            }
        };
        out.push((start, tok));
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_TOKEN {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX_TOKEN).collect::<String>())
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |(p, _)| *p)
    }

    fn error(&self, expected: &str) -> ParseError {
        ParseError {
            position: self.position(),
            expected: expected.into(),
            found: match self.peek() {
                Some(t) => t.describe(),
                None => "the end of the text".into(),
            },
        }
    }

    fn word_is(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn expect_word(&mut self, w: &str) -> Result<(), ParseError> {
        if self.word_is(w) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("`{w}`")))
        }
    }

    fn skip_the(&mut self) {
        if self.word_is("the") {
            self.at += 1;
        }
    }

    fn colour(&mut self, what: &str) -> Result<Colour, ParseError> {
        match self.peek() {
            Some(Tok::Word(w)) => match Colour::from_word(w) {
                Some(c) => {
                    self.at += 1;
                    Ok(c)
                }
                None => Err(self.error(what)),
            },
            _ => Err(self.error(what)),
        }
    }

    fn object(&mut self) -> Result<ObjectRef, ParseError> {
        self.skip_the();
        self.named("an object: a colour (red, green, blue, yellow, purple, orange)")
    }

    /// What a push moves: a named object or a selector.
    fn subject(&mut self) -> Result<Subject, ParseError> {
        self.skip_the();
        let side = match self.peek() {
            Some(Tok::Word(w)) if w == "leftmost" => Some(Reference::Leftmost),
            Some(Tok::Word(w)) if w == "rightmost" => Some(Reference::Rightmost),
            _ => None,
        };
        if let Some(r) = side {
            self.at += 1;
            self.expect_word("object")?;
            return Ok(Subject::Selected(r));
        }
        if self.word_is("object") {
            self.at += 1;
            self.expect_word("nearest")?;
            self.skip_the();
            let zone = self.colour("a zone's colour (red, green, blue, yellow, purple, orange)")?;
            self.expect_word("zone")?;
            return Ok(Subject::Selected(Reference::NearestZone(zone)));
        }
        Ok(Subject::Named(self.named(
            "an object: a colour (red, green, blue, yellow, purple, orange), `leftmost object`, \
             `rightmost object` or `object nearest the <colour> zone`",
        )?))
    }

    fn named(&mut self, what: &str) -> Result<ObjectRef, ParseError> {
        let colour = self.colour(what)?;
        let shape = match self.peek() {
            Some(Tok::Word(w)) => Shape::from_word(w),
            _ => None,
        }
        .ok_or_else(|| self.error("a shape (cube, ball, cylinder)"))?;
        self.at += 1;
        Ok(ObjectRef { colour, shape })
    }

    fn number(&mut self) -> Result<f32, ParseError> {
        match self.peek() {
            Some(Tok::Number(x)) => {
                let x = *x;
                self.at += 1;
                Ok(x)
            }
            _ => Err(self.error("a number")),
        }
    }

    fn point(&mut self) -> Result<[f32; 2], ParseError> {
        if self.peek() != Some(&Tok::Open) {
            return Err(self.error("a point `(x, y)`"));
        }
        self.at += 1;
        let x = self.number()?;
        if self.peek() != Some(&Tok::Comma) {
            return Err(self.error("`,`"));
        }
        self.at += 1;
        let y = self.number()?;
        if self.peek() != Some(&Tok::Close) {
            return Err(self.error("`)`"));
        }
        self.at += 1;
        Ok([x, y])
    }

    fn relation(&mut self) -> Result<Option<Relation>, ParseError> {
        let word = match self.peek() {
            Some(Tok::Word(w)) => w.clone(),
            _ => return Ok(None),
        };
        let relation = match word.as_str() {
            "left" => Relation::LeftOf,
            "right" => Relation::RightOf,
            "behind" => {
                self.at += 1;
                return Ok(Some(Relation::Behind));
            }
            "in" => {
                self.at += 1;
                self.expect_word("front")?;
                self.expect_word("of")?;
                return Ok(Some(Relation::InFrontOf));
            }
            _ => return Ok(None),
        };
        self.at += 1;
        self.expect_word("of")?;
        Ok(Some(relation))
    }

    fn place(&mut self) -> Result<Place, ParseError> {
        const PLACE: &str = "a place: a zone (`blue zone`), a point `(x, y)` or a relation \
                             (`left of the red cube`)";
        if self.peek() == Some(&Tok::Open) {
            return Ok(Place::Point(self.point()?));
        }
        if let Some(r) = self.relation()? {
            return Ok(Place::Relation(r, self.object()?));
        }
        self.skip_the();
        let colour = self.colour(PLACE)?;
        self.expect_word("zone")?;
        Ok(Place::Zone(colour))
    }

    fn command(&mut self) -> Result<Command, ParseError> {
        let verb = match self.peek() {
            Some(Tok::Word(w)) => w.clone(),
            _ => String::new(),
        };
        match verb.as_str() {
            "done" => {
                self.at += 1;
                Ok(Command::Done)
            }
            "move" => {
                self.at += 1;
                self.expect_word("to")?;
                Ok(Command::MoveTo {
                    point: self.point()?,
                })
            }
            "push" => {
                self.at += 1;
                let object = self.subject()?;
                let direction = match self.peek() {
                    Some(Tok::Word(w)) => Direction::ALL.into_iter().find(|d| d.name() == w),
                    _ => None,
                };
                if let Some(direction) = direction {
                    self.at += 1;
                    let cm = self.number()?;
                    self.expect_word("cm")?;
                    return Ok(Command::PushBy {
                        object,
                        direction,
                        cm,
                    });
                }
                if self.word_is("to") || self.word_is("into") {
                    self.at += 1;
                    return Ok(Command::Push {
                        object,
                        to: self.place()?,
                    });
                }
                Err(self.error("`to`, `into` or a direction (left, right, forward, back)"))
            }
            _ => Err(self.error("a command: push, move or done")),
        }
    }
}

/// Parses a program: zero or more commands separated by `;` or line breaks.
pub fn parse_program(text: &str) -> Result<Vec<Command>, ParseError> {
    let n = text.chars().count();
    if n > MAX_PROGRAM_CHARS {
        return Err(ParseError {
            position: MAX_PROGRAM_CHARS,
            expected: format!("at most {MAX_PROGRAM_CHARS} characters"),
            found: format!("{n} characters"),
        });
    }
    let mut p = Parser {
        toks: tokenize(text)?,
        at: 0,
        end: n,
    };
    let mut out = Vec::new();
    loop {
        while p.peek() == Some(&Tok::Sep) {
            p.at += 1;
        }
        if p.peek().is_none() {
            return Ok(out);
        }
        if out.len() == MAX_COMMANDS {
            return Err(p.error(&format!("at most {MAX_COMMANDS} commands")));
        }
        out.push(p.command()?);
        match p.peek() {
            None | Some(Tok::Sep) => {}
            Some(_) => return Err(p.error("`;` or a line break before the next command")),
        }
    }
}

/// Parses one command (a program of exactly one).
pub fn parse_command(text: &str) -> Result<Command, ParseError> {
    let program = parse_program(text)?;
    match program.as_slice() {
        [c] => Ok(*c),
        _ => Err(ParseError {
            position: 0,
            expected: "exactly one command".into(),
            found: format!("{} commands", program.len()),
        }),
    }
}

/// Parses bytes that may not be UTF-8: invalid sequences become U+FFFD, which the parser then
/// refuses with its position.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<Command>, ParseError> {
    parse_program(&String::from_utf8_lossy(bytes))
}

/// The words of the action language (for completing a partial word).
const KEYWORDS: &[&str] = &[
    "push",
    "move",
    "done",
    "to",
    "into",
    "the",
    "zone",
    "of",
    "left",
    "right",
    "behind",
    "in",
    "front",
    "forward",
    "back",
    "cm",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "cube",
    "ball",
    "cylinder",
    "leftmost",
    "rightmost",
    "object",
    "nearest",
];

const END: &str = "the end of the text";

/// Whether `text` parses, or stops parsing only because it ends.
fn complete_or_cut(text: &str) -> bool {
    match parse_program(text) {
        Ok(_) => true,
        Err(e) => e.found == END,
    }
}

/// Whether some continuation of `text` is a valid program: the test grammar-constrained
/// decoding applies to every candidate token. A trailing partial word (`pu`) or number (`-`,
/// `1.`) counts when it can be completed.
///
/// ```
/// use dreamgym_envs::builtin::tabletop::command::is_viable_prefix;
/// assert!(is_viable_prefix("push the re"));
/// assert!(is_viable_prefix("move to (-"));
/// assert!(!is_viable_prefix("push the pink"));
/// assert!(!is_viable_prefix("done done"));
/// ```
pub fn is_viable_prefix(text: &str) -> bool {
    if complete_or_cut(text) {
        return true;
    }
    let trimmed = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let partial = &text[trimmed.len()..];
    if !partial.is_empty() {
        let partial = partial.to_ascii_lowercase();
        return KEYWORDS
            .iter()
            .filter(|k| k.starts_with(&partial) && **k != partial)
            .any(|k| complete_or_cut(&format!("{trimmed}{k}")));
    }
    if text.ends_with(['-', '.']) {
        return complete_or_cut(&format!("{text}0"));
    }
    false
}

/// Whether `text` is a whole program of at least one command (where decoding may stop).
pub fn is_complete_program(text: &str) -> bool {
    parse_program(text).is_ok_and(|p| !p.is_empty())
}

/// Every program that differs from `program` in one slot of one command, with values the
/// scene offers: the pushed object (another object on the table), a zone (another zone on the
/// table), a relation (another of the four) or its reference object, or a direction (another
/// of the four). Distances, points, selectors and `done` are left as they are. Used to propose
/// the other side of a preference pair (`dreamgym pairs --edit`): an answer one decision away
/// from the model's own, which sampling may never reach.
pub fn one_slot_edits(
    program: &[Command],
    scene: &super::instruction::SceneState,
) -> Vec<Vec<Command>> {
    let objects: Vec<ObjectRef> = scene.objects.iter().map(|(o, _)| *o).collect();
    let zones: Vec<Colour> = scene.zones.iter().map(|(c, _)| *c).collect();
    let mut out = Vec::new();
    for (i, command) in program.iter().enumerate() {
        let mut alternatives: Vec<Command> = Vec::new();
        let other_objects = |subject: &Subject| -> Vec<Subject> {
            match subject {
                Subject::Named(o) => objects
                    .iter()
                    .filter(|x| *x != o)
                    .map(|x| Subject::Named(*x))
                    .collect(),
                Subject::Selected(_) => Vec::new(),
            }
        };
        match *command {
            Command::Push { object, to } => {
                for o in other_objects(&object) {
                    alternatives.push(Command::Push { object: o, to });
                }
                match to {
                    Place::Zone(c) => {
                        for z in zones.iter().filter(|z| **z != c) {
                            alternatives.push(Command::Push {
                                object,
                                to: Place::Zone(*z),
                            });
                        }
                    }
                    Place::Relation(r, reference) => {
                        for q in Relation::ALL.into_iter().filter(|q| *q != r) {
                            alternatives.push(Command::Push {
                                object,
                                to: Place::Relation(q, reference),
                            });
                        }
                        for x in objects.iter().filter(|x| **x != reference) {
                            alternatives.push(Command::Push {
                                object,
                                to: Place::Relation(r, *x),
                            });
                        }
                    }
                    Place::Point(_) => {}
                }
            }
            Command::PushBy {
                object,
                direction,
                cm,
            } => {
                for o in other_objects(&object) {
                    alternatives.push(Command::PushBy {
                        object: o,
                        direction,
                        cm,
                    });
                }
                for d in Direction::ALL.into_iter().filter(|d| *d != direction) {
                    alternatives.push(Command::PushBy {
                        object,
                        direction: d,
                        cm,
                    });
                }
            }
            Command::MoveTo { .. } | Command::Done => {}
        }
        for alt in alternatives {
            let mut edited = program.to_vec();
            edited[i] = alt;
            out.push(edited);
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn one_slot_edits_change_one_decision_to_values_the_table_offers() {
        use super::super::instruction::SceneState;
        let scene = SceneState {
            objects: vec![
                (
                    ObjectRef {
                        colour: Colour::Red,
                        shape: Shape::Cube,
                    },
                    [0.0, 0.0],
                ),
                (
                    ObjectRef {
                        colour: Colour::Blue,
                        shape: Shape::Ball,
                    },
                    [10.0, 0.0],
                ),
            ],
            zones: vec![(Colour::Red, [20.0, 20.0]), (Colour::Blue, [-20.0, 20.0])],
            pusher: [0.0, -25.0],
        };
        let program =
            parse_program("push red cube left 10 cm; push blue ball to red zone").unwrap();
        let edits: Vec<String> = one_slot_edits(&program, &scene)
            .iter()
            .map(|p| format_program(p))
            .collect();
        // First command: the other object, three other directions; second: the other object,
        // the other zone. The distance is kept.
        assert_eq!(
            edits,
            [
                "push blue ball left 10 cm; push blue ball to red zone",
                "push red cube right 10 cm; push blue ball to red zone",
                "push red cube forward 10 cm; push blue ball to red zone",
                "push red cube back 10 cm; push blue ball to red zone",
                "push red cube left 10 cm; push red cube to red zone",
                "push red cube left 10 cm; push blue ball to blue zone",
            ]
        );
        // Nothing to change in `done`, a point or a selector's subject.
        let fixed = parse_program("push leftmost object to (3, 4); done").unwrap();
        assert!(one_slot_edits(&fixed, &scene).is_empty());
    }

    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_object(rng: &mut ChaCha8Rng) -> ObjectRef {
        ObjectRef {
            colour: Colour::ALL[rng.random_range(0..6)],
            shape: Shape::ALL[rng.random_range(0..3)],
        }
    }

    fn random_subject(rng: &mut ChaCha8Rng) -> Subject {
        match rng.random_range(0..5) {
            0 => Subject::Selected(Reference::Leftmost),
            1 => Subject::Selected(Reference::Rightmost),
            2 => Subject::Selected(Reference::NearestZone(Colour::ALL[rng.random_range(0..6)])),
            _ => Subject::Named(random_object(rng)),
        }
    }

    fn random_number(rng: &mut ChaCha8Rng) -> f32 {
        if rng.random_bool(0.5) {
            rng.random_range(-60i32..=60) as f32
        } else {
            (rng.random_range(-6000i32..=6000) as f32) / 100.0
        }
    }

    fn random_command(rng: &mut ChaCha8Rng) -> Command {
        match rng.random_range(0..6) {
            0 => Command::Done,
            1 => Command::MoveTo {
                point: [random_number(rng), random_number(rng)],
            },
            2 => Command::PushBy {
                object: random_subject(rng),
                direction: Direction::ALL[rng.random_range(0..4)],
                cm: random_number(rng),
            },
            3 => Command::Push {
                object: random_subject(rng),
                to: Place::Zone(Colour::ALL[rng.random_range(0..6)]),
            },
            4 => Command::Push {
                object: random_subject(rng),
                to: Place::Point([random_number(rng), random_number(rng)]),
            },
            _ => Command::Push {
                object: random_subject(rng),
                to: Place::Relation(Relation::ALL[rng.random_range(0..4)], random_object(rng)),
            },
        }
    }

    #[test]
    fn every_command_parses_back_from_its_canonical_spelling() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..2000 {
            let n = rng.random_range(0..5);
            let program: Vec<Command> = (0..n).map(|_| random_command(&mut rng)).collect();
            let text = format_program(&program);
            assert_eq!(parse_program(&text).unwrap(), program, "{text}");
            // Upper case, extra space, line breaks and empty commands change nothing.
            let loose = format!(";\n {} ;;\n", text.to_uppercase().replace("; ", " ;\n  "));
            assert_eq!(parse_program(&loose).unwrap(), program, "{loose}");
        }
    }

    #[test]
    fn synonyms_and_articles_are_accepted() {
        let a = parse_command("Push the red cube into the blue zone").unwrap();
        let b = parse_command("push red cube to blue zone").unwrap();
        assert_eq!(a, b);
        let c = parse_command("push the green ball to in front of the red cylinder").unwrap();
        assert_eq!(
            c,
            Command::Push {
                object: Subject::Named(ObjectRef {
                    colour: Colour::Green,
                    shape: Shape::Ball
                }),
                to: Place::Relation(
                    Relation::InFrontOf,
                    ObjectRef {
                        colour: Colour::Red,
                        shape: Shape::Cylinder
                    }
                ),
            }
        );
    }

    #[test]
    fn selectors_name_the_pushed_object_by_a_property() {
        let blue = Reference::NearestZone(Colour::Blue);
        for (text, subject) in [
            (
                "push the leftmost object into the red zone",
                Reference::Leftmost,
            ),
            ("Push rightmost object to red zone", Reference::Rightmost),
            (
                "push the object nearest the blue zone to the red zone",
                blue,
            ),
            ("push object nearest blue zone into red zone", blue),
        ] {
            assert_eq!(
                parse_command(text).unwrap(),
                Command::Push {
                    object: Subject::Selected(subject),
                    to: Place::Zone(Colour::Red)
                },
                "{text}"
            );
        }
        let c = parse_command("push the leftmost object back 5 cm").unwrap();
        assert_eq!(c.to_string(), "push leftmost object back 5 cm");
        let c = parse_command("push the object nearest the blue zone to (1, 2)").unwrap();
        assert_eq!(c.to_string(), "push object nearest the blue zone to (1, 2)");
        // A selector names only the pushed object, and whole.
        let e = parse_program("push leftmost cube to red zone").unwrap_err();
        assert_eq!((e.position, e.found.as_str()), (14, "`cube`"));
        let e = parse_program("push object nearest the pink zone to red zone").unwrap_err();
        assert!(e.expected.contains("zone's colour"), "{e}");
        let e = parse_program("push red cube to left of the leftmost object").unwrap_err();
        assert_eq!(e.position, 29);
        let e = parse_program("push the teal cube to red zone").unwrap_err();
        assert!(e.expected.contains("leftmost object"), "{e}");
        assert!(is_viable_prefix("push the left"));
        assert!(is_viable_prefix("push object near"));
        assert!(!is_viable_prefix("push leftmost ball"));
        // Commands keep their serialized form; selectors add theirs.
        let named = parse_command("push red cube to blue zone").unwrap();
        let json = serde_json::to_string(&named).unwrap();
        assert!(
            json.contains(r#""object":{"colour":"red","shape":"cube"}"#),
            "{json}"
        );
        for c in [
            named,
            parse_command("push object nearest blue zone left 3 cm").unwrap(),
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c, "{json}");
        }
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        let e = parse_program("push the pink cube to blue zone").unwrap_err();
        assert_eq!(e.position, 9);
        assert!(e.expected.contains("colour"), "{e}");
        assert_eq!(e.found, "`pink`");
        let e = parse_program("push red cube left ten cm").unwrap_err();
        assert_eq!((e.position, e.expected.as_str()), (19, "a number"));
        let e = parse_program("move to (3, 4").unwrap_err();
        assert_eq!((e.position, e.found.as_str()), (13, "the end of the text"));
        let e = parse_program("done done").unwrap_err();
        assert_eq!(e.position, 5);
        let e = parse_program("push red cube to (1e9, 0)").unwrap_err();
        assert_eq!((e.position, e.expected.as_str()), (19, "`,`"));
        let e = parse_program("fly away").unwrap_err();
        assert!(e.expected.contains("push, move or done"));
        let e = parse_program("push red cube to (--1, 0)").unwrap_err();
        assert!(e.expected.contains("number"), "{e}");
        // Positions count characters: `é` is one.
        let e = parse_program("é").unwrap_err();
        assert_eq!(e.position, 0);
        let e = parse_program("done; é").unwrap_err();
        assert_eq!(e.position, 6);
    }

    #[test]
    fn viable_prefixes_are_exactly_the_prefixes_of_valid_programs() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for _ in 0..300 {
            let program: Vec<Command> = (0..2).map(|_| random_command(&mut rng)).collect();
            let text = format_program(&program);
            let chars: Vec<char> = text.chars().collect();
            for i in 0..=chars.len() {
                let prefix: String = chars[..i].iter().collect();
                assert!(is_viable_prefix(&prefix), "{prefix:?} of {text:?}");
            }
            assert!(is_complete_program(&text));
            assert!(!is_viable_prefix(&format!("{text} x")), "{text}");
        }
        assert!(!is_complete_program(""));
        assert!(!is_complete_program("push red cube"));
        assert!(!is_viable_prefix("pushx"));
        assert!(!is_viable_prefix("push red cube to (1, 2))"));
        assert!(is_viable_prefix("push red cube to (1.5"));
    }

    #[test]
    fn what_extends_a_viable_prefix_extends_it_one_character_at_a_time() {
        // Constrained decoding skips a token whose first character cannot continue the text:
        // that is sound only if viability is closed under prefixes.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let pieces = [
            "push", " red", "Push", " cube", " to", " (", "(-", "-3", "1.5", ".", " left", ";",
            "\n", " done", "zz", ")", ", ", " cm", "12", " the", " zone", "xpush", " of",
        ];
        let mut checked = 0;
        for _ in 0..200 {
            let program: Vec<Command> = (0..2).map(|_| random_command(&mut rng)).collect();
            let text = format_program(&program);
            let chars: Vec<char> = text.chars().collect();
            let cut = rng.random_range(0..=chars.len());
            let prefix: String = chars[..cut].iter().collect();
            for piece in pieces {
                let whole = format!("{prefix}{piece}");
                if is_viable_prefix(&whole) {
                    checked += 1;
                    let first = &piece[..1];
                    assert!(
                        is_viable_prefix(&format!("{prefix}{first}")),
                        "{whole:?} is viable but not its prefix with {first:?}"
                    );
                }
            }
        }
        assert!(checked > 150, "only {checked} viable extensions were tried");
    }

    #[test]
    fn limits_are_errors_not_panics() {
        assert_eq!(parse_program("").unwrap(), vec![]);
        assert_eq!(parse_program(" ;\n; ").unwrap(), vec![]);
        let huge = "done;".repeat(10_000);
        assert!(parse_program(&huge).is_err());
        let many = "done;".repeat(MAX_COMMANDS + 1);
        let e = parse_program(&many).unwrap_err();
        assert!(e.expected.contains("at most"), "{e}");
        let long_word = "a".repeat(100);
        assert!(parse_program(&long_word).is_err());
        let long_number = "9".repeat(100);
        assert!(parse_program(&format!("move to ({long_number}, 0)")).is_err());
        assert!(parse_bytes(&[0xff, 0xfe, b'd']).is_err());
        assert_eq!(parse_bytes(b"done").unwrap(), vec![Command::Done]);
    }

    #[test]
    fn random_and_mutated_text_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let alphabet: Vec<char> = "push move done to into the red blue cube ball zone left of \
                                   behind in front cm (),;.-0123456789\n\t é\u{0}\u{7f}\u{ffff}"
            .chars()
            .collect();
        for _ in 0..20_000 {
            let n = rng.random_range(0..60);
            let text: String = (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            if let Err(e) = parse_program(&text) {
                assert!(e.position <= text.chars().count(), "{text:?}: {e}");
            }
        }
        // Valid programs with one character changed, dropped or doubled.
        for _ in 0..5_000 {
            let program: Vec<Command> = (0..3).map(|_| random_command(&mut rng)).collect();
            let mut chars: Vec<char> = format_program(&program).chars().collect();
            let i = rng.random_range(0..chars.len());
            match rng.random_range(0..3) {
                0 => chars[i] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    chars.remove(i);
                }
                _ => chars.insert(i, chars[i]),
            }
            let text: String = chars.into_iter().collect();
            if let Err(e) = parse_program(&text) {
                assert!(e.position <= text.chars().count(), "{text:?}: {e}");
            }
        }
    }
}
