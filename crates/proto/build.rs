//! Extracts the `FileDescriptorSet` embedded in the pinned `modal` package and compiles it.
//! The client package is the protocol's specification; nothing generated from it is committed.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;

const PINNED: &str = "1.6.4";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    let script = root.join("tools/extract_fds.py");
    let python = std::env::var_os("FERRY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    println!("cargo:rerun-if-env-changed=FERRY_PYTHON");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed={}", python.display());

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("modal_api.fds.bin");
    let output = Command::new(&python).arg(&script).arg(&out).output();
    let version = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => fail(&python, &String::from_utf8_lossy(&o.stderr)),
        Err(e) => fail(&python, &e.to_string()),
    };
    if version != PINNED {
        fail(
            &python,
            &format!("found modal=={version}, but Ferry speaks the protocol of modal=={PINNED}"),
        );
    }

    let bytes = std::fs::read(&out).expect("descriptor set written by extract_fds.py");
    let fds = prost_types::FileDescriptorSet::decode(bytes.as_slice()).expect("valid descriptor set");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .file_descriptor_set_path(&out)
        .compile_fds(fds)
        .expect("compile the modal descriptors");
}

fn fail(python: &Path, why: &str) -> ! {
    panic!(
        "\n\nFerry builds its protocol types from the pinned modal=={PINNED} client, \
         read through {}.\n{why}\nRun `make setup` (it creates .venv with modal=={PINNED}), \
         or point FERRY_PYTHON at a Python that has it.\n",
        python.display()
    );
}
