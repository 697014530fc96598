//! Records the git revision the binary is built from as `ECHOLAB_GIT_REVISION`, or nothing
//! when there is no git or no repository (a source tarball): the code then says "unknown".
//! Never fails the build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    // GIT_DIR: `GIT_DIR=/nonexistent cargo build` is a build without a repository.
    println!("cargo:rerun-if-env-changed=GIT_DIR");
    if let Some(revision) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=ECHOLAB_GIT_REVISION={revision}");
        // Build again when HEAD moves: a checkout changes HEAD, a commit its reflog. Only
        // files that exist: cargo reruns a script whose watched file is missing every time.
        for path in ["HEAD", "logs/HEAD"] {
            if let Some(file) = git(&["rev-parse", "--git-path", path]) {
                if std::path::Path::new(&file).exists() {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
        }
    }
}
