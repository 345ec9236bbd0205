//! The node's generated secrets: created once on first start, mode 0600 in a 0700 directory,
//! and never printed (only their paths are).

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use uc_runtime::Secret;
use uc_runtime::secret::{read_secret_file, write_secret_file};

/// Where each secret lives under the data directory.
#[derive(Debug, Clone)]
pub struct SecretPaths {
    pub dir: PathBuf,
    /// Bearer token of the cluster operator.
    pub admin_token: PathBuf,
    /// 32-byte key that encrypts credentials at rest (iam).
    pub master_key: PathBuf,
    /// 32-byte Ed25519 seed that signs tokens (iam).
    pub signing_key: PathBuf,
}

impl SecretPaths {
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("secrets");
        Self {
            admin_token: dir.join("admin-token"),
            master_key: dir.join("master.key"),
            signing_key: dir.join("signing.key"),
            dir,
        }
    }

    /// A component's flaredb namespace password: the configured file, else
    /// `secrets/<component>-flaredb-password` (which `up` creates with the namespace).
    pub fn service_password(&self, configured: &Option<PathBuf>, component: &str) -> PathBuf {
        configured
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{component}-flaredb-password")))
    }
}

/// Creates a directory (and parents) with mode 0700 if missing; an existing one must not be
/// open to others.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mode = fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Generates any missing secret; existing ones are kept (and checked).
/// Returns the admin token.
pub fn ensure_node_secrets(paths: &SecretPaths) -> anyhow::Result<Secret<String>> {
    ensure_private_dir(&paths.dir)?;
    for path in [&paths.admin_token, &paths.master_key, &paths.signing_key] {
        if path.exists() {
            read_secret_file(path)?;
        } else {
            write_secret_file(path, format!("{}\n", random_hex(32)).as_bytes())?;
            tracing::info!(path = %path.display(), "generated secret");
        }
    }
    Ok(read_secret_file(&paths.admin_token)?)
}

/// Reads the admin token a `serve`d component needs; it must exist and be long enough.
pub fn read_admin_token(path: &Path) -> Result<Secret<String>, String> {
    if !path.exists() {
        return Err(format!(
            "no admin token: `auth.admin_token_file` ({}) does not exist; \
             `ultracloud up` generates one, or write 32+ random characters to it with mode 0600",
            path.display()
        ));
    }
    let token = read_secret_file(path).map_err(|e| e.to_string())?;
    if token.expose().len() < 32 {
        return Err(format!(
            "admin token in {} is too short: use at least 32 random characters",
            path.display()
        ));
    }
    Ok(token)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An advisory lock on a component's data directory, held while it runs, so two processes
/// never share one.
pub struct DirLock {
    _file: fs::File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        ensure_private_dir(dir)?;
        let path = dir.join("LOCK");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {
                bail!("{} is in use by another ultracloud process", dir.display())
            }
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}
