//! `cert issue --nodes`: the certificate and key of every node of an inventory that has
//! none yet, and a directory per node (`ca.crt`, `NODE.crt`, `NODE.key`) ready for
//! `scripts/install.sh --cert-dir`.
//!
//! Nothing is ever overwritten. Every node is checked before anything is written: a
//! certificate without its key, a kept certificate this CA did not issue (or one expired,
//! or a pusher's), or a per-node file that differs from what it would be, stops the run
//! with nothing written, so running it again after a fix does the whole job.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::Inventory;
use crate::net::identity::{self, Identity, IdentityError, IssuedFiles, Role};

/// Mode of a per-node directory: it holds the node's private key.
const KIT_DIR_MODE: u32 = 0o700;
/// Mode of the private key in a per-node directory (the agent refuses a looser one).
const KIT_KEY_MODE: u32 = 0o600;
/// Mode of the certificates in a per-node directory: they are public.
const KIT_CERT_MODE: u32 = 0o644;

/// One node of the inventory, and what happens to its certificate.
struct NodeCerts {
    name: String,
    /// `DIR/NODE.crt` and `DIR/NODE.key`.
    files: IssuedFiles,
    /// Whether they exist already (kept) or are issued now.
    kept: bool,
    /// `OUT/NODE/`.
    kit: PathBuf,
}

