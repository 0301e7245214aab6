//! Platforms in the OCI sense (`linux/amd64`, `linux/arm64/v8`): what an
//! image's config is built for and what a node runs, and whether the two
//! match. A node never loads an image of another platform: its containers
//! would fail at their first exec.

use std::fmt;

use serde::Deserialize;

/// An OCI platform: operating system, architecture and optional variant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, … (GOOS names).
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `ppc64le`, `s390x`, … (GOARCH names).
    pub architecture: String,
    /// `v7`, `v8`, … where the architecture has variants; empty otherwise.
    pub variant: String,
}

/// The platform fields of an image config.
#[derive(Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: String,
}

impl Platform {
    /// The platform a kernel reports: `os` as GOOS or `uname -s` (`Linux`)
    /// and `machine` as `uname -m` (`x86_64`, `aarch64`) or GOARCH, in the
    /// names images use.
    pub fn from_uname(os: &str, machine: &str) -> Platform {
        let (architecture, variant) = match machine {
            "x86_64" | "amd64" => ("amd64", ""),
            "aarch64" | "arm64" => ("arm64", ""),
            "armv7l" | "armhf" => ("arm", "v7"),
            "armv6l" => ("arm", "v6"),
            "i386" | "i686" | "386" => ("386", ""),
            other => (other, ""),
        };
        Platform {
            os: os.to_ascii_lowercase(),
            architecture: architecture.to_string(),
            variant: variant.to_string(),
        }
    }

    /// The platform this process runs on.
    pub fn host() -> Platform {
        Platform::from_uname(std::env::consts::OS, std::env::consts::ARCH)
    }

    /// The platform an image config declares, `None` if it does not parse.
    pub fn of_config(config: &[u8]) -> Option<Platform> {
        let p: ConfigPlatform = serde_json::from_slice(config).ok()?;
        Some(Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
        })
    }

    /// Whether a node of this platform runs an image built for `image`. An
    /// image that declares no OS or architecture runs anywhere (`docker
    /// import` leaves them out on old engines); `arm64` images without a
    /// variant are `v8`, the only one.
    pub fn runs(&self, image: &Platform) -> bool {
        let unspecified = |s: &str| s.is_empty();
        let os = unspecified(&image.os) || image.os == self.os;
        let arch = unspecified(&image.architecture) || image.architecture == self.architecture;
        let variant = unspecified(&image.variant)
            || unspecified(&self.variant) && image.architecture == "arm64" && image.variant == "v8"
            || image.variant == self.variant;
        os && arch && variant
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_unknown = |s: &str| if s.is_empty() { "unknown" } else { s }.to_string();
        write!(f, "{}/{}", or_unknown(&self.os), or_unknown(&self.architecture))?;
        match self.variant.is_empty() {
            true => Ok(()),
            false => write!(f, "/{}", self.variant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
        }
    }

    #[test]
    fn kernel_names_become_image_names() {
        assert_eq!(Platform::from_uname("Linux", "x86_64"), p("linux", "amd64", ""));
        assert_eq!(Platform::from_uname("linux", "aarch64"), p("linux", "arm64", ""));
        assert_eq!(Platform::from_uname("linux", "armv7l"), p("linux", "arm", "v7"));
        assert_eq!(Platform::from_uname("linux", "s390x"), p("linux", "s390x", ""));
    }

    #[test]
    fn configs_declare_their_platform() {
        let config = br#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{}}"#;
        assert_eq!(Platform::of_config(config), Some(p("linux", "arm64", "v8")));
        assert_eq!(Platform::of_config(b"{}"), Some(p("", "", "")));
        assert_eq!(Platform::of_config(b"not json"), None);
    }

    #[test]
    fn matching_is_by_os_architecture_and_variant() {
        let amd64 = p("linux", "amd64", "");
        assert!(amd64.runs(&p("linux", "amd64", "")));
        assert!(!amd64.runs(&p("linux", "arm64", "")));
        assert!(!amd64.runs(&p("windows", "amd64", "")));
        assert!(
            amd64.runs(&p("", "", "")),
            "an image without a platform runs anywhere"
        );
        let arm64 = p("linux", "arm64", "");
        assert!(arm64.runs(&p("linux", "arm64", "v8")));
        let armv7 = p("linux", "arm", "v7");
        assert!(!armv7.runs(&p("linux", "arm", "v6")));
        assert!(armv7.runs(&p("linux", "arm", "")));
    }

    #[test]
    fn shown_as_os_architecture_variant() {
        assert_eq!(p("linux", "amd64", "").to_string(), "linux/amd64");
        assert_eq!(p("linux", "arm", "v7").to_string(), "linux/arm/v7");
        assert_eq!(p("", "", "").to_string(), "unknown/unknown");
    }
}
