//! Property tests: every pattern kind, at any size, keeps the invariants the generation
//! loop relies on.

use std::collections::HashSet;

use musicgen_engine::{CodeGrid, Coord, PatternKind};
use proptest::prelude::*;

fn any_kind() -> impl Strategy<Value = (PatternKind, usize)> {
    (1usize..6).prop_flat_map(|k_count| {
        let kinds = prop_oneof![
            Just(PatternKind::Parallel),
            proptest::collection::vec(0usize..5, k_count).prop_map(|delays| PatternKind::Delay { delays }),
            Just(PatternKind::Flattening),
            Just(PatternKind::PartialFlattening),
            Just(PatternKind::Valle),
            (1usize..4).prop_map(|group_size| PatternKind::MusicLm { group_size }),
        ];
        (kinds, Just(k_count))
    })
}

proptest! {
    #[test]
    fn every_coordinate_appears_exactly_once((kind, k_count) in any_kind(), t_count in 0usize..40) {
        let p = kind.build(t_count, k_count).unwrap();
        let mut seen = HashSet::new();
        for step in p.steps() {
            for &c in step {
                prop_assert!(c.t < t_count && c.k < k_count, "{c:?} out of range");
                prop_assert!(seen.insert(c), "{c:?} appears twice");
            }
        }
        prop_assert_eq!(seen.len(), t_count * k_count);
    }

    #[test]
    fn step_zero_is_empty_and_a_step_holds_a_codebook_once((kind, k_count) in any_kind(), t_count in 0usize..40) {
        let p = kind.build(t_count, k_count).unwrap();
        prop_assert!(p.steps()[0].is_empty());
        for step in p.steps() {
            let codebooks: HashSet<usize> = step.iter().map(|c| c.k).collect();
            prop_assert_eq!(codebooks.len(), step.len());
        }
    }

    #[test]
    fn layout_then_revert_is_the_identity(
        (kind, k_count) in any_kind(),
        t_count in 0usize..40,
        seed in any::<u32>(),
    ) {
        let p = kind.build(t_count, k_count).unwrap();
        let codes: Vec<u32> = (0..k_count * t_count)
            .map(|i| (seed as usize).wrapping_mul(31).wrapping_add(i * 7919) as u32 % 2048)
            .collect();
        let grid = CodeGrid::new(k_count, t_count, codes).unwrap();
        let sequence = p.layout(&grid, 2048).unwrap();
        prop_assert_eq!(sequence.len(), k_count * p.sequence_len());
        prop_assert_eq!(p.revert(&sequence).unwrap(), grid);
    }

    #[test]
    fn a_codebooks_timestep_never_goes_backwards((kind, k_count) in any_kind(), t_count in 0usize..40) {
        let p = kind.build(t_count, k_count).unwrap();
        for k in 0..k_count {
            let steps: Vec<usize> = (0..t_count).map(|t| p.step_of(Coord { t, k })).collect();
            prop_assert!(steps.windows(2).all(|w| w[0] < w[1]), "codebook {k}: {steps:?}");
        }
    }

    #[test]
    fn streamable_patterns_have_a_lag_that_does_not_grow((kind, k_count) in any_kind(), t_count in 1usize..200) {
        let p = kind.build(t_count, k_count).unwrap();
        if p.is_streamable() {
            let bound = kind.build(1, k_count).unwrap().frame_lag_steps().max(k_count);
            prop_assert!(p.frame_lag_steps() <= bound, "lag {} > bound {}", p.frame_lag_steps(), bound);
            prop_assert!(p.require_streamable().is_ok());
        } else {
            prop_assert!(p.require_streamable().is_err());
        }
    }
}
