fn main() {
    // Migrations are embedded at compile time: a new or changed file rebuilds the crate.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations-postgres");
}
