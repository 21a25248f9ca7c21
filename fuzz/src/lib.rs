//! Fuzzing on the stable toolchain (cargo-fuzz needs nightly, which this project's
//! machines cannot fetch): a proptest strategy is run over fresh seeds until a time budget
//! is spent, and any panic or failed check is shrunk to a small input and reported.
//!
//! The budget per target is `MUSICGEN_FUZZ_SECONDS` (a few seconds in `cargo test`;
//! `cargo xtask fuzz --minutes N` shares N minutes between the targets). The seed of the
//! first round is `MUSICGEN_FUZZ_SEED` (0 in tests, so that a run repeats).

pub use proptest;

use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

pub const SECONDS_ENV: &str = "MUSICGEN_FUZZ_SECONDS";
pub const SEED_ENV: &str = "MUSICGEN_FUZZ_SEED";

/// What a target gets inside `cargo test`.
const DEFAULT_SECONDS: f64 = 3.0;

/// Cases per seed: shrinking restarts each round, so rounds stay short.
const CASES_PER_ROUND: u32 = 64;

fn env_number(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|text| text.parse().ok())
}

/// Runs `check` on inputs from `strategy` until the budget is spent; panics with the
/// smallest failing input found, if any. Prints the number of inputs tried.
pub fn fuzz<S>(target: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let seconds = env_number(SECONDS_ENV).unwrap_or(DEFAULT_SECONDS);
    let first_seed = env_number(SEED_ENV).unwrap_or(0.0) as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let executions = Cell::new(0u64);
    let mut round = 0u64;
    while round == 0 || Instant::now() < deadline {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&first_seed.wrapping_add(round).to_le_bytes());
        seed[8..16].copy_from_slice(&(target.len() as u64).to_le_bytes());
        let config = Config {
            cases: CASES_PER_ROUND,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let result = runner.run(&strategy, |input| {
            executions.set(executions.get() + 1);
            check(input)
        });
        if let Err(failure) = result {
            panic!(
                "fuzz {target}: a finding after {} inputs (round {round}, {SEED_ENV}={}): {failure}",
                executions.get(),
                first_seed.wrapping_add(round)
            );
        }
        round += 1;
    }
    println!(
        "fuzz {target}: {} inputs in {seconds:.0} s, 0 findings",
        executions.get()
    );
}
