//! Cluster identity: the CA that `p2pimg init` creates, the node and pusher certificates it
//! issues, and loading this process's own identity (CA + certificate + key) for mutual TLS.
//!
//! Every certificate's subject carries the holder's name as CommonName and its role as
//! OrganizationalUnit (`p2pimg-node` / `p2pimg-pusher`); every leaf carries the DNS name
//! [`CERT_DNS_NAME`], because peers are dialled by IP address and all use that one TLS name.
//! Private keys are written 0600 at creation, and never appear in logs or error messages.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;

/// DNS name in every leaf certificate and the TLS server name of every connection: peers are
/// addressed by IP, so one fixed name (checked against the cluster CA only) stands for all.
pub const CERT_DNS_NAME: &str = "p2pimg";
/// CommonName of the cluster CA; descriptive only, nothing matches on it.
pub const CA_COMMON_NAME: &str = "p2pimg cluster CA";
/// Name of the pusher identity `init_cluster` issues, so a fresh cluster can push at once.
pub const PUSHER_NAME: &str = "pusher";
/// Default leaf validity for `p2pimg cert issue`: 825 days, the longest lifetime browsers
/// accepted for leaf certificates, long enough that renewals stay rare for an offline cluster.
pub const DEFAULT_VALID_DAYS: u32 = 825;
/// Longest leaf validity `cert issue` accepts: 100 years, far beyond any
/// real need and well inside the year 9999 an X.509 date can hold.
pub const MAX_VALID_DAYS: u32 = 36_500;
/// CA validity: 10 years, because re-keying the CA means re-issuing every node certificate.
const CA_VALID_DAYS: u32 = 3650;
/// Certificates start one hour in the past so that nodes whose clocks lag the issuing machine
/// by minutes still accept a certificate issued just now.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Seconds in a day, for turning `valid_days` into a duration.
const SECS_PER_DAY: u64 = 86_400;
/// Longest name: 63 bytes, the DNS label limit, so a name can also serve as a host name.
const NAME_MAX_LEN: usize = 63;
/// Key files must not be accessible by group or others (the same rule ssh applies).
const KEY_FORBIDDEN_MODE_BITS: u32 = 0o077;
/// Mode of new key files, set at creation (never chmod afterwards: no window where it is open).
const KEY_FILE_MODE: u32 = 0o600;
/// Mode of new certificate files: certificates are public.
const CERT_FILE_MODE: u32 = 0o644;
/// Mode of a directory `init_cluster` creates: it holds the CA key.
const DIR_MODE: u32 = 0o700;

/// Errors from creating, issuing or loading cluster identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A node or pusher name breaks the naming rule.
    #[error("invalid name `{name}`: {reason} (names are 1-63 characters of A-Z a-z 0-9 . _ -, not starting with `.` or `-`)")]
    InvalidName { name: String, reason: &'static str },
    /// A role string is neither `node` nor `pusher`.
    #[error("unknown role `{given}` (expected `node` or `pusher`)")]
    UnknownRole { given: String },
    /// A validity of zero days, or more than [`MAX_VALID_DAYS`], was requested.
    #[error("a certificate is valid for 1 to 36500 days (100 years), not {days} (--days)")]
    BadValidity { days: u32 },
    /// `init_cluster` found an existing CA key.
    #[error("{} already exists: this directory already holds a cluster CA (choose another --dir, or remove it to start a new cluster, which invalidates every certificate it issued)", path.display())]
    AlreadyInitialized { path: PathBuf },
    /// A file that would be written already exists.
    #[error("{} already exists; refusing to overwrite it (remove it first, or choose another name)", path.display())]
    Exists { path: PathBuf },
    /// The identity directory could not be created.
    #[error("cannot create directory {}: {source} (check the parent directory's permissions)", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    /// A certificate or key file could not be written.
    #[error("cannot write {}: {source} (check the directory's permissions and free space)", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {}: {source}{hint}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
        hint: String,
    },
    /// A key file is readable or writable by group or others.
    #[error("private key {} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`", path.display(), path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// A file does not hold what it should (no PEM block, or a malformed one).
    #[error("{} is not a valid {what}: {detail}", path.display())]
    Malformed {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// A certificate was not signed by the given CA.
    #[error("certificate {} was not issued by the CA in {} (were they copied from different clusters?)", cert.display(), ca.display())]
    NotIssuedByCa { cert: PathBuf, ca: PathBuf },
    /// A key file does not belong to the certificate it is paired with.
    #[error("private key {} does not match certificate {} (copy the key issued together with that certificate)", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// A certificate is expired or not yet valid.
    #[error("certificate {} is valid from {not_before} to {not_after}, not now (check this machine's clock, or issue a new certificate)", path.display())]
    OutsideValidity {
        path: PathBuf,
        not_before: String,
        not_after: String,
    },
    /// Key or certificate generation failed inside rcgen.
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
}

