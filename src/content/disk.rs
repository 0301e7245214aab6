//! Free space on the file system holding a path, and which mount that is,
//! so a full disk is reported by name before anything is written to it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The space left on the file system holding some path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use there.
    pub available: u64,
    /// Where that file system is mounted (the path itself if unknown).
    pub mount: PathBuf,
}

impl Space {
    /// `dir`, followed by the file system it is on when that is mounted
    /// elsewhere: how messages name a disk.
    pub fn describe(&self, dir: &Path) -> String {
        if self.mount == dir {
            dir.display().to_string()
        } else {
            format!("{} (file system {})", dir.display(), self.mount.display())
        }
    }
}

/// Free space (`statvfs`) and mount point of the file system holding `path`.
pub fn space(path: &Path) -> io::Result<Space> {
    Ok(Space {
        available: available(path)?,
        mount: mount_point(path),
    })
}

/// Bytes available to unprivileged writers on the file system of `path`.
pub fn available(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is written by
    // statvfs before it is read, and only read when the call succeeded.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.assume_init()
    };
    // The field types are u32 on some 32-bit targets: the conversions are for those.
    #[allow(clippy::useless_conversion)]
    let bytes = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Ok(bytes)
}

/// The longest mount point in /proc/self/mountinfo that holds `path`
/// (after resolving symbolic links); `path` itself if that cannot be read.
pub fn mount_point(path: &Path) -> PathBuf {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mount_points()
        .into_iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .unwrap_or(path)
}

/// Mount points of this mount namespace, from /proc/self/mountinfo (field 5,
/// with the kernel's octal escapes undone); none if it cannot be read.
pub fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

/// Undoes the kernel's `\NNN` escapes (space, tab, newline, backslash) in a
/// mountinfo path.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_space_and_is_a_mount() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(dir.path()).unwrap();
        assert!(s.available > 0);
        assert!(dir.path().canonicalize().unwrap().starts_with(&s.mount));
        assert_eq!(mount_point(Path::new("/")), Path::new("/"));
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(available(Path::new("/no/such/dir/p2pimg")).is_err());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape_octal(r"/x\12"), r"/x\12");
        assert_eq!(unescape_octal(r"/plain\09"), r"/plain\09");
    }
}
