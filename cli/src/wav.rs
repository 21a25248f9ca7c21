//! WAV files the tool reads (`render --continue`, `play`): every format hound reads
//! (8, 16, 24 and 32-bit PCM, 32-bit float, plain or extensible headers, any channel count),
//! channel by channel or mixed down to mono, with errors that name the file and say how to
//! convert it.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// A WAV file's audio, one vector per channel.
pub struct Wav {
    pub channels: Vec<Vec<f32>>,
    pub sample_rate_hz: u32,
}

impl Wav {
    pub fn seconds(&self) -> f64 {
        self.channels[0].len() as f64 / f64::from(self.sample_rate_hz)
    }

    /// The channels' average.
    pub fn mono(&self) -> Vec<f32> {
        let count = self.channels.len() as f32;
        (0..self.channels[0].len())
            .map(|i| self.channels.iter().map(|channel| channel[i]).sum::<f32>() / count)
            .collect()
    }

    /// Each channel as a slice, as the engine takes them.
    pub fn channel_slices(&self) -> Vec<&[f32]> {
        self.channels.iter().map(Vec::as_slice).collect()
    }
}

const CONVERT_HINT: &str = "save it as 16 or 24-bit PCM or 32-bit float WAV (e.g. `sox in.wav -b 16 out.wav`)";

