//! Applying a spec's extras and faults to the model, the entries and the
//! bytes of an archive.

use super::layout::{Line, Model};
use super::tar_writer::{Entry, Kind};
use super::{name_of, Extra, ExtraKind, Fault};

/// Faults on configs and `manifest.json`.
pub(super) fn apply_to_model(model: &mut Model, faults: &[Fault]) {
    let names: Vec<String> = model.entries().into_iter().map(|e| e.name).collect();
    for fault in faults {
        match fault {
            Fault::ConfigLies(i, how) => {
                if let Some((config, _)) = pick_mut(&mut model.configs, *i) {
                    *config = lying_config(config, *how);
                }
            }
            Fault::ConfigRaw(i, bytes) => {
                if let Some((config, _)) = pick_mut(&mut model.configs, *i) {
                    *config = bytes.clone();
                }
            }
            Fault::ManifestRaw(bytes) => model.manifest_raw = Some(bytes.clone()),
            Fault::ManifestConfigPath(i, name) => {
                if let Some(line) = pick_mut(&mut model.lines, *i) {
                    line.config = name_of(name, &names);
                }
            }
            Fault::ManifestLayerPath(i, j, name) => {
                if let Some(line) = pick_mut(&mut model.lines, *i) {
                    if let Some(path) = pick_mut(&mut line.layers, *j) {
                        *path = name_of(name, &names);
                    }
                }
            }
            Fault::ManifestDuplicate(i) => {
                if model.lines.is_empty() {
                    continue;
                }
                let image = usize::from(*i) % model.lines.len();
                let copy = Line {
                    config: model.lines[image].config.clone(),
                    tags: vec![format!("dup{i}:latest")],
                    layers: model.lines[image].layers.clone(),
                };
                model.lines.push(copy);
                model.configs.push(model.configs[image].clone());
                model.image_layers.push(model.image_layers[image].clone());
            }
            _ => {}
        }
    }
}

/// A config whose `rootfs.diff_ids` disagree with the layers.
fn lying_config(config: &[u8], how: u8) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(config) else {
        return config.to_vec();
    };
    let ids = value.get_mut("rootfs").and_then(|r| r.get_mut("diff_ids"));
    if let Some(ids) = ids.and_then(|ids| ids.as_array_mut()) {
        match how % 4 {
            0 => ids.reverse(),
            1 => drop(ids.pop()),
            2 => ids.push(serde_json::json!(p2pimg::content::manifest::sha256_digest(
                b"no such layer"
            ))),
            _ => ids.push(serde_json::json!("not a digest")),
        }
    }
    serde_json::to_vec(&value).expect("json")
}

/// Inserts the extra entries.
pub(super) fn add_extras(entries: &mut Vec<Entry>, extras: &[Extra]) {
    for extra in extras {
        let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        let name = name_of(&extra.name, &names);
        let entry = match &extra.kind {
            ExtraKind::Dir => Entry::dir(name),
            ExtraKind::File(data) => Entry::file(name, data.clone()),
            ExtraKind::Symlink(target) => {
                Entry::new(name, Kind::Symlink(name_of(target, &names)), Vec::new())
            }
            ExtraKind::Hardlink(target) => {
                Entry::new(name, Kind::Hardlink(name_of(target, &names)), Vec::new())
            }
            ExtraKind::Type(flag, data) => Entry::new(name, Kind::Other(*flag), data.clone()),
        };
        let at = usize::from(extra.at) % (entries.len() + 1);
        entries.insert(at, entry);
    }
}

/// Faults on whole entries.
pub(super) fn apply_to_entries(entries: &mut Vec<Entry>, faults: &[Fault]) {
    for fault in faults {
        if entries.is_empty() {
            return;
        }
        let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        let len = entries.len();
        let index = |k: &u16| usize::from(*k) % len;
        match fault {
            Fault::Drop(k) => drop(entries.remove(index(k))),
            Fault::Duplicate(k) => {
                let copy = entries[index(k)].clone();
                entries.push(copy);
            }
            Fault::Move(k, to) => {
                let e = entries.remove(index(k));
                let to = usize::from(*to) % (entries.len() + 1);
                entries.insert(to, e);
            }
            Fault::Rename(k, name) => entries[index(k)].name = name_of(name, &names),
            Fault::ReplaceData(k, data) => entries[index(k)].data = data.clone(),
            Fault::SetType(k, flag) => entries[index(k)].kind = Kind::Other(*flag),
            Fault::SizeLies(k, size) => entries[index(k)].size_override = Some(*size),
            Fault::PaxPath(k, name) => entries[index(k)].pax_path = Some(name_of(name, &names)),
            _ => {}
        }
    }
}

/// Faults on the archive's bytes.
pub(super) fn apply_to_bytes(bytes: &mut Vec<u8>, faults: &[Fault]) {
    for fault in faults {
        if bytes.is_empty() {
            return;
        }
        match fault {
            Fault::Truncate(at) => bytes.truncate(usize::from(*at) % bytes.len()),
            Fault::Flip(at, mask) => {
                let i = usize::from(*at) % bytes.len();
                bytes[i] ^= mask | 1;
            }
            _ => {}
        }
    }
}

fn pick_mut<T>(items: &mut [T], i: u8) -> Option<&mut T> {
    match items.len() {
        0 => None,
        n => items.get_mut(usize::from(i) % n),
    }
}
