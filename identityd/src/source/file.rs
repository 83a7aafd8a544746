//! [`FileSource`]: cluster state from a directory of multi-document Kubernetes-shaped YAML.
//!
//! Behaviour (the contract the lab and the e2e tests rely on):
//! - **Which files**: every `*.yaml` / `*.yml` file under the directory, **recursively**, in
//!   path order. Entries whose name starts with `.` are skipped (hidden files, editor swap files
//!   and the temp files of atomic writes), and symlinked directories are not followed (no loops);
//!   symlinked files are read.
//! - **Bad documents**: a document with an unknown kind, a wrong field type, an unknown field in
//!   an identityd spec, or a failed validation is reported as a [`Problem`] (file, document
//!   index, line, kind/name, field, reason) and skipped; the file's other documents are used.
//! - **Broken files**: a file that cannot be read, is not UTF-8, or has a YAML *syntax* error in
//!   any document is reported and its **last good objects are kept** (Kubernetes-like: a
//!   half-written or mangled file does not delete what was applied from it). A new file that was
//!   never good contributes nothing. A deleted file's objects go away.
//! - **Duplicates**: the same kind/namespace/name in two places: the first in path order wins,
//!   the other is reported.
//! - **Watching**: [`FileSource::run`] polls every `poll_interval` (default 250 ms), comparing each
//!   file's bytes with the last read (no mtime granularity issues, no `notify` dependency). A new
//!   snapshot is published, with `version + 1`, only when the resulting objects or problems
//!   change — touching a file or editing a comment of a valid file publishes nothing.
//! - **Writes**: [`FileSource::apply`] validates an object and writes it atomically (temp file +
//!   rename) as `<kind>-[<namespace>-]<name>.yaml`, or into the file already holding that object
//!   when it holds nothing else; then it re-polls so the caller's snapshot includes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::decode::{DocError, decode_all};
use crate::model::state::Origin;
use crate::model::{ClusterState, ModelError, Object, ObjectKey, Problem};

/// Default poll interval of [`FileSource::run`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Errors of the sources (FileSource and KubeSource).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// `apply` got an invalid object.
    #[error("refusing to apply an invalid object: {0}")]
    Model(#[from] ModelError),
    /// `apply` would have to rewrite a file holding other documents.
    #[error("{key} is defined in {} together with other documents; apply only rewrites single-object files", file.display())]
    SharedFile {
        /// The object.
        key: String,
        /// The file defining it.
        file: PathBuf,
    },
    /// The atomic write failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// Target file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: identityd_certs::Error,
    },
    /// `write_status` for an object the store does not hold.
    #[error("{key} does not exist; its status cannot be written")]
    NotFound {
        /// The object.
        key: String,
    },
    /// A Kubernetes API request failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done (`server-side apply of IdentitydNode n1`).
        action: String,
        /// The cause.
        #[source]
        source: Arc<kube::Error>,
    },
    /// The source cannot be used (no kubeconfig / in-cluster config, a task failed).
    #[error("{0}")]
    Unavailable(String),
}

/// Settings of a [`FileSource`].
#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// How often [`FileSource::run`] re-reads the directory.
    pub poll_interval: Duration,
}

