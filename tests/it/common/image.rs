//! Multi-layer test images made without a registry: `docker import` of a generated
//! busybox rootfs (random and text files), then a legacy `docker build` that adds a
//! random-data layer and a small known text file.

use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::dockerd::{unique_suffix, Dockerd, DOCKER_TIMEOUT_SECS};
use super::process::{check, run_with_timeout};

/// Path of the small text file every test image carries, with [`TestImage::hello`] in it.
pub const HELLO_PATH: &str = "/app/hello.txt";

/// Debian's busybox-static: one static binary, so the image needs no libraries.
const BUSYBOX: &str = "/bin/busybox";

/// Applets linked in `/bin`: the three the tests need (sh, cat, ls) and a few that make
/// `docker run … /bin/sh -c` checks convenient.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "ls",
    "echo",
    "wc",
    "head",
    "sha256sum",
    "sleep",
    "true",
];

/// Every generated file gets this mtime (2023-11-14), so the same seed gives the same
/// tar bytes and so the same layer diffIDs.
const FIXED_MTIME: u64 = 1_700_000_000;

/// Random data is split into files of this size: big enough to be realistic layer
/// content, small enough that no single file is unwieldy for big benchmark images.
const RANDOM_FILE: usize = 8 << 20;

/// Text is split into files of this size.
const TEXT_FILE: usize = 1 << 20;

/// Words for the compressible text files.
const WORDS: &[&str] = &[
    "peer", "chunk", "layer", "swarm", "image", "seed", "node", "verify", "blake3", "zstd", "quic", "agent",
    "docker", "load", "have", "want", "rarest", "first", "manifest", "tar",
];

/// Sizes and seed of a test image. The default is small (about 5 MiB), for CI.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Bytes of random data in the base rootfs (files `/data/random-NN.bin`).
    pub base_random_bytes: usize,
    /// Bytes of text in the base rootfs (files `/data/text-NN.txt`).
    pub base_text_bytes: usize,
    /// Bytes of random data in the first COPY layer (`/app/blob.bin`).
    pub layer_random_bytes: usize,
    /// Seed of all generated content. `None`: a fresh seed per call, so two images never
    /// share a layer. `Some(s)`: the same content, file for file and byte for byte, so
    /// the base layer has the same diffID on any daemon (image IDs still differ: the
    /// daemon stamps the creation time into each image config).
    pub seed: Option<u64>,
    /// Build on this existing local image instead of importing a new base.
    pub from: Option<String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            base_random_bytes: 2 << 20,
            base_text_bytes: 1 << 20,
            layer_random_bytes: 2 << 20,
            seed: None,
            from: None,
        }
    }
}

impl ImageOptions {
    /// The same options with a fixed seed.
    pub fn seeded(self, seed: u64) -> Self {
        ImageOptions {
            seed: Some(seed),
            ..self
        }
    }

    /// The same options, building on an existing local image instead of a new base.
    pub fn built_on(self, reference: &str) -> Self {
        ImageOptions {
            from: Some(reference.to_string()),
            ..self
        }
    }
}

/// What [`build_test_image`] made.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// Tag of the base image (imported, or [`ImageOptions::from`]).
    pub base: String,
    /// Image ID of the base on the daemon that built it.
    pub base_id: String,
    /// Tag of the final image, as asked.
    pub tag: String,
    /// Image ID of the final image on the daemon that built it.
    pub id: String,
    /// Content of [`HELLO_PATH`] in the final image.
    pub hello: String,
}

/// Builds a small test image tagged `tag` on `d` (see [`build_test_image_with`]).
pub fn build_test_image(d: &Dockerd, tag: &str) -> TestImage {
    build_test_image_with(d, tag, &ImageOptions::default())
}

/// Builds a test image tagged `tag` on `d`: a base imported from a generated rootfs
/// (tagged `<repo>-base:<tag>`) unless `opts.from` names one, plus two COPY layers
/// (`/app/blob.bin`, random; [`HELLO_PATH`], known text). Panics on any failure.
pub fn build_test_image_with(d: &Dockerd, tag: &str, opts: &ImageOptions) -> TestImage {
    let seed = opts.seed.unwrap_or_else(fresh_seed);
    let mut rng = Rng::new(seed);
    let work = d.dir().join(format!("image-{}", unique_suffix()));
    let base = match &opts.from {
        Some(from) => from.clone(),
        None => {
            let base = base_tag(tag);
            write_rootfs(&work.join("rootfs"), opts, &mut rng);
            import_rootfs(d, &work.join("rootfs"), &base);
            base
        }
    };
    let hello = format!("hello from p2pimg test image {seed:016x}\n");
    write_context(
        &work.join("ctx"),
        &base,
        opts.layer_random_bytes,
        &hello,
        &mut rng,
    );
    let mut build = d.docker_cmd();
    build.env("DOCKER_BUILDKIT", "0").args(["build", "-t", tag]);
    build.arg(work.join("ctx")).stdin(Stdio::null());
    let out = run_with_timeout(&mut build, DOCKER_TIMEOUT_SECS);
    check(&format!("docker ({}) build -t {tag}", d.name()), &out);
    let _ = fs::remove_dir_all(&work);
    TestImage {
        base_id: d.image_id(&base).expect("base image is present"),
        id: d.image_id(tag).expect("built image is present"),
        base,
        tag: tag.to_string(),
        hello,
    }
}

