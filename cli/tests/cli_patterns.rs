//! `musicgen patterns` as a person runs it.

use std::process::Command;

use serde_json::Value;

fn musicgen(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn table_json_gives_the_30_second_step_counts() {
    let rows: Vec<Value> =
        serde_json::from_str(&musicgen(&["patterns", "--seconds", "30", "--format", "json"])).unwrap();
    let got: Vec<(String, u64, u64, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["steps"].as_u64().unwrap(),
                r["frame_lag_steps"].as_u64().unwrap(),
                r["streamable"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("parallel", 1500, 0, true),
        ("delay", 1503, 3, true),
        ("partial-delay", 1501, 1, true),
        ("flattening", 6000, 3, true),
        ("partial-flattening", 3000, 1, true),
        ("valle", 3000, 1500, false),
        ("musiclm", 6000, 3001, false),
    ];
    let want: Vec<(String, u64, u64, bool)> = want.iter().map(|&(n, s, l, st)| (n.to_owned(), s, l, st)).collect();
    assert_eq!(got, want);
}

#[test]
fn delays_flag_changes_the_partial_delay() {
    let rows: Vec<Value> =
        serde_json::from_str(&musicgen(&["patterns", "--delays", "0,2,2,2", "--format", "json"])).unwrap();
    let partial = rows.iter().find(|r| r["name"] == "partial-delay").unwrap();
    assert_eq!(partial["steps"], 1502);
    assert_eq!(partial["frame_lag_steps"], 2);
}

#[test]
fn show_draws_the_delay_grid() {
    let grid = musicgen(&["patterns", "--show", "delay", "--frames", "4"]);
    let rows: Vec<Vec<String>> = grid
        .lines()
        .filter(|l| l.trim_start().starts_with('k'))
        .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["1", "2", "3", "4"],
            ["2", "3", "4", "5"],
            ["3", "4", "5", "6"],
            ["4", "5", "6", "7"]
        ]
    );
}

#[test]
fn show_json_lists_each_steps_coordinates() {
    let steps: Vec<Vec<[usize; 2]>> = serde_json::from_str(&musicgen(&[
        "patterns", "--show", "delay", "--frames", "2", "--format", "json",
    ]))
    .unwrap();
    assert_eq!(
        steps,
        vec![
            vec![[0, 0]],
            vec![[1, 0], [0, 1]],
            vec![[1, 1], [0, 2]],
            vec![[1, 2], [0, 3]],
            vec![[1, 3]],
        ]
    );
}

/// A stereo bundle's own pattern: each left and right codebook pair steps together, and
/// `info --model` names the model as stereo.
#[test]
fn a_stereo_bundle_shows_its_interleaved_pattern_and_family() {
    let stereo = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny-stereo");
    let grid = musicgen(&["patterns", "--model", stereo, "--frames", "3"]);
    assert!(
        grid.starts_with("partial-delay [0,0,1,1,2,2,3,3]: 6 steps for 3 frames"),
        "{grid}"
    );
    let row = |label: &str| {
        grid.lines()
            .find(|line| line.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no row {label} in\n{grid}"))
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("k0 L0"), ["1", "2", "3"]);
    assert_eq!(row("k1 R0"), ["1", "2", "3"]);
    assert_eq!(row("k7 R3"), ["4", "5", "6"]);
    let info = musicgen(&["info", "--model", stereo]);
    assert!(
        info.contains("family:               stereo, text-conditioned"),
        "{info}"
    );
    assert!(info.contains("8 of 2048 codes"), "{info}");
}
