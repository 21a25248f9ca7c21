//! The soak: the plugin played through the CLAP host at real-time pace for
//! `MUSICGEN_SOAK_MINUTES` (3 in the tests; `cargo xtask soak --minutes 60` for an hour,
//! on the release bundle), with a held note and another struck every 2 s, a prompt change
//! every 15 s, random automation of the sampling parameters on every block, and a change
//! of sample rate halfway. Each minute it prints underruns after warm-up, resident memory,
//! threads alive, and the audio callback's longest and mean time in that minute as a share
//! of the block, with the longest CPU time a callback used (wall time far above it means the
//! OS ran another thread on the core meanwhile); the summary gives them after warm-up and,
//! apart, during the warm-ups. The host's audio thread asks for real-time scheduling, as a
//! DAW's does; the summary says whether it got it. Beside the callback, the host times a
//! fixed reference work of about the callback's mean length after each block: its
//! longest run is what this machine alone adds to a callback of that length, so the two
//! longest times read together say whether a long callback was the plugin's doing.

mod host;

use std::sync::{Arc, Mutex};

use clack_host::events::event_types::{NoteOffEvent, NoteOnEvent, ParamValueEvent};
use clack_host::prelude::*;
use host::*;

const BLOCK: usize = 512;
/// The two rates the soak plays at, one after the other.
const RATES_HZ: [u32; 2] = [48_000, 44_100];
/// Seconds after each activation before a silent block counts as an underrun.
const WARM_UP_S: f64 = 10.0;
const PROMPT_EVERY_S: f64 = 15.0;
const PROMPTS: [&str; 4] = [
    "warm lo-fi piano with soft drums",
    "fast techno with a driving bass",
    "slow ambient strings",
    "funky guitar and brass",
];

