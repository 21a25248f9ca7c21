//! Codebook interleaving patterns: the order in which MusicGen's decoder produces the
//! `K` codebook tokens of each frame.
//!
//! A [`Pattern`] for `T` timesteps and `K` codebooks is a list of steps. Each step holds
//! the coordinates `(t, k)` the decoder produces at that step; step 0 is always empty
//! (the decoder is fed the special token there) and every coordinate appears in exactly
//! one step. At step `s` the decoder is fed the tokens of step `s` and predicts those of
//! step `s + 1`, so a pattern with `S` generation steps has a sequence of `S + 1` columns.
//!
//! Every pattern kind builds the same type, as in audiocraft's `codebooks_patterns.py`:
//! the generation loop, the streaming logic and the CLI never special-case a kind.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// One token position: timestep `t` (a 50 Hz frame) of codebook `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Coord {
    pub t: usize,
    pub k: usize,
}

/// The longest delay a delay pattern takes: MusicGen's are a few steps, and a delay
/// beyond this is a broken manifest or flag, not a pattern worth building.
pub const MAX_DELAY_STEPS: usize = 1024;

/// Why a pattern, or an operation on one, was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("a pattern needs at least one codebook")]
    NoCodebooks,
    #[error("delay pattern has {delays} delays for {codebooks} codebooks; give one delay per codebook")]
    DelayCount { delays: usize, codebooks: usize },
    #[error("a delay of {delay} steps is more than the {MAX_DELAY_STEPS} a delay pattern allows")]
    DelayTooLong { delay: usize },
    #[error("MusicLM grouping needs a group size of at least 1")]
    EmptyGroup,
    #[error("unknown pattern `{0}`; expected one of: {names}", names = PatternKind::NAMES.join(", "))]
    UnknownName(String),
    #[error("code grid is {got_k}x{got_t} but the pattern is {want_k}x{want_t} (codebooks x timesteps)")]
    GridShape {
        got_k: usize,
        got_t: usize,
        want_k: usize,
        want_t: usize,
    },
    #[error("sequence has {got} values but the pattern needs {want} ({codebooks} codebooks x {columns} columns)")]
    SequenceLength {
        got: usize,
        want: usize,
        codebooks: usize,
        columns: usize,
    },
    #[error(
        "pattern `{name}` is not streamable: a frame completes {lag_steps} steps after its first token \
         for {timesteps} timesteps, and that lag grows with the length; live mode needs parallel, \
         delay, flattening or partial flattening"
    )]
    NotStreamable {
        name: &'static str,
        lag_steps: usize,
        timesteps: usize,
    },
}

/// The rule that orders coordinates into steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternKind {
    /// All codebooks of a timestep in one step.
    Parallel,
    /// Codebook `k` of timestep `t` at step `t + delays[k] + 1` (MusicGen: `[0, 1, 2, 3]`).
    /// Delays that are not all distinct give a partial delay, e.g. `[0, 1, 1, 1]`.
    Delay { delays: Vec<usize> },
    /// Fully unrolled: one codebook per step, timestep by timestep.
    Flattening,
    /// Codebook 0 alone, then all other codebooks together, timestep by timestep.
    PartialFlattening,
    /// Codebook 0 for every timestep, then the others in parallel for every timestep.
    Valle,
    /// Codebooks flattened in groups of `group_size`, one group after the other over all
    /// timesteps.
    MusicLm { group_size: usize },
}

impl PatternKind {
    /// The command-line names, in the order the pattern table lists them.
    pub const NAMES: [&'static str; 7] = [
        "parallel",
        "delay",
        "partial-delay",
        "flattening",
        "partial-flattening",
        "valle",
        "musiclm",
    ];

    /// MusicGen's delays for `num_codebooks`: `[0, 1, .., K - 1]`.
    pub(crate) fn musicgen_delay(num_codebooks: usize) -> Self {
        Self::Delay {
            delays: (0..num_codebooks).collect(),
        }
    }

    /// The partial delay that keeps codebook 0 first and delays all others by one step.
    pub(crate) fn partial_delay(num_codebooks: usize) -> Self {
        Self::Delay {
            delays: (0..num_codebooks).map(|k| k.min(1)).collect(),
        }
    }

