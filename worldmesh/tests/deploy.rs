//! The operations files, checked offline (no Docker engine or cluster here): every Kubernetes
//! manifest against the Kubernetes schemas (strict), the kustomize overlay rendered and
//! checked, the compose file's structure, every path the Dockerfile copies, and the Grafana
//! dashboard's and alerts' metric names. `deploy/validate.py` does the work (it creates its
//! own virtualenv under `target/` with the PyPI packages it needs on first use).

#[test]
fn deployment_files_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("python3")
        .arg("deploy/validate.py")
        .current_dir(&root)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "deploy/validate.py failed:\n{stdout}\n{stderr}"
    );
}
