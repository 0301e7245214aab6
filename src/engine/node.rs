//! [`Engine`]: a node's container engine, whatever its kind, behind the one
//! interface the agent and the pusher use.
//!
//! | agent.toml `engine` | store                   | images held, loaded through          |
//! |---------------------|-------------------------|--------------------------------------|
//! | `docker`            | classic (overlay2)      | the Docker API: `docker load`        |
//! | `docker`            | containerd image store  | its containerd (namespace `moby`)    |
//! | `containerd`        | containerd              | containerd's API (namespace `k8s.io`)|
//! | `podman`            | containers/storage      | podman's Docker-compatible API       |
//!
//! Docker's store is detected (`GET /info`), never configured. Every kind
//! knows an image by its config digest (Docker's image ID) and its layers'
//! diffIDs, so the same image is recognised on every node.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::containerd::{Containerd, ContainerdError, Descriptor};
use super::docker::{DockerAbout, DockerApi, EngineError};
use super::kinds::*;
use super::load::{load_as, Layout, LoadError, LoadRequest};
use crate::content::manifest::{chain_ids, Manifest};
use crate::content::platform::Platform;

/// A connection to a node's engine. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Engine {
    about: About,
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    /// Images through the Docker API: Docker's classic store, podman.
    Docker(DockerApi),
    /// Images in containerd: directly, or under Docker (`docker` is then
    /// the Docker API, for what only it knows).
    Containerd {
        images: Box<Containerd>,
        docker: Option<DockerApi>,
        heard: Heard,
    },
}

/// When a load last heard from containerd: it took a frame of a layer or
/// finished a step.
#[derive(Clone, Debug)]
pub(super) struct Heard(Arc<Mutex<Instant>>);

impl Heard {
    fn new() -> Heard {
        Heard(Arc::new(Mutex::new(Instant::now())))
    }

    pub(super) fn now(&self) {
        *self.0.lock().expect("heard lock") = Instant::now();
    }

    fn quiet_for(&self) -> Duration {
        self.0.lock().expect("heard lock").elapsed()
    }
}

impl Engine {
    /// Reaches the engine `spec` names and finds out what it is; a Docker
    /// Engine with the containerd image store is reached through its
    /// containerd too.
    pub async fn connect(spec: &EngineSpec) -> Result<Engine, EngineError> {
        match spec.kind {
            Kind::Containerd => {
                let namespace = spec.namespace.as_deref().unwrap_or(K8S_NAMESPACE);
                let images = Containerd::connect(&spec.host, namespace, SNAPSHOTTER).await?;
                let about = About {
                    kind: Kind::Containerd,
                    version: String::new(),
                    store: format!("namespace {namespace}"),
                    platform: Platform::host(),
                };
                Ok(Engine::containerd(about, images, None))
            }
            Kind::Docker | Kind::Podman => connect_docker(spec).await,
        }
    }

    fn containerd(about: About, images: Containerd, docker: Option<DockerApi>) -> Engine {
        let heard = Heard::new();
        let backend = Backend::Containerd {
            images: Box::new(images),
            docker,
            heard,
        };
        Engine { about, backend }
    }

    /// The address it was reached at, for messages.
    pub fn host(&self) -> &str {
        match &self.backend {
            Backend::Docker(api) => api.host(),
            Backend::Containerd {
                docker: Some(api), ..
            } => api.host(),
            Backend::Containerd { images, .. } => images.host(),
        }
    }

    /// What it is.
    pub fn about(&self) -> &About {
        &self.about
    }

    /// How long since a load last heard from the engine (see
    /// [`DockerApi::quiet_for`]).
    pub fn quiet_for(&self) -> Duration {
        match &self.backend {
            Backend::Docker(api) => api.quiet_for(),
            Backend::Containerd { heard, .. } => heard.quiet_for(),
        }
    }

    /// The engine's data root, where a load writes, when the engine is local
    /// and says (the Docker API only: containerd does not tell its root).
    pub async fn data_root(&self) -> Option<PathBuf> {
        let api = match &self.backend {
            Backend::Docker(api) => api,
            Backend::Containerd {
                docker: Some(api), ..
            } => api,
            Backend::Containerd { docker: None, .. } => return None,
        };
        let about = api.about().await.map_err(|e| tracing::debug!("{e}")).ok()?;
        about.data_root.map(PathBuf::from)
    }