/// Reads `path`, every channel.
pub fn read(path: &Path) -> Result<Wav> {
    let mut reader = hound::WavReader::open(path)
        .with_context(|| format!("{} is not a WAV file this tool reads; {CONVERT_HINT}", path.display()))?;
    let spec = reader.spec();
    if spec.sample_format == hound::SampleFormat::Float && spec.bits_per_sample != 32 {
        bail!(
            "{} holds {}-bit float samples, which this tool does not read; {CONVERT_HINT}",
            path.display(),
            spec.bits_per_sample
        );
    }
    if spec.sample_format == hound::SampleFormat::Int && !(1..=32).contains(&spec.bits_per_sample) {
        bail!(
            "{} says its samples are {}-bit integers; {CONVERT_HINT}",
            path.display(),
            spec.bits_per_sample
        );
    }
    if spec.sample_rate == 0 || spec.channels == 0 {
        bail!(
            "{} says it has {} channels at {} Hz; {CONVERT_HINT}",
            path.display(),
            spec.channels,
            spec.sample_rate
        );
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let full_scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|sample| sample.map(|sample| sample as f32 / full_scale))
                .collect::<Result<_, _>>()
        }
    }
    .with_context(|| {
        format!(
            "reading the samples of {} ({}-bit, {} channels): the file is cut short or damaged; {CONVERT_HINT}",
            path.display(),
            spec.bits_per_sample,
            spec.channels
        )
    })?;
    let count = usize::from(spec.channels);
    // A last frame cut short is dropped, so that every channel has the same length.
    let whole = &interleaved[..interleaved.len() - interleaved.len() % count];
    let channels = (0..count)
        .map(|c| whole.iter().skip(c).step_by(count).copied().collect())
        .collect();
    Ok(Wav {
        channels,
        sample_rate_hz: spec.sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A test's own file under the system's temporary folder.
    fn temp_wav(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("musicgen-wav-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// One 0.1 s frame of a sine at half scale per channel, channel c at (c + 1) / channels
    /// of that amplitude, written with hound in the given format.
    fn write_sine(name: &str, channels: u16, bits: u16, format: hound::SampleFormat, rate_hz: u32) -> PathBuf {
        let path = temp_wav(name);
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate_hz,
            bits_per_sample: bits,
            sample_format: format,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for n in 0..rate_hz / 10 {
            let wave = 0.5 * (2.0 * std::f32::consts::PI * 440.0 * n as f32 / rate_hz as f32).sin();
            for c in 0..channels {
                let value = wave * f32::from(c + 1) / f32::from(channels);
                match format {
                    hound::SampleFormat::Float => writer.write_sample(value).unwrap(),
                    hound::SampleFormat::Int => {
                        let full_scale = (1i64 << (bits - 1)) as f32;
                        writer.write_sample((value * full_scale) as i32).unwrap();
                    }
                }
            }
        }
        writer.finalize().unwrap();
        path
    }

    /// The mono mix of `write_sine`'s channels: the sine at (channels + 1) / (2 channels)
    /// of half scale.
    fn expected_peak(channels: u16) -> f32 {
        0.5 * f32::from(channels + 1) / (2.0 * f32::from(channels))
    }

    #[test]
    fn every_pcm_and_float_format_and_channel_count_reads_as_the_same_mono_sine() {
        let formats = [
            (8, hound::SampleFormat::Int, 1.0 / 64.0),
            (16, hound::SampleFormat::Int, 1e-3),
            (24, hound::SampleFormat::Int, 1e-5),
            (32, hound::SampleFormat::Int, 1e-6),
            (32, hound::SampleFormat::Float, 1e-6),
        ];
        for (bits, format, tolerance) in formats {
            for channels in 1..=8 {
                for rate_hz in [8_000, 44_100, 192_000] {
                    let name = format!("sine-{bits}-{format:?}-{channels}ch-{rate_hz}.wav");
                    let wav = read(&write_sine(&name, channels, bits, format, rate_hz)).unwrap();
                    assert_eq!(
                        (wav.sample_rate_hz, wav.channels.len()),
                        (rate_hz, usize::from(channels)),
                        "{name}"
                    );
                    let mono = wav.mono();
                    assert_eq!(mono.len(), rate_hz as usize / 10, "{name}");
                    let peak = mono.iter().fold(0.0f32, |peak, s| peak.max(s.abs()));
                    assert!(
                        (peak - expected_peak(channels)).abs() < 0.01 + tolerance,
                        "{name}: peak {peak}, expected {}",
                        expected_peak(channels)
                    );
                }
            }
        }
    }

    /// A header hound does not write itself: WAVE_FORMAT_EXTENSIBLE for 16-bit stereo PCM
    /// (as DAWs write it) with two samples, then the same header claiming 64-bit float.
    fn extensible(sub_format_tag: u16, bits: u16, data: &[u8]) -> Vec<u8> {
        let (channels, rate_hz) = (2u16, 48_000u32);
        let block_align = channels * bits / 8;
        let mut fmt = Vec::new();
        fmt.extend(0xFFFEu16.to_le_bytes());
        fmt.extend(channels.to_le_bytes());
        fmt.extend(rate_hz.to_le_bytes());
        fmt.extend((rate_hz * u32::from(block_align)).to_le_bytes());
        fmt.extend(block_align.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        fmt.extend(22u16.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        fmt.extend(3u32.to_le_bytes());
        fmt.extend(sub_format_tag.to_le_bytes());
        fmt.extend([
            0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
        ]);
        let mut file = Vec::new();
        file.extend(b"RIFF");
        file.extend((4 + 8 + fmt.len() as u32 + 8 + data.len() as u32).to_le_bytes());
        file.extend(b"WAVEfmt ");
        file.extend((fmt.len() as u32).to_le_bytes());
        file.extend(fmt);
        file.extend(b"data");
        file.extend((data.len() as u32).to_le_bytes());
        file.extend(data);
        file
    }

    #[test]
    fn an_extensible_header_reads_and_a_64_bit_float_one_is_refused_by_name() {
        let path = temp_wav("extensible.wav");
        let frames: Vec<u8> = [16_384i16, -16_384, 8_192, 0]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        std::fs::write(&path, extensible(1, 16, &frames)).unwrap();
        let wav = read(&path).unwrap();
        assert_eq!((wav.sample_rate_hz, wav.channels.len()), (48_000, 2));
        assert_eq!(wav.mono(), vec![0.0, 0.125]);

        let path = temp_wav("float64.wav");
        std::fs::write(&path, extensible(3, 64, &[0; 32])).unwrap();
        let error = format!("{:#}", read(&path).err().unwrap());
        assert!(
            error.contains("float64.wav") && error.contains("64-bit float samples"),
            "{error}"
        );
    }

    #[test]
    fn one_sample_and_silence_read_as_they_are() {
        let path = temp_wav("one-sample.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 32_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        writer.write_sample(1000i16).unwrap();
        writer.finalize().unwrap();
        assert_eq!(read(&path).unwrap().mono(), vec![1000.0 / 32_768.0]);

        let path = write_sine("silent-base.wav", 2, 16, hound::SampleFormat::Int, 16_000);
        let mut writer = hound::WavWriter::create(&path, hound::WavReader::open(&path).unwrap().spec()).unwrap();
        for _ in 0..3200 {
            writer.write_sample(0i16).unwrap();
        }
        writer.finalize().unwrap();
        let wav = read(&path).unwrap();
        assert_eq!(wav.mono().len(), 1600);
        assert!(wav.mono().iter().all(|&s| s == 0.0));
    }

    #[test]
    fn corrupt_headers_and_cut_files_are_refused_with_the_file_and_the_fix() {
        let good = std::fs::read(write_sine("good.wav", 2, 24, hound::SampleFormat::Int, 44_100)).unwrap();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty.wav", Vec::new()),
            ("text.wav", b"this is not audio at all".to_vec()),
            ("header-only.wav", good[..30].to_vec()),
            ("cut-in-a-sample.wav", good[..good.len() / 2 + 1].to_vec()),
        ];
        let mut no_format = good.clone();
        no_format[12..16].copy_from_slice(b"junk");
        cases.push(("no-fmt-chunk.wav", no_format));
        let mut zero_channels = good.clone();
        zero_channels[22..24].copy_from_slice(&0u16.to_le_bytes());
        cases.push(("zero-channels.wav", zero_channels));
        let mut odd_bits = good.clone();
        odd_bits[34..36].copy_from_slice(&13u16.to_le_bytes());
        cases.push(("13-bit.wav", odd_bits));
        // Found by fuzzing: an extensible header's valid bits at 280 overflowed a shift.
        let mut extensible = std::fs::read(write_sine("3ch.wav", 3, 24, hound::SampleFormat::Int, 8_000)).unwrap();
        extensible[39] = 1;
        cases.push(("280-valid-bits.wav", extensible));
        for (name, bytes) in cases {
            let path = temp_wav(name);
            std::fs::write(&path, bytes).unwrap();
            let error = match read(&path) {
                Ok(wav) => panic!("{name} read as {} samples", wav.mono().len()),
                Err(error) => format!("{error:#}"),
            };
            assert!(error.contains(name) && error.contains("sox"), "{name}: {error}");
        }
    }

    /// Damaged files as a disk or a download leaves them: bytes of a valid file overwritten
    /// (mostly in the header) or cut off, or noise. Each reads or is refused by name.
    #[test]
    fn fuzz_wav_reading() {
        use musicgen_fuzz::proptest::prelude::*;

        let valid = std::fs::read(write_sine("fuzz-base.wav", 3, 24, hound::SampleFormat::Int, 8_000)).unwrap();
        let header_edits = prop::collection::vec((0..64usize, any::<u8>()), 1..6);
        let anywhere_edits = prop::collection::vec((0..valid.len(), any::<u8>()), 1..6);
        let strategy = prop_oneof![
            5 => (header_edits, 0..=valid.len()).prop_map(|(edits, keep)| Damage::Header { edits, keep }),
            3 => anywhere_edits.prop_map(Damage::Anywhere),
            2 => prop::collection::vec(any::<u8>(), 0..128).prop_map(Damage::Noise),
        ];
        let path = temp_wav("fuzz-case.wav");
        musicgen_fuzz::fuzz("wav", strategy, |damage| {
            let bytes = damage.apply(&valid);
            std::fs::write(&path, &bytes).unwrap();
            match read(&path) {
                Ok(wav) => prop_assert!(wav.mono().iter().all(|s| s.is_finite())),
                Err(error) => {
                    let message = format!("{error:#}");
                    prop_assert!(message.contains("fuzz-case.wav"), "{}", message);
                }
            }
            Ok(())
        });
    }

    /// How the fuzz test damages a valid file.
    #[derive(Debug, Clone)]
    enum Damage {
        /// Bytes of the header overwritten, and the file cut after `keep` bytes.
        Header { edits: Vec<(usize, u8)>, keep: usize },
        /// Bytes anywhere overwritten.
        Anywhere(Vec<(usize, u8)>),
        /// No WAV at all.
        Noise(Vec<u8>),
    }

    impl Damage {
        fn apply(&self, valid: &[u8]) -> Vec<u8> {
            let overwrite = |mut bytes: Vec<u8>, edits: &[(usize, u8)]| {
                for &(at, byte) in edits {
                    if let Some(slot) = bytes.get_mut(at) {
                        *slot = byte;
                    }
                }
                bytes
            };
            match self {
                Self::Header { edits, keep } => overwrite(valid[..*keep].to_vec(), edits),
                Self::Anywhere(edits) => overwrite(valid.to_vec(), edits),
                Self::Noise(bytes) => bytes.clone(),
            }
        }
    }
}