fn soak_minutes() -> f64 {
    std::env::var("MUSICGEN_SOAK_MINUTES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3.0)
}

/// The audio callback's time as a share of its block's duration, over some blocks.
#[derive(Default, Clone, Copy)]
struct CallbackShares {
    blocks: u64,
    total: f64,
    max: f64,
    /// The blocks whose share was over `LONG_SHARE`.
    long: u64,
}

/// A callback over this share of its block counts as long.
const LONG_SHARE: f64 = 0.01;

impl CallbackShares {
    fn add(&mut self, share: f64) {
        self.blocks += 1;
        self.total += share;
        self.max = self.max.max(share);
        self.long += u64::from(share > LONG_SHARE);
    }

    fn mean(&self) -> f64 {
        self.total / self.blocks.max(1) as f64
    }
}

/// What the audio thread measures, read by the main thread each minute.
#[derive(Default)]
struct Measures {
    underruns: u64,
    played_s: f64,
    /// The blocks since the last report line.
    minute: CallbackShares,
    /// Their callbacks' CPU time: where the wall time is far longer, the OS had given
    /// the core to another thread in between.
    minute_cpu: CallbackShares,
    minute_faults: u64,
    minute_reference: CallbackShares,
    /// Every block after warm-up.
    settled: CallbackShares,
    settled_cpu: CallbackShares,
    /// The host's fixed reference work after each of those blocks.
    settled_reference: CallbackShares,
    /// Page faults the audio thread took inside callbacks after warm-up, and inside the
    /// longest of those callbacks.
    settled_faults: u64,
    longest_faults: u64,
    /// The blocks of the warm-ups, which include the model's load and first steps.
    warming: CallbackShares,
}

/// One minute's line of the report.
struct Minute {
    rss_mb: f64,
    threads: usize,
}

/// A xorshift generator: the automation is the same on every run.
fn next_random(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// The musician's side of each block at `rate_hz`: a note held from the start, another
/// struck every 2 s and released a second later, and one sampling parameter moved.
fn musician(rate_hz: u32, automated: &[Parameter]) -> impl FnMut(usize, usize, &mut EventBuffer) + Send + '_ {
    let every = (2.0 * f64::from(rate_hz)) as usize;
    let (held, struck) = (Pckn::new(0u16, 0u16, 60u16, 0u32), Pckn::new(0u16, 0u16, 67u16, 0u32));
    let mut random = 0x2545_F491_4F6C_DD1Du64;
    move |done: usize, frames: usize, events: &mut EventBuffer| {
        if done == 0 {
            events.push(&NoteOnEvent::new(0, held, 1.0));
        }
        let strike = done.next_multiple_of(every);
        if strike < done + frames {
            events.push(&NoteOnEvent::new((strike - done) as u32, struck, 0.8));
        }
        let release = (done + every / 2).next_multiple_of(every) - every / 2;
        if (done..done + frames).contains(&release) {
            events.push(&NoteOffEvent::new((release - done) as u32, struck, 0.0));
        }
        let parameter = &automated[(next_random(&mut random) * automated.len() as f64) as usize % automated.len()];
        let value = parameter.at(0.2 + 0.6 * next_random(&mut random));
        events.push(&ParamValueEvent::new(0, parameter.id, Pckn::match_all(), value));
    }
}

/// The audio thread's measures of each block at `rate_hz`, after `played_before_s`.
fn measuring(
    measures: Arc<Mutex<Measures>>,
    rate_hz: u32,
    played_before_s: f64,
) -> impl FnMut(&BlockOutput<'_>) + Send {
    let block_s = BLOCK as f64 / f64::from(rate_hz);
    move |block: &BlockOutput<'_>| {
        let mut m = measures.lock().unwrap();
        let share = block.callback.as_secs_f64() / block_s;
        let cpu_share = block.callback_cpu.map_or(f64::NAN, |cpu| cpu.as_secs_f64() / block_s);
        let faults = block.callback_faults.unwrap_or(0);
        let reference_share = block.reference.as_secs_f64() / block_s;
        m.minute.add(share);
        m.minute_cpu.add(cpu_share);
        m.minute_faults += faults;
        m.minute_reference.add(reference_share);
        let phase_s = block.done as f64 / f64::from(rate_hz);
        m.played_s = played_before_s + phase_s;
        if phase_s < WARM_UP_S {
            m.warming.add(share);
            return;
        }
        if share > m.settled.max {
            m.longest_faults = faults;
        }
        m.settled.add(share);
        m.settled_cpu.add(cpu_share);
        m.settled_reference.add(reference_share);
        m.settled_faults += faults;
        if block.left.iter().all(|&s| s == 0.0) {
            m.underruns += 1;
        }
    }
}

/// The main thread's side: a prompt change every 15 s, a report line every minute.
struct Conductor {
    measures: Arc<Mutex<Measures>>,
    prompts_sent: usize,
    report: Vec<Minute>,
}

impl Conductor {
    fn at(&mut self, instance: &mut PluginInstance<TestHost>, played_s: f64) {
        if played_s >= (self.prompts_sent + 1) as f64 * PROMPT_EVERY_S {
            self.prompts_sent += 1;
            let mut state = save(instance);
            let prompt = PROMPTS[self.prompts_sent % PROMPTS.len()];
            state["fields"]["prompt"] = serde_json::to_string(prompt).unwrap().into();
            restore(instance, &state);
        }
        if played_s >= (self.report.len() + 1) as f64 * 60.0 {
            let mut m = self.measures.lock().unwrap();
            let shares = std::mem::take(&mut m.minute);
            let cpu = std::mem::take(&mut m.minute_cpu);
            let faults = std::mem::take(&mut m.minute_faults);
            let reference = std::mem::take(&mut m.minute_reference);
            let minute = Minute {
                rss_mb: resident_mb().unwrap_or(0.0),
                threads: threads_alive(),
            };
            println!(
                "{:6} | {:9} | {:6.1} | {:7} | {:11.2}% | {:12.3}% | {:11.2}% | {:13.2}% | {:11}",
                self.report.len() + 1,
                m.underruns,
                minute.rss_mb,
                minute.threads,
                100.0 * shares.max,
                100.0 * shares.mean(),
                100.0 * cpu.max,
                100.0 * reference.max,
                faults
            );
            self.report.push(minute);
        }
    }

