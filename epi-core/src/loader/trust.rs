//! Refuses plugin files that someone other than root or this user could have modified, the
//! way sshd's StrictModes treats `authorized_keys`.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Checks the opened plugin file's metadata and its directory's.
pub(crate) fn check(path: &Path, file: &Metadata) -> Result<(), String> {
    if !file.is_file() {
        return Err("it is not a regular file".into());
    }
    check_owner_and_mode("the file", file)?;
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_meta = std::fs::metadata(dir)
        .map_err(|err| format!("cannot inspect its directory {}: {err}", dir.display()))?;
    check_owner_and_mode(&format!("its directory {}", dir.display()), &dir_meta)
}

fn check_owner_and_mode(what: &str, meta: &Metadata) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{what} is owned by uid {}, neither root nor this user (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode();
    // A sticky directory (like /tmp) protects its entries from other users.
    let sticky_dir = meta.is_dir() && mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(format!(
            "{what} is writable by {} (mode {:o}); remove that with chmod go-w",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    Ok(())
}
