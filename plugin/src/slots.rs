//! Prompt slots: a bank of eight named prompts that MIDI notes, the *Slot* parameter, the
//! *Next slot* trigger and the editor's grid choose from, kept with the project and
//! loaded from or saved to JSON bank files. The factory banks are compiled in.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Slots in a bank.
pub const SLOT_COUNT: usize = 8;

/// One named prompt; an empty prompt is an empty slot, which selecting leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSlot {
    pub name: String,
    pub prompt: String,
}

/// A bank as saved with the project and in bank files: `{"name": ..., "slots": [{"name":
/// ..., "prompt": ...}, ...]}`, always [`SLOT_COUNT`] slots once loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptBank {
    pub name: String,
    pub slots: Vec<PromptSlot>,
}

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("the bank file {} could not be read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the bank file {} is not a prompt bank: {source}; a bank is {{\"name\": \"...\", \"slots\": [{{\"name\": \"...\", \"prompt\": \"...\"}}, ...]}}",
        path.display()
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the bank file {} has {count} slots; a bank holds at most {SLOT_COUNT}: split it in two", path.display())]
    TooManySlots { path: PathBuf, count: usize },
    #[error("the bank file {} could not be written: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const FACTORY_JSON: [&str; 3] = [
    include_str!("../banks/genres.json"),
    include_str!("../banks/moods.json"),
    include_str!("../banks/grooves.json"),
];

impl PromptBank {
    /// The banks that ship with the plugin; the first is a new instance's.
    pub fn factory() -> Vec<PromptBank> {
        FACTORY_JSON
            .iter()
            .map(|json| {
                let bank: PromptBank = serde_json::from_str(json).expect("the factory banks are valid (tested)");
                bank.padded()
            })
            .collect()
    }