impl Default for FileSourceOptions {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// What one file contributed at its last read.
#[derive(Debug, Clone, Default)]
struct FileEntry {
    /// Bytes of the last read (compared to detect changes); `None` when the read failed.
    content: Option<Vec<u8>>,
    /// Objects from the last syntactically valid content, in document order.
    objects: Vec<(Origin, Object)>,
    /// Problems of the last read.
    problems: Vec<Problem>,
    /// Number of documents in the last good content.
    documents: usize,
}

#[derive(Debug)]
struct Inner {
    files: BTreeMap<PathBuf, FileEntry>,
    current: Arc<ClusterState>,
}

/// A watched directory of YAML objects. Cheap to share as `Arc<FileSource>`.
///
/// How a reconciler consumes it:
///
/// ```
/// use std::sync::Arc;
/// use identityd::model::MtlsMode;
/// use identityd::source::{FileSource, FileSourceOptions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(
///     dir.path().join("ns.yaml"),
///     "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {identityd.io/mtls: strict}\n",
/// )
/// .unwrap();
/// let source = Arc::new(FileSource::open(dir.path(), FileSourceOptions::default()).unwrap());
/// let mut snapshots = source.subscribe();
/// let watcher = source.spawn(); // polls every 250 ms until aborted
///
/// let state = snapshots.borrow_and_update().clone(); // Arc<ClusterState>
/// assert_eq!(state.version(), 1);
/// assert_eq!(state.namespace_mtls("shop", MtlsMode::Permissive), MtlsMode::Strict);
/// // A reconciler loop:
/// // while snapshots.changed().await.is_ok() {
/// //     let state = snapshots.borrow_and_update().clone();
/// //     let desired = plan(&state); apply(desired);
/// // }
/// watcher.abort();
/// # }
/// ```
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    opts: FileSourceOptions,
    inner: Mutex<Inner>,
    apply_lock: Mutex<()>,
    tx: watch::Sender<Arc<ClusterState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FileSource {
    /// Loads `dir` (which must exist) into snapshot version 1.
    ///
    /// # Errors
    /// [`SourceError::Io`] when the directory cannot be listed.
    pub fn open(dir: impl Into<PathBuf>, opts: FileSourceOptions) -> Result<Self, SourceError> {
        let dir = dir.into();
        let paths = list_yaml(&dir)?;
        let mut files = BTreeMap::new();
        for p in paths {
            let entry = decode_file(&p, std::fs::read(&p), None);
            files.insert(p, entry);
        }
        let mut state = build(&files);
        state.set_version(1);
        let current = Arc::new(state);
        log_problems(&current);
        let (tx, _rx) = watch::channel(current.clone());
        Ok(Self {
            dir,
            opts,
            inner: Mutex::new(Inner { files, current }),
            apply_lock: Mutex::new(()),
            tx,
        })
    }

    /// The watched directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A receiver of snapshots; it starts at the current one.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<ClusterState> {
        lock(&self.inner).current.clone()
    }

    /// Re-reads the directory once; publishes and returns the new snapshot when the content
    /// changed, `None` otherwise.
    ///
    /// # Errors
    /// [`SourceError::Io`] when the directory cannot be listed (the last snapshot stays).
    pub fn poll(&self) -> Result<Option<Arc<ClusterState>>, SourceError> {
        let paths = list_yaml(&self.dir)?;
        let mut inner = lock(&self.inner);
        let mut files = BTreeMap::new();
        let mut changed = paths.len() != inner.files.len();
        for p in paths {
            let prev = inner.files.get(&p);
            let read = std::fs::read(&p);
            let entry = match (&read, prev) {
                (Ok(bytes), Some(e)) if e.content.as_ref() == Some(bytes) => e.clone(),
                _ => {
                    changed = true;
                    decode_file(&p, read, prev)
                }
            };
            files.insert(p, entry);
        }
        if !changed {
            // Same paths (equal count, every path found) and same bytes: nothing to rebuild.
            return Ok(None);
        }
        inner.files = files;
        let mut state = build(&inner.files);
        if state.same_content(&inner.current) {
            return Ok(None);
        }
        state.set_version(inner.current.version() + 1);
        let state = Arc::new(state);
        inner.current = state.clone();
        log_problems(&state);
        tracing::info!(version = state.version(), objects = state.len(), problems = state.problems.len(), dir = %self.dir.display(), "cluster state changed");
        self.tx.send_replace(state.clone());
        Ok(Some(state))
    }

