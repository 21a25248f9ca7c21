//! Fetching a checkpoint from a hub-shaped server on loopback (the hub itself is not
//! reachable from the test machines): the files land in a Hugging Face cache, a broken
//! download resumes, a corrupt one is removed, and the import plays transformers' codes.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{codes_of, drain, golden, target_dir};
use musicgen_engine::{Model, ModelOptions, SamplingSettings, Stream, StreamConfig};
use musicgen_import::hub::{HubError, HubOptions, fetch_checkpoint};
use musicgen_import::{ImportOptions, Precision, import};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const REPO: &str = "facebook/musicgen-tiny-test";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// How the fake hub misbehaves.
#[derive(Clone, Default)]
struct Faults {
    /// Close the connection after this many bytes of a response for this file, for this
    /// many responses.
    cut: Option<(String, usize, usize)>,
    /// Serve this file with one byte changed (under the original's hash).
    corrupt: Option<String>,
}

/// A request the fake hub answered: its path and its `Range` header.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct FakeHub {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeHub {
    /// Serves every file of `folder` as repository `REPO` at commit `COMMIT`.
    fn serve(folder: &Path, faults: Faults) -> FakeHub {
        let files: HashMap<String, Vec<u8>> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                (
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&path).unwrap(),
                )
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let faults = Arc::new(Mutex::new(faults));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                answer(stream, &files, &faults, &log);
            }
        });
        FakeHub { endpoint, seen }
    }

    fn options(&self, cache: &Path) -> HubOptions {
        HubOptions {
            endpoint: Some(self.endpoint.clone()),
            cache_dir: Some(cache.to_owned()),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One request, answered as the hub answers it (`x-repo-commit`, `etag`, `x-linked-etag`
/// for the large files, `Content-Range` for ranges), then the connection closes.
fn answer(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>, faults: &Mutex<Faults>, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let api = format!("/api/models/{REPO}/revision/main");
    let resolve = format!("/{REPO}/resolve/main/");
    if path == api {
        let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()));
        return;
    }
    let Some(bytes) = path
        .strip_prefix(&resolve)
        .and_then(|file| files.get(file).map(|b| (file, b)))
    else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let (file, original) = bytes;
    let mut content = original.clone();
    let mut faults = faults.lock().unwrap();
    if faults.corrupt.as_deref() == Some(file) {
        let middle = content.len() / 2;
        content[middle] ^= 0xff;
    }
    let git_sha1 = hex(&Sha1::new()
        .chain_update(format!("blob {}\0", original.len()))
        .chain_update(original)
        .finalize());
    let mut etags = format!("ETag: \"{git_sha1}\"\r\n");
    if file.ends_with(".safetensors") {
        etags += &format!("X-Linked-Etag: \"{}\"\r\n", hex(&Sha256::digest(original)));
    }
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                content.len() - 1
            } else {
                b.parse().unwrap()
            };
            (a, b.min(content.len() - 1))
        }
        None => (0, content.len() - 1),
    };
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nX-Repo-Commit: {COMMIT}\r\n{etags}Content-Range: bytes {start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        content.len(),
        end + 1 - start
    );
    let mut body = &content[start..=end];
    // A request for more than its first byte is a download; cut it where asked.
    if let Some((cut_file, most, times)) = faults.cut.as_mut()
        && cut_file == file
        && *times > 0
        && body.len() > 1
    {
        *times -= 1;
        body = &body[..body.len().min(*most)];
    }
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
}

fn checkpoint_fixture() -> PathBuf {
    let dir = target_dir().join("checkpoints").join("tiny-stereo");
    assert!(
        dir.is_dir(),
        "{} is missing: `cargo xtask test` writes it",
        dir.display()
    );
    dir
}

fn shard() -> &'static str {
    "model-00002-of-00003.safetensors"
}

