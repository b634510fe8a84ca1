//! Image archives: a `docker save` tar, or an OCI image layout (a directory or a tar of one), with plain
//! or gzip layers. The layers are unpacked in order, whiteouts applied, into a cache directory named by
//! a key over the image config's digest and the diff_ids of its layers, so the next run of the same
//! image starts at once. The archive must list exactly the layers the config names, and each layer's
//! content is checked against its diff_id before the unpacked image is stored: an archive that reuses a
//! trusted image's config cannot add a layer to that image's cache entry.
//!
//! The cache is root's alone (0700): images keep their setuid binaries, which must not be reachable by
//! the host's other users.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use rustix::fs::OFlags;

use super::LaunchError;
use crate::in_root::{self, Symlinks};

/// The defaults a container takes from its image (the `config` object of the image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Env")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: Option<String>,
    #[serde(rename = "User")]
    pub user: Option<String>,
}

/// An unpacked image: its root directory in the cache and its defaults.
#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// The parts of an image config file vproc reads.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    #[serde(default)]
    rootfs: Option<RootfsSection>,
}

#[derive(Deserialize)]
struct RootfsSection {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `manifest.json` of `docker save`: one entry per image.
#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An OCI descriptor (index.json entries, manifest config and layers).
#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Where an image's config and layers are, below an extracted or given directory.
struct Located {
    config: PathBuf,
    layers: Vec<PathBuf>,
}

/// Unpacks `archive` into `cache/<image id>` unless it is there already; its root and defaults.
pub fn load(archive: &Path, cache: &Path) -> Result<Image, LaunchError> {
    let meta = std::fs::metadata(archive)
        .map_err(|e| LaunchError::io("--image: cannot read", archive, e))?;
    let is_default = cache == Path::new(super::options::DEFAULT_IMAGE_CACHE);
    super::private_dir::private_root(cache, is_default)
        .map_err(|e| LaunchError::io("--image-cache: cannot use", cache, e))?;
    // The manifests and the config name the image; the layers are only read when it is not cached.
    let members = if meta.is_dir() {
        Members::Dir(archive)
    } else {
        Members::Tar(scan_tar(archive)?)
    };
    let located = locate(&members, archive)?;
    let config_bytes = members.read_required(&located.config, archive)?;
    let parsed: ConfigFile = serde_json::from_slice(&config_bytes).map_err(|e| {
        LaunchError::Refused(format!(
            "{}: the image config is not valid JSON: {e}",
            archive.display()
        ))
    })?;
    let config = parsed.config.unwrap_or_default();
    let diff_ids = parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    check_layer_list(&located.layers, &diff_ids, archive)?;
    let image_dir = cache.join(cache_key(&config_bytes, &diff_ids));
    let rootfs = image_dir.join("rootfs");
    if rootfs.is_dir() {
        return Ok(Image { rootfs, config });
    }
    // A tar is extracted next to the cache first: its layers may come in any order in the stream.
    let scratch;
    let dir = match members {
        Members::Dir(dir) => dir,
        Members::Tar(_) => {
            scratch = Scratch::new(cache.join(format!(".archive-{}", std::process::id())))?;
            extract_archive(archive, &scratch.0)?;
            scratch.0.as_path()
        }
    };
    let unpacking = cache.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&unpacking);
    let target = unpacking.join("rootfs");
    super::private_dir::private_dir(&unpacking)
        .and_then(|()| std::fs::create_dir(&target))
        .map_err(|e| LaunchError::io("cannot create", &target, e))?;
    let unpacked = unpack_layers(dir, &located.layers, &diff_ids, &target, archive);
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&unpacking);
        return Err(e);
    }
    // Another `vproc run` of the same image may have won the race: keep its copy.
    if std::fs::rename(&unpacking, &image_dir).is_err() {
        let _ = std::fs::remove_dir_all(&unpacking);
        if !rootfs.is_dir() {
            return Err(LaunchError::io(
                "cannot store the image in",
                &image_dir,
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
    }
    Ok(Image { rootfs, config })
}

/// Every layer of the archive is named by the config (`rootfs.diff_ids`), one for one and in order, so
/// that each can be verified; a diff_id is `sha256:` and 64 hex digits.
fn check_layer_list(
    layers: &[PathBuf],
    diff_ids: &[String],
    archive: &Path,
) -> Result<(), LaunchError> {
    if layers.len() != diff_ids.len() {
        return Err(LaunchError::Refused(format!(
            "--image {}: the archive has {} layer(s) but the image config names {} (rootfs.diff_ids); \
             every layer must be one the config names",
            archive.display(),
            layers.len(),
            diff_ids.len()
        )));
    }
    for diff_id in diff_ids {
        let valid = diff_id.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !valid {
            return Err(LaunchError::Refused(format!(
                "--image {}: the image config names a layer {diff_id:?}; expected sha256: and 64 hex digits",
                archive.display()
            )));
        }
    }
    Ok(())
}

/// The cache entry's name: a digest of the config and of the layer list (the diff_ids, which the
/// config holds too; named here so that the key says what it covers). The prefix changes when what is
/// stored changes, so entries of earlier versions are never reused.
fn cache_key(config: &[u8], diff_ids: &[String]) -> String {
    let mut key = Sha256::new();
    key.update(b"vproc image cache v2\n");
    key.update(hex(&Sha256::digest(config)).as_bytes());
    for diff_id in diff_ids {
        key.update(b"\n");
        key.update(diff_id.as_bytes());
    }
    hex(&key.finalize())
}

/// The small files of an archive (manifests, configs), by path relative to its top.
enum Members<'a> {
    /// An OCI layout directory: files are read from it, inside it.
    Dir(&'a Path),
    /// A tar: its files of at most [`SMALL_MEMBER_BYTES`], read in one pass without unpacking.
    Tar(HashMap<PathBuf, Vec<u8>>),
}

/// Manifests and image configs are kilobytes; layers are what is larger.
const SMALL_MEMBER_BYTES: u64 = 4 << 20;

impl Members<'_> {
    /// The file at `relative`; `None` if the archive has no such (small) file.
    fn read(&self, relative: &Path) -> Result<Option<Vec<u8>>, LaunchError> {
        match self {
            Members::Dir(dir) => {
                match in_root::open(dir, relative, OFlags::RDONLY, Symlinks::InRoot) {
                    Ok(fd) => {
                        let mut bytes = Vec::new();
                        File::from(fd)
                            .read_to_end(&mut bytes)
                            .map_err(|e| LaunchError::io("cannot read", &dir.join(relative), e))?;
                        Ok(Some(bytes))
                    }
                    Err(rustix::io::Errno::NOENT) => Ok(None),
                    Err(e) => Err(LaunchError::io("cannot read", &dir.join(relative), e)),
                }
            }
            Members::Tar(files) => Ok(files.get(relative).cloned()),
        }
    }

    fn read_required(&self, relative: &Path, archive: &Path) -> Result<Vec<u8>, LaunchError> {
        self.read(relative)?.ok_or_else(|| {
            LaunchError::Refused(format!(
                "--image {}: {} is missing from the archive",
                archive.display(),
                relative.display()
            ))
        })
    }
}

/// Reads the small regular files of a tar (plain or gzip) into memory, seeking past the rest when the
/// tar is not compressed.
fn scan_tar(archive: &Path) -> Result<HashMap<PathBuf, Vec<u8>>, LaunchError> {
    let open =
        || File::open(archive).map_err(|e| LaunchError::io("--image: cannot open", archive, e));
    let mut head = [0u8; 2];
    let gzip = open()?.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b];
    let mut files = HashMap::new();
    let scanned: io::Result<()> = if gzip {
        let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(BufReader::new(open()?)));
        tar.entries().and_then(|entries| {
            entries
                .into_iter()
                .try_for_each(|e| keep_small(e?, &mut files))
        })
    } else {
        let mut tar = tar::Archive::new(open()?);
        tar.entries_with_seek().and_then(|entries| {
            entries
                .into_iter()
                .try_for_each(|e| keep_small(e?, &mut files))
        })
    };
    scanned.map_err(|e| bad_archive(archive, e))?;
    Ok(files)
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: PathBuf) -> Result<Self, LaunchError> {
        let _ = std::fs::remove_dir_all(&dir);
        super::private_dir::private_dir(&dir)
            .map_err(|e| LaunchError::io("cannot create", &dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Extracts the outer archive (plain or gzip) into `dir`: regular files, directories and symlinks
/// (`docker save` links `<id>/layer.tar` to the blob; members are opened inside `dir` only).
fn extract_archive(archive: &Path, dir: &Path) -> Result<(), LaunchError> {
    let file =
        File::open(archive).map_err(|e| LaunchError::io("--image: cannot open", archive, e))?;
    let mut tar = tar::Archive::new(
        maybe_gzip(BufReader::new(file))
            .map_err(|e| LaunchError::io("--image: cannot read", archive, e))?,
    );
    let entries = tar.entries().map_err(|e| bad_archive(archive, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad_archive(archive, e))?;
        let kind = entry.header().entry_type();
        if kind.is_file() || kind.is_dir() || kind.is_symlink() {
            entry.unpack_in(dir).map_err(|e| bad_archive(archive, e))?;
        }
    }
    Ok(())
}

fn keep_small<R: Read>(
    mut entry: tar::Entry<'_, R>,
    files: &mut HashMap<PathBuf, Vec<u8>>,
) -> io::Result<()> {
    if entry.header().entry_type().is_file()
        && entry.size() <= SMALL_MEMBER_BYTES
        && let Some(path) = clean(&entry.path()?)
    {
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        files.insert(path, bytes);
    }
    Ok(())
}

fn bad_archive(archive: &Path, e: io::Error) -> LaunchError {
    LaunchError::Refused(format!(
        "--image {}: not a readable tar archive: {e}",
        archive.display()
    ))
}

/// Finds the config and layers (paths relative to the archive's top): `manifest.json` (docker save),
/// else `index.json` (OCI layout).
fn locate(members: &Members<'_>, archive: &Path) -> Result<Located, LaunchError> {
    let refused =
        |what: String| LaunchError::Refused(format!("--image {}: {what}", archive.display()));
    let inside = |name: &str| -> Result<PathBuf, LaunchError> {
        let relative = Path::new(name);
        if relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            Ok(relative.to_path_buf())
        } else {
            Err(refused(format!("the path {name:?} leaves the archive")))
        }
    };
    if let Some(text) = members.read(Path::new("manifest.json"))? {
        let manifests: Vec<DockerManifest> = serde_json::from_slice(&text)
            .map_err(|e| refused(format!("manifest.json is not a docker save manifest: {e}")))?;
        let Some(first) = manifests.into_iter().next() else {
            return Err(refused("manifest.json lists no image".into()));
        };
        return Ok(Located {
            config: inside(&first.config)?,
            layers: first
                .layers
                .iter()
                .map(|l| inside(l))
                .collect::<Result<_, _>>()?,
        });
    }
    let Some(index) = members.read(Path::new("index.json"))? else {
        return Err(refused(
            "neither a docker save archive (manifest.json) nor an OCI image layout (index.json)"
                .into(),
        ));
    };
    let blob = |descriptor: &Descriptor| -> Result<PathBuf, LaunchError> {
        match descriptor.digest.split_once(':') {
            Some((algorithm, hex))
                if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                inside(&format!("blobs/{algorithm}/{hex}"))
            }
            _ => Err(refused(format!("bad digest {:?}", descriptor.digest))),
        }
    };
    let mut index: OciIndex = parse_json(Path::new("index.json"), &index, &refused)?;
    // An index may point at further indexes (multi-platform images): follow to linux/amd64.
    for _ in 0..4 {
        let chosen = pick_manifest(&index.manifests)
            .ok_or_else(|| refused("index.json has no linux/amd64 manifest".into()))?;
        let path = blob(chosen)?;
        let bytes = members.read_required(&path, archive)?;
        if chosen.media_type.contains("image.index") || chosen.media_type.contains("manifest.list")
        {
            index = parse_json(&path, &bytes, &refused)?;
            continue;
        }
        let manifest: OciManifest = parse_json(&path, &bytes, &refused)?;
        for layer in &manifest.layers {
            let media = layer.media_type.as_str();
            if media.contains("zstd") || !(media.contains("tar") || media.is_empty()) {
                return Err(refused(format!(
                    "layer {} has media type {media:?}; vproc reads tar and tar+gzip layers",
                    layer.digest
                )));
            }
        }
        return Ok(Located {
            config: blob(&manifest.config)?,
            layers: manifest.layers.iter().map(blob).collect::<Result<_, _>>()?,
        });
    }
    Err(refused("index.json nests indexes too deeply".into()))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    refused: &dyn Fn(String) -> LaunchError,
) -> Result<T, LaunchError> {
    serde_json::from_slice(bytes).map_err(|e| refused(format!("{}: {e}", path.display())))
}

fn pick_manifest(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| manifests.iter().find(|m| m.platform.is_none()))
}