    /// Polls forever every `poll_interval` (file reads run on the blocking pool). Cancel by
    /// dropping the future or aborting the task from [`FileSource::spawn`].
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.opts.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.poll()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster directory poll failed; keeping the last state")
                }
                Err(e) => tracing::warn!(error = %e, "cluster directory poll task failed"),
            }
        }
    }

    /// Starts [`FileSource::run`] on the current tokio runtime.
    #[must_use]
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().run())
    }

    /// The file `apply` writes an object to when nothing else defines it.
    #[must_use]
    pub fn default_path(&self, key: &ObjectKey) -> PathBuf {
        self.dir.join(file_name(key))
    }

    /// Validates `object`, writes it atomically into the directory (so other daemons watching
    /// it see it) and publishes the resulting snapshot. Returns the file written.
    ///
    /// # Errors
    /// [`SourceError::Model`] for an invalid object, [`SourceError::SharedFile`] when the object
    /// is defined in a multi-document file, [`SourceError::Write`] on I/O failure.
    pub fn apply(&self, object: &Object) -> Result<PathBuf, SourceError> {
        let mut object = object.clone();
        object.normalize();
        object.validate().map_err(ModelError::Invalid)?;
        let key = object.key();
        let _serial = lock(&self.apply_lock);
        let path = {
            let inner = lock(&self.inner);
            let defined_in = inner
                .files
                .iter()
                .find(|(_, e)| e.objects.iter().any(|(_, o)| o.key() == key));
            // Like an API server: the store stamps a new object's creation time and keeps it
            // on updates (it orders conflicting claims, see `model::conflicts`).
            let stored = defined_in.and_then(|(_, e)| {
                e.objects
                    .iter()
                    .find(|(_, o)| o.key() == key)
                    .and_then(|(_, o)| o.meta().creation_timestamp.clone())
            });
            if object.meta().creation_timestamp.is_none() {
                object.meta_mut().creation_timestamp = Some(stored.unwrap_or_else(|| {
                    identityd_certs::inspect::rfc3339(std::time::SystemTime::now())
                }));
            }
            match defined_in {
                Some((file, e)) if e.documents <= 1 => file.clone(),
                Some((file, _)) => {
                    return Err(SourceError::SharedFile {
                        key: key.to_string(),
                        file: file.clone(),
                    });
                }
                None => self.default_path(&key),
            }
        };
        let yaml = object.to_yaml()?;
        let text = format!("# Written by identityd ({key}).\n{yaml}");
        identityd_certs::fsutil::write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| {
            SourceError::Write {
                path: path.clone(),
                source,
            }
        })?;
        self.poll()?;
        Ok(path)
    }
}

impl super::ClusterSource for FileSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        FileSource::subscribe(self)
    }

    fn snapshot(&self) -> Arc<ClusterState> {
        FileSource::snapshot(self)
    }

    fn run(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(FileSource::run(self))
    }

    fn apply<'a>(
        &'a self,
        object: &'a Object,
    ) -> futures::future::BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move { FileSource::apply(self, object).map(drop) })
    }

    fn write_status<'a>(
        &'a self,
        object: &'a Object,
    ) -> futures::future::BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move { self.write_status(object).map(drop) })
    }

    fn write_report<'a>(
        &'a self,
        node: &'a str,
        report: &'a crate::model::report::NodeReport,
    ) -> futures::future::BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move { FileSource::write_report(self, node, report).map(drop) })
    }

    fn record_events<'a>(
        &'a self,
        object: &'a crate::model::ObjectKey,
        events: &'a [super::ObjectEvent],
    ) -> futures::future::BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move { FileSource::record_events(self, object, events).map(drop) })
    }
}

/// Writes `text` to `path` (0644, atomic) in one of the FileSource's hidden folders
/// (`.reports/`, `.events/`), creating the folder.
fn write_hidden(path: &Path, text: &str) -> Result<PathBuf, SourceError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SourceError::Io {
            path: dir.to_path_buf(),
            source: Arc::new(e),
        })?;
    }
    identityd_certs::fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| {
        SourceError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(path.to_path_buf())
}

/// The directory of object events inside a FileSource directory (hidden: never read as input).
pub const EVENTS_DIR: &str = ".events";

impl FileSource {
    /// Writes `object`'s current events to `.events/<kind>-<namespace>-<name>.yaml`, or removes
    /// that file when there are none.
    ///
    /// # Errors
    /// The file cannot be written or removed.
    pub fn record_events(
        &self,
        object: &crate::model::ObjectKey,
        events: &[super::ObjectEvent],
    ) -> Result<PathBuf, SourceError> {
        let path = self.dir.join(EVENTS_DIR).join(format!(
            "{}-{}-{}.yaml",
            object.kind.as_str().to_lowercase(),
            object.namespace.as_deref().unwrap_or("_"),
            object.name
        ));
        if events.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SourceError::Io {
                    path,
                    source: Arc::new(e),
                }),
                _ => Ok(path),
            };
        }
        let docs: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "apiVersion": "events.k8s.io/v1",
                    "kind": "Event",
                    "metadata": {"name": e.name_for(object), "namespace": object.namespace},
                    "regarding": {"kind": object.kind.as_str(), "namespace": object.namespace, "name": object.name},
                    "type": "Warning",
                    "reason": e.reason,
                    "note": e.message,
                })
            })
            .collect();
        let text = serde_saphyr::to_string(&docs).map_err(|e| {
            SourceError::Unavailable(format!("serializing the events of {object}: {e}"))
        })?;
        write_hidden(&path, &text)
    }
}

