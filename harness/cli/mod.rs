//! The command line: one file per subcommand. Exit codes follow DESIGN.md:
//! 0 all passed, 1 a scenario failed, 2 bad input, 3 lab infrastructure failed,
//! 130 interrupted.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod console;
pub mod devices;
pub mod history;
pub mod inputs;
pub mod lab;
pub mod plan;
pub mod preflight;
pub mod run;
pub mod status;
pub mod validate;

/// Exit codes, as DESIGN.md fixes them.
pub mod exit {
    pub const PASSED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const INFRASTRUCTURE: u8 = 3;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Parser)]
#[command(
    name = "aplab",
    version,
    about = "Hardware-lab harness for Windows Autopilot pre-provisioned deployment"
)]
pub struct Cli {
    /// More output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check scenarios and the inventory; print every problem (exit 2 if any).
    Validate(validate::Args),
    /// Show which scenario case runs on which device, its phases, gaps and duration.
    Plan(plan::Args),
    /// Run scenarios on the lab's devices (all of them by default: the nightly suite).
    Run(run::RunArgs),
    /// The virtual lab: simulated devices behind real lab protocols.
    Lab(lab::LabArgs),
    /// Finish an interrupted or crashed run from the ledger.
    Resume(run::ResumeArgs),
    /// Current and recent runs, devices with health, lease and lifecycle state.
    Status(status::Args),
    /// Every device of the inventory, how it is reached, its health and lease.
    Devices(devices::Args),
    /// Compare a run with earlier runs: new failures, fixed, flaky, pass rate per model.
    History(history::HistoryArgs),
    /// At the bench: power a device on or off, or read its power state.
    Power(bench::PowerArgs),
    /// At the bench: attach the terminal to a device's console (Enter ~ . detaches).
    Console(bench::ConsoleArgs),
    /// At the bench: press keys on a device's keyboard (`MetaLeft*5 Enter`, --text).
    Keys(bench::KeysArgs),
    /// At the bench: the text on a device's screen; --snapshot FILE.png, --qr.
    Screen(bench::ScreenArgs),
    /// At the bench: a device's TPM facts; --ek checks the EK certificate, --attest a quote.
    Tpm(bench::TpmArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let Some(command) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::from(exit::BAD_INPUT);
    };
    let code = match command {
        Command::Run(args) => run::run(args),
        Command::Resume(args) => run::resume(args),
        Command::Status(args) => status::run(args),
        Command::Devices(args) => devices::run(args),
        Command::History(args) => return history::run(args),
        Command::Lab(args) => return lab::run(args),
        Command::Validate(args) => return validate::run(args),
        Command::Plan(args) => return plan::run(args),
        Command::Power(args) => bench::power(args),
        Command::Console(args) => bench::console(args),
        Command::Keys(args) => bench::keys(args),
        Command::Screen(args) => bench::screen(args),
        Command::Tpm(args) => bench::tpm(args),
    };
    ExitCode::from(code)
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "aplab=debug",
        _ => "aplab=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("APLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
