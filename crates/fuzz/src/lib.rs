//! A small mutation fuzzer for Ferry's request surface that runs on stable Rust under
//! `cargo test`, each target for a bounded time.
//!
//! Inputs start from a seed corpus of real client requests (`corpus/<Rpc>/*.bin`, one encoded
//! request message each, made by `tools/fuzz_corpus.py` from recorded traces and a live capture
//! of the real SDK and CLI) and are mutated libFuzzer-style: bit flips, interesting bytes,
//! inserted, deleted, duplicated and spliced ranges, truncation, and appended protobuf fields
//! with random tags, wire types and lengths. Runs are reproducible from their seed
//! (`FERRY_FUZZ_SEED`); `FERRY_FUZZ_SECS` sets the time per target (default 20 s).
//!
//! The targets live in `tests/`: `surface.rs` drives every RPC through the real gateway layer
//! and service in process, the HTTP routing of web endpoints, and the gateway's request scanner.
//! A crash found there gets a regression test beside it (`regressions.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeds by RPC name.
pub fn corpus() -> BTreeMap<String, Vec<Vec<u8>>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let Ok(rpcs) = std::fs::read_dir(&dir) else { return out };
    for rpc in rpcs.flatten() {
        let name = rpc.file_name().to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(rpc.path()).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if let Ok(bytes) = std::fs::read(&f) {
                out.entry(name.clone()).or_default().push(bytes);
            }
        }
    }
    out
}

/// How long each target runs.
pub fn budget() -> Duration {
    let secs = std::env::var("FERRY_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(20.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// A random generator seeded from `FERRY_FUZZ_SEED` or the clock; the seed is printed so a
/// failing run can be replayed.
pub fn rng(target: &str) -> StdRng {
    let seed = std::env::var("FERRY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("fuzz target {target}: FERRY_FUZZ_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0x08, 0x10, 0x12, 0x1a, 0x22];
/// Bytes that mean something in paths, names and encodings.
const SPECIAL: &[u8] = b"../\0\xff-_:/%";

/// Applies one to four random mutations to `data`; `others` supplies splice material.
pub fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, others: &[&[u8]]) {
    for _ in 0..rng.gen_range(1..=4) {
        let len = data.len();
        match rng.gen_range(0..11) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                data.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                let copy = data[i..j].to_vec();
                let at = rng.gen_range(0..=data.len());
                data.splice(at..at, copy);
            }
            5 if len > 0 => data.truncate(rng.gen_range(0..len)),
            6 => append_field(rng, data),
            7 if !others.is_empty() => {
                let other = others[rng.gen_range(0..others.len())];
                if !other.is_empty() {
                    let i = rng.gen_range(0..other.len());
                    let j = rng.gen_range(i..=other.len());
                    let at = rng.gen_range(0..=data.len());
                    data.splice(at..at, other[i..j].iter().copied());
                }
            }
            8 => {
                // A field re-declared with a length beyond the message.
                data.push(0x0a);
                let shift = rng.gen_range(0..64);
                put_varint(data, rng.gen_range(0..u64::MAX >> shift));
            }
            9 if len > 1 => {
                let i = rng.gen_range(0..len - 1);
                data.swap(i, i + 1);
            }
            _ => {
                let n = rng.gen_range(0..64);
                *data = (0..n).map(|_| rng.gen()).collect();
            }
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a random field: any tag up to 64 (most request fields are low numbers), any wire
/// type, and a payload that may or may not match it.
fn append_field(rng: &mut StdRng, data: &mut Vec<u8>) {
    let number: u64 = rng.gen_range(1..64);
    let wire: u64 = rng.gen_range(0..6);
    put_varint(data, number << 3 | wire);
    match wire {
        0 => put_varint(data, rng.gen()),
        1 => data.extend((0..8).map(|_| rng.gen::<u8>())),
        2 => {
            let n = rng.gen_range(0..48);
            put_varint(data, n);
            let choice = rng.gen_range(0..3);
            for _ in 0..n {
                data.push(match choice {
                    0 => rng.gen_range(b'a'..=b'z'),
                    1 => SPECIAL[rng.gen_range(0..SPECIAL.len())],
                    _ => rng.gen(),
                });
            }
        }
        5 => data.extend((0..4).map(|_| rng.gen::<u8>())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_bounded_and_vary() {
        let mut rng = StdRng::seed_from_u64(7);
        let seed = vec![0x0a, 0x03, b'a', b'b', b'c'];
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut d = seed.clone();
            mutate(&mut rng, &mut d, &[seed.as_slice()]);
            assert!(d.len() < 4096);
            distinct.insert(d);
        }
        assert!(distinct.len() > 500, "{}", distinct.len());
    }

    #[test]
    fn the_corpus_holds_real_requests() {
        let c = corpus();
        assert!(c.len() >= 20, "corpus has seeds for {} RPCs", c.len());
        assert!(c.contains_key("FunctionMap") && c.contains_key("DictUpdate"));
    }
}