    /// The kind named on the command line, with its default parameters for `num_codebooks`.
    pub fn from_name(name: &str, num_codebooks: usize) -> Result<Self, PatternError> {
        match name {
            "parallel" => Ok(Self::Parallel),
            "delay" => Ok(Self::musicgen_delay(num_codebooks)),
            "partial-delay" => Ok(Self::partial_delay(num_codebooks)),
            "flattening" => Ok(Self::Flattening),
            "partial-flattening" => Ok(Self::PartialFlattening),
            "valle" => Ok(Self::Valle),
            "musiclm" => Ok(Self::MusicLm { group_size: 2 }),
            other => Err(PatternError::UnknownName(other.to_owned())),
        }
    }

    /// The command-line name. Delays that are `[0, 1, .., K - 1]` read as `delay`, any
    /// other delays as `partial-delay`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Parallel => "parallel",
            Self::Delay { delays } if delays.iter().enumerate().all(|(k, &d)| k == d) => "delay",
            Self::Delay { .. } => "partial-delay",
            Self::Flattening => "flattening",
            Self::PartialFlattening => "partial-flattening",
            Self::Valle => "valle",
            Self::MusicLm { .. } => "musiclm",
        }
    }

    /// Lays out the coordinates of `num_timesteps` x `num_codebooks` into steps.
    pub fn build(&self, num_timesteps: usize, num_codebooks: usize) -> Result<Pattern, PatternError> {
        if num_codebooks == 0 {
            return Err(PatternError::NoCodebooks);
        }
        let (t_count, k_count) = (num_timesteps, num_codebooks);
        let mut steps: Vec<Vec<Coord>> = vec![Vec::new()];
        match self {
            Self::Parallel => {
                steps.extend((0..t_count).map(|t| (0..k_count).map(|k| Coord { t, k }).collect()));
            }
            Self::Delay { delays } => {
                if delays.len() != k_count {
                    return Err(PatternError::DelayCount {
                        delays: delays.len(),
                        codebooks: k_count,
                    });
                }
                let max_delay = delays.iter().copied().max().unwrap_or(0);
                if max_delay > MAX_DELAY_STEPS {
                    return Err(PatternError::DelayTooLong { delay: max_delay });
                }
                let generation_steps = if t_count == 0 { 0 } else { t_count + max_delay };
                steps.extend((0..generation_steps).map(|s| {
                    delays
                        .iter()
                        .enumerate()
                        .filter(|&(_, &d)| s >= d && s - d < t_count)
                        .map(|(k, &d)| Coord { t: s - d, k })
                        .collect()
                }));
            }
            Self::Flattening => {
                for t in 0..t_count {
                    steps.extend((0..k_count).map(|k| vec![Coord { t, k }]));
                }
            }
            Self::PartialFlattening => {
                for t in 0..t_count {
                    steps.push(vec![Coord { t, k: 0 }]);
                    if k_count > 1 {
                        steps.push((1..k_count).map(|k| Coord { t, k }).collect());
                    }
                }
            }
            Self::Valle => {
                steps.extend((0..t_count).map(|t| vec![Coord { t, k: 0 }]));
                if k_count > 1 {
                    steps.extend((0..t_count).map(|t| (1..k_count).map(|k| Coord { t, k }).collect()));
                }
            }
            Self::MusicLm { group_size } => {
                if *group_size == 0 {
                    return Err(PatternError::EmptyGroup);
                }
                for group_start in (0..k_count).step_by(*group_size) {
                    let group_end = (group_start + group_size).min(k_count);
                    for t in 0..t_count {
                        steps.extend((group_start..group_end).map(|k| vec![Coord { t, k }]));
                    }
                }
            }
        }
        Ok(Pattern::from_steps(self.clone(), num_timesteps, num_codebooks, steps))
    }

    /// Whether the lag from a frame's first token to its completion stays bounded as the
    /// pattern grows. Every kind here has a lag that is either constant or grows with `T`,
    /// so comparing two lengths decides it from the built patterns rather than from a
    /// second, hand-kept list of kinds.
    pub(crate) fn is_streamable(&self, num_codebooks: usize) -> Result<bool, PatternError> {
        const SHORT_T: usize = 4;
        let short = self.build(SHORT_T, num_codebooks)?.frame_lag_steps();
        let long = self.build(SHORT_T * 2, num_codebooks)?.frame_lag_steps();
        Ok(short == long)
    }
}