#[test]
fn a_checkpoint_fetched_into_the_cache_imports_and_plays_transformers_codes_then_is_found_offline() {
    let hub = FakeHub::serve(&checkpoint_fixture(), Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let mut seen_files = Vec::new();
    let snapshot = fetch_checkpoint(REPO, &hub.options(cache.path()), Precision::Float32, &mut |p| {
        assert!(p.done_bytes <= p.total_bytes);
        if p.done_bytes == p.total_bytes {
            seen_files.push(p.file.to_owned());
        }
    })
    .unwrap();
    let expected = cache
        .path()
        .join("models--facebook--musicgen-tiny-test")
        .join("snapshots")
        .join(COMMIT);
    assert_eq!(snapshot, expected, "the Hugging Face cache's layout");
    assert!(
        seen_files.contains(&shard().to_owned()),
        "progress reached the end of each file: {seen_files:?}"
    );

    let bundle = cache.path().join("bundle");
    import(
        &snapshot,
        &bundle,
        &ImportOptions {
            precision: Precision::Float32,
            model_name: None,
        },
        &mut |_| {},
    )
    .unwrap();
    let manifest = std::fs::read_to_string(bundle.join("musicgen.json")).unwrap();
    assert!(
        manifest.contains("\"model_name\": \"musicgen-tiny-test\""),
        "named for the repository"
    );
    let golden = golden(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-stereo"));
    let mut options = ModelOptions::new(&bundle);
    options.decoder_threads = 1;
    let model = Arc::new(Model::load(options).unwrap());
    let mut config = StreamConfig::new(golden.prompt.clone());
    config.seconds = Some(golden.codes[0].len() as f64 / 50.0);
    config.output_rate_hz = 32_000.0;
    config.sampling = SamplingSettings::greedy();
    config.guidance_scale = golden.guidance_scale;
    let (stream, mut consumer) = Stream::start(&model, config).unwrap();
    drain(&stream, &mut consumer);
    assert_eq!(codes_of(&stream), golden.codes, "the downloaded checkpoint's codes");

    // Everything is in the cache now: no request reaches the network.
    let offline = HubOptions {
        endpoint: Some("http://127.0.0.1:1".to_owned()),
        cache_dir: Some(cache.path().to_owned()),
    };
    assert_eq!(
        fetch_checkpoint(REPO, &offline, Precision::Float32, &mut |_| {}).unwrap(),
        expected
    );
}

/// The ranges requested of the shard, in order.
fn shard_ranges(hub: &FakeHub) -> Vec<String> {
    hub.seen()
        .into_iter()
        .filter(|s| s.path.ends_with(shard()))
        .filter_map(|s| s.range)
        .collect()
}

#[test]
fn a_broken_download_resumes_from_where_it_stopped() {
    // Each response stops after 400 kB: the first try and hf-hub's retries (four, as
    // `with_retries(3)` counts them), each resuming where the last stopped, fetch 2.0 of
    // the shard's 3.5 MB, then give up.
    let piece = 400_000;
    let always = Faults {
        cut: Some((shard().to_owned(), piece, usize::MAX)),
        corrupt: None,
    };
    let cache = tempfile::tempdir().unwrap();
    let failing = FakeHub::serve(&checkpoint_fixture(), always);
    let error = fetch_checkpoint(REPO, &failing.options(cache.path()), Precision::Float32, &mut |_| {}).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::Interrupted { .. }), "{message}");
    assert!(
        message.contains(shard()) && message.contains("run the same command again"),
        "{message}"
    );
    let tries: Vec<String> = (0..5).map(|i| format!("bytes={}-", i * piece)).collect();
    assert!(shard_ranges(&failing).ends_with(&tries), "{:?}", shard_ranges(&failing));

    let hub = FakeHub::serve(&checkpoint_fixture(), Faults::default());
    fetch_checkpoint(REPO, &hub.options(cache.path()), Precision::Float32, &mut |_| {}).unwrap();
    assert_eq!(
        shard_ranges(&hub).last(),
        Some(&format!("bytes={}-", 5 * piece)),
        "the next run starts where the last one stopped"
    );
}

#[test]
fn a_corrupt_download_is_removed_and_named() {
    let faults = Faults {
        cut: None,
        corrupt: Some(shard().to_owned()),
    };
    let hub = FakeHub::serve(&checkpoint_fixture(), faults);
    let cache = tempfile::tempdir().unwrap();
    let error = fetch_checkpoint(REPO, &hub.options(cache.path()), Precision::Float32, &mut |_| {}).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::Checksum { .. }), "{message}");
    assert!(message.contains(shard()) && message.contains("SHA-256"), "{message}");
    let snapshot = cache
        .path()
        .join("models--facebook--musicgen-tiny-test/snapshots")
        .join(COMMIT);
    assert!(
        !snapshot.join(shard()).exists(),
        "the corrupt file stays in the snapshot"
    );
}

#[test]
fn no_network_and_an_unknown_repository_say_so() {
    let cache = tempfile::tempdir().unwrap();
    let offline = HubOptions {
        endpoint: Some("http://127.0.0.1:1".to_owned()),
        cache_dir: Some(cache.path().to_owned()),
    };
    let message = fetch_checkpoint(REPO, &offline, Precision::Float32, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("could not reach http://127.0.0.1:1"), "{message}");

    let hub = FakeHub::serve(&checkpoint_fixture(), Faults::default());
    let error = fetch_checkpoint(
        "facebook/no-such-model",
        &hub.options(cache.path()),
        Precision::Float32,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(error, HubError::NotFound { status: 404, .. }), "{error}");
}

#[test]
fn a_checkpoint_no_template_fits_is_refused_before_its_weights_are_fetched() {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(checkpoint_fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    let config_path = folder.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["decoder"]["hidden_size"] = 1536.into();
    std::fs::write(&config_path, config.to_string()).unwrap();

    let hub = FakeHub::serve(folder.path(), Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let error = fetch_checkpoint(REPO, &hub.options(cache.path()), Precision::Int4, &mut |_| {}).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::Unsupported { .. }), "{message}");
    assert!(message.contains("decoder.hidden_size is 1536"), "{message}");
    let weights: Vec<_> = hub
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with(".safetensors"))
        .collect();
    assert!(weights.is_empty(), "fetched {weights:?}");
}
