//! The `aplab` command. Kept tiny: parsing and dispatch live in `cli/`.

fn main() -> std::process::ExitCode {
    aplab::cli::main()
}
