//! Prompts a user may type: each one plays or is refused with a message that names the
//! problem, and none crashes the engine.

mod common;

use common::{codes_of, config, drain, start};

/// Starts a 10-frame stream on `prompt`: its codes, or the error's text.
fn try_prompt(prompt: &str) -> Result<usize, String> {
    let (stream, mut consumer) = start(config(prompt, 10)).map_err(|e| e.to_string())?;
    drain(&stream, &mut consumer);
    Ok(codes_of(&stream)[0].len())
}

#[test]
fn an_empty_prompt_plays() {
    assert_eq!(try_prompt(""), Ok(10));
}

#[test]
fn a_prompt_longer_than_the_text_encoder_takes_is_refused_with_the_limit() {
    let long = "piano ".repeat(2_000);
    let err = try_prompt(&long).unwrap_err();
    assert!(err.contains("at most 512") && err.contains("shorten it"), "{err}");
}

#[test]
fn pieces_the_vocabulary_lacks_are_refused_by_name() {
    for (prompt, named) in [
        ("piano 🎹 jazz", "🎹"),
        ("bass \u{7} drums", "\\u{7}"),
        ("موسيقى هادئة", "موسيقى, هادئة"),
        ("שקט", "שקט"),
    ] {
        let err = try_prompt(prompt).unwrap_err();
        assert!(
            err.contains(&format!("does not know: {named};")) && err.contains("tokenizer.json"),
            "{prompt:?}: {err}"
        );
    }
}
