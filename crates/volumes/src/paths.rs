//! Paths inside a volume: relative to its root, never leaving it.

use crate::{Result, VolumeError};

/// The longest path accepted, as Linux's `PATH_MAX`.
const MAX_PATH: usize = 4096;

/// Normalises a client's path to the stored form: no leading or trailing slash, no empty or
/// `.` components ("" is the root). `..` is refused rather than resolved, so no spelling of a
/// path reaches outside the volume.
pub fn normalize(path: &str) -> Result<String> {
    if path.len() > MAX_PATH {
        return Err(VolumeError::Invalid(format!("path of {} bytes is too long (at most {MAX_PATH})", path.len())));
    }
    if path.contains('\0') {
        return Err(VolumeError::Invalid("paths cannot contain NUL bytes".into()));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(VolumeError::Invalid(format!("path '{path}' is refused: '..' would leave the volume")));
            }
            p if p.len() > 255 => {
                return Err(VolumeError::Invalid(format!("a path component of '{path}' is longer than 255 bytes")));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_escapes() {
        assert_eq!(normalize("/").unwrap(), "");
        assert_eq!(normalize("").unwrap(), "");
        assert_eq!(normalize("/a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(normalize("a").unwrap(), "a");
        for bad in ["..", "/../etc/passwd", "a/../../b", "a/..", "x\0y"] {
            assert!(matches!(normalize(bad), Err(VolumeError::Invalid(_))), "{bad}");
        }
    }
}
