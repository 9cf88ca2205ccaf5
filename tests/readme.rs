//! docs/LIBRARY.md's code is the code of the crates in `tests/outside/` that CI builds and
//! runs.

#[test]
fn the_readme_shows_the_outside_crates_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("docs/LIBRARY.md")).unwrap();
    for file in [
        "tests/outside/schedules/Cargo.toml",
        "tests/outside/schedules/src/main.rs",
        "tests/outside/own-network/Cargo.toml",
        "tests/outside/own-network/src/main.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            readme.contains(&text),
            "docs/LIBRARY.md does not show {file} as it is"
        );
    }
}
