//! Refuses plugin files that someone other than root or this user could have modified or
//! swapped, the way sshd's StrictModes treats `authorized_keys`:
//!
//! - the file (checked through the descriptor that is then read, so exactly the checked bytes
//!   load) is a regular file owned by root or this user and not writable by group or others;
//! - every directory from `/` to the file's real location is owned by root or this user and
//!   not writable by group or others, unless it is sticky (like `/tmp`, where other users
//!   cannot rename or remove this user's entries): otherwise a directory on the way could be
//!   swapped for another;
//! - every symlink on the way (the file's own name included) is owned by root or this user,
//!   and lies in such a directory; the directories of its target are checked as above.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Checks the opened plugin file's metadata, and every directory and symlink leading to it.
pub(crate) fn check(path: &Path, file: &Metadata) -> Result<(), String> {
    if !file.is_file() {
        return Err("it is not a regular file".into());
    }
    check_owner_and_mode("the file", file)?;
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|err| format!("cannot resolve the current directory: {err}"))?
            .join(path)
    };
    // Symlinks on the way, as written.
    let mut prefix = PathBuf::from("/");
    for component in absolute.components().skip(1) {
        if let Component::Normal(part) = component {
            prefix.push(part);
            let meta = std::fs::symlink_metadata(&prefix)
                .map_err(|err| format!("cannot inspect {}: {err}", prefix.display()))?;
            if meta.file_type().is_symlink() {
                check_owner(&format!("the symlink {}", prefix.display()), &meta)?;
            }
        } else if let Component::ParentDir = component {
            prefix.pop();
        }
    }
    // Where it really is: every directory from `/` down.
    let real = std::fs::canonicalize(&absolute)
        .map_err(|err| format!("cannot resolve {}: {err}", absolute.display()))?;
    let same_file = std::fs::metadata(&real)
        .is_ok_and(|meta| meta.dev() == file.dev() && meta.ino() == file.ino());
    if !same_file {
        return Err(format!(
            "{} changed while it was being checked",
            real.display()
        ));
    }
    // The directories of every symlink's location are among these or were walked above; the
    // chain of directories of the real file is what decides what is loaded.
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        let meta = std::fs::metadata(dir)
            .map_err(|err| format!("cannot inspect the directory {}: {err}", dir.display()))?;
        check_owner_and_mode(&format!("the directory {}", dir.display()), &meta)?;
    }
    // And the directories holding the symlinks followed on the way.
    if real != absolute {
        let mut prefix = PathBuf::from("/");
        for component in absolute.components().skip(1) {
            if let Component::Normal(part) = component {
                let meta = std::fs::symlink_metadata(prefix.join(part));
                if meta.is_ok_and(|meta| meta.file_type().is_symlink()) {
                    let holder = std::fs::canonicalize(&prefix).unwrap_or(prefix.clone());
                    for dir in holder.ancestors() {
                        let meta = std::fs::metadata(dir).map_err(|err| {
                            format!("cannot inspect the directory {}: {err}", dir.display())
                        })?;
                        check_owner_and_mode(&format!("the directory {}", dir.display()), &meta)?;
                    }
                }
                prefix.push(part);
                if let Ok(resolved) = std::fs::canonicalize(&prefix) {
                    prefix = resolved;
                }
            }
        }
    }
    Ok(())
}

fn this_user() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_owner(what: &str, meta: &Metadata) -> Result<(), String> {
    let me = this_user();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{what} is owned by uid {}, neither root nor this user (uid {me})",
            meta.uid()
        ));
    }
    Ok(())
}

fn check_owner_and_mode(what: &str, meta: &Metadata) -> Result<(), String> {
    check_owner(what, meta)?;
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
