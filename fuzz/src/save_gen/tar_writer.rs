//! A tar writer that writes names, link targets, types and sizes verbatim,
//! including what the `tar` crate's builder refuses (`..`, absolute names,
//! sizes that lie), using GNU long-name and PAX records where needed.

/// Tar block size.
const BLOCK: usize = 512;
/// Longest name or link target that fits a header field.
const FIELD: usize = 100;

/// One archive entry, as it will be written.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub data: Vec<u8>,
    /// Size written in the header instead of the data's length.
    pub size_override: Option<u64>,
    /// A PAX `path` record written before the entry.
    pub pax_path: Option<String>,
}

/// What an entry is.
#[derive(Clone, Debug)]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
    /// Any other type flag, written as is.
    Other(u8),
}

impl Entry {
    pub fn file(name: impl Into<String>, data: Vec<u8>) -> Self {
        Entry::new(name, Kind::File, data)
    }

    pub fn dir(name: impl Into<String>) -> Self {
        Entry::new(name, Kind::Dir, Vec::new())
    }

    pub fn new(name: impl Into<String>, kind: Kind, data: Vec<u8>) -> Self {
        Entry {
            name: name.into(),
            kind,
            data,
            size_override: None,
            pax_path: None,
        }
    }
}

/// The bytes of a tar archive holding `entries`, with the end-of-archive
/// blocks.
pub fn write_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        write_entry(&mut out, e);
    }
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
    out
}

fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let (flag, link) = match &e.kind {
        Kind::File => (b'0', ""),
        Kind::Dir => (b'5', ""),
        Kind::Symlink(t) => (b'2', t.as_str()),
        Kind::Hardlink(t) => (b'1', t.as_str()),
        Kind::Other(f) => (*f, ""),
    };
    if e.name.len() > FIELD {
        write_record(out, b'L', "././@LongLink", &nul_terminated(&e.name));
    }
    if link.len() > FIELD {
        write_record(out, b'K', "././@LongLink", &nul_terminated(link));
    }
    if let Some(path) = &e.pax_path {
        write_record(out, b'x', "PaxHeaders/entry", &pax_record("path", path));
    }
    let size = e.size_override.unwrap_or(e.data.len() as u64);
    out.extend_from_slice(&header(flag, &e.name, link, size));
    append_padded(out, &e.data);
}

/// A metadata entry (long name, PAX) carrying `data`.
fn write_record(out: &mut Vec<u8>, flag: u8, name: &str, data: &[u8]) {
    out.extend_from_slice(&header(flag, name, "", data.len() as u64));
    append_padded(out, data);
}

fn header(flag: u8, name: &str, link: &str, size: u64) -> [u8; BLOCK] {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    copy_field(&mut old.name, name.as_bytes());
    copy_field(&mut old.linkname, link.as_bytes());
    h.set_mode(if flag == b'5' { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(flag));
    h.set_cksum();
    *h.as_bytes()
}

fn copy_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn append_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    out.resize(out.len() + pad, 0);
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One PAX record, `"<len> <key>=<value>\n"`, where `len` counts itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}
