//! `drainwait install DIR`: copy this executable to `DIR/drainwait`.
//!
//! For an init container filling an `emptyDir` that the main container's
//! preStop hook then runs. The copy is written to a temporary file in DIR,
//! made 0755 and synced, then renamed over the target, so a reader never sees
//! half a binary, and running it twice is harmless.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// This executable: `/proc/self/exe`, else `argv[0]` when it is a path
/// (a bare chroot or a scratch image without /proc mounted).
pub fn own_executable() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .or_else(|| {
            let arg0 = PathBuf::from(std::env::args_os().next()?);
            (arg0.components().count() > 1 && arg0.is_file()).then_some(arg0)
        })
}

/// Copy `exe` to `dir/drainwait`; returns the installed path.
pub fn install(exe: &Path, dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| with_path(e, "create directory", dir))?;
    let target = dir.join("drainwait");
    let tmp = dir.join(format!(".drainwait.{}.tmp", std::process::id()));
    let result = (|| {
        fs::copy(exe, &tmp).map_err(|e| with_path(e, "copy the executable to", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| with_path(e, "chmod", &tmp))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| with_path(e, "sync", &tmp))?;
        fs::rename(&tmp, &target).map_err(|e| with_path(e, "rename into", &target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

fn with_path(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_atomically_with_mode_and_is_idempotent() {
        let src = tempfile::tempdir().expect("tmp");
        let exe = src.path().join("exe");
        fs::write(&exe, b"#!binary").expect("write");
        let dest = src.path().join("a/b");
        for _ in 0..2 {
            let p = install(&exe, &dest).expect("install");
            assert_eq!(fs::read(&p).expect("read"), b"#!binary");
            assert_eq!(
                fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
                0o755
            );
        }
        let names: Vec<_> = fs::read_dir(&dest)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("drainwait")],
            "no temp file left behind"
        );
    }

    #[test]
    fn error_names_the_path() {
        let e = install(
            Path::new("/nonexistent/exe"),
            &std::env::temp_dir().join("dw-install-err"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent") || e.to_string().contains("dw-install-err"),
            "{e}"
        );
    }
}