impl fmt::Display for PatternKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delay { delays } => {
                let list: Vec<String> = delays.iter().map(usize::to_string).collect();
                write!(f, "{} [{}]", self.name(), list.join(","))
            }
            Self::MusicLm { group_size } => write!(f, "{} (groups of {group_size})", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// A `[K, T]` grid of codes, codebook-major (row `k` holds codebook `k` for every timestep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeGrid {
    num_codebooks: usize,
    num_timesteps: usize,
    codes: Vec<u32>,
}

impl CodeGrid {
    /// A grid from codebook-major values; `None` if the length is not `K * T`.
    pub fn new(num_codebooks: usize, num_timesteps: usize, codes: Vec<u32>) -> Option<Self> {
        (codes.len() == num_codebooks * num_timesteps).then_some(Self {
            num_codebooks,
            num_timesteps,
            codes,
        })
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    pub fn num_timesteps(&self) -> usize {
        self.num_timesteps
    }

    pub(crate) fn get(&self, coord: Coord) -> u32 {
        self.codes[coord.k * self.num_timesteps + coord.t]
    }

    /// The codes of codebook `k` for every timestep.
    pub fn codebook(&self, k: usize) -> &[u32] {
        &self.codes[k * self.num_timesteps..(k + 1) * self.num_timesteps]
    }
}

/// A built pattern: the steps, plus the inverse map from coordinate to step.
#[derive(Clone, Debug)]
pub struct Pattern {
    kind: PatternKind,
    num_timesteps: usize,
    num_codebooks: usize,
    steps: Vec<Vec<Coord>>,
    /// `step_of[k * T + t]` is the step that produces `(t, k)`.
    step_of: Vec<usize>,
}

impl Pattern {
    fn from_steps(kind: PatternKind, num_timesteps: usize, num_codebooks: usize, steps: Vec<Vec<Coord>>) -> Self {
        let mut step_of = vec![usize::MAX; num_timesteps * num_codebooks];
        for (s, coords) in steps.iter().enumerate() {
            for c in coords {
                step_of[c.k * num_timesteps + c.t] = s;
            }
        }
        Self {
            kind,
            num_timesteps,
            num_codebooks,
            steps,
            step_of,
        }
    }

    pub fn kind(&self) -> &PatternKind {
        &self.kind
    }