    /// Every image and layer the engine holds.
    pub async fn held(&self) -> Result<Held, EngineError> {
        match &self.backend {
            Backend::Docker(api) => api.held().await,
            Backend::Containerd { images, docker, .. } => {
                Ok(containerd_held(images, docker.is_some()).await?)
            }
        }
    }

    /// Loads what `request` asks from verified chunks, sending only the
    /// layers the engine lacks, and applies the images' references. With
    /// arrivals, it starts while chunks are still arriving. Nothing is
    /// tagged unless every layer arrived and the engine took the image.
    pub async fn load(&self, request: LoadRequest) -> Result<(), LoadError> {
        match &self.backend {
            Backend::Docker(api) => {
                // podman loads a layout with layers left out only as OCI.
                let layout = match self.about.kind {
                    Kind::Podman => Layout::Oci,
                    _ => Layout::DockerSave,
                };
                load_as(api, layout, request).await
            }
            Backend::Containerd {
                images: ctd,
                docker,
                heard,
            } => {
                let naming = Naming::of(docker.is_some());
                let load = super::import::Import {
                    containerd: ctd,
                    heard,
                    naming,
                };
                load.run(request).await
            }
        }
    }

    /// Applies every reference of image `index` of `manifest`, which the
    /// engine holds.
    pub async fn tag(&self, manifest: &Manifest, index: usize) -> Result<(), EngineError> {
        let image = &manifest.images[index];
        match &self.backend {
            Backend::Docker(api) => {
                for reference in &image.refs {
                    api.tag(&image.id, reference).await?;
                }
                Ok(())
            }
            Backend::Containerd { images, .. } => Ok(containerd_tag(images, &image.id, &image.refs).await?),
        }
    }

    /// What `reference` names on the engine, `None` if nothing.
    pub async fn identify(&self, reference: &str) -> Result<Option<Identity>, EngineError> {
        match &self.backend {
            Backend::Docker(api) => {
                let id = api.image_id(reference).await?;
                Ok(id.map(|id| Identity { id, digest: None }))
            }
            Backend::Containerd { images, .. } => {
                let record = match reference.strip_prefix("sha256:") {
                    // An ID: the config digest (Docker's image ID) or the
                    // manifest digest (what Docker's containerd store shows).
                    Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        let records = images.images().await?;
                        records.into_iter().find(|r| {
                            [&r.config_digest, &r.target.digest, &r.manifest_digest]
                                .iter()
                                .any(|d| d.starts_with(reference))
                        })
                    }
                    _ => images.image(&full_name(reference)).await?,
                };
                Ok(record.map(|r| Identity {
                    id: r.config_digest,
                    digest: Some(r.target.digest),
                }))
            }
        }
    }

    /// Checks every reference names an image, failing with the first that
    /// does not.
    pub async fn resolve(&self, refs: &[String]) -> Result<(), EngineError> {
        for reference in refs {
            if self.identify(reference).await?.is_none() {
                return Err(EngineError::NoSuchImage {
                    reference: reference.clone(),
                    host: self.host().to_string(),
                });
            }
        }
        Ok(())
    }

    /// The images `refs` names as an archive `save::parse_save` reads: a
    /// `docker save` stream, or an OCI layout from containerd.
    pub fn export(&self, refs: &[String]) -> BoxStream<'static, Result<Bytes, EngineError>> {
        match &self.backend {
            Backend::Docker(api) => api.export(refs).boxed(),
            Backend::Containerd {
                docker: Some(api), ..
            } => api.export(refs).boxed(),
            Backend::Containerd { images, .. } => images.export(refs).map_err(EngineError::from).boxed(),
        }
    }
}

/// How images are named in a containerd namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Naming {
    /// Kubernetes' (CRI): full names; an untagged image by its ID.
    Kubernetes,
    /// Docker's containerd store: full names; an untagged image as
    /// `moby-dangling@<manifest digest>`.
    Docker,
}

impl Naming {
    fn of(under_docker: bool) -> Naming {
        match under_docker {
            true => Naming::Docker,
            false => Naming::Kubernetes,
        }
    }