    /// The summary, and the soak's limits: no underrun after warm-up, memory flat within
    /// 5% from the first minute, no more threads than then.
    fn finish(&self) {
        let m = self.measures.lock().unwrap();
        println!(
            "soak: {:.0} s played, {} prompt changes, {} underruns after warm-up; callback after warm-up: max {:.2}%, \
             mean {:.3}% of a block (CPU time: max {:.2}%, mean {:.3}%), {} page faults in callbacks ({} in the longest); \
             in the {WARM_UP_S:.0} s warm-ups: max {:.2}%",
            m.played_s,
            self.prompts_sent,
            m.underruns,
            100.0 * m.settled.max,
            100.0 * m.settled.mean(),
            100.0 * m.settled_cpu.max,
            100.0 * m.settled_cpu.mean(),
            m.settled_faults,
            m.longest_faults,
            100.0 * m.warming.max
        );
        println!(
            "soak: the host's fixed reference work after each block after warm-up: max {:.2}%, mean {:.3}% of a block; \
             over {:.0}% of a block: {} of {} callbacks, {} of {} reference runs",
            100.0 * m.settled_reference.max,
            100.0 * m.settled_reference.mean(),
            100.0 * LONG_SHARE,
            m.settled.long,
            m.settled.blocks,
            m.settled_reference.long,
            m.settled_reference.blocks
        );
        println!(
            "soak: the host's audio thread ran with {}",
            AUDIO_THREAD_SCHEDULING.lock().unwrap()
        );
        assert_eq!(m.underruns, 0, "underruns after warm-up");
        let (first, last) = (
            self.report.first().expect("a minute was reported"),
            self.report.last().unwrap(),
        );
        assert!(
            last.rss_mb <= first.rss_mb * 1.05,
            "resident memory grew from {:.1} MB after the first minute to {:.1} MB",
            first.rss_mb,
            last.rss_mb
        );
        assert!(
            last.threads <= first.threads,
            "threads went from {} to {}",
            first.threads,
            last.threads
        );
    }
}

#[test]
fn soak_at_real_time_pace_with_notes_prompts_automation_and_a_rate_change() {
    let minutes = soak_minutes();
    let Loaded { mut instance, _entry } = load();
    let automated: Vec<Parameter> = parameters(&mut instance)
        .into_iter()
        .filter(|p| ["Guidance", "Temperature", "Top-k", "Top-p"].contains(&p.name.as_str()))
        .collect();
    assert_eq!(automated.len(), 4, "the sampling parameters are listed");
    let measures = Arc::new(Mutex::new(Measures::default()));
    let mut conductor = Conductor {
        measures: Arc::clone(&measures),
        prompts_sent: 0,
        report: Vec::new(),
    };
    let phase_s = minutes * 60.0 / RATES_HZ.len() as f64;
    println!("soak: {minutes} min, {phase_s:.0} s at each of {RATES_HZ:?} Hz, blocks of {BLOCK}");
    println!(
        "minute | underruns | RSS MB | threads | callback max | callback mean | CPU time max | reference max | page faults (this minute's callbacks)"
    );
    for (phase, rate_hz) in RATES_HZ.into_iter().enumerate() {
        let played_before_s = phase as f64 * phase_s;
        let config = audio_configuration(rate_hz, BLOCK);
        let processor = instance.activate(|_, _| (), config).expect("the plugin activates");
        let performance = Performance {
            rate_hz,
            block: BLOCK,
            total: (phase_s * f64::from(rate_hz)) as usize,
            transport: false,
            real_time: true,
            sidechain: None,
        };
        let processor = perform_with(
            &mut instance,
            processor,
            &performance,
            &mut musician(rate_hz, &automated),
            &mut measuring(Arc::clone(&measures), rate_hz, played_before_s),
            &mut |instance, played| conductor.at(instance, played_before_s + played as f64 / f64::from(rate_hz)),
        );
        instance.deactivate(processor);
    }
    conductor.finish();
}