const _: () = crate::ops::assert_error_is_send_sync::<IdentityError>();

/// What a certificate is allowed to do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agent: serves and fetches chunks, loads images.
    Node,
    /// May announce distributions to agents.
    Pusher,
}

impl Role {
    /// The word used on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Pusher => "pusher",
        }
    }

    /// The subject OrganizationalUnit that carries this role in a certificate.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Node => "p2pimg-node",
            Role::Pusher => "p2pimg-pusher",
        }
    }

    /// The role whose OrganizationalUnit is `unit`, if any.
    pub fn from_unit(unit: &str) -> Option<Role> {
        [Role::Node, Role::Pusher].into_iter().find(|r| r.unit() == unit)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "node" => Ok(Role::Node),
            "pusher" => Ok(Role::Pusher),
            _ => Err(IdentityError::UnknownRole { given: s.to_string() }),
        }
    }
}

/// Files written by [`init_cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Every file written, in order: CA certificate, CA key, pusher certificate, pusher key.
    pub files: Vec<PathBuf>,
}

/// The certificate and key files of one issued identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    /// `DIR/<name>.crt`.
    pub cert: PathBuf,
    /// `DIR/<name>.key`.
    pub key: PathBuf,
}

impl IssuedFiles {
    /// Where the identity called `name` lives inside `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        IssuedFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// Checks `name` against the naming rule shared by certificates and nodes.toml.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > NAME_MAX_LEN {
        Some("it is longer than 63 characters")
    } else if name.starts_with(['.', '-']) {
        Some("it starts with `.` or `-`")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Some("it contains a character other than A-Z a-z 0-9 . _ -")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IdentityError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates a cluster in `dir`: a CA (`ca.crt`, `ca.key`) and a pusher identity
/// (`pusher.crt`, `pusher.key`). Refuses if `dir/ca.key` already exists.
pub fn init_cluster(dir: &Path) -> Result<InitReport, IdentityError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| IdentityError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(IdentityError::AlreadyInitialized { path: ca_key_path });
    }
    let ca = CaSigner::generate()?;
    let ca_cert_path = dir.join("ca.crt");
    write_new(&ca_key_path, &ca.key.serialize_pem(), KEY_FILE_MODE)?;
    write_new(&ca_cert_path, &ca.cert.pem(), CERT_FILE_MODE)?;
    let pusher = ca.issue_into(dir, PUSHER_NAME, Role::Pusher, DEFAULT_VALID_DAYS)?;
    Ok(InitReport {
        files: vec![ca_cert_path, ca_key_path, pusher.cert, pusher.key],
    })
}

/// Issues a certificate for `name` with `role` from the CA in `dir`, valid for `valid_days`,
/// written to `dir/<name>.crt` and `dir/<name>.key`. Never overwrites existing files.
pub fn issue(dir: &Path, name: &str, role: Role, valid_days: u32) -> Result<IssuedFiles, IdentityError> {
    validate_name(name)?;
    if !(1..=MAX_VALID_DAYS).contains(&valid_days) {
        return Err(IdentityError::BadValidity { days: valid_days });
    }
    CaSigner::load(dir)?.issue_into(dir, name, role, valid_days)
}