/// A file of the archive's tree at `path` (below `dir`), opened inside that tree: a symlink in a hostile
/// archive cannot make vproc read a host file into an image.
fn open_member(dir: &Path, relative: &Path) -> Result<File, LaunchError> {
    in_root::open(dir, relative, OFlags::RDONLY, Symlinks::InRoot)
        .map(File::from)
        .map_err(|e| LaunchError::io("cannot read", &dir.join(relative), e))
}

/// Wraps `reader` in a gzip decoder when it starts with the gzip magic.
fn maybe_gzip<R: io::BufRead + 'static>(mut reader: R) -> io::Result<Box<dyn Read>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Applies the layers in order onto `rootfs`, checking each one's content against its diff_id (one
/// each: [`check_layer_list`]).
fn unpack_layers(
    dir: &Path,
    layers: &[PathBuf],
    diff_ids: &[String],
    rootfs: &Path,
    archive: &Path,
) -> Result<(), LaunchError> {
    for (i, layer) in layers.iter().enumerate() {
        let file = open_member(dir, layer)?;
        let reader = maybe_gzip(BufReader::new(file))
            .map_err(|e| LaunchError::io("cannot read the layer", layer, e))?;
        let mut hashing = HashingReader {
            inner: reader,
            hasher: Sha256::new(),
        };
        apply_layer(&mut hashing, rootfs).map_err(|e| {
            LaunchError::Refused(format!(
                "--image {}: layer {} ({}): {}",
                archive.display(),
                i + 1,
                layer.display(),
                with_causes(&e)
            ))
        })?;
        // The tar stream ends before the archive's padding: hash all of it.
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| LaunchError::io("cannot read the layer", layer, e))?;
        let digest = format!("sha256:{}", hex(&hashing.hasher.finalize()));
        let expected = &diff_ids[i];
        if *expected != digest {
            return Err(LaunchError::Refused(format!(
                "--image {}: layer {} has content {digest}, but the image config says {expected}",
                archive.display(),
                i + 1
            )));
        }
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The whiteout prefix: `.wh.NAME` deletes NAME of the layers below; `.wh..wh..opq` empties its directory
/// of what the layers below put there.
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const AUFS_META: &str = ".wh..wh.";

/// Unpacks one layer onto `rootfs` (a tar stream), applying its whiteouts.
pub fn apply_layer(layer: &mut dyn Read, rootfs: &Path) -> io::Result<()> {
    let mut tar = tar::Archive::new(layer);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let root = LayerRoot::open(rootfs)?;
    // Paths this layer wrote: an opaque whiteout keeps them, whatever the order in the tar.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let Some(relative) = clean(&entry.path()?) else {
            continue;
        };
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = relative.parent().unwrap_or(Path::new(""));
        if name == OPAQUE {
            let dir = root.inside(parent)?;
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    if !written.contains(&parent.join(child.file_name())) {
                        remove_any(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            // `.wh.`, `.wh..` and `.wh...` would remove the directory itself or the one above it.
            if matches!(hidden, "" | "." | "..") {
                return Err(io::Error::other(format!(
                    "{}: not a whiteout of a name",
                    relative.display()
                )));
            }
            // aufs's own metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): not part of the image.
            if !name.starts_with(AUFS_META) {
                remove_any(&root.inside(parent)?.join(hidden))?;
            }
            continue;
        }
        // A directory replacing a file, or anything replacing a directory: remove what is there.
        let existing = root.inside(parent)?.join(&name);
        if let Ok(meta) = std::fs::symlink_metadata(&existing)
            && meta.is_dir() != entry.header().entry_type().is_dir()
        {
            remove_any(&existing)?;
        }
        entry.unpack_in(rootfs)?;
        written.insert(relative);
    }
    Ok(())
}

/// The entry's path without `/`, `.` and with no `..` (such entries are skipped, as tar does).
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The root a layer is unpacked into, opened once for all its entries.
struct LayerRoot {
    path: PathBuf,
    dir: OwnedFd,
    /// `path` with its symlinks resolved, to check where a resolved entry really is.
    canonical: PathBuf,
}

impl LayerRoot {
    fn open(path: &Path) -> io::Result<Self> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(LayerRoot {
            path: path.to_path_buf(),
            dir,
            canonical: path.canonicalize()?,
        })
    }

    /// `relative` below the root, its symlinks resolved as if the root were `/` (so a link in a lower
    /// layer cannot make a whiteout delete a host file). Missing directories are fine: nothing to
    /// remove there.
    fn inside(&self, relative: &Path) -> io::Result<PathBuf> {
        if relative.as_os_str().is_empty() {
            return Ok(self.path.clone());
        }
        match in_root::open_at(&self.dir, relative, OFlags::PATH, Symlinks::InRoot) {
            Ok(fd) => {
                let real = std::fs::read_link(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&fd)
                ))?;
                if real.starts_with(&self.canonical) {
                    Ok(real)
                } else {
                    Err(io::Error::other(format!(
                        "{} resolves outside the image",
                        relative.display()
                    )))
                }
            }
            // Nothing there: a path that cannot hold anything to remove or replace.
            Err(rustix::io::Errno::NOENT) => Ok(self.path.join(".vproc-missing").join(relative)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Removes a file, symlink or directory tree; a missing one is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `e` and its sources: tar's errors say which entry, their source says why.
fn with_causes(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match content {
                Some(text) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    builder
                        .append_data(&mut header, path, text.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn whiteouts_remove_lower_files_and_opaque_dirs_keep_only_this_layer() {
        let root = tempfile::tempdir().unwrap();
        let lower = layer(&[
            ("etc", None),
            ("etc/gone", Some("x")),
            ("etc/kept", Some("x")),
            ("opt", None),
            ("opt/old", Some("x")),
            ("opt/sub", None),
            ("opt/sub/deep", Some("x")),
        ]);
        apply_layer(&mut &lower[..], root.path()).unwrap();
        // The opaque marker comes after a file of the same layer: that file stays.
        let upper = layer(&[
            ("etc/.wh.gone", Some("")),
            ("opt/new", Some("y")),
            ("opt/.wh..wh..opq", Some("")),
            ("etc/kept", Some("z")),
        ]);
        apply_layer(&mut &upper[..], root.path()).unwrap();
        assert_eq!(files(root.path()), ["etc", "etc/kept", "opt", "opt/new"]);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/kept")).unwrap(),
            "z"
        );
    }

    #[test]
    fn a_symlink_in_a_lower_layer_cannot_aim_a_whiteout_at_the_host() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("precious"), "keep").unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "link", host.path())
            .unwrap();
        let lower = builder.into_inner().unwrap();
        apply_layer(&mut &lower[..], root.path()).unwrap();
        let upper = layer(&[("link/.wh.precious", Some(""))]);
        apply_layer(&mut &upper[..], root.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(host.path().join("precious")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn a_directory_replaces_a_file_and_back() {
        let root = tempfile::tempdir().unwrap();
        apply_layer(&mut &layer(&[("x", Some("file"))])[..], root.path()).unwrap();
        apply_layer(
            &mut &layer(&[("x", None), ("x/y", Some("1"))])[..],
            root.path(),
        )
        .unwrap();
        assert_eq!(files(root.path()), ["x", "x/y"]);
        apply_layer(&mut &layer(&[("x", Some("again"))])[..], root.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("x")).unwrap(),
            "again"
        );
    }

    #[test]
    fn whiteouts_of_the_directory_itself_or_its_parent_are_refused() {
        for bad in ["etc/.wh.", "etc/.wh..", "etc/.wh..."] {
            let root = tempfile::tempdir().unwrap();
            apply_layer(
                &mut &layer(&[("etc", None), ("etc/kept", Some("x"))])[..],
                root.path(),
            )
            .unwrap();
            let error = apply_layer(&mut &layer(&[(bad, Some(""))])[..], root.path()).unwrap_err();
            assert!(
                error.to_string().contains("not a whiteout of a name"),
                "{bad}: {error}"
            );
            assert_eq!(files(root.path()), ["etc", "etc/kept"], "{bad}");
        }
        // aufs metadata is skipped, not applied.
        let root = tempfile::tempdir().unwrap();
        apply_layer(
            &mut &layer(&[
                ("a", None),
                ("a/.wh..wh.plnk", Some("")),
                ("plnk", Some("x")),
            ])[..],
            root.path(),
        )
        .unwrap();
        assert_eq!(files(root.path()), ["a", "plnk"]);
    }

    #[test]
    fn the_layer_list_must_be_the_config_s() {
        let archive = Path::new("img.tar");
        let id = format!("sha256:{}", "ab".repeat(32));
        let layers = [PathBuf::from("l1"), PathBuf::from("l2")];
        assert!(check_layer_list(&layers[..1], std::slice::from_ref(&id), archive).is_ok());
        let extra = check_layer_list(&layers, std::slice::from_ref(&id), archive).unwrap_err();
        assert!(
            extra
                .to_string()
                .contains("2 layer(s) but the image config names 1"),
            "{extra}"
        );
        assert!(check_layer_list(&layers[..1], &[], archive).is_err());
        assert!(check_layer_list(&layers[..1], &["sha256:../x".into()], archive).is_err());
        // The key changes with the layer list even for the same config bytes.
        assert_ne!(
            cache_key(b"{}", std::slice::from_ref(&id)),
            cache_key(b"{}", &[id.clone(), id])
        );
    }

    #[test]
    fn paths_with_dotdot_are_skipped() {
        assert_eq!(clean(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(clean(Path::new("a/../../b")), None);
        assert_eq!(clean(Path::new(".")), None);
    }
}
