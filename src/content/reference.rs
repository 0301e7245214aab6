//! Image references as the Docker Engine reads them, so that p2pimg refuses
//! up front what an engine would refuse after the transfer.
//!
//! The grammar is distribution/reference's (the package dockerd parses
//! references with), written out by hand so that an error can say what is
//! wrong rather than "invalid reference format":
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path
//! domain     := host [ ":" port ]        host: DNS labels (any case) or [IPv6]
//! path       := component [ "/" component ]*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" [a-f0-9]{64}
//! ```
//!
//! The path is at most 255 characters once Docker Hub's defaults are filled
//! in (`app` is `docker.io/library/app`). A reference that applies as a tag
//! names a repository and, optionally, a tag (`latest` if none): no digest,
//! and not a 64-digit hex string, which Docker reads as an image ID.

use std::fmt;

/// Longest repository path, as distribution/reference's
/// `RepositoryNameTotalLengthMax`.
pub const MAX_PATH_LEN: usize = 255;
/// Longest tag: the grammar's one character plus up to 127 more.
pub const MAX_TAG_LEN: usize = 128;
/// Docker Hub, the domain of a name that does not start with one.
const DEFAULT_DOMAIN: &str = "docker.io";
/// The namespace of Docker Hub's one-component names (`app` is `library/app`).
const OFFICIAL_PREFIX: &str = "library/";
/// Docker Hub's old name, which Docker reads as [`DEFAULT_DOMAIN`].
const LEGACY_DOMAIN: &str = "index.docker.io";
/// The tag of a reference that names none.
const DEFAULT_TAG: &str = "latest";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host and port, with Docker Hub's defaults filled in.
    domain: String,
    /// Repository path, with `library/` added for Docker Hub's short names.
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// A reference that Docker would refuse, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ReferenceError {
    /// The reference as given.
    pub reference: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Nothing was given.
    #[error("an image reference may not be empty (name an image, such as app:1.4, or give its ID)")]
    Empty,
    /// The repository name has capitals; it would be valid in lowercase.
    #[error("repository names must be lowercase")]
    Uppercase,
    /// More than one `:` after the last `/`, as in `app:1:2`.
    #[error("a tag may not contain ':'")]
    ColonInTag,
    /// The tag is empty, too long or has a character outside `A-Za-z0-9_.-`.
    #[error("a tag is 1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -")]
    BadTag,
    /// The repository path is longer than [`MAX_PATH_LEN`].
    #[error("the name is too long (a repository name has at most 255 characters)")]
    TooLong,
    /// The part after `@` is not a sha256 digest.
    #[error("a digest is sha256: and 64 lowercase hex digits")]
    BadDigest,
    /// A digest reference was given where a tag is to be applied.
    #[error("a digest reference cannot be applied as a tag (use NAME:TAG, such as app:1.4)")]
    Digest,
    /// A 64-digit hex string, which Docker reads as an image ID.
    #[error("64 hex digits are an image ID, not a repository name")]
    IdAsName,
    /// Anything else the grammar refuses.
    #[error("not a valid image reference: write [HOST[:PORT]/]NAME[:TAG], NAME of lowercase letters and digits separated by . _ __ - or /")]
    Format,
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.reference;
        let plain = r.bytes().all(|b| b.is_ascii_graphic());
        match (r.is_empty(), plain) {
            (true, _) => write!(f, "{}", self.problem),
            (false, true) => write!(f, "{r}: {}", self.problem),
            // Control characters or spaces in a crafted reference stay on one line.
            (false, false) => write!(f, "{r:?}: {}", self.problem),
        }
    }
}

impl Reference {
    /// Parses any reference Docker can name an image by: `app`, `app:1.4`,
    /// `registry:5000/team/app:1.4`, `app@sha256:…`.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let fail = |problem| ReferenceError {
            reference: text.to_string(),
            problem,
        };
        match parse_exact(text) {
            Ok(r) => Ok(r),
            // As distribution/reference does: if the lowercase form parses,
            // the capitals are the problem.
            Err(p) if p != Problem::Empty && text != text.to_lowercase() => {
                match parse_exact(&text.to_lowercase()) {
                    Ok(_) => Err(fail(Problem::Uppercase)),
                    Err(_) => Err(fail(p)),
                }
            }
            Err(p) => Err(fail(p)),
        }
    }

    /// Parses a reference that can be applied as a tag: a repository and
    /// an optional tag, without a digest.
    pub fn parse_tag(text: &str) -> Result<Reference, ReferenceError> {
        let fail = |problem| ReferenceError {
            reference: text.to_string(),
            problem,
        };
        if is_hex(text, 64) {
            return Err(fail(Problem::IdAsName));
        }
        let r = Reference::parse(text)?;
        if r.digest.is_some() {
            return Err(fail(Problem::Digest));
        }
        Ok(r)
    }

    /// The full name Docker files the reference under, for comparing two:
    /// `app` and `docker.io/library/app:latest` are the same tag.
    pub fn canonical(&self) -> String {
        let mut out = format!("{}/{}", self.domain, self.path);
        match (&self.tag, &self.digest) {
            (Some(tag), _) => out = format!("{out}:{tag}"),
            (None, None) => out = format!("{out}:{DEFAULT_TAG}"),
            (None, Some(_)) => {}
        }
        if let Some(digest) = &self.digest {
            out = format!("{out}@{digest}");
        }
        out
    }

    /// The tag, if one was written.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if one was written.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