/// The CA certificate and key, able to sign leaf certificates.
struct CaSigner {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl CaSigner {
    /// A new CA: ECDSA P-256, CommonName [`CA_COMMON_NAME`], valid for 10 years.
    fn generate() -> Result<Self, IdentityError> {
        let key = generate_key("the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        // Path length 0: the CA signs leaves only, never intermediate CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALID_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(generate_failed("the CA certificate"))?;
        Ok(CaSigner { cert, key })
    }

    /// The CA stored in `dir/ca.crt` and `dir/ca.key`.
    fn load(dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let der = read_cert(&cert_path, "CA certificate")?;
        // The key that signs every identity is held to the rule node keys are.
        check_key_mode(&key_path, "CA private key")?;
        let key = read_key(&key_path, "CA private key")?;
        let params = CertificateParams::from_ca_cert_der(&der)
            .map_err(|e| malformed("CA certificate", &cert_path, e))?;
        // Re-signing the loaded parameters yields an issuer with the same subject and key
        // identifier as the stored CA certificate, which is all rcgen needs to sign leaves.
        let cert = params
            .self_signed(&key)
            .map_err(generate_failed("the CA issuer"))?;
        Ok(CaSigner { cert, key })
    }

    /// Signs a new leaf for `name` and writes it into `dir`, key first.
    fn issue_into(
        &self,
        dir: &Path,
        name: &str,
        role: Role,
        valid_days: u32,
    ) -> Result<IssuedFiles, IdentityError> {
        let files = IssuedFiles::in_dir(dir, name);
        for path in [&files.cert, &files.key] {
            if path.exists() {
                return Err(IdentityError::Exists { path: path.clone() });
            }
        }
        let key = generate_key("a private key")?;
        let cert = leaf_params(name, role, valid_days)?
            .signed_by(&key, &self.cert, &self.key)
            .map_err(generate_failed("the certificate"))?;
        write_new(&files.key, &key.serialize_pem(), KEY_FILE_MODE)?;
        write_new(&files.cert, &cert.pem(), CERT_FILE_MODE)?;
        Ok(files)
    }
}

/// Parameters of a leaf certificate: CN = name, OU = role, SAN = [`CERT_DNS_NAME`],
/// serverAuth + clientAuth (every agent both dials and accepts), not a CA.
fn leaf_params(name: &str, role: Role, valid_days: u32) -> Result<CertificateParams, IdentityError> {
    let san = CERT_DNS_NAME
        .to_string()
        .try_into()
        .map_err(generate_failed("the certificate name"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.unit());
    params.subject_alt_names = vec![SanType::DnsName(san)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, valid_days);
    Ok(params)
}

/// Sets not_before to now minus [`BACKDATE`] and not_after to now plus `days`.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * SECS_PER_DAY)).into();
}

/// A fresh ECDSA P-256 key pair.
fn generate_key(what: &'static str) -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_failed(what))
}

/// Maps an rcgen failure while generating `what`.
fn generate_failed(what: &'static str) -> impl FnOnce(rcgen::Error) -> IdentityError {
    move |source| IdentityError::Generate { what, source }
}

/// A [`IdentityError::Malformed`] for `path`.
fn malformed(what: &'static str, path: &Path, detail: impl ToString) -> IdentityError {
    let (path, detail) = (path.to_path_buf(), detail.to_string());
    IdentityError::Malformed { what, path, detail }
}

/// Creates `path` (failing if it exists) with `mode` from the first byte, and writes `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), IdentityError> {
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => IdentityError::Exists {
            path: path.to_path_buf(),
        },
        _ => IdentityError::Write {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// This process's identity: its name and role, and the material for the TLS configurations.
pub struct Identity {
    /// The certificate's CommonName.
    pub name: String,
    /// The role in the certificate's OrganizationalUnit.
    pub role: Role,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for Identity {
    // Hand-written so the private key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish()
    }
}

impl Identity {
    /// Loads and cross-checks the cluster CA, this process's certificate and its private key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, IdentityError> {
        let ca_der = read_cert(ca, "CA certificate")?;
        let cert_der = read_cert(cert, "certificate")?;
        check_key_mode(key, "private key")?;
        let key_pair = read_key(key, "private key")?;
        let leaf = parse_cert(cert, &cert_der)?;
        let ca_cert = parse_cert(ca, &ca_der)?;
        if leaf.verify_signature(Some(ca_cert.public_key())).is_err() {
            return Err(IdentityError::NotIssuedByCa {
                cert: cert.into(),
                ca: ca.into(),
            });
        }
        check_validity(cert, &leaf)?;
        if leaf.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(IdentityError::KeyMismatch {
                key: key.into(),
                cert: cert.into(),
            });
        }
        let (name, role) = cert_subject(&cert_der).map_err(|e| malformed("p2pimg certificate", cert, e))?;
        let key = PrivatePkcs8KeyDer::from(key_pair.serialize_der());
        Ok(Identity {
            name,
            role,
            ca: ca_der,
            cert: cert_der,
            key,
        })
    }

