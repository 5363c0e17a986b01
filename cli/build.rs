//! Links `flow` as a position-dependent executable: a position-independent one applies about
//! 2.3 MB of dynamic relocations when it starts, and their table and the 1.9 MB of pointers they
//! write stay resident for the whole run: 4.4 MiB of the 31.6 MiB peak RSS of a spilling join at
//! a 2.3 MiB budget, where the promise allows 26.5. Address-space randomization of the binary's
//! own code is lost; libraries, heap and stacks keep theirs.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