/// Checks an image as the command line names it: a reference, or an image
/// ID (64 hex digits, with or without `sha256:`; a short ID is also a valid
/// name, and the engine resolves it).
pub fn check_image(text: &str) -> Result<(), ReferenceError> {
    let id = text.strip_prefix("sha256:").unwrap_or(text);
    if is_hex(id, 64) {
        return Ok(());
    }
    Reference::parse(text).map(|_| ())
}

/// The grammar, without the lowercase retry.
fn parse_exact(text: &str) -> Result<Reference, Problem> {
    if text.is_empty() {
        return Err(Problem::Empty);
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").ok_or(Problem::BadDigest)?;
        if !is_hex(hex, 64) {
            return Err(Problem::BadDigest);
        }
    }
    // A path component has no ':', so the tag starts at the first ':' after the last '/'.
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last..].find(':') {
        Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
        None => (rest, None),
    };
    if !is_domain_and_path(name) && !is_path(name) {
        return Err(Problem::Format);
    }
    let (domain, path) = split_docker_domain(name);
    if path.len() > MAX_PATH_LEN {
        return Err(Problem::TooLong);
    }
    if let Some(t) = tag {
        check_tag(t)?;
    }
    Ok(Reference {
        domain,
        path,
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

/// `[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), Problem> {
    if tag.contains(':') {
        return Err(Problem::ColonInTag);
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = tag.len() <= MAX_TAG_LEN
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Problem::BadTag)
    }
}

/// `domain "/" path`, the first component read as a registry host.
fn is_domain_and_path(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(domain, path)| is_domain(domain) && is_path(path))
}

/// `component [ "/" component ]*`.
fn is_path(text: &str) -> bool {
    text.split('/').all(is_component)
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`.
fn is_component(text: &str) -> bool {
    let b = text.as_bytes();
    let alnum = |i: usize| {
        b.get(i)
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    let mut i = 0;
    loop {
        if !alnum(i) {
            return false;
        }
        while alnum(i) {
            i += 1;
        }
        if i == b.len() {
            return true;
        }
        i += match (b[i], b.get(i + 1)) {
            (b'_', Some(b'_')) => 2,
            (b'.' | b'_', _) => 1,
            (b'-', _) => b[i..].iter().take_while(|&&c| c == b'-').count(),
            _ => return false,
        };
    }
}

/// `host [ ":" port ]`: DNS labels of any case, or an IPv6 address in brackets.
fn is_domain(text: &str) -> bool {
    let (host, port) = match text.rfind(']') {
        Some(end) => text.split_at(end + 1),
        None => text.split_at(text.find(':').unwrap_or(text.len())),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(digits);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        None => host.split('.').all(is_label),
    };
    port_ok && host_ok
}

/// `[a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_label(label: &str) -> bool {
    let b = label.as_bytes();
    let edge = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    edge(b.first()) && edge(b.last()) && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Docker Hub's defaults filled in, as distribution/reference's
/// `splitDockerDomain`: the first component is a registry host only if it
/// is `localhost`, has a `.` or `:`, or has capitals.
fn split_docker_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        None => (DEFAULT_DOMAIN, name),
        Some((LEGACY_DOMAIN, path)) => (DEFAULT_DOMAIN, path),
        Some((first, path))
            if first == "localhost" || first.contains(['.', ':']) || first != first.to_lowercase() =>
        {
            (first, path)
        }
        Some(_) => (DEFAULT_DOMAIN, name),
    };
    let path = match domain == DEFAULT_DOMAIN && !path.contains('/') {
        true => format!("{OFFICIAL_PREFIX}{path}"),
        false => path.to_string(),
    };
    (domain.to_string(), path)
}

/// True when `text` is exactly `len` lowercase hex digits.
fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
#[path = "tests/reference.rs"]
mod tests;
