//! The repository stands alone: no tracked file reads, links or points to
//! the folder beside it that the developers' machines happen to have.

use std::path::Path;
use std::process::Command;

#[test]
fn no_tracked_file_names_a_path_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    // Spelled in two parts so that this file does not name it itself.
    let needle = format!("..{}shared", '/');
    let out = Command::new("git")
        .args(["grep", "-n", "-I", "-F", &needle, "--", "."])
        .current_dir(root)
        .output()
        .expect("git is needed to list the tracked files");
    let listed = Command::new("git").args(["ls-files", "--error-unmatch", "Cargo.toml"]).current_dir(root).output();
    assert!(
        listed.is_ok_and(|o| o.status.success()),
        "{} is not a git checkout: this test reads the tracked files",
        root.display()
    );
    let hits = String::from_utf8_lossy(&out.stdout);
    assert!(hits.trim().is_empty(), "tracked files name `{needle}`, outside the repository:\n{hits}");
}