/// `app:1` → `app-base:1`, `app` → `app-base`, `host:5000/app:2` → `host:5000/app-base:2`.
pub fn base_tag(tag: &str) -> String {
    let name_start = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[name_start..].rfind(':') {
        Some(i) => {
            let (repo, version) = tag.split_at(name_start + i);
            format!("{repo}-base{version}")
        }
        None => format!("{tag}-base"),
    }
}

fn write_rootfs(root: &Path, opts: &ImageOptions, rng: &mut Rng) {
    for dir in ["bin", "etc", "data", "tmp"] {
        fs::create_dir_all(root.join(dir)).expect("create rootfs dir");
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install Debian's busybox-static (scripts/test.sh does)"
    );
    fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    let data = root.join("data");
    let random = opts.base_random_bytes;
    write_split(&data, ("random", "bin"), random, RANDOM_FILE, |b| rng.fill(b));
    let mut line = 0u64;
    let text = opts.base_text_bytes;
    write_split(&data, ("text", "txt"), text, TEXT_FILE, |b| {
        fill_text(b, rng, &mut line)
    });
}

/// Writes `total` bytes as files `<stem>-NN.<ext>` of at most `per_file` bytes each.
fn write_split(
    dir: &Path,
    (stem, ext): (&str, &str),
    total: usize,
    per_file: usize,
    mut fill: impl FnMut(&mut [u8]),
) {
    let (mut left, mut n) = (total, 0);
    while left > 0 {
        let size = left.min(per_file);
        write_file(&dir.join(format!("{stem}-{n:02}.{ext}")), size, &mut fill);
        left -= size;
        n += 1;
    }
}

/// Writes a file of `size` bytes produced by `fill`, 1 MiB at a time.
fn write_file(path: &Path, size: usize, fill: &mut impl FnMut(&mut [u8])) {
    let mut w = BufWriter::new(File::create(path).expect("create data file"));
    let mut buf = vec![0u8; size.min(1 << 20)];
    let mut left = size;
    while left > 0 {
        let k = left.min(buf.len());
        fill(&mut buf[..k]);
        w.write_all(&buf[..k]).expect("write data file");
        left -= k;
    }
    w.flush().expect("flush data file");
}

/// Fills `buf` with numbered lines of words (compressible, like real text files).
fn fill_text(buf: &mut [u8], rng: &mut Rng, line: &mut u64) {
    let mut at = 0;
    while at < buf.len() {
        let mut s = format!("{:07}", *line);
        for _ in 0..8 {
            s.push(' ');
            s.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        }
        s.push('\n');
        *line += 1;
        let k = s.len().min(buf.len() - at);
        buf[at..at + k].copy_from_slice(&s.as_bytes()[..k]);
        at += k;
    }
}

/// `tar | docker import`: a deterministic tar (sorted names, fixed mtime, root owner,
/// normalised modes), so one seed gives one diffID.
fn import_rootfs(d: &Dockerd, root: &Path, base: &str) {
    let mut tar = Command::new("tar")
        .args([
            "--sort=name",
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .arg(format!("--mtime=@{FIXED_MTIME}"))
        .args(["--mode=u+rwX,go+rX,go-w", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tar");
    let mut import = d.docker_cmd();
    import.args(["import", "--change", r#"CMD ["/bin/sh"]"#, "-", base]);
    import.stdin(tar.stdout.take().expect("tar stdout"));
    let out = run_with_timeout(&mut import, DOCKER_TIMEOUT_SECS);
    let tarred = tar.wait().expect("wait for tar");
    assert!(tarred.success(), "tar of {} failed: {tarred}", root.display());
    check(&format!("docker ({}) import {base}", d.name()), &out);
}

fn write_context(ctx: &Path, base: &str, random_bytes: usize, hello: &str, rng: &mut Rng) {
    fs::create_dir_all(ctx).expect("create build context");
    let dockerfile = format!(
        "FROM {base}\nCOPY blob.bin /app/blob.bin\nCOPY hello.txt {HELLO_PATH}\nCMD [\"/bin/cat\", \"{HELLO_PATH}\"]\n"
    );
    fs::write(ctx.join("Dockerfile"), dockerfile).expect("write Dockerfile");
    write_file(&ctx.join("blob.bin"), random_bytes, &mut |b| rng.fill(b));
    fs::write(ctx.join("hello.txt"), hello).expect("write hello.txt");
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(FIXED_MTIME);
    for f in ["blob.bin", "hello.txt"] {
        let file = File::options().write(true).open(ctx.join(f)).expect("open");
        file.set_modified(mtime).expect("set mtime");
    }
}

/// A seed no other call in any process is likely to get.
fn fresh_seed() -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    std::collections::hash_map::RandomState::new().hash_one((now, unique_suffix()))
}

/// xorshift64*: fast (GB/s) and good enough for incompressible test data; not for keys.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 step, so that small or zero seeds give a good non-zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}
