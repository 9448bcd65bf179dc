//! A container image for the QEMU tests: /bin/busybox from the locked busybox-static .deb, as
//! a one-layer OCI archive that `ctr images import` (the agent's image-import) reads.

use super::checkers::deb_member;
use super::project::Project;
use super::{cache_home, read_toml, sha256_hex};

/// /usr/bin/busybox from the locked busybox-static .deb in the cache (read with dpkg-deb).
pub fn busybox_from_cache(p: &Project, profile: &str) -> Vec<u8> {
    // Makes sure the profile's packages (busybox-static is on every node) are in the cache.
    p.piimg_cached()
        .args(["--quiet", "fetch", "--profile", profile])
        .run()
        .assert_ok();
    let lock = read_toml(&p.root().join("piimg.lock"));
    let sha = lock["component"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["name"].as_str() == Some("busybox-static")
                && c["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("debian:trixie/"))
        })
        .and_then(|c| c["sha256"].as_str())
        .expect("busybox-static for trixie in piimg.lock")
        .to_string();
    let deb = cache_home().join("piimg/sha256").join(sha);
    deb_member(&deb, "./usr/bin/busybox")
}

/// A one-layer OCI image archive (what `ctr images import` reads): the layer holds
/// /bin/busybox; the index names the image `name`.
pub fn oci_archive(busybox: &[u8], name: &str) -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    h.set_cksum();
    layer.append_data(&mut h, "bin/", &[][..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    h.set_cksum();
    layer.append_data(&mut h, "bin/busybox", busybox).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_sha = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "arm64",
        "os": "linux",
        "config": { "Cmd": ["/bin/busybox", "true"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_sha}")] },
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&config)),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_sha}"),
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)),
            "size": manifest.len(),
            "platform": { "architecture": "arm64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
            },
        }],
    })
    .to_string()
    .into_bytes();
    let mut ar = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        ar.append_data(&mut h, path, data).unwrap();
    };
    add(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
    );
    add("index.json".into(), &index);
    for blob in [&layer, &config, &manifest] {
        add(format!("blobs/sha256/{}", sha256_hex(blob)), blob);
    }
    ar.into_inner().unwrap()
}
