//! What the engine interface talks about: the kinds of engine and how to
//! reach one ([`EngineSpec`]), what an engine is ([`About`]), what it holds
//! ([`Held`]) and what a reference names on it ([`Identity`]).

use std::collections::HashSet;
use std::fmt;

use crate::content::platform::Platform;

/// The snapshotter images are unpacked for: containerd's default, and the
/// one Docker's containerd image store uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The containerd namespace of Kubernetes' images (the CRI plugin's).
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The containerd namespace of Docker's images, unless dockerd was started
/// with another `--containerd-namespace`.
pub const DOCKER_NAMESPACE: &str = "moby";
/// containerd's socket on a standard install.
pub const CONTAINERD_HOST: &str = "unix:///run/containerd/containerd.sock";

/// The kinds of engine a node may run, as agent.toml's `engine` and
/// `--engine` name them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Docker Engine, with its classic store or the containerd image store.
    #[default]
    Docker,
    /// containerd alone, as on Kubernetes nodes.
    Containerd,
    /// podman's API service (`podman system service`).
    Podman,
}

impl Kind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [Kind; 3] = [Kind::Docker, Kind::Containerd, Kind::Podman];

    /// The kind named `name` (`docker`, `containerd`, `podman`).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Its name in agent.toml and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Containerd => "containerd",
            Kind::Podman => "podman",
        }
    }

    /// What people call it in messages.
    pub fn product(self) -> &'static str {
        match self {
            Kind::Docker => "Docker Engine",
            Kind::Containerd => "containerd daemon",
            Kind::Podman => "podman service",
        }
    }

    /// Its daemon, whose log says more.
    pub fn daemon(self) -> &'static str {
        match self {
            Kind::Docker => "dockerd",
            Kind::Containerd => "containerd",
            Kind::Podman => "podman system service",
        }
    }

    /// The socket its engine listens on in a standard install.
    pub fn default_host(self) -> &'static str {
        match self {
            Kind::Docker => "unix:///var/run/docker.sock",
            Kind::Containerd => CONTAINERD_HOST,
            Kind::Podman => "unix:///run/podman/podman.sock",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which engine to reach and how: agent.toml's `engine`, `engine_host`,
/// `containerd_namespace` and `containerd_host`, or push's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSpec {
    /// The kind of engine.
    pub kind: Kind,
    /// Its API socket (`unix:///…`; the Docker API also takes `tcp://`).
    pub host: String,
    /// The containerd namespace: for `containerd` (default `k8s.io`), and
    /// for Docker's containerd image store (default: what Docker says, else
    /// `moby`).
    pub namespace: Option<String>,
    /// The socket of the containerd under Docker's containerd image store
    /// (default: what Docker says, else the standard socket).
    pub containerd_host: Option<String>,
}

impl EngineSpec {
    /// A Docker Engine (or podman) at `host`, everything else by default.
    pub fn docker(host: &str) -> EngineSpec {
        EngineSpec::of(Kind::Docker, host)
    }

    /// An engine of `kind` at `host`, everything else by default.
    pub fn of(kind: Kind, host: &str) -> EngineSpec {
        EngineSpec {
            kind,
            host: host.to_string(),
            namespace: None,
            containerd_host: None,
        }
    }
}

/// What an engine already holds: a node with the image ID needs nothing, one
/// with a layer needs none of that layer's chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Config digests (Docker's image IDs) of every usable image, tagged or not.
    pub image_ids: HashSet<String>,
    /// The layers it can do without.
    pub layers: HeldLayers,
}

/// How an engine keys the layers it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldLayers {
    /// Unpacked layer stacks by chain ID (Docker's classic store, podman):
    /// the load archive leaves such a layer out and the engine reuses it.
    Chains(HashSet<String>),
    /// Blobs in a content store by digest (containerd): p2pimg's layer
    /// blobs are the uncompressed tars, so a layer is held when the blob
    /// named by its diffID is.
    Blobs(HashSet<String>),
}

impl Held {
    /// Whether the engine holds the layer `diff_id` whose stack up to it has
    /// chain ID `chain_id`.
    pub fn has_layer(&self, chain_id: &str, diff_id: &str) -> bool {
        match &self.layers {
            HeldLayers::Chains(chains) => chains.contains(chain_id),
            HeldLayers::Blobs(blobs) => blobs.contains(diff_id),
        }
    }
}

/// What an engine is, for plans, status and messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct About {
    /// Its kind.
    pub kind: Kind,
    /// Its version, where it says.
    pub version: String,
    /// Its image store, such as `overlay2` or `containerd store, namespace moby`.
    pub store: String,
    /// The platform of the node it runs on.
    pub platform: Platform,
}

impl fmt::Display for About {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.version.is_empty() {
            write!(f, " {}", self.version)?;
        }
        write!(f, " ({}, {})", self.store, self.platform)
    }
}

/// What an image reference names on an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The config digest: Docker's image ID, the same on every kind of store.
    pub id: String,
    /// The manifest digest, on stores that keep one (containerd).
    pub digest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        assert_eq!(Kind::parse("containerd"), Some(Kind::Containerd));
        assert_eq!(Kind::parse("Docker"), None);
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
        }
    }

    #[test]
    fn held_layers_by_chain_or_by_blob() {
        let set = |s: &str| HashSet::from([s.to_string()]);
        let chains = Held {
            image_ids: HashSet::new(),
            layers: HeldLayers::Chains(set("chain")),
        };
        assert!(chains.has_layer("chain", "diff"));
        assert!(!chains.has_layer("other", "chain"));
        let blobs = Held {
            image_ids: HashSet::new(),
            layers: HeldLayers::Blobs(set("diff")),
        };
        assert!(blobs.has_layer("x", "diff"));
        assert!(!blobs.has_layer("diff", "x"));
    }

    #[test]
    fn about_reads_as_kind_version_store_platform() {
        let about = About {
            kind: Kind::Docker,
            version: "26.1.5".into(),
            store: "containerd store, namespace moby".into(),
            platform: Platform::from_uname("linux", "x86_64"),
        };
        assert_eq!(
            about.to_string(),
            "docker 26.1.5 (containerd store, namespace moby, linux/amd64)"
        );
    }
}
