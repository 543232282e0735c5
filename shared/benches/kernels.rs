//! The per-chunk kernels of the data path, on 4 MiB chunks of text-like and random data:
//! keyed BLAKE3 (chunk id), SHA-256 (disk digest), blob encode (compress + encrypt) and decode.
//!
//! `cargo bench -p hyperexport-shared --bench kernels`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hyperexport_shared::chunk::{self, ChunkId};
use hyperexport_shared::compress::Compression;
use hyperexport_shared::crypto::{MasterKey, RepoKeys};
use sha2::{Digest, Sha256};

const CHUNK: usize = 4 << 20;

fn text() -> Vec<u8> {
    let words = ["the ", "disk ", "export ", "error ", "GET /api/v1/items 200 ", "replica ", "\n", "2026-11-26T10:00:00Z "];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(CHUNK + 64);
    while out.len() < CHUNK {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(words[(state % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(CHUNK);
    out
}

fn random() -> Vec<u8> {
    let mut out = vec![0u8; CHUNK];
    blake3::Hasher::new().update(b"bench").finalize_xof().fill(&mut out);
    out
}

fn kernels(c: &mut Criterion) {
    let keys = RepoKeys::derive(&MasterKey([9; 32]), true);
    let mut g = c.benchmark_group("chunk_4MiB");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.sample_size(20);
    for (name, data) in [("text", text()), ("random", random())] {
        let id = ChunkId(keys.chunk_id(&data));
        g.bench_function(format!("blake3_keyed/{name}"), |b| b.iter(|| keys.chunk_id(black_box(&data))));
        g.bench_function(format!("sha256/{name}"), |b| b.iter(|| Sha256::digest(black_box(&data))));
        g.bench_function(format!("sha256_ring/{name}"), |b| b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(&data))));
        for comp in [Compression::Zstd(1), Compression::Zstd(3), Compression::Lz4, Compression::None] {
            g.bench_function(format!("encode_{comp}_aes256gcm/{name}"), |b| b.iter(|| chunk::encode(&keys, comp, &id, black_box(&data))));
        }
        let blob = chunk::encode(&keys, Compression::Zstd(1), &id, &data);
        g.bench_function(format!("decode_zstd:1_aes256gcm/{name}"), |b| {
            b.iter(|| chunk::decode(&keys, &id, black_box(blob.clone()), CHUNK).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