/// The directory of node reports inside a FileSource directory.
pub const REPORTS_DIR: &str = ".reports";

/// One `IdentitydNodeReport` document.
fn report_document(node: &str, report: &crate::model::report::NodeReport) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "identityd.io/v1alpha1",
        "kind": "IdentitydNodeReport",
        "metadata": {"name": node},
        "spec": report,
    })
}

/// Reads the node reports of FileSource directory `dir` (`.reports/*.yaml`): `(node, report)`
/// per file; a missing directory is no reports.
///
/// # Errors
/// A file that cannot be read or is not a report, naming it.
pub fn read_reports(
    dir: &Path,
) -> Result<Vec<(String, crate::model::report::NodeReport)>, SourceError> {
    let rdir = dir.join(REPORTS_DIR);
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&rdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(SourceError::Io {
                path: rdir,
                source: Arc::new(e),
            });
        }
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| SourceError::Io {
            path: f.clone(),
            source: Arc::new(e),
        })?;
        let bad = |reason: String| SourceError::Io {
            path: f.clone(),
            source: Arc::new(std::io::Error::new(std::io::ErrorKind::InvalidData, reason)),
        };
        let v: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let name = v["metadata"]["name"]
            .as_str()
            .ok_or_else(|| bad("metadata.name: missing".to_owned()))?
            .to_owned();
        let report =
            serde_json::from_value(v["spec"].clone()).map_err(|e| bad(format!("spec: {e}")))?;
        out.push((name, report));
    }
    Ok(out)
}

impl FileSource {
    /// Writes `node`'s report to `.reports/NODE.yaml` (atomic, 0644).
    ///
    /// # Errors
    /// [`SourceError::Write`] on I/O failure.
    pub fn write_report(
        &self,
        node: &str,
        report: &crate::model::report::NodeReport,
    ) -> Result<PathBuf, SourceError> {
        let path = self.dir.join(REPORTS_DIR).join(format!("{node}.yaml"));
        let text = serde_saphyr::to_string(&report_document(node, report)).map_err(|e| {
            SourceError::Unavailable(format!("serializing the report of {node}: {e}"))
        })?;
        write_hidden(&path, &text)
    }
}

impl FileSource {
    /// Replaces the `status` of the stored object with `object`'s and writes its file (atomic,
    /// like [`FileSource::apply`]); spec and metadata stay as stored.
    ///
    /// # Errors
    /// [`SourceError::NotFound`] when the snapshot has no such object; [`FileSource::apply`]'s.
    pub fn write_status(&self, object: &Object) -> Result<PathBuf, SourceError> {
        let mut wanted = object.clone();
        wanted.normalize();
        let key = wanted.key();
        let current = self.snapshot();
        let mut stored = current.object(&key).ok_or_else(|| SourceError::NotFound {
            key: key.to_string(),
        })?;
        stored.set_status_from(&wanted);
        self.apply(&stored)
    }
}

/// The file name of an object in its own file: `<kind>-<namespace>-<name>.yaml` (lower-case
/// kind; cluster-scoped objects have no namespace part).
#[must_use]
pub fn file_name(key: &ObjectKey) -> String {
    let kind = key.kind.as_str().to_ascii_lowercase();
    match &key.namespace {
        Some(ns) => format!("{kind}-{ns}-{}.yaml", key.name),
        None => format!("{kind}-{}.yaml", key.name),
    }
}

fn log_problems(state: &ClusterState) {
    for p in &state.problems {
        tracing::warn!(problem = %p, "rejected cluster object");
    }
}

