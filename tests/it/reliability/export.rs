//! `output_dir`: files the user put there survive a re-export, a file of ours the user
//! changed makes it refuse (exit 2, naming it), and a cache hit restores a deleted copy.

use super::{BASE, pipeline, project};

fn experiment() -> String {
    format!(
        "{}\n[stages.export]\nkind = \"export\"\nneeds = [\"train\"]\nmerged = false\noutput_dir = \"final\"\n",
        BASE.replace("max_steps = 2", "max_steps = 1")
    )
}

#[test]
fn user_files_in_output_dir_survive_and_a_cache_hit_restores_it() {
    let p = project(&experiment());
    let dir = p.path();
    pipeline(dir, &["run", "exp.toml"], &[], 0);
    let out = dir.join("final");
    let ours = out.join("peft/adapter_model.safetensors");
    assert!(ours.is_file() && out.join(".pipeline-export").is_file());
    std::fs::write(out.join("my_notes.txt"), "mine").unwrap();
    std::fs::write(out.join("peft/extra.txt"), "mine too").unwrap();
    std::fs::write(&ours, b"stale").unwrap();
    // (Our file edited: refused, naming it; nothing is lost.)
    let refused = pipeline(dir, &["run", "exp.toml", "--force", "export"], &[], 2);
    assert!(
        refused.stderr.contains("peft/adapter_model.safetensors")
            && refused.stderr.contains("changed since pipeline wrote them"),
        "{}",
        refused.shown
    );
    assert_eq!(std::fs::read(&ours).unwrap(), b"stale");
    std::fs::remove_file(&ours).unwrap();

    // With our file gone (not changed), a forced re-export replaces ours, keeps theirs.
    pipeline(dir, &["run", "exp.toml", "--force", "export"], &[], 0);
    assert!(ours.is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("my_notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("peft/extra.txt")).unwrap(),
        "mine too"
    );
    let siblings: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pipeline-"))
        .collect();
    assert!(siblings.is_empty(), "no staging left: {siblings:?}");

    // Deleted by the user: a fully cached rerun puts it back.
    let before = std::fs::read(&ours).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let again = pipeline(dir, &["run", "exp.toml"], &[], 0);
    assert_eq!(again.counts(), (0, 3));
    assert!(
        again.stderr.contains("final from the cache"),
        "{}",
        again.shown
    );
    assert_eq!(std::fs::read(&ours).unwrap(), before);
    assert!(
        !out.join("manifest.json").exists(),
        "the cache's own file stays in the cache"
    );
}