    /// Reads a bank file; one with fewer than [`SLOT_COUNT`] slots gets empty ones after them.
    pub fn load(path: &Path) -> Result<PromptBank, BankError> {
        let text = std::fs::read_to_string(path).map_err(|source| BankError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bank: PromptBank = serde_json::from_str(&text).map_err(|source| BankError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if bank.slots.len() > SLOT_COUNT {
            return Err(BankError::TooManySlots {
                path: path.to_owned(),
                count: bank.slots.len(),
            });
        }
        Ok(bank.padded())
    }

    pub fn save(&self, path: &Path) -> Result<(), BankError> {
        let json = serde_json::to_string_pretty(self).expect("a bank serialises");
        std::fs::write(path, json + "\n").map_err(|source| BankError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// The prompt in slot `index`, unless that slot is empty or out of range.
    pub fn prompt(&self, index: usize) -> Option<&str> {
        self.slots
            .get(index)
            .map(|slot| slot.prompt.trim())
            .filter(|prompt| !prompt.is_empty())
    }

    /// The first filled slot after `index`, going round; `None` when all are empty.
    pub fn next_filled(&self, index: usize) -> Option<usize> {
        (1..=SLOT_COUNT)
            .map(|step| (index + step) % SLOT_COUNT)
            .find(|&candidate| self.prompt(candidate).is_some())
    }

    /// A state saved by hand or by an older version may hold any number of slots.
    pub fn padded(mut self) -> PromptBank {
        self.slots.resize_with(SLOT_COUNT, PromptSlot::default);
        self
    }
}

impl Default for PromptBank {
    fn default() -> Self {
        PromptBank::factory().swap_remove(0)
    }
}

/// The note that selects slot 1 by default: C1 (MIDI note 36, the lowest C of most
/// keyboards' default octave and where drum racks start).
pub const DEFAULT_FIRST_SLOT_NOTE: i32 = 36;

/// The slot a note selects when slots start at `first_note`, or `None` for a note outside
/// the slots' range (it only opens the gate).
pub fn slot_of_note(note: u8, first_note: i32) -> Option<usize> {
    let offset = i32::from(note) - first_note;
    usize::try_from(offset).ok().filter(|&slot| slot < SLOT_COUNT)
}

/// "C1", "F#3": note names in the convention where middle C (60) is C3 and 36 is C1, as
/// Ableton Live and Cubase name them.
pub fn note_name(note: i32) -> String {
    const NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
    format!("{}{}", NAMES[note.rem_euclid(12) as usize], note.div_euclid(12) - 2)
}

/// A note as a person types it: "C1", "F#3", "Bb0", "36", or [`note_name`]'s text with the
/// number after it ("C1 (36)").
pub fn parse_note(text: &str) -> Option<i32> {
    let text = text.trim();
    let name = match text.split_once('(') {
        Some((_, number)) => return number.trim_end_matches(')').trim().parse().ok(),
        None => text,
    };
    if let Ok(number) = name.parse() {
        return Some(number);
    }
    let mut chars = name.chars();
    let letter = chars.next()?.to_ascii_uppercase();
    let pitch_class = match letter {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    let (accidental, octave) = match rest.chars().next() {
        Some('#') => (1, &rest[1..]),
        Some('b') => (-1, &rest[1..]),
        _ => (0, rest),
    };
    let octave: i32 = octave.parse().ok()?;
    Some((octave + 2) * 12 + pitch_class + accidental)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_banks_fill_every_slot_with_a_named_prompt() {
        let banks = PromptBank::factory();
        assert!(banks.len() >= 2);
        for bank in &banks {
            assert_eq!(bank.slots.len(), SLOT_COUNT, "{}", bank.name);
            for (index, slot) in bank.slots.iter().enumerate() {
                assert!(!slot.name.trim().is_empty(), "{} slot {}", bank.name, index + 1);
                assert!(bank.prompt(index).is_some(), "{} slot {}", bank.name, index + 1);
            }
        }
        let names: Vec<&str> = banks.iter().map(|bank| bank.name.as_str()).collect();
        assert!(names.contains(&"Genres") && names.contains(&"Moods"), "{names:?}");
        assert_eq!(
            PromptBank::default().prompt(0),
            Some(crate::params::DEFAULT_PROMPT),
            "a new instance's prompt is its first slot's"
        );
    }

    /// The factory prompts tokenize with the tiny model's small vocabulary (so they play on
    /// the bundled model; T5's full vocabulary holds every word of them).
    #[test]
    fn factory_prompts_have_no_unknown_tokens_for_the_bundled_model() {
        let path = crate::controller::default_model_dir().join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
        let unknown = tokenizer.token_to_id("<unk>").unwrap();
        for bank in PromptBank::factory() {
            for slot in &bank.slots {
                let ids = tokenizer.encode(slot.prompt.as_str(), true).unwrap();
                assert!(
                    !ids.get_ids().contains(&unknown),
                    "{} / {}: {:?}",
                    bank.name,
                    slot.name,
                    ids.get_tokens()
                );
            }
        }
    }

    #[test]
    fn a_saved_bank_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.json");
        let mut bank = PromptBank {
            name: "Set list".into(),
            ..PromptBank::default()
        };
        bank.slots[3].prompt = "slow dub, deep bass".into();
        bank.save(&path).unwrap();
        assert_eq!(PromptBank::load(&path).unwrap(), bank);
    }

    #[test]
    fn a_short_bank_gets_empty_slots_that_next_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.json");
        std::fs::write(
            &path,
            r#"{"name": "Two", "slots": [{"name": "a", "prompt": "jazz"}, {"name": "b", "prompt": "techno"}]}"#,
        )
        .unwrap();
        let bank = PromptBank::load(&path).unwrap();
        assert_eq!(bank.slots.len(), SLOT_COUNT);
        assert_eq!(bank.prompt(2), None);
        assert_eq!(bank.next_filled(0), Some(1));
        assert_eq!(bank.next_filled(1), Some(0), "goes round past the empty slots");
        let empty = PromptBank {
            name: String::new(),
            slots: Vec::new(),
        }
        .padded();
        assert_eq!(empty.next_filled(0), None);
    }

    #[test]
    fn bad_bank_files_say_which_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let error = PromptBank::load(&missing).unwrap_err().to_string();
        assert!(
            error.contains("missing.json") && error.contains("could not be read"),
            "{error}"
        );

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{\"name\": \"x\", \"slots\": [").unwrap();
        let error = PromptBank::load(&broken).unwrap_err().to_string();
        assert!(error.contains("broken.json") && error.contains("\"slots\""), "{error}");

        let big = dir.path().join("big.json");
        let slots = vec![PromptSlot::default(); SLOT_COUNT + 1];
        let json = serde_json::to_string(&PromptBank {
            name: "big".into(),
            slots,
        })
        .unwrap();
        std::fs::write(&big, json).unwrap();
        let error = PromptBank::load(&big).unwrap_err().to_string();
        assert!(error.contains("big.json") && error.contains("9 slots"), "{error}");
    }

    #[test]
    fn notes_from_the_first_slot_note_select_slots_and_others_do_not() {
        assert_eq!(slot_of_note(36, 36), Some(0));
        assert_eq!(slot_of_note(43, 36), Some(7));
        assert_eq!(slot_of_note(44, 36), None);
        assert_eq!(slot_of_note(35, 36), None);
        assert_eq!(slot_of_note(0, 0), Some(0));
        assert_eq!(note_name(36), "C1");
        assert_eq!(note_name(60), "C3");
        assert_eq!(note_name(0), "C-2");
        assert_eq!(note_name(61), "C#3");
    }

    #[test]
    fn note_names_read_back_as_their_notes() {
        for note in 0..128 {
            assert_eq!(parse_note(&note_name(note)), Some(note), "{}", note_name(note));
            assert_eq!(parse_note(&format!("{} ({note})", note_name(note))), Some(note));
        }
        assert_eq!(parse_note("bb0"), Some(34));
        assert_eq!(parse_note(" 48 "), Some(48));
        assert_eq!(parse_note("H2"), None);
        assert_eq!(parse_note("C"), None);
    }
}
