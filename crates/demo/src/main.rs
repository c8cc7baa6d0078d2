//! obmguard-demo's entry point; everything is in the library (see lib.rs).

fn main() {
    std::process::exit(obmguard_demo::main());
}