/// Issues what the inventory at `nodes` lacks in the cluster directory `dir`, valid for
/// `days`, and writes the per-node directories under `out` (default `DIR/nodes`).
pub(super) fn issue_inventory(
    nodes: &Path,
    dir: &Path,
    out: Option<&Path>,
    days: u32,
) -> anyhow::Result<ExitCode> {
    if !(1..=identity::MAX_VALID_DAYS).contains(&days) {
        return Err(IdentityError::BadValidity { days }.into());
    }
    let inventory = Inventory::load(nodes)?;
    let out = out.map_or_else(|| dir.join("nodes"), Path::to_path_buf);
    let ca = dir.join("ca.crt");
    let ca_pem = fs::read(&ca).with_context(|| {
        format!(
            "cannot read {} (run `p2pimg init --dir {}` first)",
            ca.display(),
            dir.display()
        )
    })?;
    let plan: Vec<NodeCerts> = inventory
        .nodes
        .iter()
        .map(|node| check_node(&node.name, dir, &out, &ca_pem))
        .collect::<anyhow::Result<_>>()?;
    make_dir(&out)?;
    for node in &plan {
        if !node.kept {
            identity::issue(dir, &node.name, Role::Node, days)?;
        }
        let kit = write_kit(node, &ca_pem)?;
        println!("{}", node_line(node, &kit));
    }
    let issued = plan.iter().filter(|n| !n.kept).count();
    println!(
        "{issued} issued, {} kept; next, on each node: sudo scripts/install.sh --name NODE --cert-dir {}/NODE",
        plan.len() - issued,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What to do for node `name`, or why nothing may be done at all.
fn check_node(name: &str, dir: &Path, out: &Path, ca_pem: &[u8]) -> anyhow::Result<NodeCerts> {
    let files = IssuedFiles::in_dir(dir, name);
    let node = NodeCerts {
        name: name.to_string(),
        kept: files.cert.exists(),
        kit: out.join(name),
        files,
    };
    match (node.kept, node.files.key.exists()) {
        (true, true) => check_kept(&node, dir)?,
        (false, false) => {}
        (cert, _) => {
            let (there, missing) = match cert {
                true => (&node.files.cert, &node.files.key),
                false => (&node.files.key, &node.files.cert),
            };
            bail!(
                "node {name}: {} exists but {} does not; nothing was written (remove {} to issue both anew)",
                there.display(),
                missing.display(),
                there.display()
            );
        }
    }
    for (source, dest, _) in kit_files(&node, ca_pem, node.kept) {
        check_kit_file(&node, source, &dest)?;
    }
    Ok(node)
}

/// A kept certificate must be usable as it is: issued by this CA, valid now, matching
/// its key (mode 0600), and a node's.
fn check_kept(node: &NodeCerts, dir: &Path) -> anyhow::Result<()> {
    let cert = &node.files.cert;
    let why = || {
        format!(
            "node {}: cannot keep {}; nothing was written (remove it and its key to issue new ones)",
            node.name,
            cert.display()
        )
    };
    let found = Identity::load(&dir.join("ca.crt"), cert, &node.files.key).with_context(why)?;
    if found.role != Role::Node || found.name != node.name {
        let (role, holder) = (found.role.as_str(), &found.name);
        bail!(
            "node {}: {} is a {role} certificate for `{holder}`, not this node's; nothing was \
             written (give the node another name in the inventory, or remove that file)",
            node.name,
            cert.display()
        );
    }
    Ok(())
}

/// The files of `node`'s directory: (what it holds, its path, its mode). What it holds is
/// `None` for the certificate and key unless they are `issued` (in the cluster directory).
fn kit_files<'a>(
    node: &NodeCerts,
    ca_pem: &'a [u8],
    issued: bool,
) -> [(Option<Source<'a>>, PathBuf, u32); 3] {
    let issued = |path: &Path| issued.then(|| Source::File(path.to_path_buf()));
    [
        (
            Some(Source::Bytes(ca_pem)),
            node.kit.join("ca.crt"),
            KIT_CERT_MODE,
        ),
        (
            issued(&node.files.cert),
            node.kit.join(format!("{}.crt", node.name)),
            KIT_CERT_MODE,
        ),
        (
            issued(&node.files.key),
            node.kit.join(format!("{}.key", node.name)),
            KIT_KEY_MODE,
        ),
    ]
}

/// Where a per-node file's content comes from.
enum Source<'a> {
    Bytes(&'a [u8]),
    File(PathBuf),
}

impl Source<'_> {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Bytes(bytes) => Ok(bytes.to_vec()),
            Source::File(path) => fs::read(path).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// A file already in a per-node directory must hold what would be written there.
fn check_kit_file(node: &NodeCerts, source: Option<Source<'_>>, dest: &Path) -> anyhow::Result<()> {
    if !dest.exists() {
        return Ok(());
    }
    let same = match source {
        Some(source) => {
            source.read()? == fs::read(dest).with_context(|| format!("cannot read {}", dest.display()))?
        }
        None => false,
    };
    if !same {
        bail!(
            "node {}: {} exists and differs from what would be written there; nothing was \
             written (remove it, or choose another --out)",
            node.name,
            dest.display()
        );
    }
    Ok(())
}

/// Whether a node's directory was written now or was complete already.
enum Kit {
    Wrote,
    Unchanged,
}

/// Fills `node`'s directory with what it lacks; tells whether anything was written.
fn write_kit(node: &NodeCerts, ca_pem: &[u8]) -> anyhow::Result<Kit> {
    make_dir(&node.kit)?;
    let mut wrote = false;
    for (source, dest, mode) in kit_files(node, ca_pem, true) {
        if let (Some(source), false) = (source, dest.exists()) {
            write_new(&dest, &source.read()?, mode)?;
            wrote = true;
        }
    }
    Ok(if wrote { Kit::Wrote } else { Kit::Unchanged })
}

/// Creates `dir` (and its parents) 0700, or makes an existing one 0700.
fn make_dir(dir: &Path) -> anyhow::Result<()> {
    let cannot = || format!("cannot create directory {}", dir.display());
    DirBuilder::new()
        .recursive(true)
        .mode(KIT_DIR_MODE)
        .create(dir)
        .with_context(cannot)?;
    fs::set_permissions(dir, Permissions::from_mode(KIT_DIR_MODE)).with_context(cannot)
}

/// Writes `bytes` to `path` with `mode` from the first byte, through a temporary file
/// renamed into place, so a crash never leaves a half-written certificate or key.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// One line per node: what was issued or kept, and its directory.
fn node_line(node: &NodeCerts, kit: &Kit) -> String {
    let verb = if node.kept { "kept  " } else { "issued" };
    let kit = match kit {
        Kit::Wrote => format!("wrote {}/", node.kit.display()),
        Kit::Unchanged => format!("{}/ unchanged", node.kit.display()),
    };
    format!(
        "{verb} {}: {} {}; {kit}",
        node.name,
        node.files.cert.display(),
        node.files.key.display()
    )
}