    /// Loads `dir/ca.crt`, `dir/<name>.crt` and `dir/<name>.key`.
    pub fn load_from_dir(dir: &Path, name: &str) -> Result<Identity, IdentityError> {
        let files = IssuedFiles::in_dir(dir, name);
        Identity::load(&dir.join("ca.crt"), &files.cert, &files.key)
    }

    /// The cluster CA certificate: the only trust anchor for peers.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The chain to present to peers (the leaf alone: peers hold the CA).
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    /// A copy of the private key, for a TLS configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The holder name (CommonName) and role (OrganizationalUnit) of a DER certificate, or the
/// reason it is not a p2pimg certificate.
pub fn cert_subject(der: &[u8]) -> Result<(String, Role), &'static str> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "it is not an X.509 certificate")?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("its subject has no CommonName")?;
    let role = subject
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .find_map(Role::from_unit)
        .ok_or("its subject has no OrganizationalUnit p2pimg-node or p2pimg-pusher")?;
    Ok((name.to_string(), role))
}

/// Reads the first certificate of a PEM file.
fn read_cert(path: &Path, what: &'static str) -> Result<CertificateDer<'static>, IdentityError> {
    let pem = read_file(path, what)?;
    let first = rustls_pemfile::certs(&mut pem.as_slice()).next();
    match first {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(malformed(what, path, e)),
        None => Err(malformed(what, path, "it holds no PEM CERTIFICATE block")),
    }
}

/// Reads a PKCS#8 PEM private key. Error details never include the file's contents.
fn read_key(path: &Path, what: &'static str) -> Result<KeyPair, IdentityError> {
    let pem = read_file(path, what)?;
    let text = String::from_utf8(pem).ok();
    let detail = "it holds no PKCS#8 PEM PRIVATE KEY block p2pimg can use (ECDSA P-256)";
    text.and_then(|t| KeyPair::from_pem(&t).ok())
        .ok_or_else(|| malformed(what, path, detail))
}

/// Reads a whole file, with a hint on what to run when it is missing.
fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| read_error(path, what, source))
}

/// A [`IdentityError::Read`] with a hint that fits `what` and the cause.
fn read_error(path: &Path, what: &'static str, source: io::Error) -> IdentityError {
    let hint = match source.kind() {
        io::ErrorKind::NotFound if what == "CA private key" => {
            " (certificates are issued where the cluster's ca.key is: pass the directory \
             `p2pimg init` made as --dir, or run `p2pimg init --dir DIR` to create a cluster)"
                .to_string()
        }
        io::ErrorKind::NotFound if what.starts_with("CA") => {
            " (copy the cluster's ca.crt here, or run `p2pimg init --dir DIR` to create a cluster)"
                .to_string()
        }
        io::ErrorKind::NotFound => {
            let stem = path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
            format!(" (run `p2pimg cert issue {stem} --dir DIR`)")
        }
        io::ErrorKind::PermissionDenied => " (check the file's owner and permissions)".into(),
        _ => String::new(),
    };
    IdentityError::Read {
        what,
        path: path.into(),
        source,
        hint,
    }
}

/// Refuses a key file that group or others can access.
fn check_key_mode(path: &Path, what: &'static str) -> Result<(), IdentityError> {
    let meta = fs::metadata(path).map_err(|source| read_error(path, what, source))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & KEY_FORBIDDEN_MODE_BITS != 0 {
        return Err(IdentityError::KeyPermissions {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// Parses a DER certificate read from `path`.
fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, IdentityError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| malformed("certificate", path, e))
}

/// Refuses a certificate that is expired or not yet valid.
fn check_validity(path: &Path, cert: &X509Certificate<'_>) -> Result<(), IdentityError> {
    let validity = cert.validity();
    if validity.is_valid() {
        return Ok(());
    }
    Err(IdentityError::OutsideValidity {
        path: path.into(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    })
}

#[cfg(test)]
#[path = "tests/identity.rs"]
mod tests;
