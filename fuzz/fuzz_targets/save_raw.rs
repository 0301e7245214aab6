//! Fuzzes the `docker save` parser on arbitrary bytes (seeded with real
//! legacy and OCI archives from `examples/gen_seeds.rs`): `parse_save` must
//! never panic, and a manifest it returns must be valid and name only
//! chunks that are stored, verify, and reassemble to their layers.
//!
//! Input: one byte choosing the chunk size, then the archive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pimg::engine::parse_save;
use p2pimg_fuzz::{checks, scratch};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, archive)) = data.split_first() else {
        return;
    };
    let opts = scratch::pack_options(selector);
    scratch::with_store(|store| {
        if let Ok(manifest) = parse_save(archive, store, &opts) {
            checks::stored_save(&manifest, store);
        }
    });
});
