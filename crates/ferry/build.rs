//! With `cpu-variants`, llama.cpp is a set of shared libraries copied next to the executable:
//! let the binaries find them there (`$ORIGIN`) without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CPU_VARIANTS").is_some() {
        // DT_RPATH, not RUNPATH: it also applies to the libraries' own dependencies (libggml-base).
        println!("cargo:rustc-link-arg-bins=-Wl,--disable-new-dtags,-rpath,$ORIGIN");
    }
}