    pub fn num_timesteps(&self) -> usize {
        self.num_timesteps
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    /// Generation steps: the decoder runs this many times. Step 0, which only feeds the
    /// special token, is not counted (audiocraft's `num_sequence_steps`).
    pub fn num_steps(&self) -> usize {
        self.steps.len() - 1
    }

    /// Columns of the laid-out sequence: step 0 plus every generation step.
    pub fn sequence_len(&self) -> usize {
        self.steps.len()
    }

    /// All steps, step 0 (empty) first.
    pub fn steps(&self) -> &[Vec<Coord>] {
        &self.steps
    }

    /// The coordinates produced at `step`; empty past the end.
    pub(crate) fn coords_at(&self, step: usize) -> &[Coord] {
        self.steps.get(step).map_or(&[], Vec::as_slice)
    }

    /// The step that produces `(t, k)`.
    pub fn step_of(&self, coord: Coord) -> usize {
        self.step_of[coord.k * self.num_timesteps + coord.t]
    }

    /// The step that produces timestep `t`'s first token: a new conditioning from this
    /// step on reaches the frame.
    pub(crate) fn frame_first_step(&self, t: usize) -> usize {
        (0..self.num_codebooks)
            .map(|k| self.step_of(Coord { t, k }))
            .min()
            .unwrap_or(0)
    }

    /// The step after which timestep `t` has all of its codebooks.
    pub(crate) fn frame_complete_step(&self, t: usize) -> usize {
        (0..self.num_codebooks)
            .map(|k| self.step_of(Coord { t, k }))
            .max()
            .unwrap_or(0)
    }

    /// The longest wait, in steps, from a frame's first token to its last.
    pub fn frame_lag_steps(&self) -> usize {
        (0..self.num_timesteps)
            .map(|t| {
                let steps = (0..self.num_codebooks).map(|k| self.step_of(Coord { t, k }));
                let (first, last) = steps.fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
                last - first
            })
            .max()
            .unwrap_or(0)
    }

    pub fn is_streamable(&self) -> bool {
        self.kind
            .is_streamable(self.num_codebooks)
            .expect("a built pattern's kind builds again")
    }

    /// Refuses a pattern whose frame lag grows with its length: live playback could not
    /// keep up with it.
    pub fn require_streamable(&self) -> Result<(), PatternError> {
        if self.is_streamable() {
            Ok(())
        } else {
            Err(PatternError::NotStreamable {
                name: self.kind.name(),
                lag_steps: self.frame_lag_steps(),
                timesteps: self.num_timesteps,
            })
        }
    }

    /// Lays `codes` out in step order: a codebook-major `[K, S + 1]` sequence where column
    /// `s` holds the tokens of step `s` and `special` wherever a codebook has no coordinate.
    pub fn layout(&self, codes: &CodeGrid, special: u32) -> Result<Vec<u32>, PatternError> {
        self.check_grid(codes)?;
        let columns = self.sequence_len();
        let mut sequence = vec![special; self.num_codebooks * columns];
        for (s, coords) in self.steps.iter().enumerate() {
            for &c in coords {
                sequence[c.k * columns + s] = codes.get(c);
            }
        }
        Ok(sequence)
    }

    /// Reverts [`Pattern::layout`]: reads each coordinate back from its step's column.
    pub fn revert(&self, sequence: &[u32]) -> Result<CodeGrid, PatternError> {
        let columns = self.sequence_len();
        let want = self.num_codebooks * columns;
        if sequence.len() != want {
            return Err(PatternError::SequenceLength {
                got: sequence.len(),
                want,
                codebooks: self.num_codebooks,
                columns,
            });
        }
        let t_count = self.num_timesteps;
        let mut codes = vec![0; self.num_codebooks * t_count];
        for (s, coords) in self.steps.iter().enumerate() {
            for c in coords {
                codes[c.k * t_count + c.t] = sequence[c.k * columns + s];
            }
        }
        Ok(CodeGrid {
            num_codebooks: self.num_codebooks,
            num_timesteps: t_count,
            codes,
        })
    }

    fn check_grid(&self, codes: &CodeGrid) -> Result<(), PatternError> {
        if codes.num_codebooks == self.num_codebooks && codes.num_timesteps == self.num_timesteps {
            Ok(())
        } else {
            Err(PatternError::GridShape {
                got_k: codes.num_codebooks,
                got_t: codes.num_timesteps,
                want_k: self.num_codebooks,
                want_t: self.num_timesteps,
            })
        }
    }
}

/// Parses delays written as `0,1,1,1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delays(pub Vec<usize>);

impl FromStr for Delays {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(|part| {
                part.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("`{part}` in `{text}` is not a delay; write delays as 0,1,2,3"))
            })
            .collect::<Result<_, _>>()
            .map(Delays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(kind: PatternKind) -> (usize, usize, bool) {
        let p = kind.build(1500, 4).unwrap();
        (p.num_steps(), p.frame_lag_steps(), p.is_streamable())
    }

    #[test]
    fn thirty_seconds_at_50_hz_matches_the_design_table() {
        assert_eq!(counts(PatternKind::Parallel), (1500, 0, true));
        assert_eq!(counts(PatternKind::musicgen_delay(4)), (1503, 3, true));
        assert_eq!(counts(PatternKind::partial_delay(4)), (1501, 1, true));
        assert_eq!(counts(PatternKind::Flattening), (6000, 3, true));
        assert_eq!(counts(PatternKind::PartialFlattening), (3000, 1, true));
        assert_eq!(counts(PatternKind::Valle), (3000, 1500, false));
        assert_eq!(counts(PatternKind::MusicLm { group_size: 2 }), (6000, 3001, false));
    }

    #[test]
    fn delay_places_codebook_k_k_steps_late() {
        let p = PatternKind::musicgen_delay(4).build(3, 4).unwrap();
        let steps: Vec<Vec<(usize, usize)>> = p
            .steps()
            .iter()
            .map(|s| s.iter().map(|c| (c.t, c.k)).collect())
            .collect();
        assert_eq!(
            steps,
            vec![
                vec![],
                vec![(0, 0)],
                vec![(1, 0), (0, 1)],
                vec![(2, 0), (1, 1), (0, 2)],
                vec![(2, 1), (1, 2), (0, 3)],
                vec![(2, 2), (1, 3)],
                vec![(2, 3)],
            ]
        );
        assert_eq!(p.frame_complete_step(0), 4);
    }

    #[test]
    fn layout_puts_special_tokens_in_empty_places() {
        let p = PatternKind::musicgen_delay(2).build(2, 2).unwrap();
        let grid = CodeGrid::new(2, 2, vec![10, 11, 20, 21]).unwrap();
        let seq = p.layout(&grid, 99).unwrap();
        assert_eq!(seq, vec![99, 10, 11, 99, /* codebook 1 */ 99, 99, 20, 21]);
        assert_eq!(p.revert(&seq).unwrap(), grid);
    }

    #[test]
    fn musiclm_keeps_pairs_together() {
        let p = PatternKind::MusicLm { group_size: 2 }.build(2, 4).unwrap();
        let order: Vec<(usize, usize)> = p.steps()[1..].iter().map(|s| (s[0].t, s[0].k)).collect();
        assert_eq!(
            order,
            vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
        );
    }

    #[test]
    fn bad_shapes_and_names_are_refused() {
        assert_eq!(
            PatternKind::Delay { delays: vec![0, 1] }.build(4, 4).unwrap_err(),
            PatternError::DelayCount {
                delays: 2,
                codebooks: 4
            }
        );
        assert_eq!(
            PatternKind::Parallel.build(4, 0).unwrap_err(),
            PatternError::NoCodebooks
        );
        // Found by fuzzing the manifest: a huge delay asked for a vector of that length.
        assert_eq!(
            PatternKind::Delay {
                delays: vec![0, usize::MAX / 2]
            }
            .build(4, 2)
            .unwrap_err(),
            PatternError::DelayTooLong { delay: usize::MAX / 2 }
        );
        assert!(matches!(
            PatternKind::from_name("zigzag", 4),
            Err(PatternError::UnknownName(name)) if name == "zigzag"
        ));
        let p = PatternKind::Parallel.build(2, 2).unwrap();
        assert!(matches!(
            p.revert(&[1, 2, 3]),
            Err(PatternError::SequenceLength { want: 6, .. })
        ));
        let grid = CodeGrid::new(1, 2, vec![0, 0]).unwrap();
        assert!(matches!(p.layout(&grid, 0), Err(PatternError::GridShape { .. })));
    }

    #[test]
    fn live_mode_refuses_valle_with_its_lag() {
        let p = PatternKind::Valle.build(100, 4).unwrap();
        let err = p.require_streamable().unwrap_err();
        assert!(err.to_string().contains("valle"), "{err}");
        assert!(err.to_string().contains("100 steps"), "{err}");
        assert!(
            PatternKind::musicgen_delay(4)
                .build(100, 4)
                .unwrap()
                .require_streamable()
                .is_ok()
        );
    }

    #[test]
    fn names_round_trip() {
        for name in PatternKind::NAMES {
            assert_eq!(PatternKind::from_name(name, 4).unwrap().name(), name);
        }
        assert_eq!("0, 1,1,1".parse::<Delays>().unwrap(), Delays(vec![0, 1, 1, 1]));
        assert!("0,x".parse::<Delays>().is_err());
    }
}
