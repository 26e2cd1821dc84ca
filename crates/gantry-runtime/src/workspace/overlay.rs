//! Overlay mounts for job workspaces: the snapshot generation as the read-only lower layer, the job's
//! own upper layer, so that making a workspace is one `mount` whatever the project's size, and nothing
//! a job writes reaches the snapshot.
//!
//! Every mount this process makes is in [`MOUNTS`] until it is unmounted; [`unmount_all`] is for a
//! process that must exit at once. Mounts are detached (`MNT_DETACH`), which always succeeds, even
//! while a process a job left behind still works inside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

/// The overlay mounts this process holds.
static MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn mounts() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    MOUNTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether overlayfs can take `p` in its options (they are split at `,`, and `:` separates layers).
fn usable(p: &Path) -> bool {
    p.to_str()
        .is_some_and(|s| !s.contains([',', ':', '\\', '\n']))
}

/// Mounts at `merged` an overlay of `lower` (read-only) with `upper` and `work` (empty directories on
/// one file system). Registered until [`unmount`].
pub(crate) fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> io::Result<()> {
    if ![lower, upper, work, merged].iter().all(|p| usable(p)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a path overlayfs cannot take",
        ));
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mut held = mounts();
    nix::mount::mount(
        Some("gantry"),
        merged,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(io::Error::from)?;
    held.push(merged.to_path_buf());
    Ok(())
}

/// Detaches the overlay at `merged`.
pub(crate) fn unmount(merged: &Path) {
    let mut held = mounts();
    let _ = nix::mount::umount2(merged, MntFlags::MNT_DETACH);
    held.retain(|m| m != merged);
}

/// Detaches every overlay this process mounted.
pub(crate) fn unmount_all() {
    let mut held = mounts();
    for m in held.drain(..) {
        let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
    }
}

/// Whether overlay mounts work for workspaces under `dir` (an existing directory): one is made and
/// detached in a scratch directory there.
pub(crate) fn works(dir: &Path) -> bool {
    let Ok(scratch) = std::path::absolute(dir.join(format!(".overlay-probe-{}", super::unique())))
    else {
        return false;
    };
    let (lower, upper, work, merged) = (
        scratch.join("lower"),
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    let ok = [&lower, &upper, &work, &merged]
        .iter()
        .all(|d| fs::create_dir_all(d).is_ok())
        && mount(&lower, &upper, &work, &merged).is_ok();
    if ok {
        unmount(&merged);
    }
    let _ = fs::remove_dir_all(&scratch);
    ok
}

/// Detaches every mount below `dir` (absolute), whoever made it: what a killed run left behind.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut below: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    // Deepest first.
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in below {
        let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(octal) {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
