//! `musicgen render --continue` on WAV files as people have them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("musicgen-continue-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_model(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(folder)
}

fn render_continuing(wav: &Path, out: &Path) -> Output {
    render_continuing_on("tiny", wav, out)
}

fn render_continuing_on(model: &str, wav: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_musicgen"))
        .args(["render", "--model"])
        .arg(tiny_model(model))
        .args(["--prompt", "slow strings", "--seconds", "1", "--continue"])
        .arg(wav)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// Half a second of a 220 Hz sine in `channels` channels.
fn write_sine(path: &Path, channels: u16, bits: u16, sample_format: hound::SampleFormat, rate_hz: u32) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate_hz,
        bits_per_sample: bits,
        sample_format,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for n in 0..rate_hz / 2 {
        let value = 0.5 * (2.0 * std::f32::consts::PI * 220.0 * n as f32 / rate_hz as f32).sin();
        for _ in 0..channels {
            match sample_format {
                hound::SampleFormat::Float => writer.write_sample(value).unwrap(),
                hound::SampleFormat::Int => writer
                    .write_sample((value * (1i64 << (bits - 1)) as f32) as i32)
                    .unwrap(),
            }
        }
    }
    writer.finalize().unwrap();
}

#[test]
fn odd_formats_rates_and_channel_counts_continue_from_the_given_half_second() {
    let dir = temp_dir();
    let cases = [
        (1, 8, hound::SampleFormat::Int, 8_000),
        (6, 24, hound::SampleFormat::Int, 192_000),
        (8, 32, hound::SampleFormat::Float, 44_100),
    ];
    for (channels, bits, format, rate_hz) in cases {
        let wav = dir.join(format!("given-{channels}ch-{bits}-{format:?}-{rate_hz}.wav"));
        write_sine(&wav, channels, bits, format, rate_hz);
        let out = dir.join("out.wav");
        let run = render_continuing(&wav, &out);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{}: {}",
            wav.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        let heard = if channels == 1 {
            "mono"
        } else {
            "its channels mixed to mono"
        };
        assert!(
            stdout.contains(&format!(
                "{rate_hz} Hz, {channels} channels; the model hears {heard}): 25 frames of codes"
            )),
            "{stdout}"
        );
        // The given half second (decoded from its codes) comes first, then one new second.
        let written = hound::WavReader::open(&out).unwrap();
        let seconds = f64::from(written.duration()) / f64::from(written.spec().sample_rate);
        assert!((seconds - 1.5).abs() < 0.03, "{}: {seconds} s written", wav.display());
    }
}

/// A stereo file continued by the stereo model: the tool says it takes left and right
/// (`engine/tests/stereo.rs` checks that they are encoded apart), and the render is a
/// stereo file whose channels differ.
#[test]
fn a_stereo_model_continues_a_stereo_file_in_stereo() {
    let dir = temp_dir();
    let wav = dir.join("given-stereo.wav");
    write_sine(&wav, 2, 16, hound::SampleFormat::Int, 48_000);
    let out = dir.join("stereo-out.wav");
    let run = render_continuing_on("tiny-stereo", &wav, &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        stdout.contains("2 channels; the model hears its first two channels as left and right)"),
        "{stdout}"
    );
    assert!(stdout.contains("stereo)"), "{stdout}");
    let mut written = hound::WavReader::open(&out).unwrap();
    assert_eq!(written.spec().channels, 2);
    let samples: Vec<f32> = written.samples::<f32>().map(Result::unwrap).collect();
    let seconds = samples.len() as f64 / 2.0 / f64::from(written.spec().sample_rate);
    assert!((seconds - 1.5).abs() < 0.03, "{seconds} s written");
    let differing = samples.chunks_exact(2).filter(|frame| frame[0] != frame[1]).count();
    assert!(
        differing > samples.len() / 4,
        "left and right are the same in most frames"
    );
}

#[test]
fn a_file_shorter_than_one_codec_frame_or_damaged_is_refused_by_name_and_writes_nothing() {
    let dir = temp_dir();
    let short = dir.join("one-sample.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 32_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&short, spec).unwrap();
    writer.write_sample(100i16).unwrap();
    writer.finalize().unwrap();
    let damaged = dir.join("damaged.wav");
    std::fs::write(&damaged, b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    for (wav, says) in [(&short, "less than one codec frame"), (&damaged, "sox")] {
        let out = dir.join("refused.wav");
        let run = render_continuing(wav, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{} was accepted", wav.display());
        assert!(
            stderr.contains(&*wav.to_string_lossy()) && stderr.contains(says),
            "{stderr}"
        );
        assert!(!stderr.contains("stack backtrace"), "{stderr}");
        assert!(!out.exists(), "{} was written", out.display());
    }
}