    /// The names of an image with `refs` and config digest `id` whose
    /// manifest is `manifest`.
    pub(super) fn names(self, refs: &[String], id: &str, manifest: &Descriptor) -> Vec<String> {
        if !refs.is_empty() {
            return refs.iter().map(|r| full_name(r)).collect();
        }
        match self {
            Naming::Kubernetes => vec![id.to_string()],
            Naming::Docker => vec![format!("moby-dangling@{}", manifest.digest)],
        }
    }
}

/// A reference as containerd names images: `app:1` is
/// `docker.io/library/app:1`. An image ID (`sha256:…`) stays as it is.
pub fn full_name(reference: &str) -> String {
    match reference.starts_with("sha256:") {
        true => reference.to_string(),
        false => super::containerd::full_name(reference).unwrap_or_else(|_| reference.to_string()),
    }
}

async fn connect_docker(spec: &EngineSpec) -> Result<Engine, EngineError> {
    let api = DockerApi::connect(&spec.host).await?;
    let said = api.about().await?;
    let about = docker_about(spec.kind, &said);
    if !said.containerd_store {
        return Ok(Engine {
            about,
            backend: Backend::Docker(api),
        });
    }
    let host = spec
        .containerd_host
        .clone()
        .or(said
            .containerd_address
            .map(|a| format!("unix://{}", a.trim_start_matches("unix://"))))
        .unwrap_or_else(|| CONTAINERD_HOST.to_string());
    let namespace = spec
        .namespace
        .clone()
        .or(said.containerd_namespace)
        .unwrap_or_else(|| DOCKER_NAMESPACE.to_string());
    let images = Containerd::connect(&host, &namespace, SNAPSHOTTER)
        .await
        .map_err(|source| EngineError::DockerContainerd {
            host: spec.host.clone(),
            source,
        })?;
    let about = About {
        store: format!("containerd store, namespace {namespace}"),
        ..about
    };
    Ok(Engine::containerd(about, images, Some(api)))
}

fn docker_about(kind: Kind, said: &DockerAbout) -> About {
    About {
        kind: match said.podman {
            true => Kind::Podman,
            false => kind,
        },
        version: said.version.clone(),
        store: said.driver.clone(),
        platform: said.platform.clone(),
    }
}

/// What a containerd namespace holds. An image counts when it is unpacked
/// (its top layer's snapshot exists) and, under Docker, when every blob of
/// it is in the content store, since Docker does not list it otherwise.
async fn containerd_held(images: &Containerd, under_docker: bool) -> Result<Held, ContainerdError> {
    let records = images.images().await?;
    let blobs = images.blobs().await?;
    let snapshots = images.snapshots().await?;
    let usable = |r: &super::containerd::ImageRecord| {
        let top = chain_ids(r.diff_ids.iter().map(String::as_str)).pop();
        let unpacked = top.is_none_or(|t| snapshots.contains(&t));
        let complete = !under_docker || r.layer_digests.iter().all(|d| blobs.contains(d));
        unpacked && complete
    };
    let image_ids = records
        .iter()
        .filter(|r| usable(r))
        .map(|r| r.config_digest.clone())
        .collect();
    Ok(Held {
        image_ids,
        layers: HeldLayers::Blobs(blobs),
    })
}

/// Points each of `refs` at the image whose config digest is `id`.
async fn containerd_tag(images: &Containerd, id: &str, refs: &[String]) -> Result<(), ContainerdError> {
    let records = images.images().await?;
    let Some(record) = records.iter().find(|r| r.config_digest == id) else {
        return Ok(());
    };
    for reference in refs {
        images.set_image(&full_name(reference), &record.target).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_names_are_full() {
        assert_eq!(full_name("app:1"), "docker.io/library/app:1");
        assert_eq!(full_name("registry:5000/team/app:2"), "registry:5000/team/app:2");
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(full_name(&id), id);
        let manifest = Descriptor {
            media_type: String::new(),
            digest: "sha256:m".into(),
            size: 1,
        };
        assert_eq!(
            Naming::Docker.names(&[], &id, &manifest),
            ["moby-dangling@sha256:m"]
        );
        assert_eq!(
            Naming::Kubernetes.names(&["app:1".into()], &id, &manifest),
            ["docker.io/library/app:1"]
        );
        assert_eq!(Naming::Kubernetes.names(&[], &id, &manifest), [id]);
    }
}