/// Lists YAML files under `dir`, recursively, sorted; hidden entries and symlinked directories
/// are skipped.
fn list_yaml(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |path: &Path, e: std::io::Error| SourceError::Io {
        path: path.to_path_buf(),
        source: Arc::new(e),
    };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if first => return Err(io(&d, e)),
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "skipping unreadable directory");
                continue;
            }
        };
        first = false;
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if (ft.is_file() || (ft.is_symlink() && path.is_file()))
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Decodes one file's bytes; `prev` supplies the last good objects when this read is broken.
fn decode_file(path: &Path, read: std::io::Result<Vec<u8>>, prev: Option<&FileEntry>) -> FileEntry {
    let kept =
        |reason: String, line: Option<usize>, document: Option<usize>, content: Option<Vec<u8>>| {
            let n = prev.map_or(0, |p| p.objects.len());
            let reason = if n > 0 {
                format!("{reason}; keeping the {n} object(s) of the last good version of this file")
            } else {
                format!("{reason}; nothing loaded from this file")
            };
            FileEntry {
                content,
                objects: prev.map(|p| p.objects.clone()).unwrap_or_default(),
                documents: prev.map_or(0, |p| p.documents),
                problems: vec![Problem {
                    origin: Origin {
                        file: Some(path.to_path_buf()),
                        document,
                        line,
                    },
                    kind: None,
                    name: None,
                    field: None,
                    value: None,
                    reason,
                }],
            }
        };
    let bytes = match read {
        Ok(b) => b,
        Err(e) => return kept(format!("cannot read: {e}"), None, None, None),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return kept("not UTF-8 text".into(), None, None, Some(bytes));
    };
    let decoded = decode_all(text);
    if let Some((doc, Err(e))) = decoded
        .iter()
        .find(|(_, r)| r.as_ref().is_err_and(DocError::is_syntax))
    {
        let line = match e {
            DocError::Syntax { line, .. } => line.or(Some(doc.line)),
            _ => Some(doc.line),
        };
        return kept(e.to_string(), line, Some(doc.index), Some(bytes.clone()));
    }
    let mut entry = FileEntry {
        content: Some(bytes.clone()),
        documents: decoded.len(),
        ..FileEntry::default()
    };
    for (doc, res) in decoded {
        let origin = Origin {
            file: Some(path.to_path_buf()),
            document: Some(doc.index),
            line: Some(doc.line),
        };
        match res {
            Ok(Some(o)) => entry.objects.push((origin, o)),
            Ok(None) => {}
            Err(DocError::Invalid { object, errors }) => {
                let mut s = ClusterState::default();
                s.reject(&object, origin, errors);
                entry.problems.extend(s.problems);
            }
            Err(e) => {
                let (kind, name, field, line, reason) = match e {
                    DocError::Schema {
                        kind,
                        name,
                        field,
                        line,
                        reason,
                    } => (
                        Some(kind.to_string()),
                        name,
                        field,
                        line.or(origin.line),
                        reason,
                    ),
                    DocError::UnknownKind { kind, reason } => {
                        (kind, None, None, origin.line, reason)
                    }
                    other => (None, None, None, origin.line, other.to_string()),
                };
                entry.problems.push(Problem {
                    origin: Origin { line, ..origin },
                    kind,
                    name,
                    field,
                    value: None,
                    reason,
                });
            }
        }
    }
    entry
}

/// Assembles a snapshot (version 0) from the per-file results.
fn build(files: &BTreeMap<PathBuf, FileEntry>) -> ClusterState {
    let mut state = ClusterState::new(0);
    let mut problems = Vec::new();
    for entry in files.values() {
        for (origin, o) in &entry.objects {
            if let Err(first) = state.insert(o.clone(), origin.clone()) {
                let key = o.key();
                problems.push(Problem {
                    origin: origin.clone(),
                    kind: Some(key.kind.to_string()),
                    name: Some(match &key.namespace {
                        Some(ns) => format!("{ns}/{}", key.name),
                        None => key.name.clone(),
                    }),
                    field: None,
                    value: None,
                    reason: format!(
                        "duplicate: already defined in {} document {}; the first definition (path order) is used",
                        first.file.as_deref().map_or_else(|| "?".into(), |f| f.display().to_string()),
                        first.document.map_or_else(|| "?".into(), |d| d.to_string()),
                    ),
                });
            }
        }
        problems.extend(entry.problems.iter().cloned());
    }
    for p in problems {
        state.push_problem(p);
    }
    state.finish();
    state
}

#[cfg(test)]
mod tests;
